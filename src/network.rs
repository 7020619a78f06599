//! Step 4: route the ENI, through netlink only (as amazon-ec2-net-utils does it).
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

pub use crate::aws::imds::{EniFacts, parse_cidr};
use crate::config::Settings;

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
    // A netlink dump of the links is cheap: look often while the interface is due.
    let mut backoff = crate::backoff::Backoff::steady(
        Duration::from_millis(10),
        Duration::from_secs(3),
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

/// Runs the network step for the attached ENI; every wait ends by `deadline`.
pub async fn run_step(
    settings: &Settings,
    handed: Option<&crate::attach::Attachment>,
    arrived: Option<&tokio::sync::Notify>,
    deadline: Instant,
) -> Result<Routed> {
    let (eni, ips, mac) = match handed {
        Some(a) => {
            let e = a.eni.as_ref().context("the attach step attached no ENI")?;
            (e.id.clone(), e.ips.clone(), e.mac.clone())
        }
        None => {
            let attached: serde_json::Value =
                crate::journal::read(&settings.paths.state_dir, "attach")?;
            let eni = attached["eni"]["id"]
                .as_str()
                .context("the attach journal names no ENI")?
                .to_string();
            let ips = attached["eni"]["ips"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|ip| Some(ip.as_str()?.to_string()))
                .collect();
            (eni, ips, None)
        }
    };
    // The addresses EC2 reported at attach: IMDS must list them before they are routed.
    let expected: Vec<Ipv4Addr> = ips.iter().filter_map(|ip| ip.parse().ok()).collect();
    let facts = crate::aws::imds::Imds::new()
        .eni_facts(&eni, mac.as_deref(), &expected, deadline)
        .await?;
    // IMDS lists it with this instance's device number: it is attached here.
    if let Some(n) = arrived {
        n.notify_one();
    }
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
