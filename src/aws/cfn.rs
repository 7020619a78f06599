//! The CloudFormation seam: SignalResource, and which of its refusals are no failure.
//!
//! SignalResource takes StackName, LogicalResourceId, UniqueId and Status (SUCCESS | FAILURE)
//! and nothing else: the API has no reason parameter (AWS CloudFormation API Reference,
//! "SignalResource", Request Parameters; UniqueId is at most 64 characters, and "when you
//! signal Amazon EC2 instances or Auto Scaling groups, specify the instance ID"). A stack that
//! is no longer creating or updating refuses with a ValidationError that says it "cannot be
//! signaled" (wording varies: "can not be signaled"): nothing waits for the signal then.

use anyhow::Result;
use aws_sdk_cloudformation::error::ProvideErrorMetadata;
use aws_sdk_cloudformation::types::ResourceSignalStatus;

use super::aws_error;

/// What became of a signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signaled {
    Accepted,
    /// The stack waits for no signal now (its message, for the log).
    NotWaiting(String),
}

/// Whether a refusal's message says the stack is past the point of taking signals.
pub fn cannot_be_signaled(code: Option<&str>, message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    code == Some("ValidationError")
        && (m.contains("cannot be signaled") || m.contains("can not be signaled"))
}

/// Sends one SignalResource call.
pub async fn signal(
    client: &aws_sdk_cloudformation::Client,
    stack: &str,
    logical_id: &str,
    unique_id: &str,
    success: bool,
) -> Result<Signaled> {
    let status = if success {
        ResourceSignalStatus::Success
    } else {
        ResourceSignalStatus::Failure
    };
    let doing = format!(
        "signalling {} to {stack}/{logical_id} as {unique_id}",
        status.as_str()
    );
    match client
        .signal_resource()
        .stack_name(stack)
        .logical_resource_id(logical_id)
        .unique_id(unique_id)
        .status(status)
        .send()
        .await
    {
        Ok(_) => Ok(Signaled::Accepted),
        Err(e) if cannot_be_signaled(e.code(), e.message().unwrap_or("")) => Ok(
            Signaled::NotWaiting(e.message().unwrap_or_default().to_string()),
        ),
        Err(e) => Err(aws_error(e, &doing)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stack_past_creation_cannot_be_signaled() {
        for m in [
            "Stack arn:aws:cloudformation:us-east-1:1:stack/s/x is in CREATE_COMPLETE state and cannot be signaled",
            "Stack:arn:aws:cloudformation:us-east-1:1:stack/s/x is in UPDATE_COMPLETE state and can not be signaled",
        ] {
            assert!(cannot_be_signaled(Some("ValidationError"), m), "{m}");
        }
        assert!(!cannot_be_signaled(
            Some("ValidationError"),
            "Stack with id s does not exist"
        ));
        assert!(!cannot_be_signaled(
            Some("AccessDenied"),
            "cannot be signaled"
        ));
    }
}
