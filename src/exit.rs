//! The exit codes: a documented contract (README, "Exit codes") for systemd and operators.

/// Everything asked for holds.
pub const OK: i32 = 0;
/// A step failed for a reason other than those below.
pub const FAILURE: i32 = 1;
/// The command line is wrong (clap's own code).
pub const USAGE: i32 = 2;
/// The configuration is missing, malformed or invalid (`invalid_config`), or sets a region
/// other than the instance's own (`region_mismatch`).
pub const CONFIG: i32 = 3;

/// No eligible id is free for this instance (`no_eligible_id`).
pub const NO_ELIGIBLE_ID: i32 = 4;
/// A service the step depends on stayed unreachable until the deadline
/// (`coordination_unreachable`).
pub const UNREACHABLE: i32 = 5;

/// The id's ENI or volume is held by a live instance (`resource_in_use`).
pub const RESOURCE_IN_USE: i32 = 6;
/// The id's ENI or volume is missing or ambiguous in this AZ (`resource_not_found`).
pub const RESOURCE_NOT_FOUND: i32 = 7;

/// A blank volume not tagged new, data of another node or cluster, a device that cannot be
/// read or holds what no probe names (`blank_volume_not_new`, `identity_mismatch`,
/// `unreadable_device`, `unrecognised_data`): nothing was formatted, mounted or written.
pub const UNSAFE_DATA: i32 = 8;

/// A step ran out of the boot deadline (`timeout`): an endpoint never answered, or what it
/// waited for never came.
pub const TIMEOUT: i32 = 9;

/// `signal`: the broker did not serve within `[signal] ready_timeout_seconds` (`not_ready`);
/// FAILURE was sent.
pub const NOT_READY: i32 = 10;

/// A ZooKeeper node found no quorum to join and no fresh ensemble to start (members hold
/// data, or are absent) until the deadline (`ensemble_waits`): nothing was wiped or started.
pub const ENSEMBLE_WAITS: i32 = 11;

/// Maps an error chain to the exit code it deserves.
pub fn code_for(err: &anyhow::Error) -> i32 {
    use crate::claim::ClaimError;
    // A step that gave up at the deadline carries TimedOut as its outermost context.
    if err.downcast_ref::<crate::deadline::TimedOut>().is_some() {
        return TIMEOUT;
    }
    for e in err.chain() {
        if e.is::<crate::deadline::TimedOut>() {
            return TIMEOUT;
        }
        if e.is::<crate::signal::NotReady>() {
            return NOT_READY;
        }
        if e.is::<crate::ensemble::step::Waits>() {
            return ENSEMBLE_WAITS;
        }
        if e.is::<crate::config::ConfigError>()
            || e.is::<crate::aws::region::RegionMismatch>()
            || e.is::<crate::render::RenderError>()
        {
            return CONFIG;
        }
        match e.downcast_ref::<ClaimError>() {
            Some(ClaimError::NoEligibleId { .. }) => return NO_ELIGIBLE_ID,
            Some(ClaimError::Unreachable { .. }) => return UNREACHABLE,
            Some(ClaimError::UnsafeLedger(_)) => return FAILURE,
            None => {}
        }
        if e.is::<crate::storage::mount::StorageError>() {
            return UNSAFE_DATA;
        }
        match e.downcast_ref::<crate::attach::AttachError>() {
            Some(crate::attach::AttachError::InUse { .. }) => return RESOURCE_IN_USE,
            Some(crate::attach::AttachError::NotFound(_)) => return RESOURCE_NOT_FOUND,
            None => {}
        }
    }
    FAILURE
}

/// The stable snake_case kind of a failure, for `status --json` and FAILURE reasons.
pub fn kind_for(err: &anyhow::Error) -> &'static str {
    if err.downcast_ref::<crate::deadline::TimedOut>().is_some() {
        return "timeout";
    }
    for e in err.chain() {
        if e.is::<crate::deadline::TimedOut>() {
            return "timeout";
        }
        if let Some(n) = e.downcast_ref::<crate::signal::NotReady>() {
            return n.kind();
        }
        if e.is::<crate::ensemble::step::Waits>() {
            return "ensemble_waits";
        }
        if e.is::<crate::config::ConfigError>() {
            return "invalid_config";
        }
        if e.is::<crate::aws::region::RegionMismatch>() {
            return "region_mismatch";
        }
        if let Some(c) = e.downcast_ref::<crate::claim::ClaimError>() {
            return c.kind();
        }
        if let Some(a) = e.downcast_ref::<crate::attach::AttachError>() {
            return a.kind();
        }
        if let Some(s) = e.downcast_ref::<crate::storage::mount::StorageError>() {
            return s.kind();
        }
        if let Some(r) = e.downcast_ref::<crate::render::RenderError>() {
            return r.kind();
        }
    }
    "failure"
}
