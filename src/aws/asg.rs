//! The Auto Scaling seam: a launch lifecycle hook's completion and heartbeats, and marking
//! this instance unhealthy.
//!
//! * CompleteLifecycleAction (AutoScalingGroupName, LifecycleHookName, InstanceId,
//!   LifecycleActionResult CONTINUE | ABANDON): for a launch hook, ABANDON terminates the
//!   instance (Amazon EC2 Auto Scaling API Reference, "CompleteLifecycleAction").
//! * RecordLifecycleActionHeartbeat: restarts the hook's heartbeat timeout, so that a slow
//!   start is not abandoned by the hook's default result meanwhile (API Reference,
//!   "RecordLifecycleActionHeartbeat").
//! * SetInstanceHealth (HealthStatus Unhealthy): Auto Scaling replaces the instance;
//!   ShouldRespectGracePeriod false so it does not wait out the group's grace period (API
//!   Reference, "SetInstanceHealth").
//!
//! A hook with no action pending for this instance (already completed, or timed out into
//! its default result) answers ValidationError "No active Lifecycle Action found": nothing
//! waits for an answer then.

use anyhow::Result;
use aws_sdk_autoscaling::error::ProvideErrorMetadata;

use super::aws_error;

/// A lifecycle action's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleResult {
    Continue,
    Abandon,
}

impl LifecycleResult {
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleResult::Continue => "CONTINUE",
            LifecycleResult::Abandon => "ABANDON",
        }
    }
}

/// What became of a lifecycle call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hooked {
    Accepted,
    /// No action of the hook is pending for this instance (its message, for the log).
    NoActiveAction(String),
}

/// Whether a refusal says the hook has no pending action for the instance.
pub fn no_active_action(code: Option<&str>, message: &str) -> bool {
    code == Some("ValidationError")
        && message
            .to_ascii_lowercase()
            .contains("no active lifecycle action")
}

fn hooked<T, E>(
    result: std::result::Result<
        T,
        aws_sdk_autoscaling::error::SdkError<E, aws_sdk_autoscaling::config::http::HttpResponse>,
    >,
    doing: &str,
) -> Result<Hooked>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match result {
        Ok(_) => Ok(Hooked::Accepted),
        Err(e) if no_active_action(e.code(), e.message().unwrap_or("")) => Ok(
            Hooked::NoActiveAction(e.message().unwrap_or_default().to_string()),
        ),
        Err(e) => Err(aws_error(e, doing)),
    }
}

/// Completes this instance's action of `hook` with `result`.
pub async fn complete(
    client: &aws_sdk_autoscaling::Client,
    group: &str,
    hook: &str,
    instance: &str,
    result: LifecycleResult,
) -> Result<Hooked> {
    hooked(
        client
            .complete_lifecycle_action()
            .auto_scaling_group_name(group)
            .lifecycle_hook_name(hook)
            .instance_id(instance)
            .lifecycle_action_result(result.as_str())
            .send()
            .await,
        &format!(
            "completing lifecycle hook {hook} of {group} for {instance} with {}",
            result.as_str()
        ),
    )
}

/// Records a heartbeat for this instance's action of `hook`.
pub async fn heartbeat(
    client: &aws_sdk_autoscaling::Client,
    group: &str,
    hook: &str,
    instance: &str,
) -> Result<Hooked> {
    hooked(
        client
            .record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(group)
            .lifecycle_hook_name(hook)
            .instance_id(instance)
            .send()
            .await,
        &format!("recording a heartbeat of lifecycle hook {hook} of {group} for {instance}"),
    )
}

/// Marks the instance Unhealthy. `respect_grace`: a mark within the group's health check
/// grace period is ignored by the group (the watchdog's marks); without it the instance is
/// replaced at once (a failed boot's).
pub async fn set_unhealthy(
    client: &aws_sdk_autoscaling::Client,
    instance: &str,
    respect_grace: bool,
) -> Result<()> {
    client
        .set_instance_health()
        .instance_id(instance)
        .health_status("Unhealthy")
        .should_respect_grace_period(respect_grace)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| aws_error(e, &format!("marking {instance} Unhealthy")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completed_or_expired_action_is_no_failure() {
        assert!(no_active_action(
            Some("ValidationError"),
            "No active Lifecycle Action found with instance ID i-0abc"
        ));
        // The wording's case is not a contract (another endpoint may write it otherwise).
        assert!(no_active_action(
            Some("ValidationError"),
            "No active lifecycle action found with instance ID i-0abc"
        ));
        assert!(!no_active_action(
            Some("ValidationError"),
            "No Lifecycle Hook found with name h for group g"
        ));
    }
}
