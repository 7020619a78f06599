//! The IMDS seam: who and where this instance is, what IMDSv2 says about its ENIs, and the
//! Auto Scaling target lifecycle state (whether the group is terminating it).
//!
//! Raw metadata paths live here only; aws-config's IMDS client honours
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT` (and the shared config's
//! `ec2_metadata_service_endpoint`).
//!
//! Every read has timeouts, and transient answers are retried with backoff until the boot
//! deadline: no answer in time, a dropped connection, 5xx (IMDS documents 503 as "retry the
//! request") and throttling (IMDS "throttles queries ... on a per-instance basis": "use
//! exponential backoff when you retry"), per the EC2 User Guide, "Use the Instance Metadata
//! Service to access instance metadata" (error codes and "Query throttling"). 400 and 403
//! (IMDS disabled) are permanent; a 404 is permanent for the identity, and waited out for
//! a just-attached ENI's keys, which IMDS lists late.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aws_config::imds::client::error::{ImdsError, TokenError};

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

/// IMDS is a link-local service answering in milliseconds: a second to connect and a second
/// to the first byte are the SDK's own defaults; an attempt (token and read, with the SDK's
/// retries of 5xx) gets two, an operation five, so that a wedged endpoint is noticed and
/// retried by the caller's backoff well within any boot deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const READ_TIMEOUT: Duration = Duration::from_secs(1);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// A failed read of `path`; a transient one is wrapped in [`super::Transient`].
fn read_error(e: ImdsError, path: &str) -> anyhow::Error {
    let transient = is_transient(&e);
    let e = anyhow::Error::new(e).context(format!("reading {path} from IMDS"));
    if transient {
        super::Transient(e).into()
    } else {
        e
    }
}

/// Whether IMDS is spoken over plain HTTP, as EC2 serves it (`http://169.254.169.254`, or
/// `http://[fd00:ec2::254]`: "IMDS ... over HTTP", EC2 User Guide, "Access instance
/// metadata"). Only an endpoint set to an `https://` URL, in the environment or the shared
/// config file, needs TLS.
fn plain_http() -> bool {
    if let Ok(url) = std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        && !url.trim().is_empty()
    {
        return !url.trim().to_ascii_lowercase().starts_with("https");
    }
    let file = std::env::var_os("AWS_CONFIG_FILE")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".aws/config")));
    let config = file
        .and_then(|f| std::fs::read_to_string(f).ok())
        .unwrap_or_default();
    !config.lines().any(|l| {
        let l = l.trim().to_ascii_lowercase();
        l.starts_with("ec2_metadata_service_endpoint") && l.contains("https")
    })
}

