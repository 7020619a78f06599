//! Self-healing end to end: a cluster deployed through the testbed's Auto Scaling Group (user
//! data, image, agent, stand-in broker, signal) loses brokers and the group brings them back
//! with zero manual steps. On the testbed; needs root. The stand-in broker is the testbed
//! package's `kafka-standin`, built beside the agent by `cargo test --workspace`.

mod common;

use std::time::Duration;

use common::deployed::{CLUSTERS, broker_instances, deploy, deploy_with, status};
use kafka_testbed::cluster::{Deployed, ask_broker};
use kafka_testbed::{self as testbed, World};

async fn a_dead_broker_comes_back_with_its_id_address_and_records(backend: &str) {
    let _turn = CLUSTERS.acquire().await.unwrap();
    let world = World::create(testbed::shared(), &["a", "b", "c"])
        .await
        .unwrap();
    let cluster = deploy(&world, backend).await;
    let nodes = broker_instances(&world, &cluster).await;
    let victim = cluster.brokers[1].clone();
    let addr = format!("{}:9092", victim.ip);
    for n in 0..3 {
        let answer = ask_broker(&world, &nodes[0], &addr, &format!("APPEND orders r{n}")).unwrap();
        assert!(answer[0].starts_with("OK"), "{answer:?}");
    }
    let heal = cluster
        .terminate_and_follow(&world, &testbed::shared().moto, 1, Duration::from_secs(120))
        .await
        .unwrap();
    let timeline: Vec<String> = heal
        .events
        .iter()
        .map(|e| format!("+{:.2}s {}", e.at.as_secs_f64(), e.what))
        .collect();
    let replacement = heal.replacement.clone().expect("no replacement launched");
    assert!(heal.registered_after.is_some(), "{timeline:#?}");
    assert_ne!(replacement, nodes[1]);
    // Same id and address: the registration check above is at the id's ENI address; the
    // replacement's claim and attachment say so too.
    let claim: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            world
                .host_dir(&replacement)
                .join("var/lib/kafka-agent/claim.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(claim["id"], 1, "{claim}");
    assert_eq!(
        cluster.instance_of(&world, 1).await.unwrap().as_deref(),
        Some(replacement.as_str())
    );
    // The replacement launched where its predecessor lived.
    let instances = cluster.instances().await.unwrap();
    assert_eq!(
        instances[&replacement].0,
        format!("us-east-1{}", victim.az),
        "{instances:?}"
    );
    // Same records.
    let read = ask_broker(&world, &nodes[0], &addr, "READ orders").unwrap();
    assert_eq!(read, vec!["r0", "r1", "r2"], "{timeline:#?}");
    // The stack had SUCCESS from the first three (CREATE_COMPLETE); the replacement's launch
    // hook had CONTINUE. Every node is healthy.
    let signals = testbed::shared().moto.signals().await.unwrap();
    for inst in &nodes {
        assert!(
            signals
                .iter()
                .any(|s| s.unique_id == *inst && s.status == "SUCCESS"),
            "{inst}: {signals:?}"
        );
    }
    assert_eq!(cluster.stack_status().await.unwrap(), "CREATE_COMPLETE");
    let actions = testbed::shared().moto.lifecycle_actions().await.unwrap();
    assert!(
        actions.iter().any(|a| a.kind == "complete"
            && a.instance_id.as_deref() == Some(replacement.as_str())
            && a.result.as_deref() == Some("CONTINUE")),
        "{actions:?}"
    );
    for inst in broker_instances(&world, &cluster).await {
        let (code, out) = status(&world, &inst).await;
        assert_eq!(code, 0, "{inst}: {out}");
    }
}

#[tokio::test]
async fn a_dead_broker_comes_back_with_its_id_address_and_records_zookeeper() {
    a_dead_broker_comes_back_with_its_id_address_and_records("zookeeper").await;
}

#[tokio::test]
async fn a_dead_broker_comes_back_with_its_id_address_and_records_cloudwatch_logs() {
    a_dead_broker_comes_back_with_its_id_address_and_records("cloudwatch-logs").await;
}

/// Waits until each id in `ids` is served by an instance other than its `old` one; returns
/// the new instances.
async fn replaced(
    world: &World,
    cluster: &Deployed,
    ids: &[u32],
    old: &[String],
    timeout: Duration,
) -> Vec<String> {
    let until = std::time::Instant::now() + timeout;
    loop {
        let serving = cluster.serving().await.unwrap_or_default();
        let mut now = Vec::new();
        for id in ids {
            match cluster.instance_of(world, *id).await.unwrap() {
                Some(i) if !old.contains(&i) && serving.contains_key(id) => now.push(i),
                _ => break,
            }
        }
        if now.len() == ids.len() {
            return now;
        }
        assert!(
            std::time::Instant::now() < until,
            "brokers {ids:?} not back after {timeout:?}; group: {:?}",
            cluster.instances().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn two_brokers_terminated_at_once_both_come_back_zookeeper() {
    two_brokers_terminated_at_once_both_come_back("zookeeper").await;
}

#[tokio::test]
async fn two_brokers_terminated_at_once_both_come_back_cloudwatch_logs() {
    two_brokers_terminated_at_once_both_come_back("cloudwatch-logs").await;
}

async fn two_brokers_terminated_at_once_both_come_back(backend: &str) {
    let _turn = CLUSTERS.acquire().await.unwrap();
    let world = World::create(testbed::shared(), &["a", "b", "c"])
        .await
        .unwrap();
    let cluster = deploy(&world, backend).await;
    let nodes = broker_instances(&world, &cluster).await;
    world
        .ec2
        .terminate_instances()
        .instance_ids(&nodes[0])
        .instance_ids(&nodes[2])
        .send()
        .await
        .unwrap();
    let back = replaced(&world, &cluster, &[0, 2], &nodes, Duration::from_secs(120)).await;
    let instances = cluster.instances().await.unwrap();
    for (inst, id) in back.iter().zip([0usize, 2]) {
        assert_eq!(
            instances[inst].0,
            format!("us-east-1{}", cluster.brokers[id].az),
            "{instances:?}"
        );
        let (code, out) = status(&world, inst).await;
        assert_eq!(code, 0, "{inst}: {out}");
    }
    // Broker 1 was never disturbed.
    assert_eq!(
        cluster.instance_of(&world, 1).await.unwrap().as_deref(),
        Some(nodes[1].as_str())
    );
}

#[tokio::test]
async fn a_boot_killed_mid_way_is_finished_by_the_groups_next_instance_zookeeper() {
    a_boot_killed_mid_way_is_finished_by_the_groups_next_instance("zookeeper").await;
}

#[tokio::test]
async fn a_boot_killed_mid_way_is_finished_by_the_groups_next_instance_cloudwatch_logs() {
    a_boot_killed_mid_way_is_finished_by_the_groups_next_instance("cloudwatch-logs").await;
}

async fn a_boot_killed_mid_way_is_finished_by_the_groups_next_instance(backend: &str) {
    let _turn = CLUSTERS.acquire().await.unwrap();
    let world = World::create(testbed::shared(), &["a", "b", "c"])
        .await
        .unwrap();
    let cluster = deploy(&world, backend).await;
    let nodes = broker_instances(&world, &cluster).await;
    let addr = format!("{}:9092", cluster.brokers[1].ip);
    ask_broker(&world, &nodes[0], &addr, "APPEND orders kept").unwrap();
    // Attachments take a while now: the replacement's boot is caught between its claim and
    // its volume.
    testbed::shared()
        .moto
        .configure(
            &world.scope,
            &testbed::aws::ScopeSettings {
                attach_delay: Some(3.0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    world.terminate(&nodes[1]).await.unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(60);
    let first = loop {
        let group = cluster.instances().await.unwrap();
        let claimed = group.keys().find(|i| {
            !nodes.contains(i)
                && world
                    .host_dir(i)
                    .join("var/lib/kafka-agent/claim.json")
                    .exists()
        });
        if let Some(i) = claimed {
            break i.clone();
        }
        assert!(
            std::time::Instant::now() < until,
            "no replacement claimed: {group:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Its boot dies with its instance, mid-way (claimed, attaching).
    assert!(
        !world
            .host_dir(&first)
            .join("var/lib/kafka-agent/storage.json")
            .exists(),
        "the boot got past mount before it could be killed"
    );
    world.terminate(&first).await.unwrap();
    let mut old = nodes.clone();
    old.push(first.clone());
    let back = replaced(&world, &cluster, &[1], &old, Duration::from_secs(120)).await;
    let claim: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            world
                .host_dir(&back[0])
                .join("var/lib/kafka-agent/claim.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(claim["id"], 1, "{claim}");
    assert_eq!(claim["how"], "took_over", "{claim}");
    let read = ask_broker(&world, &nodes[0], &addr, "READ orders").unwrap();
    assert_eq!(read, vec!["kept"]);
    let (code, out) = status(&world, &back[0]).await;
    assert_eq!(code, 0, "{out}");
}

fn sha256_of(path: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Whether a loop device still serves the image (its filesystem may still be in use).
fn in_use(image: &std::path::Path) -> bool {
    let out = std::process::Command::new("losetup")
        .arg("-j")
        .arg(image)
        .output()
        .unwrap();
    !out.stdout.is_empty()
}

#[tokio::test]
async fn another_nodes_data_fails_the_boot_abandons_the_launch_and_is_never_written_zookeeper() {
    another_nodes_data_fails_the_boot_abandons_the_launch_and_is_never_written("zookeeper").await;
}

#[tokio::test]
async fn another_nodes_data_fails_the_boot_abandons_the_launch_and_is_never_written_cloudwatch_logs()
 {
    another_nodes_data_fails_the_boot_abandons_the_launch_and_is_never_written("cloudwatch-logs")
        .await;
}

async fn another_nodes_data_fails_the_boot_abandons_the_launch_and_is_never_written(backend: &str) {
    let _turn = CLUSTERS.acquire().await.unwrap();
    let world = World::create(testbed::shared(), &["a", "b", "c"])
        .await
        .unwrap();
    let cluster = deploy(&world, backend).await;
    let nodes = broker_instances(&world, &cluster).await;
    // Broker 1's volume comes to hold another node's data (say, a volume restored from the
    // wrong snapshot): its log directory says broker 7.
    let meta = world
        .host_dir(&nodes[1])
        .join("var/lib/kafka/kafka-logs/meta.properties");
    let text = std::fs::read_to_string(&meta).unwrap();
    std::fs::write(&meta, text.replace("broker.id=1", "broker.id=7")).unwrap();
    world.terminate(&nodes[1]).await.unwrap();
    let image = world
        .dir
        .join("volumes")
        .join(format!("{}.img", cluster.brokers[1].volume));
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while in_use(&image) {
        assert!(
            std::time::Instant::now() < until,
            "the volume stays plugged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = sha256_of(&image);

    // Each replacement refuses, tells the hook ABANDON, and the group replaces it in turn.
    let until = std::time::Instant::now() + Duration::from_secs(120);
    let abandoned = loop {
        let actions = testbed::shared().moto.lifecycle_actions().await.unwrap();
        let group: Vec<String> = cluster.instances().await.unwrap().into_keys().collect();
        let gone: Vec<String> = actions
            .iter()
            .filter(|a| a.auto_scaling_group == cluster.group)
            .filter(|a| a.kind == "complete" && a.result.as_deref() == Some("ABANDON"))
            .filter_map(|a| a.instance_id.clone())
            .filter(|i| !group.contains(i))
            .collect();
        // Two replacements abandoned and gone, a third launched.
        if gone.len() >= 2
            && group
                .iter()
                .any(|i| !nodes.contains(i) && !gone.contains(i))
        {
            break gone;
        }
        assert!(
            std::time::Instant::now() < until,
            "no abandoned replacements: {actions:?}, group {group:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let journal: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            world
                .host_dir(&abandoned[0])
                .join("var/lib/kafka-agent/boot.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(journal["error"]["kind"], "identity_mismatch", "{journal}");
    assert!(
        journal["error"]["message"]
            .as_str()
            .unwrap()
            .contains("holds node 7"),
        "{journal}"
    );
    // Nothing served broker 1 meanwhile, and not a byte of its volume changed.
    assert!(!cluster.serving().await.unwrap().contains_key(&1));
    while in_use(&image) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if std::time::Instant::now() > until {
            break;
        }
    }
    assert_eq!(sha256_of(&image), before, "the volume was written to");
}

/// The group keeps an unhealthy broker running until its replacement is healthy ("launch
/// before terminating"): the replacement can never take the id, the ENI or the volume of a
/// running instance, so it fails at once (`no_eligible_id`, naming the live owner) and is
/// abandoned, instead of waiting out its deadline; the running broker keeps serving. The
/// project's groups terminate first (the default policy): see the README.
#[tokio::test]
async fn launch_before_terminating_fails_the_replacement_fast_and_leaves_the_running_broker_alone()
{
    let _turn = CLUSTERS.acquire().await.unwrap();
    let world = World::create(testbed::shared(), &["a", "b", "c"])
        .await
        .unwrap();
    let cluster = deploy_with(&world, "zookeeper", true).await;
    let nodes = broker_instances(&world, &cluster).await;
    let asg = aws_sdk_autoscaling::Client::new(
        &testbed::shared()
            .moto
            .sdk_config(&format!("{}-admin", world.id)),
    );
    asg.set_instance_health()
        .instance_id(&nodes[1])
        .health_status("Unhealthy")
        .should_respect_grace_period(false)
        .send()
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let until = started + Duration::from_secs(60);
    let (replacement, journal) = loop {
        let group = cluster.instances().await.unwrap();
        let failed = group.keys().filter(|i| !nodes.contains(i)).find_map(|i| {
            let text =
                std::fs::read_to_string(world.host_dir(i).join("var/lib/kafka-agent/boot.json"))
                    .ok()?;
            let j: serde_json::Value = serde_json::from_str(&text).ok()?;
            (j["outcome"] == "failure").then(|| (i.clone(), j))
        });
        if let Some(f) = failed {
            break f;
        }
        assert!(
            std::time::Instant::now() < until,
            "no replacement failed: {group:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Within seconds, not the boot deadline (120 s).
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(journal["error"]["kind"], "no_eligible_id", "{journal}");
    assert!(
        journal["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&nodes[1]),
        "{journal}"
    );
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let actions = testbed::shared().moto.lifecycle_actions().await.unwrap();
        if actions.iter().any(|a| {
            a.instance_id.as_deref() == Some(replacement.as_str())
                && a.result.as_deref() == Some("ABANDON")
        }) {
            break;
        }
        assert!(std::time::Instant::now() < until, "{actions:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The unhealthy broker still runs and serves with its ENI and volume.
    assert_eq!(
        cluster.instance_of(&world, 1).await.unwrap().as_deref(),
        Some(nodes[1].as_str())
    );
    assert!(cluster.serving().await.unwrap().contains_key(&1));
    let attach: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            world
                .host_dir(&replacement)
                .join("var/lib/kafka-agent/boot.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(
        !attach["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["step"] == "attach"),
        "the replacement went on to attach: {attach}"
    );
}
