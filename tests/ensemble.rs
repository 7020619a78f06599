//! The ZooKeeper role end to end: an ensemble deployed through the testbed's Auto Scaling
//! Group, the real ZooKeeper 3.8 server in every instance on its per-myid ENI's address, the
//! agent claiming myids through CloudWatch Logs, rendering zoo.cfg and joining by reconfig.
//! On the testbed; needs root.

mod common;

use std::time::{Duration, Instant};

use common::deployed::{CLUSTERS, agent, status};
use kafka_testbed::ensemble::{DeployedEnsemble, EnsembleSpec};
use kafka_testbed::{self as testbed, World};

const QUORUM: Duration = Duration::from_secs(180);

async fn deploy(
    world: &World,
    name: &str,
    tweak: impl FnOnce(&mut EnsembleSpec),
) -> DeployedEnsemble {
    let mut spec = EnsembleSpec::new(name, &["a", "b", "c"], agent());
    tweak(&mut spec);
    let ens = DeployedEnsemble::deploy(world, testbed::shared(), spec)
        .await
        .unwrap();
    if let Err(e) = ens.wait_quorum(world, 3, QUORUM).await {
        panic!("{e:#}");
    }
    ens
}

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

/// Every member's `status`: exit 0, a voting member.
async fn all_healthy(world: &World, ens: &DeployedEnsemble) {
    for (myid, inst) in ens.claims(world).await.unwrap() {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let (code, out) = status(world, &inst).await;
            if code == 0 {
                assert!(out.contains("a voting member"), "myid {myid}: {out}");
                break;
            }
            assert!(
                Instant::now() < until,
                "myid {myid} on {inst}: status exit {code}\n{out}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Three fresh instances form an ensemble with myids 1, 2 and 3 (a bootstrap: every member
/// present, none holding data); then member 2's instance is terminated, and its replacement
/// claims myid 2, attaches its volume, rejoins, and the ensemble has three voters again with
/// a znode written before still there.
#[tokio::test(flavor = "multi_thread")]
async fn three_fresh_instances_form_an_ensemble_and_a_replaced_member_rejoins_with_its_data() {
    let _turn = CLUSTERS.acquire().await.unwrap();
    let world = World::create(testbed::shared(), &["a", "b", "c"])
        .await
        .unwrap();
    let ens = deploy(&world, "zk-heal", |_| {}).await;
    let claims = ens.claims(&world).await.unwrap();
    assert_eq!(
        claims.keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3],
        "{claims:?}"
    );
    // A majority bootstrapped the ensemble together; a member that looked once it served
    // joined it.
    let plans: Vec<serde_json::Value> = claims
        .values()
        .map(|inst| world.agent_journal(inst, "ensemble"))
        .collect();
    let bootstrapped = plans.iter().filter(|j| j["plan"] == "bootstrap").count();
    assert!(
        bootstrapped >= 2
            && plans
                .iter()
                .all(|j| j["plan"] == "bootstrap" || j["plan"] == "join"),
        "{plans:#?}"
    );
    all_healthy(&world, &ens).await;
    let from = claims[&1].clone();
    ens.zk_cli(&world, &from, &["create", "/kept", "before"])
        .await
        .unwrap();

    let victim = ens.terminate(&world, 2).await.unwrap();
    let replacement = successor(&world, &ens, 2, &victim).await;
    if let Err(e) = ens.wait_quorum(&world, 3, QUORUM).await {
        panic!("{e:#}");
    }
    let attach = world.agent_journal(&replacement, "attach");
    assert_eq!(
        attach["volume"]["id"].as_str(),
        Some(ens.member(2).unwrap().volume.as_str()),
        "{attach}"
    );
    assert_eq!(
        attach["eni"]["id"].as_str(),
        Some(ens.member(2).unwrap().eni.as_str()),
        "{attach}"
    );
    let j = world.agent_journal(&replacement, "ensemble");
    assert_eq!(j["plan"], "join", "{j}");
    assert_eq!(j["holds_data"], true, "{j}");
    let got = ens
        .zk_cli(&world, &replacement, &["get", "/kept"])
        .await
        .unwrap();
    assert!(got.lines().any(|l| l.trim() == "before"), "{got}");
    all_healthy(&world, &ens).await;
}
