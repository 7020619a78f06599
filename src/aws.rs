//! The AWS seam: clients built from aws-config's default chain.
//!
//! On an instance the region and credentials come from IMDS; the standard `AWS_ENDPOINT_URL`
//! and `AWS_EC2_METADATA_SERVICE_ENDPOINT` variables redirect the endpoints, so nothing
//! test-specific is compiled into the agent.

use aws_config::BehaviorVersion;

/// One client per AWS service the agent speaks to, sharing one loaded configuration.
#[derive(Clone, Debug)]
pub struct Clients {
    pub ec2: aws_sdk_ec2::Client,
    pub autoscaling: aws_sdk_autoscaling::Client,
    pub cloudformation: aws_sdk_cloudformation::Client,
    pub logs: aws_sdk_cloudwatchlogs::Client,
}

impl Clients {
    /// Loads the default chain (environment, profile, IMDS) and builds the clients.
    pub async fn from_env() -> Self {
        Self::from_config(&aws_config::defaults(BehaviorVersion::latest()).load().await)
    }

    pub fn from_config(conf: &aws_config::SdkConfig) -> Self {
        Self {
            ec2: aws_sdk_ec2::Client::new(conf),
            autoscaling: aws_sdk_autoscaling::Client::new(conf),
            cloudformation: aws_sdk_cloudformation::Client::new(conf),
            logs: aws_sdk_cloudwatchlogs::Client::new(conf),
        }
    }
}