impl Imds {
    pub fn new() -> Imds {
        let mut builder = aws_config::imds::Client::builder();
        if plain_http() {
            // A connector without TLS: the SDK's default one loads the platform's root
            // certificates first (5-10 ms, once per process), which the identity's first
            // read, the boot's first request, would wait for.
            let http = aws_smithy_http_client::Builder::new().build_http();
            builder = builder.configure(
                &aws_config::provider_config::ProviderConfig::default().with_http_client(http),
            );
        }
        Imds {
            client: builder
                .connect_timeout(CONNECT_TIMEOUT)
                .read_timeout(READ_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .operation_timeout(OPERATION_TIMEOUT)
                .build(),
        }
    }

    /// One read; a transient failure is wrapped in [`super::Transient`].
    async fn get(&self, path: &str) -> Result<String> {
        match self.client.get(path.to_string()).await {
            Ok(v) => Ok(v.as_ref().trim().to_string()),
            Err(e) => Err(read_error(e, path)),
        }
    }

    /// This instance's identity, retrying transient answers until `deadline`.
    pub async fn identity(&self, deadline: Instant) -> Result<Identity> {
        let get =
            |path: &'static str| super::retry_transient(deadline, move || self.get_nonempty(path));
        // One token (the client's cache shares its load), then the three reads at once.
        let (instance_id, az, region) = tokio::try_join!(
            get("/latest/meta-data/instance-id"),
            get("/latest/meta-data/placement/availability-zone"),
            get("/latest/meta-data/placement/region"),
        )?;
        Ok(Identity {
            instance_id,
            az,
            region,
        })
    }

    /// A path that must not answer empty: an empty identity names nobody (claims, tags and
    /// signals would). IMDS serves a running instance, never an empty instance-id; one that
    /// does is not ready, and is asked again like any transient answer.
    async fn get_nonempty(&self, path: &str) -> Result<String> {
        let v = self.get(path).await?;
        if v.trim().is_empty() {
            return Err(super::Transient(anyhow::anyhow!("IMDS answered {path} empty")).into());
        }
        Ok(v)
    }

    /// The instance's primary private address, retrying transient answers until `deadline`.
    pub async fn local_ipv4(&self, deadline: Instant) -> Result<std::net::IpAddr> {
        let ip =
            super::retry_transient(deadline, || self.get("/latest/meta-data/local-ipv4")).await?;
        ip.parse()
            .with_context(|| format!("IMDS local-ipv4 {ip:?} is not an address"))
    }

    /// `autoscaling/target-lifecycle-state`: the Auto Scaling steady state this instance is
    /// transitioning to (`InService`, `Terminated`, `Detached`, `Standby`, `Warmed:*`). Auto
    /// Scaling sets it "when an instance prepares to transition to one of the preceding steady
    /// states" (Auto Scaling User Guide, "Retrieve the target lifecycle state through instance
    /// metadata"): `Terminated` while a termination hook holds the instance in
    /// Terminating:Wait. `None` when IMDS has no such item (404: not in a group, or never
    /// moved since the item exists). One read: any failure is returned, and the watchdog asks
    /// again at its next poll.
    pub async fn target_lifecycle_state(&self) -> Result<Option<String>> {
        let path = "/latest/meta-data/autoscaling/target-lifecycle-state";
        match self.client.get(path.to_string()).await {
            Ok(v) => Ok(Some(v.as_ref().trim().to_string())),
            Err(ImdsError::ErrorResponse(r)) if r.response().status().as_u16() == 404 => Ok(None),
            Err(e) => Err(anyhow::Error::new(e).context(format!("reading {path} from IMDS"))),
        }
    }

    /// Reads the ENI's facts once IMDS has caught up with EC2: it lists the ENI with a real
    /// device number (not the transient 0 of a fresh attachment) and every address EC2
    /// reported for it (`expected`; without those, at least one). IMDS lags behind new
    /// attachments ("newly provisioned resources take some time to be fully reflected in
    /// IMDS"): a 404, an empty or a partial `local-ipv4s` is waited out, with backoff, until
    /// the deadline.
    ///
    /// With the ENI's MAC address (`mac`, from EC2), a look while IMDS does not list it yet is
    /// one request for that interface alone, and is taken every 10 ms; without, a look lists
    /// every interface, every 50 ms. Either stays well within IMDS's limit of 1024 packets
    /// per second per ENI ("Query throttling",
    /// https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-data-retrieval.html),
    /// steady for a few seconds, then backing off.
    pub async fn eni_facts(
        &self,
        eni: &str,
        mac: Option<&str>,
        expected: &[Ipv4Addr],
        deadline: Instant,
    ) -> Result<EniFacts> {
        let every = Duration::from_millis(if mac.is_some() { 10 } else { 50 });
        let mut backoff = crate::backoff::Backoff::steady(
            every,
            Duration::from_secs(3),
            Duration::from_secs(1),
            deadline,
        );
        loop {
            let seen = match mac {
                Some(mac) => self.lists_mac(mac, eni).await,
                None => Ok(true),
            };
            let looked = match seen {
                Ok(true) => self.listed(eni).await,
                Ok(false) => Ok(None),
                Err(e) => Err(e),
            };
            let why = match looked {
                Ok(Some(f)) if covers(&f.ips, expected) => return Ok(f),
                Ok(Some(f)) => format!(
                    "IMDS lists {} for {eni}, EC2 reported {}",
                    list(&f.ips),
                    list(expected)
                ),
                Ok(None) => format!("IMDS does not list {eni} with a device number"),
                Err(e) => format!("{e:#}"),
            };
            tracing::debug!(eni, reason = %why, "waiting for IMDS");
            crate::deadline::waiting_for(format!("IMDS: {why}"));
            if !backoff.wait().await {
                bail!("{why} by the boot deadline");
            }
        }
    }

    /// Whether IMDS lists the interface `mac` as `eni` (one request; a 404 is "not yet").
    async fn lists_mac(&self, mac: &str, eni: &str) -> Result<bool> {
        let path = format!("/latest/meta-data/network/interfaces/macs/{mac}/interface-id");
        match self.client.get(path.clone()).await {
            Ok(v) => Ok(v.as_ref().trim() == eni),
            Err(ImdsError::ErrorResponse(r)) if r.response().status().as_u16() == 404 => Ok(false),
            Err(e) => Err(read_error(e, &path)),
        }
    }

    /// The ENI's facts as IMDS lists them now; `None` while it does not list the ENI or
    /// reports it at device-number 0.
    async fn listed(&self, eni: &str) -> Result<Option<EniFacts>> {
        let base = "/latest/meta-data/network/interfaces/macs/";
        for mac in self.get(base).await?.lines() {
            let mac = mac.trim_end_matches('/');
            if self.get(&format!("{base}{mac}/interface-id")).await? != eni {
                continue;
            }
            let device_number: u32 = self
                .get(&format!("{base}{mac}/device-number"))
                .await?
                .parse()
                .context("IMDS device-number")?;
            if device_number == 0 {
                return Ok(None); // seen briefly for fresh attachments: ask again
            }
            let ips = self
                .get(&format!("{base}{mac}/local-ipv4s"))
                .await?
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.trim().parse())
                .collect::<Result<Vec<Ipv4Addr>, _>>()
                .context("IMDS local-ipv4s")?;
            let (subnet, prefix) = parse_cidr(
                &self
                    .get(&format!("{base}{mac}/subnet-ipv4-cidr-block"))
                    .await?,
            )?;
            return Ok(Some(EniFacts {
                mac: mac.to_string(),
                device_number,
                ips,
                subnet,
                prefix,
            }));
        }
        Ok(None)
    }
}

