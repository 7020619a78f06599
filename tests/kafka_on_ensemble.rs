//! A Kafka cluster on a self-healing ZooKeeper ensemble, both deployed through their own Auto
//! Scaling Groups in one world (each instance boots its AMI's image: the ensemble's members
//! the agent in role zookeeper and the real ZooKeeper 3.8 server, the brokers the agent and
//! the stand-in broker). The brokers claim their ids and register in the ensemble; a member of
//! the ensemble dies and the group heals it; then a broker dies and comes back with its id,
//! address and records. On the testbed; needs root.

mod common;

use std::time::{Duration, Instant};

use common::deployed::{CLUSTERS, agent, standin, status};
use kafka_testbed::cluster::{Deployed, Spec, ask_broker};
use kafka_testbed::ensemble::{DeployedEnsemble, EnsembleSpec};
use kafka_testbed::{self as testbed, World};

const QUORUM: Duration = Duration::from_secs(180);
/// The ensemble's watchdog: removes members whose instances are gone, slow to mark.
const WATCH: &str = "interval_seconds = 1\nunhealthy_after_seconds = 60\ngrace_period_seconds = 60";

/// The instance holding `myid`, waiting until it is not `old`.
async fn successor(world: &World, ens: &DeployedEnsemble, myid: u32, old: &str) -> String {
    let until = Instant::now() + QUORUM;
    loop {
        if let Some(i) = ens.instance_of(world, myid).await.unwrap()
            && i != old
        {
            return i;
        }
        assert!(
            Instant::now() < until,
            "myid {myid} never claimed again: {:#?}",
            ens.describe_hosts(world).await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The ensemble heals a terminated member under a Kafka cluster that keeps serving, and the
/// cluster heals a terminated broker through the ensemble: the replacement claims id 1 there
/// and registers at the id's address with its records.
#[tokio::test(flavor = "multi_thread")]
async fn a_kafka_cluster_on_a_self_healing_ensemble_heals_a_lost_member_and_a_lost_broker() {
    let _turn = CLUSTERS.acquire().await.unwrap();
    let world = World::create(testbed::shared(), &["a", "b", "c"])
        .await
        .unwrap();
    let mut zk = EnsembleSpec::new(format!("{}-zk", world.id), &["a", "b", "c"], agent());
    zk.watch = Some(WATCH.into());
    let ens = DeployedEnsemble::deploy(&world, testbed::shared(), zk)
        .await
        .unwrap();
    if let Err(e) = ens.wait_quorum(&world, 3, QUORUM).await {
        panic!("{e:#}");
    }
    let name = format!("{}-kafka", world.id);
    let at = ens.zookeeper_at(&world).unwrap();
    let local = at.local.clone();
    let spec = Spec {
        name: name.clone(),
        backend: "zookeeper".into(),
        azs: vec!["a".into(), "b".into(), "c".into()],
        agent: agent(),
        standin: standin(),
        deadline_seconds: 120,
        launch_before_terminate: false,
        termination_hook: false,
        watch: None,
        zookeeper: Some(at),
    };
    let cluster = Deployed::deploy(&world, testbed::shared(), spec)
        .await
        .unwrap();
    if let Err(e) = cluster.wait_serving(&world, QUORUM).await {
        panic!("{e:#}");
    }
    // The claims and registrations live in the ensemble, not in the shared ZooKeeper.
    let zk = zookeeper_client::Client::connect(&format!("{local}/{name}"))
        .await
        .unwrap();
    let mut claims = zk
        .list_children(&format!("/kafka-agent/kafka/{name}/claims"))
        .await
        .unwrap();
    claims.sort();
    assert_eq!(claims, ["0", "1", "2"]);
    let shared = zookeeper_client::Client::connect(&testbed::shared().zookeeper.connect_string())
        .await
        .unwrap();
    assert_eq!(
        shared.check_stat(&format!("/{name}")).await.unwrap(),
        None,
        "the cluster's chroot is in the shared ZooKeeper"
    );
    drop(zk);

    let mut nodes = Vec::new();
    for b in &cluster.brokers {
        nodes.push(cluster.instance_of(&world, b.id).await.unwrap().unwrap());
    }
    let addr = format!("{}:9092", cluster.brokers[1].ip);
    for n in 0..3 {
        let answer = ask_broker(&world, &nodes[0], &addr, &format!("APPEND orders r{n}")).unwrap();
        assert!(answer[0].starts_with("OK"), "{answer:?}");
    }

    // ZooKeeper member 2 dies: its replacement claims myid 2 and the ensemble has three
    // voters again, under brokers that keep serving.
    let victim = ens.terminate(&world, 2).await.unwrap();
    let replacement = successor(&world, &ens, 2, &victim).await;
    if let Err(e) = ens.wait_quorum(&world, 3, QUORUM).await {
        panic!("{e:#}");
    }
    assert_eq!(
        world.agent_journal(&replacement, "attach")["eni"]["id"].as_str(),
        Some(ens.member(2).unwrap().eni.as_str())
    );
    if let Err(e) = cluster.wait_serving(&world, QUORUM).await {
        panic!("{e:#}");
    }
    for (myid, inst) in ens.claims(&world).await.unwrap() {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let (code, out) = status(&world, &inst).await;
            if code == 0 {
                break;
            }
            assert!(
                Instant::now() < until,
                "myid {myid} on {inst}: status exit {code}\n{out}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    // Then broker 1 dies: its replacement claims id 1 through the healed ensemble and serves
    // at the id's address with its records.
    let heal = cluster
        .terminate_and_follow(&world, &testbed::shared().moto, 1, QUORUM)
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
    let claim = world.agent_journal(&replacement, "claim");
    assert_eq!(claim["id"], 1, "{claim}");
    assert_eq!(
        cluster.instance_of(&world, 1).await.unwrap().as_deref(),
        Some(replacement.as_str())
    );
    let read = ask_broker(&world, &nodes[0], &addr, "READ orders").unwrap();
    assert_eq!(read, vec!["r0", "r1", "r2"], "{timeline:#?}");
    for b in &cluster.brokers {
        let inst = cluster.instance_of(&world, b.id).await.unwrap().unwrap();
        let (code, out) = status(&world, &inst).await;
        assert_eq!(code, 0, "broker {} on {inst}: {out}", b.id);
    }
}
