//! `kafka-agent status` on the testbed: after a boot it answers healthy (exit 0) with JSON that
//! validates against tests/status.schema.json; a node that never booted is unknown (3); a
//! failed boot, or a live check that no longer holds, is failed (2) naming why. Needs root.

mod common;

use common::schema::{schema, validate};

use std::time::Duration;

use common::{Backend, Cluster};
use kafka_testbed::{self as testbed, World};
use serde_json::Value;

/// What `kafka-agent status` answered.
struct Answer {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn status(cluster: &Cluster, world: &World, inst: &str, json: bool) -> Answer {
    let args: &[&str] = if json {
        &["status", "--json"]
    } else {
        &["status"]
    };
    let mut cmd = cluster.command(world, inst, args);
    cmd.kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("status answers without waiting on the network")
        .unwrap();
    Answer {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `status --json`, parsed and validated against the schema; (exit code, report).
async fn status_json(cluster: &Cluster, world: &World, inst: &str) -> (i32, Value) {
    let a = status(cluster, world, inst, true).await;
    let v: Value = serde_json::from_str(&a.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json printed no JSON ({e}): {}\n{}",
            a.stdout, a.stderr
        )
    });
    let errors = validate(&schema(), &v);
    assert!(
        errors.is_empty(),
        "status --json does not match tests/status.schema.json:\n{}\n{v:#}",
        errors.join("\n")
    );
    assert_eq!(v["exit_code"], a.code, "the report states its exit code");
    (a.code, v)
}

async fn boot(cluster: &Cluster, world: &World, inst: &str) -> std::process::Output {
    let mut cmd = cluster.command(world, inst, &["boot"]);
    cmd.kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("boot ends by its deadline")
        .unwrap()
}

/// A one-broker cluster with its ENI and volume, and an instance that booted: (world, cluster,
/// instance, ENI, its address, volume).
async fn booted() -> (World, Cluster, String, String, String, String) {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let mut cluster = Cluster::new(&world, Backend::Zk, 1, true);
    cluster.deadline = 30;
    let (eni, ip, vol) = cluster.resources_for(&world, 0, "a").await;
    let inst = world.launch("a", &[]).await.unwrap();
    let out = boot(&cluster, &world, &inst).await;
    assert!(
        out.status.success(),
        "boot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (world, cluster, inst, eni, ip, vol)
}

#[tokio::test]
async fn a_booted_node_is_healthy_and_its_json_matches_the_schema() {
    let (world, cluster, inst, eni, ip, vol) = booted().await;
    let (code, v) = status_json(&cluster, &world, &inst).await;
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["version"], 1);
    assert_eq!(v["health"], "healthy");
    assert_eq!(v["problems"], serde_json::json!([]));
    assert_eq!(v["role"], "kafka");
    assert_eq!(v["cluster"], cluster.name.as_str());
    assert_eq!(v["claim"]["id"], 0);
    assert_eq!(v["claim"]["instance_id"], inst.as_str());
    assert_eq!(v["claim"]["backend"], "zookeeper");
    assert_eq!(v["eni"]["id"], eni.as_str());
    assert_eq!(v["eni"]["addresses"][0], ip.as_str());
    assert_eq!(v["eni"]["attached_here"], true);
    assert_eq!(v["volume"]["id"], vol.as_str());
    assert_eq!(v["volume"]["mounted"], true);
    let data_dir = world.host_dir(&inst).join("var/lib/kafka");
    assert_eq!(v["volume"]["mountpoint"], data_dir.to_str().unwrap());
    assert!(v["volume"]["usage"]["total_bytes"].as_u64().unwrap() > 0);
    assert_eq!(v["routing"]["state"], "ok");
    assert_eq!(v["routing"]["rules_present"], true);
    assert_eq!(v["routing"]["routes_present"], true);
    assert_eq!(v["service"]["registered"], Value::Null);
    let boot = &v["last_boot"];
    assert_eq!(boot["outcome"], "success", "{v:#}");
    assert_eq!(boot["error"], Value::Null);
    let steps: Vec<&str> = boot["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    for step in ["claim", "attach", "mount", "route"] {
        assert!(steps.contains(&step), "{step} in {steps:?}");
    }

    // The human summary names the id, the ENI and the volume.
    let h = status(&cluster, &world, &inst, false).await;
    assert_eq!(h.code, 0, "{}{}", h.stdout, h.stderr);
    eprintln!("{}", h.stdout);
    for want in [
        "healthy",
        "id 0",
        eni.as_str(),
        ip.as_str(),
        vol.as_str(),
        "success",
    ] {
        assert!(h.stdout.contains(want), "{want:?} in:\n{}", h.stdout);
    }
    assert!(h.stderr.is_empty(), "status logs nothing: {}", h.stderr);
}

#[tokio::test]
async fn a_node_that_never_booted_is_unknown() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let cluster = Cluster::new(&world, Backend::Zk, 1, true);
    let inst = world.launch("a", &[]).await.unwrap();
    let (code, v) = status_json(&cluster, &world, &inst).await;
    assert_eq!(code, 3, "{v:#}");
    assert_eq!(v["health"], "unknown");
    assert_eq!(v["last_boot"], Value::Null);
    assert!(
        v["problems"][0]["message"]
            .as_str()
            .unwrap()
            .contains("never booted"),
        "{v:#}"
    );
    let h = status(&cluster, &world, &inst, false).await;
    assert_eq!(h.code, 3);
    assert!(h.stdout.contains("never booted"), "{}", h.stdout);
}