/// Whether IMDS's addresses hold every address EC2 reported (at least one when EC2 reported
/// none).
fn covers(imds: &[Ipv4Addr], ec2: &[Ipv4Addr]) -> bool {
    if ec2.is_empty() {
        !imds.is_empty()
    } else {
        ec2.iter().all(|ip| imds.contains(ip))
    }
}

fn list(ips: &[Ipv4Addr]) -> String {
    if ips.is_empty() {
        return "no address".into();
    }
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

impl Identity {
    /// Reads the identity from IMDS, retrying transient answers until `deadline`.
    pub async fn from_imds(deadline: Instant) -> Result<Identity> {
        Imds::new().identity(deadline).await
    }
}

/// Whether an IMDS failure may pass: no answer in time, a broken connection, 5xx, 429 or a
/// rejected token (401, expired). 400, 403 (IMDS disabled) and 404 are answers.
fn is_transient(e: &ImdsError) -> bool {
    use aws_sdk_ec2::error::SdkError;
    let status_passes = |s: u16| s >= 500 || s == 429 || s == 401;
    match e {
        ImdsError::ErrorResponse(r) => status_passes(r.response().status().as_u16()),
        ImdsError::IoError(_) => true,
        ImdsError::FailedToLoadToken(_) => {
            // The token PUT: its SDK error tells a refusal (400, 403) from a failure to answer
            // (a 503 arrives as "no TTL header": the status is what counts).
            match std::error::Error::source(e)
                .and_then(|s| s.downcast_ref::<SdkError<TokenError>>())
            {
                Some(SdkError::ServiceError(s)) => status_passes(s.raw().status().as_u16()),
                Some(SdkError::ConstructionFailure(_)) => false,
                _ => true,
            }
        }
        // Dispatch failures (refused, reset, timed out) arrive here.
        _ => true,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imds_must_hold_every_address_ec2_reported() {
        let a: Ipv4Addr = "10.0.1.5".parse().unwrap();
        let b: Ipv4Addr = "10.0.1.6".parse().unwrap();
        assert!(!covers(&[], &[a]), "empty");
        assert!(!covers(&[a], &[a, b]), "partial");
        assert!(covers(&[a, b], &[a, b]));
        assert!(covers(&[a, b], &[a]), "more than EC2 said is fine");
        assert!(!covers(&[], &[]), "none at all is never enough");
        assert!(covers(&[a], &[]));
    }
}
