//! A black-holed endpoint: a TCP port that accepts every connection and never answers, as a
//! wedged load balancer or a half-dead server does. A client without timeouts hangs on it
//! for ever; the agent must give up by its boot deadline.

use std::future::Future;

use anyhow::{Context, Result};

use super::netns;

/// Binds a free port on all addresses of the router namespace `vpc_ns` (so every host
/// reaches it at its subnet gateway) and returns it with the task that holds it open.
pub(crate) fn listen(vpc_ns: &str) -> Result<(u16, impl Future<Output = ()> + use<>)> {
    let listener = netns::in_netns(vpc_ns, || std::net::TcpListener::bind(("0.0.0.0", 0)))?
        .context("binding a black hole")?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    Ok((port, swallow(listener)))
}

/// Accepts connections and keeps them open, reading nothing and writing nothing.
async fn swallow(listener: std::net::TcpListener) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let mut held = Vec::new();
    while let Ok((stream, _)) = listener.accept().await {
        held.push(stream);
    }
}