#[tokio::test]
async fn an_unreadable_journal_is_unknown() {
    let (world, cluster, inst, ..) = booted().await;
    let state = world.host_dir(&inst).join("var/lib/kafka-agent");
    std::fs::write(state.join("attach.json"), "{ torn").unwrap();
    let (code, v) = status_json(&cluster, &world, &inst).await;
    assert_eq!(code, 3, "{v:#}");
    assert_eq!(v["problems"][0]["check"], "journal");
    assert!(
        v["problems"][0]["message"]
            .as_str()
            .unwrap()
            .contains("attach.json"),
        "{v:#}"
    );
}

#[tokio::test]
async fn a_boot_that_met_a_live_holder_is_failed_naming_the_kind() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let mut cluster = Cluster::new(&world, Backend::Zk, 1, true);
    cluster.deadline = 10;
    let (eni, _, _) = cluster.resources_for(&world, 0, "a").await;
    let squatter = common::squat_eni(&world, &eni).await;
    let inst = world.launch("a", &[]).await.unwrap();
    let out = boot(&cluster, &world, &inst).await;
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (code, v) = status_json(&cluster, &world, &inst).await;
    assert_eq!(code, 2, "{v:#}");
    assert_eq!(v["health"], "failed");
    assert_eq!(v["last_boot"]["outcome"], "failure");
    assert_eq!(v["last_boot"]["error"]["kind"], "resource_in_use");
    assert!(
        v["last_boot"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&squatter),
        "{v:#}"
    );
    let h = status(&cluster, &world, &inst, false).await;
    assert_eq!(h.code, 2);
    assert!(h.stdout.contains("[resource_in_use]"), "{}", h.stdout);
    assert!(h.stdout.contains(&squatter), "{}", h.stdout);
}

#[tokio::test]
async fn a_journalled_failure_is_failed_naming_the_kind() {
    let (world, cluster, inst, ..) = booted().await;
    let state = world.host_dir(&inst).join("var/lib/kafka-agent");
    let failed = serde_json::json!({
        "version": 1, "started_unix": 1_700_000_000u64, "finished_unix": 1_700_000_003u64,
        "outcome": "failure",
        "steps": [{"step": "claim", "ms": 40, "outcome": "ok"},
                  {"step": "mount", "ms": 900, "outcome": "failed"}],
        "error": {"kind": "identity_mismatch", "message": "vol-1 holds node 2 of cluster X, expected node 0"},
    });
    std::fs::write(state.join("boot.json"), failed.to_string()).unwrap();
    let (code, v) = status_json(&cluster, &world, &inst).await;
    assert_eq!(code, 2, "{v:#}");
    assert_eq!(v["last_boot"]["error"]["kind"], "identity_mismatch");
    assert_eq!(v["last_boot"]["steps"][1]["ms"], 900);
    let h = status(&cluster, &world, &inst, false).await;
    assert_eq!(h.code, 2);
    assert!(h.stdout.contains("identity_mismatch"), "{}", h.stdout);
    assert!(h.stdout.contains("mount 900 ms (failed)"), "{}", h.stdout);
    assert!(h.stdout.contains("2023-11-14T22:13:20Z"), "{}", h.stdout);

    // A boot still running (or one that died running) is degraded.
    let running = serde_json::json!({
        "version": 1, "started_unix": 1_700_000_000u64, "finished_unix": null,
        "outcome": "running", "steps": [], "error": null,
    });
    std::fs::write(state.join("boot.json"), running.to_string()).unwrap();
    let (code, v) = status_json(&cluster, &world, &inst).await;
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["health"], "degraded");
}

