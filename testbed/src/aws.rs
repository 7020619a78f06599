//! The emulated AWS API: moto with the testbed's extension (`aws/awsbed.py`), and a client
//! for its control endpoints (per-scope delays and faults, recorded signals, live state).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{http, process};

const AWSBED: &str = include_str!("aws/awsbed.py");

/// The region every world lives in.
pub const REGION: &str = "us-east-1";

/// The Python venv with moto, made by `scripts/setup`.
pub fn venv() -> PathBuf {
    std::env::var_os("KAFKA_TESTBED_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/kafka-agent/venv"))
}

/// A running moto server with the extension.
pub struct Moto {
    port: u16,
    child: Child,
}

impl Moto {
    pub fn start(dir: &Path) -> Result<Self> {
        let python = venv().join("bin/python");
        if !python.exists() {
            anyhow::bail!(
                "{} is missing: run `scripts/setup` (it creates the moto venv)",
                python.display()
            );
        }
        let script = dir.join("awsbed.py");
        std::fs::write(&script, AWSBED).with_context(|| format!("writing {}", script.display()))?;
        let port = process::free_port()?;
        let log = dir.join("moto.log");
        let (out, err) = process::log_file(&log)?;
        let mut cmd = Command::new(python);
        cmd.arg(&script)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .stdout(out)
            .stderr(err);
        let mut child = process::spawn_tied(cmd)?;
        process::wait_for_port(
            ([127, 0, 0, 1], port).into(),
            Duration::from_secs(60),
            &mut child,
        )
        .with_context(|| format!("moto did not start; log:\n{}", process::tail(&log, 20)))?;
        Ok(Self { port, child })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The endpoint for clients on this machine's loopback.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An SDK configuration whose calls carry `scope` as access key id (faults are per scope).
    pub fn sdk_config(&self, scope: &str) -> aws_config::SdkConfig {
        sdk_config(&self.endpoint(), scope)
    }

    /// Sets delays and faults for every call made with `scope` as access key id.
    pub async fn configure(&self, scope: &str, settings: &ScopeSettings) -> Result<()> {
        let body = serde_json::to_string(settings)?;
        http::ok(
            self.port,
            "POST",
            &format!("/_testbed/scope/{scope}"),
            &body,
        )
        .await
        .with_context(|| format!("configuring testbed scope {scope}"))?;
        Ok(())
    }

    /// Every SignalResource call the emulated CloudFormation accepted.
    pub async fn signals(&self) -> Result<Vec<Signal>> {
        let body = http::ok(self.port, "GET", "/_testbed/signals", "").await?;
        Ok(serde_json::from_str(&body)?)
    }

    /// Every CompleteLifecycleAction / RecordLifecycleActionHeartbeat accepted.
    pub async fn lifecycle_actions(&self) -> Result<Vec<LifecycleAction>> {
        let body = http::ok(self.port, "GET", "/_testbed/lifecycle", "").await?;
        Ok(serde_json::from_str(&body)?)
    }

    /// The lifecycle actions open now (instances waiting in a lifecycle hook), with the token
    /// CompleteLifecycleAction takes.
    pub async fn open_lifecycle_actions(&self) -> Result<Vec<OpenLifecycleAction>> {
        let body = http::ok(self.port, "GET", "/_testbed/lifecycle-actions", "").await?;
        Ok(serde_json::from_str(&body)?)
    }

    /// Calls served per scope and action: (count, seconds spent serving them).
    pub async fn stats(
        &self,
    ) -> Result<std::collections::BTreeMap<String, std::collections::BTreeMap<String, (u64, f64)>>>
    {
        let body = http::ok(self.port, "GET", "/_testbed/stats", "").await?;
        Ok(serde_json::from_str(&body)?)
    }

    /// Instances, ENIs and volumes of one VPC as EC2 sees them now.
    pub async fn state(&self, vpc: &str) -> Result<Ec2State> {
        state(self.port, vpc).await
    }

    /// Moves a log group's streams back in time by `seconds`, as if that time had passed.
    pub async fn age_streams(&self, group: &str, seconds: u64) -> Result<()> {
        let body = serde_json::json!({"region": REGION, "group": group, "seconds": seconds});
        http::ok(
            self.port,
            "POST",
            "/_testbed/age-streams",
            &body.to_string(),
        )
        .await?;
        Ok(())
    }

    /// Forces a stack's status (e.g. back to CREATE_IN_PROGRESS to accept signals).
    pub async fn set_stack_status(&self, stack: &str, status: &str) -> Result<()> {
        let body = serde_json::json!({"region": REGION, "stack": stack, "status": status});
        http::ok(
            self.port,
            "POST",
            "/_testbed/stack-status",
            &body.to_string(),
        )
        .await?;
        Ok(())
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An SDK configuration for `endpoint` with static credentials naming `scope`.
pub fn sdk_config(endpoint: &str, scope: &str) -> aws_config::SdkConfig {
    let creds = aws_sdk_ec2::config::Credentials::new(scope, "testbed", None, None, "testbed");
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_ec2::config::SharedCredentialsProvider::new(creds))
        .build()
}

pub(crate) async fn state(port: u16, vpc: &str) -> Result<Ec2State> {
    state_after(port, vpc, None, Duration::ZERO).await
}

/// The VPC's state once it may have changed since the answer of generation `since` (a call
/// that may change it was served, or a scheduled transition fell due), or after `wait` at
/// most; at once without `since`.
pub(crate) async fn state_after(
    port: u16,
    vpc: &str,
    since: Option<u64>,
    wait: Duration,
) -> Result<Ec2State> {
    let mut path = format!("/_testbed/state?region={REGION}&vpc={vpc}");
    if let Some(g) = since {
        path.push_str(&format!("&since={g}&wait={}", wait.as_secs_f64()));
    }
    let body = http::ok(port, "GET", &path, "").await?;
    serde_json::from_str(&body).context("parsing testbed state")
}

/// Delays and faults of one scope; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScopeSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attach_delay: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detach_delay: Option<f64>,
    /// How long a terminated instance keeps its non-root volumes and extra ENIs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_delay: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throttle_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Limit faults to these actions (e.g. `CreateLogStream`); `Some(vec![])` means none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault_actions: Option<Vec<String>>,
    /// Actions the scope's role may not call: answered as IAM refuses (EC2
    /// `UnauthorizedOperation`, CloudWatch Logs `AccessDeniedException`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub denied_actions: Option<Vec<String>>,
    /// Seconds a new instance is `pending` before `running` (default 0.2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_delay: Option<f64>,
    /// Seconds a terminated instance spends in `shutting-down` (default 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_delay: Option<f64>,
    /// Seconds a terminated instance stays listed by DescribeInstances (default 3600).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vanish_delay: Option<f64>,
    /// Seconds a new instance is invisible to this scope's DescribeInstances (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub visibility_delay: Option<f64>,
    /// Seconds DescribeVolumes still shows a just-attached volume as available (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_volume_reads: Option<f64>,
    /// Empty GetLogEvents pages served before a stream's events (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logs_empty_pages: Option<u32>,
    /// The code of injected EC2 5xx errors: InternalError (default), Unavailable,
    /// ServiceUnavailable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ec2_error_code: Option<String>,
    /// Share of the calls to `fault_after_actions` that are applied and then answered with a
    /// 5xx, as when a reply is lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault_after_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault_after_actions: Option<Vec<String>>,
    /// At most this many calls of the scope get a fault after the mutation (counted from
    /// now: setting it resets the count).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault_after_limit: Option<u32>,
    /// Token buckets per action: (rate per second, burst); an empty bucket throttles.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<std::collections::BTreeMap<String, (f64, f64)>>,
    /// Seconds between an Auto Scaling group's health checks (default 1): a terminated or
    /// Unhealthy instance is replaced at the next one. Applies to the groups this scope
    /// creates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asg_health_check_interval: Option<f64>,
    /// Multiplies lifecycle hook timeouts (default 1): PutLifecycleHook takes 30 to 7200 s as
    /// AWS does, and 0.02 makes a 30 s HeartbeatTimeout last 0.6 s. Applies to the groups
    /// this scope creates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle_time_scale: Option<f64>,
    /// Whether AttachInstances runs the group's launch hooks on the attached instances
    /// (default true; AWS does not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asg_attach_runs_launch_hooks: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Signal {
    pub stack_id: String,
    pub stack_name: String,
    pub logical_resource_id: String,
    pub unique_id: String,
    pub status: String,
    pub reason: Option<String>,
    pub scope: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LifecycleAction {
    pub kind: String,
    pub auto_scaling_group: String,
    pub hook: String,
    pub instance_id: Option<String>,
    pub token: Option<String>,
    pub result: Option<String>,
    pub scope: String,
    /// When the testbed accepted the call (seconds since the Unix epoch, this machine's clock).
    #[serde(default)]
    pub time: f64,
    /// When the call reached the testbed, before any added latency (`latency_ms`).
    #[serde(default)]
    pub arrived: f64,
}

/// A lifecycle action open now: the instance waits in `hook` until it is completed (by
/// instance id or `token`) or times out.
#[derive(Debug, Clone, Deserialize)]
pub struct OpenLifecycleAction {
    pub auto_scaling_group: String,
    pub region: String,
    pub hook: String,
    /// The hook's transition: `autoscaling:EC2_INSTANCE_LAUNCHING` or
    /// `autoscaling:EC2_INSTANCE_TERMINATING`.
    #[serde(default)]
    pub transition: String,
    pub instance_id: String,
    pub token: String,
    /// Seconds until the heartbeat (or global) timeout applies the hook's DefaultResult.
    pub seconds_left: f64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Ec2State {
    /// Counts the calls served that may have changed EC2's state (see [`state_after`]).
    #[serde(default)]
    pub generation: u64,
    pub instances: Vec<InstanceInfo>,
    pub enis: Vec<EniInfo>,
    pub volumes: Vec<VolumeInfo>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InstanceInfo {
    pub id: String,
    pub state: String,
    pub az: String,
    pub subnet_id: String,
    pub private_ip: Option<String>,
    pub mac: Option<String>,
    pub primary_eni: Option<String>,
    #[serde(default)]
    pub instance_type: String,
    pub root_device_name: String,
    /// The AMI it was launched from: the world boots the image registered for it
    /// ([`crate::World::boot_image`]), else its default one.
    #[serde(default)]
    pub image_id: String,
    pub tags: std::collections::BTreeMap<String, String>,
    /// The Auto Scaling target lifecycle state (`InService`, `Terminated`, ...) of an instance
    /// of a group; `None` outside one.
    #[serde(default)]
    pub target_lifecycle_state: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EniInfo {
    pub id: String,
    pub mac: String,
    pub subnet_id: String,
    pub cidr: String,
    pub az: String,
    pub private_ips: Vec<String>,
    pub attachment: Option<EniAttachment>,
    pub tags: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EniAttachment {
    pub instance_id: String,
    pub device_index: u32,
    pub status: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct VolumeInfo {
    pub id: String,
    pub az: String,
    pub size: u64,
    pub attachment: Option<VolumeAttachment>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct VolumeAttachment {
    pub instance_id: String,
    pub device: String,
    pub status: String,
}
