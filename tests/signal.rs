//! `kafka-agent signal` and [`kafka_agent::signal::send`] on the testbed: readiness is the
//! broker's own registration at this node's address (the test plays Kafka by creating the
//! ephemeral `/brokers/ids/<id>`), then SUCCESS to the stack named by the instance's
//! CloudFormation tags and CONTINUE to the launch hook; `not_ready` FAILURE and ABANDON when
//! it never registers; a stack that no longer takes signals is fine. Needs root.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Backend, Cluster};
use kafka_agent::aws::Clients;
use kafka_agent::aws::imds::Identity;
use kafka_agent::signal::{self, Outcome, Sent};
use kafka_testbed::{self as testbed, World};

const LOGICAL_ID: &str = "Brokers";
const HOOK: &str = "launch";

fn cfn() -> aws_sdk_cloudformation::Client {
    aws_sdk_cloudformation::Client::new(&testbed::shared().moto.sdk_config("seed"))
}

fn autoscaling() -> aws_sdk_autoscaling::Client {
    aws_sdk_autoscaling::Client::new(&testbed::shared().moto.sdk_config("seed"))
}

/// A stack whose `Brokers` waits for one signal (CREATE_IN_PROGRESS until it comes). A wait
/// condition takes a CreationPolicy as an Auto Scaling group does, and moto launches nothing
/// for it.
async fn stack(name: &str) -> String {
    let template = serde_json::json!({
        "Resources": { LOGICAL_ID: {
            "Type": "AWS::CloudFormation::WaitCondition",
            "CreationPolicy": { "ResourceSignal": { "Count": 1, "Timeout": "PT30M" } }
        }}
    });
    cfn()
        .create_stack()
        .stack_name(name)
        .template_body(template.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(stack_status(name).await, "CREATE_IN_PROGRESS");
    name.to_string()
}

async fn stack_status(name: &str) -> String {
    let out = cfn()
        .describe_stacks()
        .stack_name(name)
        .send()
        .await
        .unwrap();
    out.stacks()[0].stack_status().unwrap().as_str().to_string()
}

/// An Auto Scaling group holding `instances` (AttachInstances tags each with
/// `aws:autoscaling:groupName`), with a launch lifecycle hook named [`HOOK`].
async fn group(world: &World, name: &str, instances: &[&str]) {
    let asg = autoscaling();
    asg.create_launch_configuration()
        .launch_configuration_name(name)
        .image_id("ami-12c6146b")
        .instance_type("m5.large")
        .send()
        .await
        .unwrap();
    asg.create_auto_scaling_group()
        .auto_scaling_group_name(name)
        .launch_configuration_name(name)
        .min_size(0)
        .max_size(5)
        .desired_capacity(0)
        .vpc_zone_identifier(&world.subnet("a").unwrap().id)
        .send()
        .await
        .unwrap();
    asg.put_lifecycle_hook()
        .auto_scaling_group_name(name)
        .lifecycle_hook_name(HOOK)
        .lifecycle_transition("autoscaling:EC2_INSTANCE_LAUNCHING")
        .heartbeat_timeout(600)
        .send()
        .await
        .unwrap();
    asg.attach_instances()
        .auto_scaling_group_name(name)
        .set_instance_ids(Some(instances.iter().map(|s| s.to_string()).collect()))
        .send()
        .await
        .unwrap();
}

/// A claimed node with its ENI attached, launched with the stack's tags as CloudFormation
/// propagates them through the group. Returns (instance, ENI address).
async fn node(world: &World, cluster: &Cluster, stack: &str) -> (String, String) {
    let (_, ip, _) = cluster.resources_for(world, 0, "a").await;
    let inst = world
        .launch(
            "a",
            &[
                ("aws:cloudformation:stack-name", stack),
                ("aws:cloudformation:logical-id", LOGICAL_ID),
            ],
        )
        .await
        .unwrap();
    assert_eq!(cluster.claim(world, &inst).await.unwrap().0, 0);
    cluster.attach(world, &inst).await.unwrap();
    (inst, ip)
}

/// `kafka-agent signal` with `[signal]` keys in a drop-in beside the agent's config.
fn signal_command(
    world: &World,
    cluster: &Cluster,
    inst: &str,
    keys: &str,
) -> tokio::process::Command {
    let config = dropin(world, cluster, inst, keys);
    let mut cmd = world
        .command(inst, env!("CARGO_BIN_EXE_kafka-agent"))
        .unwrap();
    cmd.arg("--config").arg(config).arg("signal");
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    cmd
}

/// Writes the agent's config and a `config.d/50-signal.toml` with `[signal]` keys.
fn dropin(world: &World, cluster: &Cluster, inst: &str, keys: &str) -> PathBuf {
    let config = cluster.config_for(world, inst);
    let dir = config.parent().unwrap().join("config.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("50-signal.toml"), format!("[signal]\n{keys}\n")).unwrap();
    config
}

/// Plays Kafka: the broker's ephemeral registration, advertising `host`.
async fn register(zk: &zookeeper_client::Client, id: u32, host: &str) {
    zk.mkdir("/brokers/ids", &common::persistent())
        .await
        .unwrap();
    let body = serde_json::json!({
        "listener_security_protocol_map": {"PLAINTEXT": "PLAINTEXT"},
        "endpoints": [format!("PLAINTEXT://{host}:9092")],
        "jmx_port": -1, "host": host, "port": 9092, "version": 5,
        "timestamp": common::now_ms().to_string(),
    });
    zk.create(
        &format!("/brokers/ids/{id}"),
        body.to_string().as_bytes(),
        &zookeeper_client::CreateMode::Ephemeral.with_acls(zookeeper_client::Acls::anyone_all()),
    )
    .await
    .unwrap();
}

async fn signals_for(inst: &str) -> Vec<testbed::aws::Signal> {
    let all = testbed::shared().moto.signals().await.unwrap();
    all.into_iter().filter(|s| s.unique_id == inst).collect()
}

async fn lifecycle_for(inst: &str) -> Vec<testbed::aws::LifecycleAction> {
    let all = testbed::shared().moto.lifecycle_actions().await.unwrap();
    all.into_iter()
        .filter(|a| a.instance_id.as_deref() == Some(inst))
        .collect()
}

async fn instance_tags(world: &World, inst: &str) -> std::collections::BTreeMap<String, String> {
    let out = world
        .ec2
        .describe_tags()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("resource-id")
                .values(inst)
                .build(),
        )
        .send()
        .await
        .unwrap();
    out.tags()
        .iter()
        .map(|t| {
            (
                t.key().unwrap().to_string(),
                t.value().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Asserts that the stack got one FAILURE (and failed) and the launch hook one ABANDON for
/// `inst`; returns the failure reason the instance's tag carries.
async fn told_failure(world: &World, inst: &str, stack: &str) -> String {
    let signals = signals_for(inst).await;
    assert_eq!(signals.len(), 1, "{signals:?}");
    assert_eq!(signals[0].status, "FAILURE");
    assert_eq!(stack_status(stack).await, "CREATE_FAILED");
    let completed: Vec<_> = lifecycle_for(inst)
        .await
        .into_iter()
        .filter(|a| a.kind == "complete")
        .collect();
    assert_eq!(completed.len(), 1, "{completed:?}");
    assert_eq!(completed[0].result.as_deref(), Some("ABANDON"));
    instance_tags(world, inst).await["kafka-agent:failure"].clone()
}

/// Polls `check` every 200 ms for up to `cap`.
async fn eventually<F, Fut>(cap: Duration, what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < cap, "never: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn success_once_the_broker_registers_at_this_nodes_address() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let cluster = Cluster::new(&world, Backend::Zk, 1, true);
    let stack = stack(&format!("s-{}", cluster.name)).await;
    let (inst, ip) = node(&world, &cluster, &stack).await;
    group(&world, &format!("g-{}", cluster.name), &[&inst]).await;

    let zk = cluster.zk().await;
    // Another node's address first: registered, but not as this node.
    register(&zk, 0, "10.99.0.1").await;
    let run = signal_command(
        &world,
        &cluster,
        &inst,
        &format!("lifecycle_hook = \"{HOOK}\"\nheartbeat_seconds = 1\nready_timeout_seconds = 120"),
    )
    .output();
    let agent = tokio::spawn(run);

    // It waits, heartbeating the hook, and tells nobody anything yet.
    eventually(Duration::from_secs(60), "a heartbeat", || async {
        lifecycle_for(&inst)
            .await
            .iter()
            .any(|a| a.kind == "heartbeat")
    })
    .await;
    assert!(
        !agent.is_finished(),
        "signal ended before the broker served"
    );
    assert!(signals_for(&inst).await.is_empty());
    assert!(
        lifecycle_for(&inst)
            .await
            .iter()
            .all(|a| a.kind == "heartbeat"),
        "completed the hook before the broker served"
    );

    // Kafka registers as this node.
    zk.delete("/brokers/ids/0", None).await.unwrap();
    register(&zk, 0, &ip).await;
    let out = agent.await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let sent: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sent["cloudformation"], "SUCCESS", "{stderr}");
    assert_eq!(sent["lifecycle"], "CONTINUE", "{stderr}");

    let signals = signals_for(&inst).await;
    assert_eq!(signals.len(), 1, "{signals:?}");
    assert_eq!(signals[0].status, "SUCCESS");
    assert_eq!(signals[0].stack_name, stack);
    assert_eq!(signals[0].logical_resource_id, LOGICAL_ID);
    assert_eq!(stack_status(&stack).await, "CREATE_COMPLETE");
    let completed: Vec<_> = lifecycle_for(&inst)
        .await
        .into_iter()
        .filter(|a| a.kind == "complete")
        .collect();
    assert_eq!(completed.len(), 1, "{completed:?}");
    assert_eq!(completed[0].result.as_deref(), Some("CONTINUE"));
    assert_eq!(completed[0].hook, HOOK);
}

#[tokio::test]
async fn not_ready_when_the_broker_never_registers() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let cluster = Cluster::new(&world, Backend::Zk, 1, true);
    let stack = stack(&format!("s-{}", cluster.name)).await;
    let (inst, _) = node(&world, &cluster, &stack).await;
    group(&world, &format!("g-{}", cluster.name), &[&inst]).await;

    let out = signal_command(
        &world,
        &cluster,
        &inst,
        &format!("lifecycle_hook = \"{HOOK}\"\nready_timeout_seconds = 2"),
    )
    .output()
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(10), "{stderr}");
    assert!(stderr.contains("[not_ready]"), "{stderr}");
    assert!(stderr.contains("/brokers/ids/0 does not exist"), "{stderr}");

    let reason = told_failure(&world, &inst, &stack).await;
    assert!(reason.starts_with("not_ready: broker 0"), "{reason}");
}

#[tokio::test]
async fn a_stack_that_no_longer_takes_signals_is_fine() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let cluster = Cluster::new(&world, Backend::Zk, 1, true);
    let stack = stack(&format!("s-{}", cluster.name)).await;
    let (inst, ip) = node(&world, &cluster, &stack).await;
    testbed::shared()
        .moto
        .set_stack_status(&stack, "UPDATE_COMPLETE")
        .await
        .unwrap();
    let zk = cluster.zk().await;
    register(&zk, 0, &ip).await;

    let out = signal_command(&world, &cluster, &inst, "")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let sent: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sent["cloudformation"], "not_waiting", "{stderr}");
    assert_eq!(sent["lifecycle"], serde_json::Value::Null);
    assert_eq!(sent["unhealthy"], false);
    assert!(stderr.contains("cannot be signaled"), "logged: {stderr}");
    assert!(signals_for(&inst).await.is_empty());
}