#[tokio::test]
async fn a_lost_rule_or_mount_is_failed_naming_the_check() {
    let (world, cluster, inst, _, ip, vol) = booted().await;
    let (_, v) = status_json(&cluster, &world, &inst).await;
    let table = v["routing"]["table"].as_u64().unwrap().to_string();
    let out = world
        .command(&inst, "ip")
        .unwrap()
        .args(["rule", "del", "from", &ip, "lookup", &table])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let (code, v) = status_json(&cluster, &world, &inst).await;
    assert_eq!(code, 2, "{v:#}");
    assert_eq!(v["routing"]["state"], "failed");
    assert_eq!(v["routing"]["rules_present"], false);
    assert_eq!(v["problems"][0]["check"], "routing", "{v:#}");
    assert!(
        v["problems"][0]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("from {ip} lookup {table}")),
        "{v:#}"
    );

    nix::mount::umount(&world.host_dir(&inst).join("var/lib/kafka")).unwrap();
    let (code, v) = status_json(&cluster, &world, &inst).await;
    assert_eq!(code, 2, "{v:#}");
    assert_eq!(v["volume"]["mounted"], false);
    assert_eq!(v["volume"]["usage"], Value::Null);
    let h = status(&cluster, &world, &inst, false).await;
    assert!(
        h.stdout.contains(&format!("failed: volume: {vol}")),
        "{}",
        h.stdout
    );
}

/// What the watchdog journalled (watch.json, as `kafka-agent watch` writes it) and a leave in
/// progress (leave.json) are shown, validate against the schema, and make the node degraded.
#[tokio::test]
async fn the_watchdogs_view_and_the_leave_are_shown_and_degrade() {
    let (world, cluster, inst, ..) = booted().await;
    let (_, v) = status_json(&cluster, &world, &inst).await;
    assert_eq!(v["watch"]["state"], "not_configured", "{v:#}");
    assert_eq!(v["watch"]["leave"], Value::Null);
    let state = world.host_dir(&inst).join("var/lib/kafka-agent");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let watch = serde_json::json!({
        "version": 1, "checked_unix": now - 2, "instance_id": inst, "id": 0,
        "failing_since_unix": null,
        "observed": {
            "since_boot": 900,
            "process": {"state": "not_checked"},
            "listener": {"state": "failed", "detail": "10.0.1.9:9092 answered nothing within 1s"},
            "registration": {"state": "not_checked"},
            "coordination": {"reachable": false, "detail": "connecting to ZooKeeper: no answer"},
            "lease": {"state": "unknown", "why": "ZooKeeper is unreachable"},
            "leaving": false
        },
        "decision": {
            "decision": "hold_back", "reason": "coordination_unreachable",
            "why": "connecting to ZooKeeper: no answer",
            "failing": "10.0.1.9:9092 answered nothing within 1s"
        },
        "marked_unhealthy_unix": null,
        "settings": {"interval_seconds": 10, "unhealthy_after_seconds": 60,
                     "grace_period_seconds": 600, "lease_bound_seconds": 900}
    });
    std::fs::write(state.join("watch.json"), watch.to_string()).unwrap();
    let (code, v) = status_json(&cluster, &world, &inst).await;
    assert_eq!(code, 1, "{v:#}");
    let w = &v["watch"];
    assert_eq!(w["state"], "degraded", "{v:#}");
    assert_eq!(w["decision"], "hold_back");
    assert_eq!(w["reason"], "coordination_unreachable");
    assert_eq!(w["coordination_reachable"], false);
    assert_eq!(w["lease"], "unknown");
    assert_eq!(w["failing"], "10.0.1.9:9092 answered nothing within 1s");
    assert_eq!(v["problems"][0]["check"], "watch", "{v:#}");
    let h = status(&cluster, &world, &inst, false).await;
    assert!(
        h.stdout
            .contains("holds back because the coordination service is unreachable"),
        "{}",
        h.stdout
    );

    // The group terminates the instance: the leave, step by step.
    let leave = serde_json::json!({
        "version": 1, "instance_id": inst, "broker_id": 0,
        "auto_scaling_group": "g", "lifecycle_hook": "leave",
        "noticed_unix_ms": (now - 5) * 1000, "runs": 1, "heartbeats": 2,
        "steps": [
            {"step": "stop", "outcome": "ok", "started_unix_ms": 1, "finished_unix_ms": 2, "detail": null},
            {"step": "unmount", "outcome": "kept", "started_unix_ms": 2, "finished_unix_ms": 3,
             "detail": "target is busy"}
        ],
        "completed": null
    });
    std::fs::write(state.join("leave.json"), leave.to_string()).unwrap();
    let (code, v) = status_json(&cluster, &world, &inst).await;
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["watch"]["leave"]["steps"][1]["outcome"], "kept", "{v:#}");
    assert!(
        v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["check"] == "leave"),
        "{v:#}"
    );
    let h = status(&cluster, &world, &inst, false).await;
    assert!(
        h.stdout.contains("stop ok, unmount kept, not completed"),
        "{}",
        h.stdout
    );
}

