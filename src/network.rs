//! Step 3: route the ENI, through netlink only (as amazon-ec2-net-utils does it).
//!
//! The ENI's interface is found by its MAC (waiting for it to appear), brought up and given
//! the ENI's private IPs with the subnet's prefix length. Table `10000 + device-number` holds
//! the subnet route and a default route via the subnet's gateway (first address + 1); one
//! rule per ENI address `from <ip> lookup <table>` (priority = table). Equal routes and rules
//! that exist are accepted, not duplicated; stale rules for that table are removed. The
//! primary interface is never touched.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::TryStreamExt;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute};
use rtnetlink::{Handle, IpVersion, LinkUnspec, RouteMessageBuilder};
use serde::Serialize;

use crate::config::Settings;

/// What IMDS says about the ENI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniFacts {
    pub mac: String,
    pub device_number: u32,
    pub ips: Vec<Ipv4Addr>,
    pub subnet: Ipv4Addr,
    pub prefix: u8,
}

/// The desired routing, as plain data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Routing {
    pub table: u32,
    pub gateway: Ipv4Addr,
    pub subnet: String,
    pub ips: Vec<Ipv4Addr>,
}

/// Plans the routing for an ENI. Pure.
pub fn plan(facts: &EniFacts) -> Result<Routing> {
    if facts.device_number == 0 {
        bail!("the ENI is at device-number 0 (the primary interface): not touching it");
    }
    let gateway = Ipv4Addr::from(u32::from(facts.subnet) + 1);
    Ok(Routing {
        table: 10_000 + facts.device_number,
        gateway,
        subnet: format!("{}/{}", facts.subnet, facts.prefix),
        ips: facts.ips.clone(),
    })
}

/// Parses `10.0.1.0/24`.
pub fn parse_cidr(cidr: &str) -> Result<(Ipv4Addr, u8)> {
    let (a, p) = cidr.trim().split_once('/').context("CIDR without /")?;
    let prefix: u8 = p.parse().context("CIDR prefix")?;
    if prefix > 32 {
        bail!("CIDR prefix {prefix} > 32");
    }
    let addr: Ipv4Addr = a.parse().context("CIDR address")?;
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    Ok((Ipv4Addr::from(u32::from(addr) & mask), prefix))
}

/// Reads the ENI's facts from IMDS, waiting while IMDS does not list it yet or reports the
/// transient device-number 0 of a fresh attachment.
pub async fn facts_from_imds(eni: &str, deadline: Instant) -> Result<EniFacts> {
    let imds = aws_config::imds::Client::builder().build();
    let get = |p: String| {
        let imds = imds.clone();
        async move {
            imds.get(p.clone())
                .await
                .map(|v| v.as_ref().trim().to_string())
                .with_context(|| format!("reading {p} from IMDS"))
        }
    };
    let base = "/latest/meta-data/network/interfaces/macs/";
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(1), deadline);
    loop {
        for mac in get(base.to_string()).await?.lines() {
            let mac = mac.trim_end_matches('/');
            if get(format!("{base}{mac}/interface-id")).await? != eni {
                continue;
            }
            let device_number: u32 = get(format!("{base}{mac}/device-number")).await?.parse()?;
            if device_number == 0 {
                break; // seen briefly for fresh attachments: ask again
            }
            let ips = get(format!("{base}{mac}/local-ipv4s"))
                .await?
                .lines()
                .map(|l| l.parse())
                .collect::<Result<Vec<Ipv4Addr>, _>>()?;
            let (subnet, prefix) =
                parse_cidr(&get(format!("{base}{mac}/subnet-ipv4-cidr-block")).await?)?;
            return Ok(EniFacts {
                mac: mac.to_string(),
                device_number,
                ips,
                subnet,
                prefix,
            });
        }
        if !backoff.wait().await {
            bail!("IMDS does not list {eni} with a device number by the boot deadline");
        }
    }
}

fn mac_bytes(mac: &str) -> Result<Vec<u8>> {
    mac.split(':')
        .map(|b| u8::from_str_radix(b, 16).with_context(|| format!("bad MAC {mac}")))
        .collect()
}

async fn link_by_mac(handle: &Handle, mac: &[u8]) -> Result<Option<u32>> {
    let mut links = handle.link().get().execute();
    while let Some(link) = links.try_next().await? {
        if link
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::Address(m) if m.as_slice() == mac))
        {
            return Ok(Some(link.header.index));
        }
    }
    Ok(None)
}

fn exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc_eexist())
}

const fn libc_eexist() -> i32 {
    17
}

#[derive(Debug, Clone, Serialize)]
pub struct Routed {
    pub interface_index: u32,
    pub routing: Routing,
    pub rules_added: usize,
    pub rules_removed: usize,
}

