//! A minimal HTTP/1.1 client for the testbed's control endpoints (one request per connection).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends one request to `127.0.0.1:port` and returns (status, body).
pub async fn request(port: u16, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let fut = async {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .context("HTTP response without header end")?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("HTTP response without status")?;
        Ok::<_, anyhow::Error>((status, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .with_context(|| format!("{method} {path} on port {port} timed out"))?
}

/// A request that must answer 200; returns the body.
pub async fn ok(port: u16, method: &str, path: &str, body: &str) -> Result<String> {
    let (status, text) = request(port, method, path, body).await?;
    if status != 200 {
        bail!("{method} {path} answered {status}: {text}");
    }
    Ok(text)
}