#[test]
fn the_checker_refuses_what_the_schema_does_not_allow() {
    let s = schema();
    let good = serde_json::json!({
        "version": 1, "health": "unknown", "exit_code": 3, "problems": [],
        "role": "kafka", "cluster": "c",
        "claim": {"state": "unknown", "id": null, "epoch": null, "backend": null, "how": null,
                  "instance_id": null, "az": null},
        "eni": {"state": "not_configured", "id": null, "addresses": [], "attached_here": null,
                "interface": null},
        "volume": {"state": "not_configured", "id": null, "device": null, "mountpoint": null,
                   "mounted": null, "usage": null},
        "routing": {"state": "not_configured", "table": null, "rules_present": null,
                    "routes_present": null},
        "config": {"state": "not_configured", "path": null, "sha256": null,
                   "rendered_by_agent": null, "unchanged_since_render": null},
        "service": {"state": "unknown", "registered": null, "port": null, "listening": null},
        "last_boot": null,
    });
    assert_eq!(validate(&s, &good), Vec::<String>::new());
    // An older agent's report has no `watch`; this one's has it, always complete.
    let mut watched = good.clone();
    watched["watch"] = serde_json::json!({
        "state": "degraded", "checked_unix": 1, "checked_seconds_ago": 2,
        "decision": "hold_back", "reason": "replacement_in_flight", "summary": "holds back",
        "failing": "x", "failing_since_unix": null, "marked_unhealthy_unix": null,
        "coordination_reachable": true, "lease": "in_flight", "lease_holder": "i-2",
        "leave": null,
    });
    assert_eq!(validate(&s, &watched), Vec::<String>::new());
    watched["watch"]["reason"] = "tired".into();
    watched["watch"].as_object_mut().unwrap().remove("lease");
    assert_eq!(
        validate(&s, &watched).len(),
        2,
        "{:#?}",
        validate(&s, &watched)
    );
    let mut bad = good.clone();
    bad["version"] = 2.into();
    bad["exit_code"] = "3".into();
    bad["eni"]["state"] = "fine".into();
    bad["config"]["sha256"] = "XYZ".into();
    bad["extra"] = true.into();
    bad["claim"].as_object_mut().unwrap().remove("az");
    assert_eq!(validate(&s, &bad).len(), 6, "{:#?}", validate(&s, &bad));
}
