//! The exit codes: a documented contract (README, "Exit codes") for systemd and operators.

/// Everything asked for holds.
pub const OK: i32 = 0;
/// A step failed for a reason other than those below.
pub const FAILURE: i32 = 1;
/// The command line is wrong (clap's own code).
pub const USAGE: i32 = 2;
/// The configuration is missing, malformed or invalid.
pub const CONFIG: i32 = 3;

/// Maps an error chain to the exit code it deserves.
pub fn code_for(err: &anyhow::Error) -> i32 {
    if err.chain().any(|e| e.is::<crate::config::ConfigError>()) {
        CONFIG
    } else {
        FAILURE
    }
}
