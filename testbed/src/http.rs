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
        let buf = read_response(&mut s).await?;
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

/// Reads one response: up to the end of its body when it has a Content-Length, otherwise to
/// the end of the connection. moto's server (werkzeug's) closes a connection only after it
/// has looked for more request data for 10 ms: waiting for the close added that to every
/// look the hypervisor takes at EC2.
async fn read_response(s: &mut TcpStream) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n")
            && let Some(len) = content_length(&buf[..end])
            && buf.len() >= end + 4 + len
        {
            buf.truncate(end + 4 + len);
            return Ok(buf);
        }
    }
}

/// The Content-Length of a response head, if it has one.
fn content_length(head: &[u8]) -> Option<usize> {
    String::from_utf8_lossy(head).lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })
}

/// A request that must answer 200; returns the body.
pub async fn ok(port: u16, method: &str, path: &str, body: &str) -> Result<String> {
    let (status, text) = request(port, method, path, body).await?;
    if status != 200 {
        bail!("{method} {path} answered {status}: {text}");
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that, like werkzeug's, keeps the connection open after its answer: the
    /// request returns once the body is in, while the server still holds the connection
    /// (it lets go only when told the client has its answer).
    #[tokio::test]
    async fn an_answer_with_a_length_is_read_without_waiting_for_the_close() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 1024];
            let _ = s.read(&mut head).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
                .await
                .unwrap();
            s.write_all(b"hello").await.unwrap();
            let _ = done_rx.await;
        });
        let (status, body) = request(port, "GET", "/x", "").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "hello"));
        done_tx.send(()).unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn an_answer_without_a_length_is_read_to_the_close() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 1024];
            let _ = s.read(&mut head).await.unwrap();
            s.write_all(b"HTTP/1.1 404 Not Found\r\n\r\nno such thing")
                .await
                .unwrap();
        });
        let (status, body) = request(port, "GET", "/x", "").await.unwrap();
        assert_eq!((status, body.as_str()), (404, "no such thing"));
    }
}
