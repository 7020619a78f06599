//! Leaving cleanly end to end: a cluster deployed through the testbed's Auto Scaling Group with
//! a termination lifecycle hook, and `kafka-agent watch` on every broker (as
//! kafka-agent-watch.service). When the group terminates a broker's instance, first by a
//! scale-in through the desired capacity, then by TerminateInstanceInAutoScalingGroup (which
//! replaces it), the watchdog sees IMDS's target lifecycle state turn `Terminated`, stops the
//! broker (the testbed's stand-in for `systemctl stop kafka.service`), unmounts, detaches the
//! volume and the ENI and completes the hook; its successor attaches both at once.
//!
//! EC2 here keeps a terminated instance's volumes and ENIs for [`RELEASE_DELAY`] s, as EC2
//! takes its time: a successor that found them still held by its dead predecessor would have
//! waited for that release and said so (`how: released`). On the testbed; needs root.

mod common;

use std::time::{Duration, Instant};

use common::deployed::{CLUSTERS, broker_instances, deploy_leaving};
use kafka_testbed::aws::ScopeSettings;
use kafka_testbed::cluster::{Deployed, ask_broker};
use kafka_testbed::{self as testbed, World};

/// Seconds EC2 keeps a terminated instance's volumes and ENIs attached here.
const RELEASE_DELAY: f64 = 15.0;

fn autoscaling(world: &World) -> aws_sdk_autoscaling::Client {
    aws_sdk_autoscaling::Client::new(&testbed::shared().moto.sdk_config(&world.scope))
}

fn read_json(world: &World, inst: &str, name: &str) -> serde_json::Value {
    world.agent_journal(inst, name)
}

fn watch_log(world: &World, inst: &str) -> String {
    std::fs::read_to_string(world.host_dir(inst).join("var/log/kafka-agent-watch.log"))
        .unwrap_or_default()
}

