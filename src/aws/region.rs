//! Where the agent works: its instance's own region (IMDS `placement/region`), clients with
//! timeouts for that region, and the endpoints they use, each logged at start with where it
//! came from.
//!
//! A region set elsewhere (`AWS_REGION`, `AWS_DEFAULT_REGION`, the shared config's profile)
//! that differs from the instance's fails at start ([`RegionMismatch`]): ENIs and volumes
//! live in the instance's region, and a claim ledger or tag in another one would be a second,
//! silent cluster.

use std::time::Duration;

use aws_config::meta::region::ProvideRegion;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

/// A region from the environment or the shared config differs from the instance's own.
#[derive(Debug, thiserror::Error)]
#[error(
    "{origin} says region {configured}, but this instance is in {actual} (IMDS placement/region): \
     the agent works in its instance's own region; unset {origin} or set it to {actual}"
)]
pub struct RegionMismatch {
    pub configured: String,
    pub origin: String,
    pub actual: String,
}

/// The region set outside IMDS, with where it came from, in aws-config's order
/// (`AWS_REGION`, `AWS_DEFAULT_REGION`, then the shared config's profile).
pub async fn configured_region() -> Option<(String, String)> {
    for var in ["AWS_REGION", "AWS_DEFAULT_REGION"] {
        if let Ok(v) = std::env::var(var)
            && !v.trim().is_empty()
        {
            return Some((v.trim().to_string(), var.to_string()));
        }
    }
    let region = aws_config::profile::ProfileFileRegionProvider::new()
        .region()
        .await?;
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    Some((
        region.to_string(),
        format!("the shared config's profile {profile}"),
    ))
}

/// Fails unless every region set outside IMDS is the instance's own (`actual`).
pub async fn check(actual: &str) -> Result<(), RegionMismatch> {
    match configured_region().await {
        Some((configured, origin)) if configured != actual => Err(RegionMismatch {
            configured,
            origin,
            actual: actual.to_string(),
        }),
        Some((_, origin)) => {
            tracing::info!(region = %actual, source = %"IMDS placement/region", agrees = %origin, "region");
            Ok(())
        }
        None => {
            tracing::info!(region = %actual, source = %"IMDS placement/region", "region");
            Ok(())
        }
    }
}

/// Timeouts for every AWS client, so that an endpoint that accepts a connection and never
/// answers fails an attempt instead of hanging the step (the SDK sets only a connect timeout
/// by default: "Timeouts", AWS SDK for Rust Developer Guide; `TimeoutConfig`). EC2, Auto
/// Scaling, CloudFormation and CloudWatch Logs send their first byte within a second or so:
/// a silent endpoint is given 4 s to the first byte and 5 s per attempt, and a call with the
/// SDK's retries (standard mode) 9 s, so that its failure surfaces, is noted as what the step
/// waits for, and is retried by the step's own backoff under the boot deadline.
pub fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .read_timeout(Duration::from_secs(4))
        .operation_attempt_timeout(Duration::from_secs(5))
        .operation_timeout(Duration::from_secs(9))
        .build()
}

/// The SDK configuration for `region`: aws-config's default chain for everything else
/// (credentials, endpoint overrides), with [`timeouts`].
pub async fn sdk_config(region: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .timeout_config(timeouts())
        .load()
        .await
}

/// The AWS services the agent calls: name in the logs, the SDK's service id in
/// `AWS_ENDPOINT_URL_<ID>`, the endpoint's host prefix.
const SERVICES: [(&str, &str, &str); 4] = [
    ("ec2", "EC2", "ec2"),
    ("autoscaling", "AUTO_SCALING", "autoscaling"),
    ("cloudformation", "CLOUDFORMATION", "cloudformation"),
    ("logs", "CLOUDWATCH_LOGS", "logs"),
];

/// Each AWS service's endpoint and where it comes from, as the SDK resolves it ("Configure
/// service-specific endpoints", AWS SDKs and Tools Reference Guide: `AWS_ENDPOINT_URL_<ID>`,
/// then `AWS_ENDPOINT_URL`, then the shared config's `endpoint_url`, unless
/// `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS` is true; otherwise the region's default).
pub fn endpoints(conf: &SdkConfig, region: &str) -> Vec<(&'static str, String, String)> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let ignore =
        env("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let suffix = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    SERVICES
        .iter()
        .map(|(name, id, host)| {
            let specific = format!("AWS_ENDPOINT_URL_{id}");
            let (url, source) = if ignore {
                None
            } else if let Some(url) = env(&specific) {
                Some((url, specific))
            } else if let Some(url) = env("AWS_ENDPOINT_URL") {
                Some((url, "AWS_ENDPOINT_URL".to_string()))
            } else {
                conf.endpoint_url().map(|u| {
                    (
                        u.to_string(),
                        "the shared config's endpoint_url".to_string(),
                    )
                })
            }
            .unwrap_or_else(|| {
                (
                    format!("https://{host}.{region}.{suffix}"),
                    format!("the SDK's default for {region}"),
                )
            });
            (*name, url, source)
        })
        .collect()
}

/// The IMDS endpoint and where it comes from (the IMDS client's order: the environment, the
/// shared config, the default).
pub fn imds_endpoint() -> (String, String) {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    if let Some(url) = env("AWS_EC2_METADATA_SERVICE_ENDPOINT") {
        return (url, "AWS_EC2_METADATA_SERVICE_ENDPOINT".into());
    }
    let ipv6 = env("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE")
        .is_some_and(|m| m.eq_ignore_ascii_case("ipv6"));
    let url = if ipv6 {
        "http://[fd00:ec2::254]"
    } else {
        "http://169.254.169.254"
    };
    (
        url.into(),
        "default (unless the shared config sets ec2_metadata_service_endpoint)".into(),
    )
}

/// Logs the IMDS endpoint.
pub fn log_imds_endpoint() {
    let (url, source) = imds_endpoint();
    tracing::info!(service = %"imds", url = %url, source = %source, "endpoint");
}

/// Logs every AWS endpoint the clients use.
pub fn log_endpoints(conf: &SdkConfig, region: &str) {
    for (service, url, source) in endpoints(conf, region) {
        tracing::info!(service = %service, url = %url, source = %source, "endpoint");
    }
}
