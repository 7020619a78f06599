//! `kafka-agent signal` and [`kafka_agent::signal::send`] on the testbed: readiness is the
//! broker's own registration at this node's address (the test plays Kafka by creating the
//! ephemeral `/brokers/ids/<id>`), or in kraft mode the advertised listener accepting
//! connections (the test listens inside the instance's network namespace) and the optional
//! `ready_command`; then SUCCESS to the stack named by the instance's CloudFormation tags and
//! CONTINUE to the launch hook; `not_ready` FAILURE and ABANDON when it never serves; a stack
//! that no longer takes signals is fine. `boot` then `signal` end to end on both claim
//! backends, and a boot that meets another node's data tells the stack, abandons the launch,
//! leaves `status` failed and the volume untouched. Needs root.

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
    let inst = launch_in(world, stack).await;
    assert_eq!(cluster.claim(world, &inst).await.unwrap().0, 0);
    cluster.attach(world, &inst).await.unwrap();
    (inst, ip)
}

/// An instance in AZ `a` launched with the stack's tags, as CloudFormation propagates them
/// through the group.
async fn launch_in(world: &World, stack: &str) -> String {
    world
        .launch(
            "a",
            &[
                ("aws:cloudformation:stack-name", stack),
                ("aws:cloudformation:logical-id", LOGICAL_ID),
            ],
        )
        .await
        .unwrap()
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

/// Writes the agent's config and a `config.d/50-signal.toml` with `[signal]` keys (further
/// tables, such as [`kraft`]'s, may follow them).
fn dropin(world: &World, cluster: &Cluster, inst: &str, keys: &str) -> PathBuf {
    let config = cluster.config_for(world, inst);
    let dir = config.parent().unwrap().join("config.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("50-signal.toml"), format!("[signal]\n{keys}\n")).unwrap();
    config
}

/// Plays Kafka: the broker's ephemeral registration, advertising `host`.
async fn register(zk: &zookeeper_client::Client, id: u32, host: &str) {
    register_at(zk, id, host, common::now_ms()).await;
}

/// [`register`] with the registration's `timestamp` (the broker's clock when it registered).
async fn register_at(zk: &zookeeper_client::Client, id: u32, host: &str, timestamp_ms: i64) {
    zk.mkdir("/brokers/ids", &common::persistent())
        .await
        .unwrap();
    let body = serde_json::json!({
        "listener_security_protocol_map": {"PLAINTEXT": "PLAINTEXT"},
        "endpoints": [format!("PLAINTEXT://{host}:9092")],
        "jmx_port": -1, "host": host, "port": 9092, "version": 5,
        "timestamp": timestamp_ms.to_string(),
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

/// Asserts that the stack got one SUCCESS with UniqueId = `inst` (and completed) and the
/// launch hook one CONTINUE for `inst`.
async fn told_success(inst: &str, stack: &str) {
    let signals = signals_for(inst).await;
    assert_eq!(signals.len(), 1, "{signals:?}");
    assert_eq!(signals[0].status, "SUCCESS");
    assert_eq!(signals[0].unique_id, inst);
    assert_eq!(signals[0].stack_name, stack);
    assert_eq!(signals[0].logical_resource_id, LOGICAL_ID);
    assert_eq!(stack_status(stack).await, "CREATE_COMPLETE");
    let completed: Vec<_> = lifecycle_for(inst)
        .await
        .into_iter()
        .filter(|a| a.kind == "complete")
        .collect();
    assert_eq!(completed.len(), 1, "{completed:?}");
    assert_eq!(completed[0].result.as_deref(), Some("CONTINUE"));
    assert_eq!(completed[0].hook, HOOK);
}

/// Asserts that `signal` (spawned as `agent`) is still waiting for the broker after the
/// launch hook got a heartbeat, and has told nobody anything.
async fn still_waiting(
    inst: &str,
    agent: &tokio::task::JoinHandle<std::io::Result<std::process::Output>>,
) {
    let beats = || async {
        lifecycle_for(inst)
            .await
            .iter()
            .filter(|a| a.kind == "heartbeat")
            .count()
    };
    let before = beats().await;
    eventually(Duration::from_secs(60), "a heartbeat", || async {
        beats().await > before
    })
    .await;
    assert!(
        !agent.is_finished(),
        "signal ended before the broker served"
    );
    assert!(signals_for(inst).await.is_empty());
    assert!(
        lifecycle_for(inst)
            .await
            .iter()
            .all(|a| a.kind == "heartbeat"),
        "completed the hook before the broker served"
    );
}

/// Awaits a spawned `signal` and asserts it sent SUCCESS and CONTINUE; returns its stderr.
async fn succeeded(
    agent: tokio::task::JoinHandle<std::io::Result<std::process::Output>>,
) -> String {
    let out = tokio::time::timeout(Duration::from_secs(60), agent)
        .await
        .expect("signal ends once the broker serves")
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let sent: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sent["cloudformation"], "SUCCESS", "{stderr}");
    assert_eq!(sent["lifecycle"], "CONTINUE", "{stderr}");
    stderr
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
    still_waiting(&inst, &agent).await;

    // Kafka registers as this node.
    zk.delete("/brokers/ids/0", None).await.unwrap();
    register(&zk, 0, &ip).await;
    succeeded(agent).await;
    told_success(&inst, &stack).await;
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
    // Every AWS answer 200 ms late: a journal written after the hook's answer (not before its
    // call) shows as written 200 ms after the call arrived, whatever the clocks' granularity.
    common::configure(
        &world,
        kafka_testbed::aws::ScopeSettings {
            latency_ms: Some(200),
            ..Default::default()
        },
    )
    .await;
    // A live instance holds the id's ENI: the boot fails `resource_in_use` at its deadline.
    let squatter = common::squat_eni(&world, &eni).await;
    let inst = launch_in(&world, &stack).await;
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
    // The failure was journalled before the hook heard ABANDON: the group may terminate the
    // instance (and the agent with it) as soon as it has the answer.
    let journal = world.host_dir(&inst).join("var/lib/kafka-agent/boot.json");
    let boot: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&journal).unwrap()).unwrap();
    assert_eq!(boot["outcome"], "failure", "{boot}");
    let journalled = std::fs::metadata(&journal)
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let abandoned = lifecycle_for(&inst)
        .await
        .into_iter()
        .find(|a| a.kind == "complete")
        .unwrap();
    assert!(
        journalled <= abandoned.arrived,
        "boot.json written at {journalled}, the ABANDON arrived at {}",
        abandoned.arrived
    );
}

// --- `boot` then `signal`, end to end ----------------------------------------------------

/// The host's rendered server.properties, if any.
fn rendered(world: &World, inst: &str) -> Option<String> {
    std::fs::read_to_string(world.host_dir(inst).join("etc/kafka/server.properties")).ok()
}

/// The `advertised.listeners` value of the host's rendered server.properties.
fn advertised(world: &World, inst: &str) -> String {
    let props = rendered(world, inst).expect("boot rendered server.properties");
    props
        .lines()
        .find_map(|l| l.strip_prefix("advertised.listeners="))
        .unwrap_or_else(|| panic!("no advertised.listeners in:\n{props}"))
        .to_string()
}

/// A fresh node in a stack and a group with a launch hook runs `boot`, then `signal`: nothing
/// is told until the broker registers at the address boot rendered (the test plays Kafka),
/// then SUCCESS with UniqueId = the instance and CONTINUE. Whichever backend holds the claims,
/// the registration is read where `[zookeeper] connect` points, below its chroot.
async fn boots_then_signals(backend: Backend) {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let mut cluster = Cluster::new(&world, backend, 1, true);
    cluster.render = true;
    let stack = stack(&format!("s-{}", cluster.name)).await;
    let (_, ip, _) = cluster.resources_for(&world, 0, "a").await;
    let inst = launch_in(&world, &stack).await;
    group(&world, &format!("g-{}", cluster.name), &[&inst]).await;
    let keys =
        format!("lifecycle_hook = \"{HOOK}\"\nheartbeat_seconds = 1\nready_timeout_seconds = 120");
    dropin(&world, &cluster, &inst, &keys);

    let booted = cluster.boot(&world, &inst).await.unwrap();
    assert_eq!(booted["claim"]["id"], 0, "{booted}");
    assert_eq!(booted["attach"]["eni"]["ips"][0], ip.as_str(), "{booted}");
    // A successful boot tells nobody: SUCCESS waits for the broker.
    assert!(signals_for(&inst).await.is_empty());
    assert!(
        lifecycle_for(&inst)
            .await
            .iter()
            .all(|a| a.kind != "complete")
    );
    assert_eq!(advertised(&world, &inst), format!("PLAINTEXT://{ip}:9092"));
    let zk = cluster.zk().await;
    if backend == Backend::Cwl {
        // The claims are in CloudWatch Logs; ZooKeeper is only where Kafka registers.
        assert_eq!(zk.check_stat(&cluster.claim_path()).await.unwrap(), None);
    }

    // A predecessor's registration at the same address (the ENI came over with the id), from
    // before this boot, its session not yet expired (a killed broker's lasts its timeout):
    // not this node's broker, which fails to register while it is there (NodeExists).
    register_at(&zk, 0, &ip, common::now_ms() - 60_000).await;
    let agent = tokio::spawn(signal_command(&world, &cluster, &inst, &keys).output());
    still_waiting(&inst, &agent).await;

    // The old session expires; Kafka (restarted) registers what it advertises.
    zk.delete("/brokers/ids/0", None).await.unwrap();
    register(&zk, 0, &ip).await;
    succeeded(agent).await;
    told_success(&inst, &stack).await;
}

#[tokio::test]
async fn a_fresh_node_boots_then_signals_success_zookeeper() {
    boots_then_signals(Backend::Zk).await;
}

#[tokio::test]
async fn a_fresh_node_boots_then_signals_success_cloudwatch_logs() {
    boots_then_signals(Backend::Cwl).await;
}

// --- another node's data --------------------------------------------------------------------

fn run(program: &str, args: &[&std::ffi::OsStr]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{program} {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every file and directory below `root`: (mode, mtime, its nanoseconds, content) by
/// relative path.
type Files = std::collections::BTreeMap<PathBuf, (u32, i64, i64, Vec<u8>)>;

fn files(root: &std::path::Path) -> Files {
    use std::os::unix::fs::MetadataExt;
    let mut out = Files::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let m = std::fs::symlink_metadata(&path).unwrap();
            let content = if m.is_file() {
                std::fs::read(&path).unwrap()
            } else {
                todo.push(path.clone());
                Vec::new()
            };
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            out.insert(rel, (m.mode(), m.mtime(), m.mtime_nsec(), content));
        }
    }
    out
}

/// Makes `vol`'s image (before it is ever attached) a 1 GiB XFS volume whose log directory
/// holds `meta` as its meta.properties, and a segment: another node's data. Returns the
/// image's path and its files.
fn foreign_volume(world: &World, vol: &str, meta: &str) -> (PathBuf, Files) {
    let img = world.dir.join("volumes").join(format!("{vol}.img"));
    std::fs::create_dir_all(img.parent().unwrap()).unwrap();
    std::fs::File::create(&img)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    run("mkfs.xfs", &["-q".as_ref(), img.as_ref()]);
    let at = world.dir.join(format!("prepare-{vol}"));
    std::fs::create_dir_all(&at).unwrap();
    run(
        "mount",
        &["-o".as_ref(), "loop".as_ref(), img.as_ref(), at.as_ref()],
    );
    let logs = at.join(kafka_agent::storage::KAFKA_LOG_DIR);
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("meta.properties"), meta).unwrap();
    std::fs::write(logs.join("00000000000000000000.log"), "their records").unwrap();
    let before = files(&at);
    run("umount", &[at.as_ref()]);
    (img, before)
}

/// The files on an image, read through a read-only loop device (so reading writes nothing),
/// without log recovery.
fn files_on(world: &World, img: &std::path::Path) -> Files {
    let at = world.dir.join("inspect");
    std::fs::create_dir_all(&at).unwrap();
    run(
        "mount",
        &[
            "-o".as_ref(),
            "loop,ro,norecovery".as_ref(),
            img.as_ref(),
            at.as_ref(),
        ],
    );
    let found = files(&at);
    run("umount", &[at.as_ref()]);
    found
}

fn sha256sum(path: &std::path::Path) -> String {
    run("sha256sum", &[path.as_ref()])
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// What [`boot_on_another_nodes_data`] set up and how the boot ended.
struct ForeignBoot {
    world: World,
    cluster: Cluster,
    stack: String,
    inst: String,
    vol: String,
    img: PathBuf,
    files_before: Files,
    sha256_before: String,
    code: i32,
    stderr: String,
}

/// A node in a stack and a group with a launch hook runs `boot` where the volume tagged for
/// id 0 holds broker 3's data, of another cluster.
async fn boot_on_another_nodes_data() -> ForeignBoot {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let mut cluster = Cluster::new(&world, Backend::Zk, 1, true);
    cluster.render = true;
    let stack = stack(&format!("s-{}", cluster.name)).await;
    let (_, _, vol) = cluster.resources_for(&world, 0, "a").await;
    let (img, files_before) = foreign_volume(
        &world,
        &vol,
        "version=0\nbroker.id=3\ncluster.id=other-cluster\n",
    );
    let sha256_before = sha256sum(&img);
    let inst = launch_in(&world, &stack).await;
    group(&world, &format!("g-{}", cluster.name), &[&inst]).await;
    dropin(
        &world,
        &cluster,
        &inst,
        &format!("lifecycle_hook = \"{HOOK}\""),
    );
    let (code, stderr) = cluster.boot(&world, &inst).await.unwrap_err();
    ForeignBoot {
        world,
        cluster,
        stack,
        inst,
        vol,
        img,
        files_before,
        sha256_before,
        code,
        stderr,
    }
}

#[tokio::test]
async fn a_boot_that_meets_another_nodes_data_fails_and_writes_nothing() {
    let ForeignBoot {
        world,
        cluster,
        stack,
        inst,
        vol,
        img,
        files_before,
        code,
        stderr,
        ..
    } = boot_on_another_nodes_data().await;
    assert_eq!(code, 8, "{stderr}");
    assert!(stderr.contains("[identity_mismatch]"), "{stderr}");

    // FAILURE with the kind and the reason, ABANDON on the hook.
    let reason = told_failure(&world, &inst, &stack).await;
    assert!(
        reason.starts_with(&format!(
            "identity_mismatch: {vol} holds node 3 of cluster other-cluster, expected node 0"
        )),
        "{reason}"
    );

    // `status` is failed, naming the kind.
    let out = cluster
        .command(&world, &inst, &["status"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("[identity_mismatch]"), "{stdout}");
    let out = cluster
        .command(&world, &inst, &["status", "--json"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["health"], "failed", "{v:#}");
    assert_eq!(
        v["last_boot"]["error"]["kind"], "identity_mismatch",
        "{v:#}"
    );

    // Nothing was written: no file on the volume, no mount, fstab line or config.
    let data = world.host_dir(&inst).join("var/lib/kafka");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(data.to_str().unwrap()),
        "left mounted: {mountinfo}"
    );
    assert!(!world.host_dir(&inst).join("etc/fstab").exists());
    assert_eq!(rendered(&world, &inst), None, "rendered for another's data");
    let after = files_on(&world, &img);
    assert_eq!(after.len(), 3, "{after:?}");
    assert_eq!(after, files_before, "the volume's files changed");
}

/// Another node's volume is left byte for byte. A plain read-only XFS mount of a writable
/// device still writes to it (an unmount record into the log, the superblock's LSN and CRC):
/// the identity gate looks with `norecovery`. Seen failing with `ro` alone.
#[tokio::test]
async fn a_boot_that_meets_another_nodes_data_leaves_the_volume_byte_for_byte() {
    let f = boot_on_another_nodes_data().await;
    assert_eq!(f.code, 8, "{}", f.stderr);
    assert_eq!(
        sha256sum(&f.img),
        f.sha256_before,
        "the volume was written to"
    );
}

// --- kraft: the advertised listener, and the readiness command -------------------------------

/// A `[kafka]` table in kraft mode (broker and controller; the default listeners, PLAINTEXT
/// on 9092 and CONTROLLER on 9093) rendering to the host's etc/kafka; to follow `[signal]`
/// keys in [`dropin`].
fn kraft(world: &World, inst: &str) -> String {
    format!(
        "\n[kafka]\nmode = \"kraft\"\noutput = \"{}\"\nquorum_voters = [\"0@kafka-0.internal.example:9093\"]\n\
         format_command = [\"{}\", \"format\"]\n[storage]\ncluster_id = \"q1w2e3r4t5y6u7i8o9p0aa\"\n",
        world
            .host_dir(inst)
            .join("etc/kafka/server.properties")
            .display(),
        common::standin_kafka_storage().display()
    )
}

/// Listens on `at` inside the instance's network namespace, as Kafka would bind. The kernel
/// completes connections into the backlog; nobody needs to accept them.
fn listen(world: &World, inst: &str, at: std::net::SocketAddr) -> std::net::TcpListener {
    testbed::netns::in_netns(&world.netns(inst), move || std::net::TcpListener::bind(at))
        .unwrap()
        .unwrap_or_else(|e| panic!("listening on {at} in {inst}: {e}"))
}

/// A kraft node booted in a stack and a group with a launch hook, with `keys` in `[signal]`.
/// Returns (stack, instance, its ENI address, the drop-in's keys for [`signal_command`],
/// which rewrites the drop-in).
async fn kraft_node(
    world: &World,
    cluster: &Cluster,
    keys: &str,
) -> (String, String, std::net::IpAddr, String) {
    let stack = stack(&format!("s-{}", cluster.name)).await;
    let (_, ip, _) = cluster.resources_for(world, 0, "a").await;
    let inst = launch_in(world, &stack).await;
    group(world, &format!("g-{}", cluster.name), &[&inst]).await;
    let keys = format!("{keys}\n{}", kraft(world, &inst));
    dropin(world, cluster, &inst, &keys);
    let booted = cluster.boot(world, &inst).await.unwrap();
    assert_eq!(booted["claim"]["id"], 0, "{booted}");
    (stack, inst, ip.parse().unwrap(), keys)
}

#[tokio::test]
async fn kraft_success_once_the_advertised_listener_accepts_connections() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let cluster = Cluster::new(&world, Backend::Zk, 1, true);
    let keys =
        format!("lifecycle_hook = \"{HOOK}\"\nheartbeat_seconds = 1\nready_timeout_seconds = 120");
    let (stack, inst, ip, keys) = kraft_node(&world, &cluster, &keys).await;
    assert!(
        advertised(&world, &inst).contains(&format!("PLAINTEXT://{ip}:9092")),
        "{}",
        advertised(&world, &inst)
    );

    // Kafka bound to loopback only, and the controller listener: not the advertised one.
    let _loopback = listen(&world, &inst, "127.0.0.1:9092".parse().unwrap());
    let _controller = listen(&world, &inst, (ip, 9093).into());
    let agent = tokio::spawn(signal_command(&world, &cluster, &inst, &keys).output());
    still_waiting(&inst, &agent).await;

    // Kafka listens at its advertised address.
    let _broker = listen(&world, &inst, (ip, 9092).into());
    succeeded(agent).await;
    told_success(&inst, &stack).await;
}

#[tokio::test]
async fn kraft_waits_for_the_ready_command_too() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let cluster = Cluster::new(&world, Backend::Zk, 1, true);
    let flag = world.dir.join("ready-flags");
    std::fs::create_dir_all(&flag).unwrap();
    // The command sees the id in its environment: it passes once `ready-0` exists.
    let keys = format!(
        "lifecycle_hook = \"{HOOK}\"\nheartbeat_seconds = 1\nready_timeout_seconds = 120\n\
         ready_command = [\"/bin/sh\", \"-c\", \"test -f {}/ready-$KAFKA_AGENT_ID\"]",
        flag.display()
    );
    let (stack, inst, ip, keys) = kraft_node(&world, &cluster, &keys).await;
    let _broker = listen(&world, &inst, (ip, 9092).into());
    let agent = tokio::spawn(signal_command(&world, &cluster, &inst, &keys).output());
    still_waiting(&inst, &agent).await;

    std::fs::write(flag.join("ready-0"), "").unwrap();
    let stderr = succeeded(agent).await;
    assert!(
        stderr.contains("ready_command /bin/sh exited"),
        "what held it back was the command: {stderr}"
    );
    told_success(&inst, &stack).await;
}

#[tokio::test]
async fn kraft_not_ready_when_nothing_listens_at_the_advertised_address() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let cluster = Cluster::new(&world, Backend::Zk, 1, true);
    let keys = format!("lifecycle_hook = \"{HOOK}\"\nready_timeout_seconds = 2");
    let (stack, inst, ip, keys) = kraft_node(&world, &cluster, &keys).await;
    // Only the controller listener is up.
    let _controller = listen(&world, &inst, (ip, 9093).into());

    let out = signal_command(&world, &cluster, &inst, &keys)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(10), "{stderr}");
    assert!(stderr.contains("[not_ready]"), "{stderr}");
    assert!(
        stderr.contains(&format!("connecting to {ip}:9092")),
        "{stderr}"
    );

    let reason = told_failure(&world, &inst, &stack).await;
    assert!(
        reason.starts_with(&format!("not_ready: broker 0 did not serve at {ip}")),
        "{reason}"
    );
}
