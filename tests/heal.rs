//! Self-healing end to end: a cluster deployed through the testbed's Auto Scaling Group (user
//! data, image, agent, stand-in broker, signal) loses brokers and the group brings them back
//! with zero manual steps. On the testbed; needs root. The stand-in broker is the testbed
//! package's `kafka-standin`, built beside the agent by `cargo test --workspace`.

use std::path::PathBuf;
use std::time::Duration;

use kafka_testbed::cluster::{Deployed, Spec, ask_broker};
use kafka_testbed::{self as testbed, World};

fn agent() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kafka-agent"))
}

fn standin() -> PathBuf {
    let p = agent().parent().unwrap().join("kafka-standin");
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build -p kafka-testbed --bins` (cargo test --workspace does)",
        p.display()
    );
    p
}

async fn deploy(world: &World, backend: &str) -> Deployed {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let spec = Spec {
        name: format!("{}-{n}", world.id),
        backend: backend.into(),
        azs: vec!["a".into(), "b".into(), "c".into()],
        agent: agent(),
        standin: standin(),
        deadline_seconds: 120,
    };
    let cluster = Deployed::deploy(world, testbed::shared(), spec)
        .await
        .unwrap();
    cluster
        .wait_serving(Duration::from_secs(120))
        .await
        .unwrap();
    cluster
}

/// `kafka-agent status` on the host: its exit code and output.
async fn status(world: &World, inst: &str) -> (i32, String) {
    let config = world.host_dir(inst).join("etc/kafka-agent/agent.toml");
    let mut cmd = world.command(inst, &agent().to_string_lossy()).unwrap();
    cmd.arg("--config").arg(config).arg("status");
    let out = tokio::process::Command::from(cmd).output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

async fn broker_instances(world: &World, cluster: &Deployed) -> Vec<String> {
    let mut out = Vec::new();
    for b in &cluster.brokers {
        out.push(
            cluster
                .instance_of(world, b.id)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("nothing serves broker {}", b.id)),
        );
    }
    out
}

async fn a_dead_broker_comes_back_with_its_id_address_and_records(backend: &str) {
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