/// Waits until EC2 reports `inst` terminated.
async fn terminated(world: &World, inst: &str) {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let state = testbed::shared().moto.state(&world.vpc_id).await.unwrap();
        if state
            .instances
            .iter()
            .any(|i| i.id == inst && i.state == "terminated")
        {
            return;
        }
        assert!(
            Instant::now() < until,
            "{inst} was never terminated; leave.json {}\n{}",
            read_json(world, inst, "leave"),
            watch_log(world, inst)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The leave of `inst`, checked: every step done, the volume and the ENI released (as EC2
/// saw it) and the hook completed, all before EC2 began to take the instance down (the host's
/// `shutdown`). Returns the broker id it served.
async fn left_cleanly(world: &World, cluster: &Deployed, inst: &str, eni: &str, volume: &str) {
    terminated(world, inst).await;
    let j = read_json(world, inst, "leave");
    let log = watch_log(world, inst);
    eprintln!("{inst} left: {j}");
    let step = |name: &str| {
        j["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["step"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} step in {j}\n{log}"))
    };
    for name in ["stop", "unmount", "volume", "eni", "complete"] {
        assert_eq!(step(name)["outcome"], "ok", "{name}: {j}\n{log}");
    }
    assert_eq!(j["completed"], "CONTINUE", "{j}");
    assert_eq!(j["lifecycle_hook"], "leave", "{j}");
    assert_eq!(j["auto_scaling_group"], cluster.group.as_str(), "{j}");
    assert_eq!(step("volume")["detail"], volume, "{j}");
    assert_eq!(step("eni")["detail"], eni, "{j}");
    // In order, and before EC2 began to shut the instance down.
    let at = |name: &str| step(name)["finished_unix_ms"].as_u64().unwrap() as u128;
    let shutdown = world
        .boot_events(inst)
        .into_iter()
        .find(|(_, e)| e == "shutdown")
        .map(|(t, _)| t)
        .unwrap_or_else(|| panic!("{inst} never shut down"));
    assert!(at("stop") <= at("unmount"), "{j}");
    assert!(at("unmount") <= step("volume")["started_unix_ms"].as_u64().unwrap() as u128);
    for name in ["volume", "eni"] {
        assert!(
            at(name) <= at("complete") && at(name) < shutdown,
            "{name} released at {}, the hook completed at {}, shutdown at {shutdown}: {j}",
            at(name),
            at("complete")
        );
    }
    // The hook's completion was asked for before the shutdown began (EC2 shuts the instance
    // down once it has the CONTINUE; its answer may reach the agent after that).
    let asked = step("complete")["started_unix_ms"].as_u64().unwrap() as u128;
    assert!(asked <= shutdown, "{j}");
    // The broker stopped through its unit (SIGTERM: it exited 0, closing its session).
    assert!(
        world
            .boot_events(inst)
            .iter()
            .any(|(t, e)| e.starts_with("kafka: exited (exit status: 0)") && *t < shutdown),
        "{:?}",
        world.boot_events(inst)
    );
    // EC2 saw them detached from it: nothing of the cluster is attached to the dead instance.
    let state = testbed::shared().moto.state(&world.vpc_id).await.unwrap();
    let held = state
        .enis
        .iter()
        .any(|e| e.id == eni && e.attachment.as_ref().is_some_and(|a| a.instance_id == inst))
        || state.volumes.iter().any(|v| {
            v.id == volume && v.attachment.as_ref().is_some_and(|a| a.instance_id == inst)
        });
    assert!(!held, "{state:?}");
}

/// The successor serving `id` attached its ENI and volume as free ones: no dead holder was
/// seen, nothing released or taken over.
fn attached_at_once(world: &World, successor: &str, id: u32) {
    let claim = read_json(world, successor, "claim");
    assert_eq!(claim["id"], id, "{claim}");
    let attach = read_json(world, successor, "attach");
    eprintln!(
        "{successor} took broker {id}: {attach}; boot {}",
        read_json(world, successor, "boot")["steps"]
    );
    assert_eq!(attach["eni"]["how"], "attached", "{attach}");
    assert_eq!(attach["volume"]["how"], "attached", "{attach}");
}

/// The broker ids' instances, waiting until `id` is served by an instance not in `old`.
async fn successor_of(world: &World, cluster: &Deployed, id: u32, old: &[String]) -> String {
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let serving = cluster.serving().await.unwrap_or_default();
        if let Some(i) = cluster.instance_of(world, id).await.unwrap()
            && !old.contains(&i)
            && serving.contains_key(&id)
        {
            return i;
        }
        assert!(
            Instant::now() < until,
            "broker {id} not served again; the group: {:?}",
            cluster.instances().await
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn scale_in_and_replacement_leave_cleanly(backend: &str) {
    let _turn = CLUSTERS.acquire().await.unwrap();
    let world = World::create(testbed::shared(), &["a", "b", "c"])
        .await
        .unwrap();
    common::configure(
        &world,
        ScopeSettings {
            release_delay: Some(RELEASE_DELAY),
            ..Default::default()
        },
    )
    .await;
    let cluster = deploy_leaving(&world, backend).await;
    let nodes = broker_instances(&world, &cluster).await;
    for b in &cluster.brokers {
        let addr = format!("{}:9092", b.ip);
        let answer = ask_broker(
            &world,
            &nodes[0],
            &addr,
            &format!("APPEND orders b{}", b.id),
        );
        assert!(answer.unwrap()[0].starts_with("OK"));
    }
    let asg = autoscaling(&world);

    // Scale in by one: the group picks the instance, which leaves.
    asg.set_desired_capacity()
        .auto_scaling_group_name(&cluster.group)
        .desired_capacity(2)
        .send()
        .await
        .unwrap();
    let members = cluster.instances().await.unwrap();
    let leaving: Vec<&String> = members
        .iter()
        .filter(|(_, (_, state, _))| state == "Terminating:Wait")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(leaving.len(), 1, "{members:?}");
    let leaver = leaving[0].clone();
    let id = nodes.iter().position(|n| *n == leaver).unwrap() as u32;
    let b = cluster.brokers[id as usize].clone();
    left_cleanly(&world, &cluster, &leaver, &b.eni, &b.volume).await;
    // Out again: the new instance takes the freed id at once.
    asg.set_desired_capacity()
        .auto_scaling_group_name(&cluster.group)
        .desired_capacity(3)
        .send()
        .await
        .unwrap();
    let successor = successor_of(&world, &cluster, id, &nodes).await;
    attached_at_once(&world, &successor, id);

    // A replacement: broker 2's instance terminated through the group, which replaces it.
    let nodes = broker_instances(&world, &cluster).await;
    let id = if id == 2 { 0 } else { 2 };
    let b = cluster.brokers[id as usize].clone();
    let victim = nodes[id as usize].clone();
    asg.terminate_instance_in_auto_scaling_group()
        .instance_id(&victim)
        .should_decrement_desired_capacity(false)
        .send()
        .await
        .unwrap();
    left_cleanly(&world, &cluster, &victim, &b.eni, &b.volume).await;
    let replacement = successor_of(&world, &cluster, id, &nodes).await;
    attached_at_once(&world, &replacement, id);

    // Every record is still there, served from the volumes that moved.
    cluster
        .wait_serving(&world, Duration::from_secs(60))
        .await
        .unwrap();
    let nodes = broker_instances(&world, &cluster).await;
    for b in &cluster.brokers {
        let addr = format!("{}:9092", b.ip);
        let read = ask_broker(&world, &nodes[0], &addr, "READ orders").unwrap();
        assert_eq!(read, vec![format!("b{}", b.id)], "broker {}", b.id);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn scale_in_and_replacement_leave_cleanly_and_the_successor_attaches_at_once_zookeeper() {
    scale_in_and_replacement_leave_cleanly("zookeeper").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scale_in_and_replacement_leave_cleanly_and_the_successor_attaches_at_once_cloudwatch_logs()
{
    scale_in_and_replacement_leave_cleanly("cloudwatch-logs").await;
}

/// The same replacement without a termination hook: EC2 takes the instance down at once and
/// keeps its volume and ENI for [`RELEASE_DELAY`] s, and the successor waits for that release.
/// What the tests above show the hook saves.
#[tokio::test(flavor = "multi_thread")]
async fn without_a_termination_hook_the_successor_waits_for_ec2_to_release() {
    let _turn = CLUSTERS.acquire().await.unwrap();
    let world = World::create(testbed::shared(), &["a", "b", "c"])
        .await
        .unwrap();
    common::configure(
        &world,
        ScopeSettings {
            release_delay: Some(RELEASE_DELAY),
            ..Default::default()
        },
    )
    .await;
    let cluster = common::deployed::deploy(&world, "zookeeper").await;
    let nodes = broker_instances(&world, &cluster).await;
    autoscaling(&world)
        .terminate_instance_in_auto_scaling_group()
        .instance_id(&nodes[1])
        .should_decrement_desired_capacity(false)
        .send()
        .await
        .unwrap();
    let successor = successor_of(&world, &cluster, 1, &nodes).await;
    let attach = read_json(&world, &successor, "attach");
    assert_eq!(attach["eni"]["how"], "released", "{attach}");
    assert_eq!(attach["volume"]["how"], "released", "{attach}");
    assert_eq!(
        read_json(&world, &nodes[1], "leave"),
        serde_json::Value::Null
    );
}

/// Something keeps the data directory busy on the leaving instance: it is not unmounted, so
/// the volume is never detached (EC2 releases it after the termination) while the ENI goes,
/// and the hook is completed all the same.
#[tokio::test(flavor = "multi_thread")]
async fn a_busy_volume_is_never_detached_and_is_left_to_ec2() {
    let _turn = CLUSTERS.acquire().await.unwrap();
    let world = World::create(testbed::shared(), &["a", "b", "c"])
        .await
        .unwrap();
    common::configure(
        &world,
        ScopeSettings {
            release_delay: Some(RELEASE_DELAY),
            ..Default::default()
        },
    )
    .await;
    let cluster = deploy_leaving(&world, "zookeeper").await;
    let nodes = broker_instances(&world, &cluster).await;
    let victim = nodes[1].clone();
    // A process whose working directory is in the volume's filesystem: umount says busy.
    let mut busy = std::process::Command::new("sleep")
        .arg("600")
        .current_dir(world.host_dir(&victim).join("var/lib/kafka"))
        .spawn()
        .unwrap();
    autoscaling(&world)
        .terminate_instance_in_auto_scaling_group()
        .instance_id(&victim)
        .should_decrement_desired_capacity(false)
        .send()
        .await
        .unwrap();
    terminated(&world, &victim).await;
    let _ = busy.kill();
    let _ = busy.wait();
    let j = read_json(&world, &victim, "leave");
    let outcome = |name: &str| {
        j["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["step"] == name)
            .map(|s| s["outcome"].clone())
            .unwrap_or_default()
    };
    assert_eq!(outcome("stop"), "ok", "{j}");
    assert_eq!(outcome("unmount"), "failed", "{j}");
    assert_eq!(outcome("volume"), "kept", "{j}");
    assert_eq!(outcome("eni"), "ok", "{j}");
    assert_eq!(outcome("complete"), "ok", "{j}");
    // The unmount was tried for 10 s: the hook heard heartbeats meanwhile (every 2 s here).
    assert!(j["heartbeats"].as_u64().unwrap() >= 2, "{j}");
    let beats = testbed::shared()
        .moto
        .lifecycle_actions()
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.kind == "heartbeat" && a.instance_id.as_deref() == Some(victim.as_str()))
        .count();
    assert!(beats >= 2, "{beats} heartbeats recorded");
    let successor = successor_of(&world, &cluster, 1, &nodes).await;
    let attach = read_json(&world, &successor, "attach");
    assert_eq!(attach["eni"]["how"], "attached", "{attach}");
    assert_eq!(attach["volume"]["how"], "released", "{attach}");
}
