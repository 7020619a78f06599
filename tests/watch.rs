//! The watchdog end to end: a cluster deployed through the testbed's Auto Scaling Group, a
//! broker wedged (`HANG`: its socket still accepts, nothing answers, its registration stays),
//! and `kafka-agent watch` on its host. On the testbed; needs root. The stand-in broker is the
//! testbed package's `kafka-standin`, built beside the agent by `cargo test --workspace`.

mod common;

use std::time::{Duration, Instant};

use common::deployed::{CLUSTERS, agent, deploy};
use kafka_testbed::cluster::ask_broker;
use kafka_testbed::{self as testbed, World};

/// Starts `kafka-agent watch` on `inst` with `[watch]` settings `watch` (a drop-in beside
/// the host's configuration); its log goes to `<host>/watch.log`. Killed when dropped.
fn start_watch(world: &World, inst: &str, watch: &str) -> tokio::process::Child {
    let dir = world.host_dir(inst);
    let config = dir.join("etc/kafka-agent/agent.toml");
    std::fs::write(
        dir.join("etc/kafka-agent/config.d/90-watch.toml"),
        format!("[watch]\n{watch}\n"),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("watch.log")).unwrap();
    let mut cmd = world.command(inst, &agent().to_string_lossy()).unwrap();
    cmd.arg("--config")
        .arg(config)
        .arg("watch")
        .stderr(log)
        .stdout(std::process::Stdio::null());
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    cmd.spawn().unwrap()
}

fn journal(world: &World, inst: &str) -> serde_json::Value {
    std::fs::read_to_string(world.host_dir(inst).join("var/lib/kafka-agent/watch.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn watch_log(world: &World, inst: &str) -> String {
    std::fs::read_to_string(world.host_dir(inst).join("watch.log")).unwrap_or_default()
}

/// How broker 1 fails on its healthy instance.
enum Failure {
    /// Wedged (`HANG`): its socket still accepts, nothing answers, its registration stays.
    Hung,
    /// Its process is killed (SIGKILL): the listener refuses, the registration goes when the
    /// session expires.
    Exited,
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_broker_is_marked_unhealthy_and_replaced_with_its_id() {
    a_failed_broker_is_marked_unhealthy_and_replaced_with_its_id(Failure::Hung).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exited_broker_is_marked_unhealthy_and_replaced_with_its_id() {
    a_failed_broker_is_marked_unhealthy_and_replaced_with_its_id(Failure::Exited).await;
}

async fn a_failed_broker_is_marked_unhealthy_and_replaced_with_its_id(failure: Failure) {
    let _turn = CLUSTERS.acquire().await.unwrap();
    let world = World::create(testbed::shared(), &["a", "b", "c"])
        .await
        .unwrap();
    let cluster = deploy(&world, "zookeeper").await;
    let victim = cluster.brokers[1].clone();
    let inst = cluster
        .instance_of(&world, victim.id)
        .await
        .unwrap()
        .unwrap();
    let other = cluster.instance_of(&world, 0).await.unwrap().unwrap();
    let mut watch = start_watch(
        &world,
        &inst,
        "interval_seconds = 1\nunhealthy_after_seconds = 3\ngrace_period_seconds = 0\nlistener_timeout_seconds = 1",
    );
    // Healthy first.
    let until = Instant::now() + Duration::from_secs(30);
    while journal(&world, &inst)["decision"]["decision"] != "healthy" {
        assert!(Instant::now() < until, "{}", watch_log(&world, &inst));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let addr = format!("{}:9092", victim.ip);
    match failure {
        Failure::Hung => {
            let answer = ask_broker(&world, &other, &addr, "HANG").unwrap();
            assert_eq!(answer, vec!["OK HANG"]);
        }
        Failure::Exited => {
            let config = world.host_dir(&inst).join("etc/kafka/server.properties");
            let out = std::process::Command::new("pkill")
                .args(["-KILL", "-f"])
                .arg(format!("kafka-standin --config {}", config.display()))
                .output()
                .unwrap();
            assert!(out.status.success(), "no stand-in broker to kill on {inst}");
        }
    }
    // Marked, and the group replaces the instance: another one serves id 1 at its address.
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let now = cluster.instance_of(&world, victim.id).await.unwrap();
        if now.as_deref().is_some_and(|i| i != inst) {
            break;
        }
        assert!(
            Instant::now() < until,
            "not replaced; watch.json {}\n{}",
            journal(&world, &inst),
            watch_log(&world, &inst)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let log = watch_log(&world, &inst);
    assert!(log.contains("marked Unhealthy"), "{log}");
    assert!(log.contains("took the replacement lease"), "{log}");
    cluster
        .wait_serving(&world, Duration::from_secs(120))
        .await
        .unwrap();
    let _ = watch.kill().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_is_marked_within_the_grace_period() {
    let _turn = CLUSTERS.acquire().await.unwrap();
    let world = World::create(testbed::shared(), &["a", "b", "c"])
        .await
        .unwrap();
    let cluster = deploy(&world, "zookeeper").await;
    let victim = cluster.brokers[2].clone();
    let inst = cluster
        .instance_of(&world, victim.id)
        .await
        .unwrap()
        .unwrap();
    let other = cluster.instance_of(&world, 0).await.unwrap().unwrap();
    let mut watch = start_watch(
        &world,
        &inst,
        "interval_seconds = 1\nunhealthy_after_seconds = 2\ngrace_period_seconds = 3600\nlistener_timeout_seconds = 1",
    );
    let addr = format!("{}:9092", victim.ip);
    ask_broker(&world, &other, &addr, "HANG").unwrap();
    // Well past unhealthy_after: the watchdog holds back, the instance stays.
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            cluster
                .instance_of(&world, victim.id)
                .await
                .unwrap()
                .as_deref(),
            Some(inst.as_str())
        );
    }
    let j = journal(&world, &inst);
    assert_eq!(j["decision"]["decision"], "hold_back", "{j}");
    assert_eq!(j["decision"]["reason"], "within_grace", "{j}");
    assert_eq!(j["observed"]["listener"]["state"], "failed", "{j}");
    assert!(j["marked_unhealthy_unix"].is_null(), "{j}");
    let _ = watch.kill().await;
}