/// Applies the routing for the ENI whose facts are given.
pub async fn apply(facts: &EniFacts, deadline: Instant) -> Result<Routed> {
    let routing = plan(facts)?;
    let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
    tokio::spawn(conn);
    let mac = mac_bytes(&facts.mac)?;
    let mut backoff = crate::backoff::Backoff::new(
        Duration::from_millis(50),
        Duration::from_millis(500),
        deadline,
    );
    let index = loop {
        if let Some(i) = link_by_mac(&handle, &mac).await? {
            break i;
        }
        if !backoff.wait().await {
            bail!(
                "no interface with MAC {} appeared by the boot deadline",
                facts.mac
            );
        }
    };
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .with_context(|| format!("bringing up interface {index}"))?;
    for ip in &facts.ips {
        handle
            .address()
            .add(index, (*ip).into(), facts.prefix)
            .replace()
            .execute()
            .await
            .with_context(|| format!("adding {ip}/{} to interface {index}", facts.prefix))?;
    }
    let subnet_route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(facts.subnet, facts.prefix)
        .output_interface(index)
        .table_id(routing.table)
        .build();
    handle
        .route()
        .add(subnet_route)
        .replace()
        .execute()
        .await
        .with_context(|| format!("adding {} to table {}", routing.subnet, routing.table))?;
    let default = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(routing.gateway)
        .output_interface(index)
        .table_id(routing.table)
        .build();
    handle
        .route()
        .add(default)
        .replace()
        .execute()
        .await
        .with_context(|| {
            format!(
                "adding the default route via {} to table {}",
                routing.gateway, routing.table
            )
        })?;

    // Rules: `.replace()` would add duplicates, so look first.
    let mut present = Vec::new();
    let mut stale = Vec::new();
    let mut rules = handle.rule().get(IpVersion::V4).execute();
    while let Some(rule) = rules.try_next().await? {
        let table = rule.attributes.iter().find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        });
        if table != Some(routing.table) {
            continue;
        }
        let src = rule.attributes.iter().find_map(|a| match a {
            RuleAttribute::Source(std::net::IpAddr::V4(s)) => Some(*s),
            _ => None,
        });
        match src {
            Some(s) if rule.header.src_len == 32 && facts.ips.contains(&s) => present.push(s),
            _ => stale.push(rule),
        }
    }
    let removed = stale.len();
    for rule in stale {
        handle
            .rule()
            .del(rule)
            .execute()
            .await
            .context("removing a stale rule")?;
    }
    let mut added = 0;
    for ip in facts.ips.iter().filter(|ip| !present.contains(ip)) {
        let r = handle
            .rule()
            .add()
            .v4()
            .source_prefix(*ip, 32)
            .table_id(routing.table)
            .priority(routing.table)
            .action(RuleAction::ToTable)
            .execute()
            .await;
        match r {
            Ok(()) => added += 1,
            Err(e) if exists(&e) => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("adding rule from {ip} lookup {}", routing.table));
            }
        }
    }
    Ok(Routed {
        interface_index: index,
        routing,
        rules_added: added,
        rules_removed: removed,
    })
}

/// Runs the network step for the attached ENI.
pub async fn run_step(settings: &Settings) -> Result<Routed> {
    let deadline = Instant::now() + settings.boot.deadline;
    let attached: serde_json::Value = crate::journal::read(&settings.paths.state_dir, "attach")?;
    let eni = attached["eni"]["id"]
        .as_str()
        .context("the attach journal names no ENI")?;
    let facts = facts_from_imds(eni, deadline).await?;
    let routed = apply(&facts, deadline).await?;
    crate::journal::record(&settings.paths.state_dir, "network", &routed)?;
    Ok(routed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_follows_ec2_net_utils() {
        let facts = EniFacts {
            mac: "02:00:00:00:00:01".into(),
            device_number: 1,
            ips: vec!["10.0.1.9".parse().unwrap()],
            subnet: "10.0.1.0".parse().unwrap(),
            prefix: 24,
        };
        let r = plan(&facts).unwrap();
        assert_eq!(r.table, 10_001);
        assert_eq!(r.gateway, "10.0.1.1".parse::<Ipv4Addr>().unwrap());
        assert!(
            plan(&EniFacts {
                device_number: 0,
                ..facts
            })
            .is_err()
        );
    }

    #[test]
    fn cidr_parsing_masks_host_bits() {
        assert_eq!(
            parse_cidr("10.0.1.7/24").unwrap(),
            ("10.0.1.0".parse().unwrap(), 24)
        );
        assert!(parse_cidr("10.0.1.0/33").is_err());
    }
}
