//! `kafka-testbed chaos` end to end: a short seeded run against the demo's cluster (its own
//! moto, ZooKeeper ensemble and world; needs root) ends with no invariant violated and every
//! end check passed; the same seed prints the same schedule. The agent and the stand-in are
//! the ones built beside `kafka-testbed` (`cargo test --workspace` builds them).

use std::process::Command;

const TESTBED: &str = env!("CARGO_BIN_EXE_kafka-testbed");

fn schedule(seed: &str) -> String {
    let out = Command::new(TESTBED)
        .args(["chaos", "--minutes", "10", "--seed", seed, "--dry-run"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_same_seed_gives_the_same_schedule() {
    let first = schedule("7");
    assert!(first.contains("schedule ("), "{first}");
    assert_eq!(first, schedule("7"));
    assert_ne!(first, schedule("8"));
}

#[test]
fn a_short_chaos_run_violates_nothing_and_heals() {
    kafka_testbed::require_root().unwrap();
    let out = Command::new(TESTBED)
        .args([
            "chaos",
            "--minutes",
            "0.75",
            "--seed",
            "5",
            "--terminate-per-minute",
            "2",
            "--wedge-per-minute",
            "2",
            "--exit-per-minute",
            "2",
            "--zk-restart-per-minute",
            "2",
            "--aws-faults-per-minute",
            "2",
            "--heal-seconds",
            "120",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("invariant violations: 0"), "{stdout}");
    assert!(stdout.contains("every end check passed"), "{stdout}");
}
