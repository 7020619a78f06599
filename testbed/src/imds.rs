//! An IMDSv2 endpoint for one simulated instance, answering from the live EC2 state.
//!
//! Token rules as on EC2: `PUT /latest/api/token` with `x-aws-ec2-metadata-token-ttl-seconds`
//! (1..=21600) returns a token and echoes the TTL header (400 without it); every read needs a
//! valid `x-aws-ec2-metadata-token` (401 otherwise). It listens on 169.254.169.254:80 inside the
//! instance's namespace, so aws-config's IMDS client works unmodified.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

/// What IMDS tells about an instance; the hypervisor keeps it current.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    pub instance_id: String,
    pub instance_type: String,
    pub az: String,
    pub region: String,
    pub account_id: String,
    pub private_ip: String,
    pub mac: String,
    pub interfaces: Vec<Interface>,
    /// Access key id of the instance profile's credentials (the testbed scope).
    pub access_key_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub mac: String,
    pub device_number: u32,
    pub interface_id: String,
    /// `None`: IMDS does not know them yet (404).
    pub local_ipv4s: Option<Vec<String>>,
    pub subnet_id: String,
    pub subnet_cidr: String,
    pub vpc_id: String,
}

pub const ROLE: &str = "kafka-agent-instance";

/// The server's shared state: the metadata and the tokens handed out.
#[derive(Default)]
pub struct Imds {
    pub metadata: RwLock<Metadata>,
    tokens: Mutex<HashMap<String, Instant>>,
    /// Until then every request is answered 503 (`World::imds_unavailable`).
    pub unavailable_until: Mutex<Option<Instant>>,
    /// `autoscaling/target-lifecycle-state`: the Auto Scaling steady state the instance is
    /// transitioning to (`InService`, `Terminated`, ...); `None` (404) outside a group. The
    /// hypervisor keeps it current.
    pub target_lifecycle_state: RwLock<Option<String>>,
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

impl Imds {
    /// Serves on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let me = me.clone();
                    async move { Ok::<_, Infallible>(me.handle(&req)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    fn handle<B>(&self, req: &Request<B>) -> Reply {
        if self
            .unavailable_until
            .lock()
            .unwrap()
            .is_some_and(|t| Instant::now() < t)
        {
            return reply(StatusCode::SERVICE_UNAVAILABLE, "");
        }
        let path = req.uri().path();
        if path == "/latest/api/token" {
            if req.method() != Method::PUT {
                return reply(StatusCode::METHOD_NOT_ALLOWED, "");
            }
            let ttl = req
                .headers()
                .get("x-aws-ec2-metadata-token-ttl-seconds")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let Some(ttl) = ttl.filter(|t| (1..=21600).contains(t)) else {
                return reply(StatusCode::BAD_REQUEST, "");
            };
            let token: String = (0..40)
                .map(|_| char::from(b'a' + rand::random_range(0..26u8)))
                .collect();
            self.tokens
                .lock()
                .unwrap()
                .insert(token.clone(), Instant::now() + Duration::from_secs(ttl));
            let mut r = reply(StatusCode::OK, token);
            r.headers_mut().insert(
                "x-aws-ec2-metadata-token-ttl-seconds",
                ttl.to_string().parse().unwrap(),
            );
            return r;
        }
        if req.method() != Method::GET {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "");
        }
        let valid = req
            .headers()
            .get("x-aws-ec2-metadata-token")
            .and_then(|v| v.to_str().ok())
            .and_then(|t| self.tokens.lock().unwrap().get(t).copied())
            .is_some_and(|exp| exp > Instant::now());
        if !valid {
            return reply(StatusCode::UNAUTHORIZED, "");
        }
        let md = self.metadata.read().unwrap().clone();
        let target = self.target_lifecycle_state.read().unwrap().clone();
        match autoscaling(&md, target.as_deref(), path).or_else(|| lookup(&md, path)) {
            Some(body) => reply(StatusCode::OK, body),
            None => reply(StatusCode::NOT_FOUND, "Not Found"),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IdentityDocument<'a> {
    account_id: &'a str,
    architecture: &'a str,
    availability_zone: &'a str,
    image_id: &'a str,
    instance_id: &'a str,
    instance_type: &'a str,
    private_ip: &'a str,
    region: &'a str,
    version: &'a str,
}

/// Auto Scaling's items ("Retrieve the target lifecycle state through instance metadata",
/// Amazon EC2 Auto Scaling User Guide): `autoscaling/target-lifecycle-state` is InService from
/// the launch on and Terminated once the group begins to terminate the instance; the
/// meta-data index lists `autoscaling/` while there is one. None: not an Auto Scaling path
/// ([`lookup`] answers), or 404 when the instance has no target state.
pub fn autoscaling(md: &Metadata, target: Option<&str>, path: &str) -> Option<String> {
    let p = path.strip_prefix("/latest/meta-data/")?;
    let target = target?;
    match p {
        "" => {
            let mut index: Vec<String> = lookup(md, path)?.lines().map(str::to_string).collect();
            index.push("autoscaling/".into());
            index.sort();
            Some(index.join("\n"))
        }
        "autoscaling/" => Some("target-lifecycle-state".into()),
        "autoscaling/target-lifecycle-state" => Some(target.to_string()),
        _ => None,
    }
}

/// The body for a metadata path, or None for 404.
pub fn lookup(md: &Metadata, path: &str) -> Option<String> {
    if path == "/latest/dynamic/instance-identity/document" {
        return serde_json::to_string_pretty(&IdentityDocument {
            account_id: &md.account_id,
            architecture: "x86_64",
            availability_zone: &md.az,
            image_id: "ami-testbed",
            instance_id: &md.instance_id,
            instance_type: &md.instance_type,
            private_ip: &md.private_ip,
            region: &md.region,
            version: "2017-09-30",
        })
        .ok();
    }
    let p = path.strip_prefix("/latest/meta-data/")?;
    let simple = match p {
        "" => Some(
            "ami-id\navailability-zone\nhostname\niam/\ninstance-id\ninstance-type\nlocal-ipv4\n\
             mac\nnetwork/\nplacement/"
                .to_string(),
        ),
        "instance-id" => Some(md.instance_id.clone()),
        "instance-type" => Some(md.instance_type.clone()),
        "ami-id" => Some("ami-testbed".into()),
        "local-ipv4" => Some(md.private_ip.clone()),
        "hostname" | "local-hostname" => Some(format!(
            "ip-{}.ec2.internal",
            md.private_ip.replace('.', "-")
        )),
        "mac" => Some(md.mac.clone()),
        "placement/" => Some("availability-zone\nregion".into()),
        "placement/availability-zone" => Some(md.az.clone()),
        "placement/region" => Some(md.region.clone()),
        "network/" => Some("interfaces/".into()),
        "network/interfaces/" => Some("macs/".into()),
        "network/interfaces/macs/" => Some(
            md.interfaces
                .iter()
                .map(|i| format!("{}/", i.mac))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        "iam/" => Some("info\nsecurity-credentials/".into()),
        "iam/security-credentials/" => Some(ROLE.into()),
        _ => None,
    };
    if simple.is_some() {
        return simple;
    }
    if let Some(role) = p.strip_prefix("iam/security-credentials/") {
        if role != ROLE {
            return None;
        }
        let expires = std::time::SystemTime::now() + Duration::from_secs(6 * 3600);
        let body = serde_json::json!({
            "Code": "Success",
            "LastUpdated": rfc3339(std::time::SystemTime::now()),
            "Type": "AWS-HMAC",
            "AccessKeyId": md.access_key_id,
            "SecretAccessKey": "testbed",
            "Token": "testbed-session",
            "Expiration": rfc3339(expires),
        });
        return Some(body.to_string());
    }
    let rest = p.strip_prefix("network/interfaces/macs/")?;
    let (mac, key) = rest.split_once('/')?;
    let i = md.interfaces.iter().find(|i| i.mac == mac)?;
    match key {
        "" => Some(
            "device-number\ninterface-id\nlocal-ipv4s\nmac\nsubnet-id\nsubnet-ipv4-cidr-block\n\
             vpc-id"
                .into(),
        ),
        "device-number" => Some(i.device_number.to_string()),
        "interface-id" => Some(i.interface_id.clone()),
        "local-ipv4s" => i.local_ipv4s.as_ref().map(|ips| ips.join("\n")),
        "mac" => Some(i.mac.clone()),
        "subnet-id" => Some(i.subnet_id.clone()),
        "subnet-ipv4-cidr-block" => Some(i.subnet_cidr.clone()),
        "vpc-id" => Some(i.vpc_id.clone()),
        _ => None,
    }
}

fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_date() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_795_327_950);
        assert_eq!(rfc3339(t), "2026-11-22T06:12:30Z");
    }

    #[test]
    fn the_target_lifecycle_state_is_served_only_in_a_group() {
        let md = Metadata::default();
        let path = "/latest/meta-data/autoscaling/target-lifecycle-state";
        let get = |t: Option<&str>, p: &str| autoscaling(&md, t, p).or_else(|| lookup(&md, p));
        assert_eq!(get(Some("Terminated"), path).as_deref(), Some("Terminated"));
        assert_eq!(get(None, path), None, "404 outside a group");
        assert!(
            get(Some("InService"), "/latest/meta-data/")
                .unwrap()
                .contains("autoscaling/")
        );
        assert!(
            !get(None, "/latest/meta-data/")
                .unwrap()
                .contains("autoscaling/")
        );
        assert_eq!(
            get(Some("InService"), "/latest/meta-data/instance-type").as_deref(),
            Some("")
        );
    }

    #[test]
    fn macs_listing_has_trailing_slashes_and_per_mac_keys() {
        let md = Metadata {
            interfaces: vec![Interface {
                mac: "02:00:00:00:00:01".into(),
                device_number: 1,
                interface_id: "eni-1".into(),
                local_ipv4s: Some(vec!["10.0.1.9".into()]),
                subnet_id: "subnet-1".into(),
                subnet_cidr: "10.0.1.0/24".into(),
                vpc_id: "vpc-1".into(),
            }],
            ..Default::default()
        };
        assert_eq!(
            lookup(&md, "/latest/meta-data/network/interfaces/macs/").unwrap(),
            "02:00:00:00:00:01/"
        );
        let base = "/latest/meta-data/network/interfaces/macs/02:00:00:00:00:01/";
        assert_eq!(lookup(&md, &format!("{base}device-number")).unwrap(), "1");
        assert_eq!(
            lookup(&md, &format!("{base}subnet-ipv4-cidr-block")).unwrap(),
            "10.0.1.0/24"
        );
        assert!(
            lookup(
                &md,
                "/latest/meta-data/network/interfaces/macs/02:00:00:00:00:02/mac"
            )
            .is_none()
        );
    }
}
