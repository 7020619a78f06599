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

/// Waits until the watchdog on `inst` has seen its broker healthy.
async fn healthy_first(world: &World, inst: &str) {
    let until = Instant::now() + Duration::from_secs(30);
    while journal(world, inst)["decision"]["decision"] != "healthy" {
        assert!(Instant::now() < until, "{}", watch_log(world, inst));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
    healthy_first(&world, &inst).await;
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

/// Two brokers wedged at once: one lease per cluster, so one is marked and replaced while the
/// other's watchdog holds back (`replacement_in_flight`), and only then the second goes.
#[tokio::test(flavor = "multi_thread")]
async fn two_wedged_brokers_are_replaced_one_after_the_other() {
    let _turn = CLUSTERS.acquire().await.unwrap();
    let world = World::create(testbed::shared(), &["a", "b", "c"])
        .await
        .unwrap();
    let cluster = deploy(&world, "zookeeper").await;
    let other = cluster.instance_of(&world, 0).await.unwrap().unwrap();
    let mut wedged = Vec::new();
    for id in [1u32, 2] {
        let inst = cluster.instance_of(&world, id).await.unwrap().unwrap();
        let watch = start_watch(
            &world,
            &inst,
            "interval_seconds = 1\nunhealthy_after_seconds = 3\ngrace_period_seconds = 0\nlistener_timeout_seconds = 1",
        );
        wedged.push((id, inst, watch));
    }
    for (id, inst, _) in &wedged {
        healthy_first(&world, inst).await;
        let addr = format!("{}:9092", cluster.brokers[*id as usize].ip);
        assert_eq!(
            ask_broker(&world, &other, &addr, "HANG").unwrap(),
            vec!["OK HANG"]
        );
    }
    // Both replaced in the end, one after the other.
    let mut replaced = Vec::new();
    let mut saw_hold_back = false;
    let until = Instant::now() + Duration::from_secs(180);
    while replaced.len() < 2 {
        saw_hold_back |= wedged.iter().any(|(_, inst, _)| {
            journal(&world, inst)["decision"]["reason"] == "replacement_in_flight"
        });
        let serving = cluster.serving().await.unwrap_or_default();
        for (id, inst, _) in &wedged {
            let now = cluster.instance_of(&world, *id).await.unwrap();
            if !replaced.contains(id)
                && now.as_deref().is_some_and(|i| i != inst)
                && serving.contains_key(id)
            {
                replaced.push(*id);
            }
        }
        assert!(
            Instant::now() < until,
            "replaced so far {replaced:?}; {}\n{}",
            journal(&world, &wedged[0].1),
            journal(&world, &wedged[1].1)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The second was marked only once the first's replacement had registered (the lease is
    // released then): compare the mark with the registration's creation on ZooKeeper's clock.
    let marked = |id: u32| {
        let (_, inst, _) = wedged.iter().find(|w| w.0 == id).unwrap();
        journal(&world, inst)["marked_unhealthy_unix"]
            .as_u64()
            .unwrap_or_else(|| panic!("broker {id} was never marked"))
    };
    let (first, second) = if marked(1) <= marked(2) {
        (1, 2)
    } else {
        (2, 1)
    };
    let zk = zookeeper_client::Client::connect(&format!("{}{}", cluster.zk_local, cluster.chroot))
        .await
        .unwrap();
    let (_, stat) = zk.get_data(&format!("/brokers/ids/{first}")).await.unwrap();
    let registered_again = (stat.ctime / 1000) as u64;
    assert!(
        marked(second) >= registered_again,
        "broker {second} was marked at {} before broker {first}'s replacement registered at {registered_again}",
        marked(second)
    );
    assert!(
        saw_hold_back,
        "the second watchdog never held back for the first"
    );
    for (_, _, mut watch) in wedged {
        let _ = watch.kill().await;
    }
}