/// What `boot` does with its outcome: [`signal::send`] from this process, as the instance.
async fn send_as(
    world: &World,
    cluster: &Cluster,
    inst: &str,
    keys: &str,
    outcome: &Outcome,
) -> anyhow::Result<Sent> {
    let settings = kafka_agent::config::load(&dropin(world, cluster, inst, keys)).unwrap();
    let clients = Clients::from_config(&testbed::shared().moto.sdk_config(&world.scope));
    let me = Identity {
        instance_id: inst.to_string(),
        az: "us-east-1a".into(),
        region: testbed::aws::REGION.into(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    signal::send(&settings, &clients, &me, outcome, deadline).await
}

#[tokio::test]
async fn send_abandons_on_failure_continues_on_success_and_can_mark_unhealthy() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let cluster = Cluster::new(&world, Backend::Cwl, 3, false);
    let (failing, succeeding, unhealthy) = (
        stack(&format!("f-{}", cluster.name)).await,
        stack(&format!("s-{}", cluster.name)).await,
        stack(&format!("u-{}", cluster.name)).await,
    );
    let mut insts = Vec::new();
    for s in [&failing, &succeeding, &unhealthy] {
        let tags = [
            ("aws:cloudformation:stack-name", s.as_str()),
            ("aws:cloudformation:logical-id", LOGICAL_ID),
        ];
        insts.push(world.launch("a", &tags).await.unwrap());
    }
    let refs: Vec<&str> = insts.iter().map(String::as_str).collect();
    let group_name = format!("g-{}", cluster.name);
    group(&world, &group_name, &refs).await;
    let hook = format!("lifecycle_hook = \"{HOOK}\"\nmark_unhealthy_on_failure = true");

    // A failure with a message longer than a tag value: FAILURE, ABANDON (the group replaces
    // the instance, so it is not also marked unhealthy), the reason cut to 256 characters.
    let message = format!("the data on vol-0 belongs to broker 7, {}", "x".repeat(600));
    let failure = Outcome::Failure {
        kind: "identity_mismatch".into(),
        message,
    };
    let sent = send_as(&world, &cluster, &insts[0], &hook, &failure)
        .await
        .unwrap();
    assert_eq!(sent.cloudformation.as_deref(), Some("FAILURE"));
    assert_eq!(sent.lifecycle.as_deref(), Some("ABANDON"));
    assert!(!sent.unhealthy);
    assert_eq!(stack_status(&failing).await, "CREATE_FAILED");
    let reason = &instance_tags(&world, &insts[0]).await["kafka-agent:failure"];
    assert_eq!(reason.chars().count(), signal::TAG_VALUE_MAX, "{reason}");
    assert!(
        reason.starts_with("identity_mismatch: the data on vol-0 belongs to broker 7")
            && reason.ends_with("..."),
        "{reason}"
    );
    // Told again (a rerun): the hook has no action pending, the stack takes no signal.
    let again = send_as(&world, &cluster, &insts[0], &hook, &failure)
        .await
        .unwrap();
    assert_eq!(again.cloudformation.as_deref(), Some("not_waiting"));
    assert_eq!(again.lifecycle.as_deref(), Some("no_active_action"));

    // Success after an earlier failure on the same instance: CONTINUE, and the stale
    // failure tag goes.
    world
        .ec2
        .create_tags()
        .resources(&insts[1])
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("kafka-agent:failure")
                .value("timeout: earlier boot")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let sent = send_as(&world, &cluster, &insts[1], &hook, &Outcome::Success)
        .await
        .unwrap();
    assert_eq!(sent.cloudformation.as_deref(), Some("SUCCESS"));
    assert_eq!(sent.lifecycle.as_deref(), Some("CONTINUE"));
    assert_eq!(stack_status(&succeeding).await, "CREATE_COMPLETE");
    assert!(
        !instance_tags(&world, &insts[1])
            .await
            .contains_key("kafka-agent:failure")
    );

    // No hook: a failure marks the instance Unhealthy so the group replaces it.
    let sent = send_as(
        &world,
        &cluster,
        &insts[2],
        "mark_unhealthy_on_failure = true",
        &Outcome::Failure {
            kind: "timeout".into(),
            message: "mount did not finish".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(sent.lifecycle, None);
    assert!(sent.unhealthy);
    let health = autoscaling()
        .describe_auto_scaling_instances()
        .instance_ids(&insts[2])
        .send()
        .await
        .unwrap();
    assert_eq!(
        health.auto_scaling_instances()[0].health_status(),
        Some("Unhealthy")
    );

    // The records carry the instance ids as UniqueId.
    for (inst, status) in [
        (&insts[0], "FAILURE"),
        (&insts[1], "SUCCESS"),
        (&insts[2], "FAILURE"),
    ] {
        let s = signals_for(inst).await;
        assert_eq!(s.len(), 1, "{inst}: {s:?}");
        assert_eq!(s[0].status, status);
    }
    let lifecycle: Vec<_> = lifecycle_for(&insts[0]).await;
    assert_eq!(lifecycle.len(), 1, "{lifecycle:?}");
    assert_eq!(lifecycle[0].auto_scaling_group, group_name);
}

#[tokio::test]
async fn a_failed_boot_tells_the_stack_and_abandons_the_launch() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let mut cluster = Cluster::new(&world, Backend::Zk, 1, true);
    cluster.deadline = 10;
    let stack = stack(&format!("s-{}", cluster.name)).await;
    let (eni, _, _) = cluster.resources_for(&world, 0, "a").await;
    // A live instance holds the id's ENI: the boot fails `resource_in_use` at its deadline.
    let squatter = common::squat_eni(&world, &eni).await;
    let inst = world
        .launch(
            "a",
            &[
                ("aws:cloudformation:stack-name", stack.as_str()),
                ("aws:cloudformation:logical-id", LOGICAL_ID),
            ],
        )
        .await
        .unwrap();
    group(&world, &format!("g-{}", cluster.name), &[&inst]).await;
    let config = dropin(
        &world,
        &cluster,
        &inst,
        &format!("lifecycle_hook = \"{HOOK}\""),
    );
    let mut cmd = world
        .command(&inst, env!("CARGO_BIN_EXE_kafka-agent"))
        .unwrap();
    cmd.arg("--config").arg(config).arg("boot");
    let out = tokio::process::Command::from(cmd).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr}");

    let reason = told_failure(&world, &inst, &stack).await;
    assert!(
        reason.starts_with("resource_in_use:") && reason.contains(&squatter),
        "{reason}"
    );
}
