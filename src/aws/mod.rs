//! The seams to AWS: clients built from aws-config's default chain, and how an AWS error is
//! classified (transient: retry; race: someone moved first, look again; anything else fails).
//!
//! * [`ec2`]: the narrow EC2 questions the steps ask (tagged ENIs and volumes, holders,
//!   which instances are dead, attach / force-detach, tag);
//! * [`logs`]: the CloudWatch Logs calls behind the claim ledger;
//! * [`imds`]: the instance's identity and its ENIs' facts (IMDSv2);
//! * [`cfn`]: SignalResource; [`asg`]: lifecycle hook completion, heartbeats, instance health.
//!
//! * [`region`]: the instance's own region, client timeouts, where each endpoint comes from.
//!
//! The region is the instance's own (IMDS) and credentials come from the default chain (on an
//! instance: IMDS); the standard `AWS_ENDPOINT_URL` and `AWS_EC2_METADATA_SERVICE_ENDPOINT`
//! variables redirect the endpoints, so nothing test-specific is compiled into the agent.

pub mod asg;
pub mod cfn;
pub mod ec2;
pub mod imds;
pub mod logs;
pub mod region;

use std::time::Instant;

/// One client per AWS service the agent speaks to, sharing one loaded configuration.
#[derive(Clone, Debug)]
pub struct Clients {
    pub ec2: ec2::Ec2,
    pub autoscaling: aws_sdk_autoscaling::Client,
    pub cloudformation: aws_sdk_cloudformation::Client,
    pub logs: logs::Logs,
}

impl Clients {
    /// What every AWS-using command does first: reads this instance's identity from IMDS
    /// (transient answers retried until `deadline`), checks that any region set elsewhere is
    /// the instance's own, and builds clients with timeouts for it, logging the region and
    /// each endpoint with where it came from.
    pub async fn connect(deadline: Instant) -> anyhow::Result<(Clients, imds::Identity)> {
        region::log_imds_endpoint();
        let me = imds::Identity::from_imds(deadline).await?;
        region::check(&me.region).await?;
        let conf = region::sdk_config(&me.region).await;
        region::log_endpoints(&conf, &me.region);
        Ok((Self::from_config(&conf), me))
    }

    pub fn from_config(conf: &aws_config::SdkConfig) -> Self {
        Self {
            ec2: ec2::Ec2::new(aws_sdk_ec2::Client::new(conf)),
            autoscaling: aws_sdk_autoscaling::Client::new(conf),
            cloudformation: aws_sdk_cloudformation::Client::new(conf),
            logs: logs::Logs::new(conf),
        }
    }
}

/// Loads the platform's root certificates for the SDK's HTTPS client on a thread of its own.
/// The SDK loads them once per process (a lazily set static), when it makes its first TLS
/// connector, which the first AWS request (the claim's) waits for: 5-10 ms here, reading and
/// decoding the CA bundle. IMDS is read over plain HTTP and does not wait for them
/// ([`imds`]); begun as the process starts, the load overlaps the identity's reads, the
/// configuration's load and the ZooKeeper session's opening; a request that needs the roots
/// sooner waits for the same load, not a second one.
pub fn warm_tls() {
    let _ = std::thread::Builder::new()
        .name("tls-roots".into())
        .spawn(|| {
            use aws_smithy_http_client::tls;
            let _ = aws_smithy_http_client::Connector::builder()
                .tls_provider(tls::Provider::Rustls(
                    tls::rustls_provider::CryptoMode::AwsLc,
                ))
                .build();
        });
}

/// A failure worth retrying until the deadline (the service is unreachable or throttling).
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct Transient(pub anyhow::Error);

