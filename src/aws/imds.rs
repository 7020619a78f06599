//! The IMDS seam: who and where this instance is, and what IMDSv2 says about its ENIs.
//!
//! Raw metadata paths live here only; aws-config's IMDS client honours
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT`.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// This instance's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub instance_id: String,
    pub az: String,
    pub region: String,
}

/// The instance metadata service (IMDSv2).
#[derive(Clone, Debug)]
pub struct Imds {
    client: aws_config::imds::Client,
}

impl Default for Imds {
    fn default() -> Self {
        Self::new()
    }
}

impl Imds {
    pub fn new() -> Imds {
        Imds {
            client: aws_config::imds::Client::builder().build(),
        }
    }

    async fn get(&self, path: &str) -> Result<String> {
        self.client
            .get(path.to_string())
            .await
            .map(|v| v.as_ref().trim().to_string())
            .with_context(|| format!("reading {path} from IMDS"))
    }

    /// This instance's identity.
    pub async fn identity(&self) -> Result<Identity> {
        Ok(Identity {
            instance_id: self.get("/latest/meta-data/instance-id").await?,
            az: self
                .get("/latest/meta-data/placement/availability-zone")
                .await?,
            region: self.get("/latest/meta-data/placement/region").await?,
        })
    }

    /// Reads the ENI's facts, waiting while IMDS does not list it yet or reports the
    /// transient device-number 0 of a fresh attachment.
    pub async fn eni_facts(&self, eni: &str, deadline: Instant) -> Result<EniFacts> {
        let base = "/latest/meta-data/network/interfaces/macs/";
        let mut backoff = crate::backoff::Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(1),
            deadline,
        );
        loop {
            for mac in self.get(base).await?.lines() {
                let mac = mac.trim_end_matches('/');
                if self.get(&format!("{base}{mac}/interface-id")).await? != eni {
                    continue;
                }
                let device_number: u32 = self
                    .get(&format!("{base}{mac}/device-number"))
                    .await?
                    .parse()?;
                if device_number == 0 {
                    break; // seen briefly for fresh attachments: ask again
                }
                let ips = self
                    .get(&format!("{base}{mac}/local-ipv4s"))
                    .await?
                    .lines()
                    .map(|l| l.parse())
                    .collect::<Result<Vec<Ipv4Addr>, _>>()?;
                let (subnet, prefix) = parse_cidr(
                    &self
                        .get(&format!("{base}{mac}/subnet-ipv4-cidr-block"))
                        .await?,
                )?;
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
}

impl Identity {
    /// Reads the identity from IMDS.
    pub async fn from_imds() -> Result<Identity> {
        Imds::new().identity().await
    }
}

/// What IMDS says about the ENI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniFacts {
    pub mac: String,
    pub device_number: u32,
    pub ips: Vec<Ipv4Addr>,
    pub subnet: Ipv4Addr,
    pub prefix: u8,
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
