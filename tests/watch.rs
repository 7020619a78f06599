//! The watchdog end to end: a cluster deployed through the testbed's Auto Scaling Group, a
//! broker wedged (`HANG`: its socket still accepts, nothing answers, its registration stays),
//! and `kafka-agent watch` on its host. On the testbed; needs root. The stand-in broker is the
//! testbed package's `kafka-standin`, built beside the agent by `cargo test --workspace`.

mod common;

use std::time::{Duration, Instant};

use common::deployed::{CLUSTERS, agent, broker_instances, deploy, deploy_on, status};
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
    world.agent_journal(inst, "watch")
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
    a_failed_broker_is_marked_unhealthy_and_replaced_with_its_id(Failure::Hung, "zookeeper").await;
}

/// The same on the CloudWatch Logs backend, whose lease is a stream of the claim log group.
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_broker_is_replaced_on_the_cloudwatch_logs_backend() {
    a_failed_broker_is_marked_unhealthy_and_replaced_with_its_id(Failure::Hung, "cloudwatch-logs")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exited_broker_is_marked_unhealthy_and_replaced_with_its_id() {
    a_failed_broker_is_marked_unhealthy_and_replaced_with_its_id(Failure::Exited, "zookeeper")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exited_broker_is_replaced_on_the_cloudwatch_logs_backend() {
    a_failed_broker_is_marked_unhealthy_and_replaced_with_its_id(
        Failure::Exited,
        "cloudwatch-logs",
    )
    .await;
}

async fn a_failed_broker_is_marked_unhealthy_and_replaced_with_its_id(
    failure: Failure,
    backend: &str,
) {
    let _turn = CLUSTERS.acquire().await.unwrap();
    let world = World::create(testbed::shared(), &["a", "b", "c"])
        .await
        .unwrap();
    let cluster = deploy(&world, backend).await;
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
    // Records the failed broker holds: its successor serves them from the same volume.
    for n in 0..3 {
        let answer = ask_broker(&world, &other, &addr, &format!("APPEND orders w{n}")).unwrap();
        assert!(answer[0].starts_with("OK"), "APPEND w{n}: {answer:?}");
    }
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
    // Id 1 is registered at its ENI's address (a hung broker's own registration may still be
    // there until its session expires); once the replacement's broker answers there, it
    // serves the records written before the failure. A replacement quicker than that expiry
    // finds /brokers/ids/1 taken and its broker fails (as Kafka does); the group's next
    // instance comes after the expiry, hence the long bound (see the session's note).
    let until = Instant::now() + Duration::from_secs(180);
    let read = loop {
        match ask_broker(&world, &other, &addr, "READ orders") {
            Ok(read) => break read,
            Err(e) => {
                let now = cluster.instance_of(&world, victim.id).await.unwrap();
                let events = now
                    .as_deref()
                    .map(|i| world.boot_events(i))
                    .unwrap_or_default();
                let boot = now
                    .as_deref()
                    .map(|i| world.agent_journal(i, "boot"))
                    .unwrap_or_default();
                let logs = now
                    .as_deref()
                    .map(|i| host_logs(&world, i))
                    .unwrap_or_default();
                assert!(
                    Instant::now() < until,
                    "{e:#}; id {} on {now:?}: boot {boot}\nevents {events:?}\ngroup {:?}\n{logs}",
                    victim.id,
                    cluster.instances().await
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(
        read,
        vec!["w0", "w1", "w2"],
        "records after the replacement"
    );
    let _ = watch.kill().await;
}

/// The last lines of each unit's log on a host (`var/log/<unit>.log`): what its broker and
/// the agent's units said, for a failure's message.
fn host_logs(world: &World, inst: &str) -> String {
    let dir = world.host_dir(inst).join("var/log");
    let mut out = String::new();
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    names.sort();
    for path in names {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        out.push_str(&format!("--- {}\n{tail}\n", path.display()));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_is_marked_within_the_grace_period() {
    nothing_is_marked_within_the_grace_period_on("zookeeper").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_is_marked_within_the_grace_period_on_the_cloudwatch_logs_backend() {
    nothing_is_marked_within_the_grace_period_on("cloudwatch-logs").await;
}

async fn nothing_is_marked_within_the_grace_period_on(backend: &str) {
    let _turn = CLUSTERS.acquire().await.unwrap();
    let world = World::create(testbed::shared(), &["a", "b", "c"])
        .await
        .unwrap();
    let cluster = deploy(&world, backend).await;
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
    two_wedged_brokers_one_after_the_other("zookeeper").await;
}

/// The same on the CloudWatch Logs backend: the lease is the claim log group's highest
/// `replacing-<seq>` stream.
#[tokio::test(flavor = "multi_thread")]
async fn two_wedged_brokers_go_one_after_the_other_on_the_cloudwatch_logs_backend() {
    two_wedged_brokers_one_after_the_other("cloudwatch-logs").await;
}

async fn two_wedged_brokers_one_after_the_other(backend: &str) {
    let _turn = CLUSTERS.acquire().await.unwrap();
    let world = World::create(testbed::shared(), &["a", "b", "c"])
        .await
        .unwrap();
    let cluster = deploy(&world, backend).await;
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

/// ZooKeeper down for a minute: every broker's registration is out of reach, and a watchdog
/// that took that for its broker's failure would replace every node at once. Two clusters
/// (one per claim backend; the watchdog consults ZooKeeper in both, Kafka being in ZooKeeper
/// mode) on an ensemble of their own, stopped whole for 60 s: no watchdog marks anything, each
/// holds back with `coordination_unreachable` (and `status` says so), and once the ensemble is
/// back every broker serves and every watchdog sees it healthy, still on its instance.
///
/// unhealthy_after is 10 s, well below the outage. With the guard disabled (a failed
/// ZooKeeper read in `watch::check` taken for a failed registration probe, coordination left
/// Ok) this test failed 37 s in, 10 s into the outage: on the CloudWatch Logs cluster, whose
/// lease stays within reach, the watchdogs went to mark_unhealthy, one took the lease and
/// marked its instance. (On the ZooKeeper backend the lease itself is out of reach then, and
/// holds back on its own: the guard is what keeps the CloudWatch Logs backend safe.)
#[tokio::test(flavor = "multi_thread")]
async fn zookeeper_down_for_a_minute_makes_no_watchdog_replace_anything() {
    let _turn = CLUSTERS.acquire_many(2).await.unwrap();
    let mut services = tokio::task::block_in_place(|| testbed::Services::start(3)).unwrap();
    let (zk_world, cwl_world) = tokio::join!(
        World::create(&services, &["a", "b", "c"]),
        World::create(&services, &["a", "b", "c"])
    );
    let worlds = [zk_world.unwrap(), cwl_world.unwrap()];
    let (zk_cluster, cwl_cluster) = tokio::join!(
        deploy_on(&worlds[0], &services, "zookeeper"),
        deploy_on(&worlds[1], &services, "cloudwatch-logs")
    );
    let clusters = [zk_cluster, cwl_cluster];
    let settings = "interval_seconds = 1\nunhealthy_after_seconds = 10\ngrace_period_seconds = 0\nlistener_timeout_seconds = 1";
    let mut nodes = Vec::new();
    let mut watches = Vec::new();
    for (world, cluster) in worlds.iter().zip(&clusters) {
        let instances = broker_instances(world, cluster).await;
        for inst in &instances {
            watches.push(start_watch(world, inst, settings));
        }
        for inst in &instances {
            healthy_first(world, inst).await;
        }
        nodes.push(instances);
    }
    // Nothing marked, nobody replaced: every instance still serves its id, healthy to the
    // group, and no watchdog said it marks.
    let unchanged = async |during: &str| {
        for ((world, cluster), instances) in worlds.iter().zip(&clusters).zip(&nodes) {
            let listed = cluster.instances().await.unwrap();
            for (id, inst) in instances.iter().enumerate() {
                let (_, state, health) = listed
                    .get(inst)
                    .unwrap_or_else(|| panic!("{during}: {inst} (broker {id}) left the group"));
                assert_eq!(
                    (state.as_str(), health.as_str()),
                    ("InService", "Healthy"),
                    "{during}: {inst} (broker {id}, {}); watch.json {}\n{}",
                    cluster.spec.backend,
                    journal(world, inst),
                    watch_log(world, inst)
                );
                let log = watch_log(world, inst);
                assert!(
                    !log.contains("marking this instance Unhealthy"),
                    "{during}: {log}"
                );
            }
            assert_eq!(listed.len(), 3, "{during}: {listed:?}");
        }
    };
    unchanged("before the outage").await;

    tokio::task::block_in_place(|| services.zookeeper.stop_all()).unwrap();
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(60) {
        unchanged("ZooKeeper down").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for ((world, cluster), instances) in worlds.iter().zip(&clusters).zip(&nodes) {
        for inst in instances {
            let j = journal(world, inst);
            let during = format!("{inst} ({}): {j}", cluster.spec.backend);
            assert_eq!(j["decision"]["decision"], "hold_back", "{during}");
            assert_eq!(
                j["decision"]["reason"], "coordination_unreachable",
                "{during}"
            );
            assert_eq!(
                j["observed"]["coordination"]["reachable"], false,
                "{during}"
            );
            assert!(j["marked_unhealthy_unix"].is_null(), "{during}");
        }
        let (code, out) = status(world, &instances[1]).await;
        assert!(
            out.contains("coordination service is unreachable"),
            "{} exit {code}:\n{out}",
            cluster.spec.backend
        );
        assert_eq!(code, 1, "degraded while the watchdog holds back:\n{out}");
    }

    tokio::task::block_in_place(|| services.zookeeper.start_all()).unwrap();
    for (world, cluster) in worlds.iter().zip(&clusters) {
        cluster
            .wait_serving(world, Duration::from_secs(120))
            .await
            .unwrap();
    }
    // Every watchdog sees its broker healthy again; and for longer than unhealthy_after
    // after that, still nobody is marked.
    for ((world, _), instances) in worlds.iter().zip(&clusters).zip(&nodes) {
        for inst in instances {
            let until = Instant::now() + Duration::from_secs(60);
            while journal(world, inst)["decision"]["decision"] != "healthy" {
                assert!(
                    Instant::now() < until,
                    "{}\n{}",
                    journal(world, inst),
                    watch_log(world, inst)
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    let after = Instant::now();
    while after.elapsed() < Duration::from_secs(15) {
        unchanged("ZooKeeper back").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // A registration made again after the outage may come a few seconds late (a session
    // expired meanwhile): in the end every watchdog sees its broker healthy at once.
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let not_yet: Vec<(String, serde_json::Value)> = worlds
            .iter()
            .zip(&nodes)
            .flat_map(|(world, instances)| {
                instances
                    .iter()
                    .map(|inst| (inst.clone(), journal(world, inst)))
                    .filter(|(_, j)| j["decision"]["decision"] != "healthy")
                    .collect::<Vec<_>>()
            })
            .collect();
        if not_yet.is_empty() {
            break;
        }
        assert!(Instant::now() < until, "not healthy: {not_yet:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for mut w in watches {
        let _ = w.kill().await;
    }
    drop(clusters);
    drop(worlds);
}