/// Whether a service's error answer is worth retrying, from its HTTP status and error code.
/// Throttling (its codes, or 429) and the server errors 500, 502, 503 and 504 are: AWS's
/// `InternalError`/`InternalFailure` come as 500, `Unavailable`/`ServiceUnavailable` and EC2's
/// `RequestLimitExceeded` as 503, and a proxy's 502/504 may carry no code at all (AWS
/// "Error retries and exponential backoff": retry 5xx and throttling). 501 Not Implemented never
/// mends, whatever its code: an emulator answers an operation it lacks with 501
/// `InternalFailure`, and retrying it would only run the boot into its deadline.
pub fn retry_helps(status: u16, code: Option<&str>) -> bool {
    if status == 501 {
        return false;
    }
    let code = code.unwrap_or("");
    matches!(status, 429 | 500 | 502 | 503 | 504)
        || code.contains("Throttl")
        || code == "RequestLimitExceeded"
        || code == "InternalError"
        || code == "Unavailable"
        || code == "ServiceUnavailable"
        || code == "ServiceUnavailableException"
        || code == "InternalFailure"
}

/// An AWS SDK error as an anyhow error, wrapped in [`Transient`] when retrying may help.
pub fn aws_error<E>(
    err: aws_sdk_ec2::error::SdkError<E, aws_sdk_ec2::config::http::HttpResponse>,
    doing: &str,
) -> anyhow::Error
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    use aws_sdk_ec2::error::SdkError;
    let transient = match &err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(s) => retry_helps(s.raw().status().as_u16(), s.err().code()),
        _ => false,
    };
    let detail = match &err {
        SdkError::ServiceError(s) => format!(
            "{}: {}",
            s.err().code().unwrap_or("error"),
            s.err().message().unwrap_or("")
        ),
        other => format!(
            "{}",
            aws_smithy_types::error::display::DisplayErrorContext(other)
        ),
    };
    let e = anyhow::anyhow!("{doing}: {detail}");
    if transient { Transient(e).into() } else { e }
}

/// A refusal of a mutating call that means "someone else moved first" (or EC2 is still busy
/// with the resource): look again after a pause. `InvalidParameterValue` is not one: EC2 also
/// uses it for an invalid device name or an attachment point another volume holds, which no
/// retry mends.
pub fn is_race(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "VolumeInUse"
                | "InvalidNetworkInterface.InUse"
                | "IncorrectState"
                | "IncorrectInstanceState"
                | "InvalidAttachment.NotFound"
                | "InvalidAttachmentID.NotFound"
        )
    )
}

/// Whether retrying may help: some cause in the chain is [`Transient`].
pub fn is_transient(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<Transient>())
}

/// Runs `call` until it succeeds, fails for good, or `deadline` passes: transient failures
/// (throttling, 5xx, an unreachable endpoint) are retried with jittered backoff, and the
/// last one is returned at the deadline.
pub async fn retry_transient<T, F, Fut>(
    deadline: std::time::Instant,
    mut call: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut backoff = crate::backoff::Backoff::new(
        std::time::Duration::from_millis(200),
        std::time::Duration::from_secs(5),
        deadline,
    );
    loop {
        match call().await {
            Err(e) if is_transient(&e) => {
                tracing::warn!(error = %format!("{e:#}"), "retrying");
                crate::deadline::waiting_for(format!("{e:#}"));
                if !backoff.wait().await {
                    return Err(e);
                }
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::retry_helps;

    #[test]
    fn server_errors_and_throttling_are_retried_not_implemented_never() {
        // AWS's own codes.
        assert!(retry_helps(503, Some("RequestLimitExceeded")));
        assert!(retry_helps(400, Some("ThrottlingException")));
        assert!(retry_helps(500, Some("InternalError")));
        // A proxy's or load balancer's answer without an AWS code.
        assert!(retry_helps(502, None));
        assert!(retry_helps(504, Some("")));
        assert!(retry_helps(429, None));
        // An operation the endpoint does not implement (an emulator's 501 InternalFailure).
        assert!(!retry_helps(501, Some("InternalFailure")));
        // Refusals are answers, not outages.
        assert!(!retry_helps(400, Some("InvalidParameterValue")));
        assert!(!retry_helps(403, Some("AccessDeniedException")));
    }
}
