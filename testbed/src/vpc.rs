//! The VPC: its subnets in EC2 and the router namespace that joins them, one bridge per subnet
//! with the gateway at `.1`, where this machine's services (moto, ZooKeeper) are exposed, and
//! from where this machine reaches into the VPC (`reach`).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};

use super::aws::REGION;
use super::netns;

/// One subnet of the world's VPC.
#[derive(Debug, Clone)]
pub struct Subnet {
    pub id: String,
    pub az: String,
    pub cidr: String,
    pub gateway: String,
    pub(crate) bridge: String,
}

/// Creates a VPC in EC2 with one /24 subnet per AZ suffix (e.g. `["a", "b"]`): the k-th
/// (from 1) is `10.0.k.0/24`, gateway `10.0.k.1` on bridge `brk`. Returns the VPC's id.
pub(crate) async fn create(
    admin: &aws_sdk_ec2::Client,
    azs: &[&str],
) -> Result<(String, Vec<Subnet>)> {
    let vpc_id = admin
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .send()
        .await
        .context("creating the world's VPC")?
        .vpc
        .and_then(|v| v.vpc_id)
        .context("CreateVpc returned no id")?;
    let mut subnets = Vec::new();
    for (k, az) in azs.iter().enumerate() {
        let cidr = format!("10.0.{}.0/24", k + 1);
        let az = format!("{REGION}{az}");
        let subnet = admin
            .create_subnet()
            .vpc_id(&vpc_id)
            .cidr_block(&cidr)
            .availability_zone(&az)
            .send()
            .await
            .with_context(|| format!("creating subnet {cidr} in {az}"))?
            .subnet
            .and_then(|s| s.subnet_id)
            .context("CreateSubnet returned no id")?;
        subnets.push(Subnet {
            id: subnet,
            az,
            gateway: format!("10.0.{}.1", k + 1),
            cidr,
            bridge: format!("br{}", k + 1),
        });
    }
    Ok((vpc_id, subnets))
}

/// The fixed MAC address of the k-th (from 1) subnet's gateway: locally administered, unlike
/// every MAC EC2 (moto) hands out.
fn gateway_mac(k: usize) -> String {
    format!("0e:00:0a:00:{:02x}:01", k & 0xff)
}

/// Builds the router namespace `vpc_ns`: forwarding on, one bridge per subnet holding its
/// gateway address.
///
/// Each bridge gets a fixed MAC, as the VPC router's never changes. Left to itself a Linux
/// bridge wears the lowest MAC among its ports, and the hypervisor adds and deletes ports
/// (hosts, ENIs) all the time: when the port whose MAC the gateway wore goes, the gateway's
/// MAC changes without a word, and every host that resolved it keeps sending to the old one
/// until its neighbour entry expires and the probes fail (15-45 s of reachable time, then 5 s
/// of delay and 3 s of probes): connects to the services behind the gateway (moto, ZooKeeper)
/// time out meanwhile. That was the 30-50 s stall of `bench-boot`.
pub(crate) fn build_router(vpc_ns: &str, subnets: &[Subnet]) -> Result<()> {
    netns::create(vpc_ns)?;
    netns::sysctl(vpc_ns, "net.ipv4.ip_forward", "1")?;
    for (k, s) in subnets.iter().enumerate() {
        let mac = gateway_mac(k + 1);
        netns::ip_in(
            vpc_ns,
            &["link", "add", &s.bridge, "address", &mac, "type", "bridge"],
        )?;
        netns::ip_in(
            vpc_ns,
            &[
                "addr",
                "add",
                &format!("{}/24", s.gateway),
                "dev",
                &s.bridge,
            ],
        )?;
        netns::ip_in(vpc_ns, &["link", "set", &s.bridge, "up"])?;
    }
    Ok(())
}

/// Makes a service on this machine's loopback `port` reachable from every host at its
/// subnet gateway, same port: binds the port in the router namespace `vpc_ns` and returns
/// the proxy to run.
pub(crate) fn expose(vpc_ns: &str, port: u16) -> Result<impl Future<Output = ()> + use<>> {
    let listener = netns::in_netns(vpc_ns, move || {
        std::net::TcpListener::bind(("0.0.0.0", port))
    })?
    .with_context(|| format!("binding the service proxy on port {port}"))?;
    listener.set_nonblocking(true)?;
    Ok(proxy(listener, port))
}

async fn proxy(listener: std::net::TcpListener, port: u16) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// The other direction: makes `target` (an address in the VPC, e.g. a ZooKeeper member on
/// its ENI's) reachable from this machine at `127.0.0.1:<port>`, each connection made onward
/// from inside the router namespace `vpc_ns` (which has a leg in every subnet). Returns the
/// port and the proxy to run. A connection whose target does not answer within 3 s is
/// closed, as a refused one is.
pub(crate) fn reach(
    vpc_ns: &str,
    target: SocketAddr,
) -> Result<(u16, impl Future<Output = ()> + use<>)> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .with_context(|| format!("binding a proxy to {target}"))?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    Ok((port, reach_proxy(listener, vpc_ns.to_string(), target)))
}

async fn reach_proxy(listener: std::net::TcpListener, vpc_ns: String, target: SocketAddr) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        let ns = vpc_ns.clone();
        tokio::spawn(async move {
            // The socket is made on a thread inside the router namespace, and belongs there
            // for its whole life; tokio drives it from here on.
            let connected = tokio::task::spawn_blocking(move || {
                netns::in_netns(&ns, move || {
                    std::net::TcpStream::connect_timeout(&target, Duration::from_secs(3))
                })
            })
            .await;
            let Ok(Ok(Ok(outbound))) = connected else {
                return;
            };
            if outbound.set_nonblocking(true).is_err() {
                return;
            }
            let Ok(mut outbound) = tokio::net::TcpStream::from_std(outbound) else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        });
    }
}

/// The gateway a host's default route (in its namespace `host_ns`) goes through.
pub(crate) fn gateway_of(host_ns: &str, instance_id: &str) -> Result<String> {
    let routes = netns::ip_in(host_ns, &["route", "show", "default"])
        .with_context(|| format!("{instance_id} has no host"))?;
    routes
        .split_whitespace()
        .skip_while(|w| *w != "via")
        .nth(1)
        .map(str::to_string)
        .with_context(|| format!("{instance_id} has no default route"))
}

/// The URL of a service on `port` as a host behind `gateway` reaches it.
pub(crate) fn http_url(gateway: &str, port: u16) -> String {
    format!("http://{gateway}:{port}")
}

/// A connect string for services on `ports` as a host behind `gateway` reaches them.
pub(crate) fn connect_string(gateway: &str, ports: &[u16]) -> String {
    ports
        .iter()
        .map(|p| format!("{gateway}:{p}"))
        .collect::<Vec<_>>()
        .join(",")
}
