//! The ZooKeeper role end to end: an ensemble deployed through the testbed's Auto Scaling
//! Group, the real ZooKeeper 3.8 server in every instance on its per-myid ENI's address, the
//! agent claiming myids through CloudWatch Logs, rendering zoo.cfg and joining by reconfig.
//! On the testbed; needs root.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// `kafka-agent status --json` on the host, validated against tests/status.schema.json.
async fn status_json(world: &World, inst: &str) -> serde_json::Value {
    let config = world.host_dir(inst).join("etc/kafka-agent/agent.toml");
    let mut cmd = world.command(inst, &agent().to_string_lossy()).unwrap();
    cmd.arg("--config").arg(config).args(["status", "--json"]);
    let out = tokio::process::Command::from(cmd).output().await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let errors = common::schema::validate(&common::schema::schema(), &v);
    assert!(errors.is_empty(), "{}\n{v:#}", errors.join("\n"));
    assert_eq!(v["exit_code"], out.status.code().unwrap_or(-1), "{v:#}");
    v
}

/// Every member's `status`: exit 0, a voting member (and its JSON says so, per the schema).
async fn all_healthy(world: &World, ens: &DeployedEnsemble) {
    for (myid, inst) in ens.claims(world).await.unwrap() {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let (code, out) = status(world, &inst).await;
            if code == 0 {
                assert!(out.contains("a voting member"), "myid {myid}: {out}");
                let v = status_json(world, &inst).await;
                assert_eq!(v["role"], "zookeeper", "{v:#}");
                assert_eq!(v["ensemble"]["voting"], true, "{v:#}");
                assert!(
                    matches!(v["ensemble"]["mode"].as_str(), Some("leader" | "follower")),
                    "{v:#}"
                );
                let voters = v["ensemble"]["voters"].as_u64().unwrap();
                assert_eq!(v["ensemble"]["quorum_size"], voters / 2 + 1, "{v:#}");
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
    // Each member made its own superuser password (0600); the joins and removals by reconfig
    // in the other tests run with these.
    let passwords: std::collections::BTreeSet<String> = claims
        .values()
        .map(|inst| {
            let p = world.host_dir(inst).join("etc/kafka-agent/zk-super");
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", p.display());
            std::fs::read_to_string(&p).unwrap()
        })
        .collect();
    assert_eq!(passwords.len(), 3, "each member its own password");
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

/// The watchdog's settings for the tests: quick to look, slow to mark.
const WATCH: &str = "interval_seconds = 1\nunhealthy_after_seconds = 60\ngrace_period_seconds = 60";

/// `srvr`'s `Node count:` of member `myid`, asked from `from`.
async fn node_count(world: &World, ens: &DeployedEnsemble, from: &str, myid: u32) -> Option<u64> {
    let reply = ens.srvr(world, from, myid).await.ok()??;
    reply
        .lines()
        .find_map(|l| l.strip_prefix("Node count:"))
        .and_then(|n| n.trim().parse().ok())
}

/// A replacement whose volume is blank (the old one lost; a new volume tagged for myid 2, and
/// `new`) joins by reconfig (the leader's watchdog removed the gone member) and syncs from the
/// leader: its server holds the znodes written before it existed.
#[tokio::test(flavor = "multi_thread")]
async fn a_replacement_with_a_blank_volume_joins_by_reconfig_and_syncs_from_the_leader() {
    let _turn = CLUSTERS.acquire().await.unwrap();
    let world = World::create(testbed::shared(), &["a", "b", "c"])
        .await
        .unwrap();
    let name = "zk-blank";
    let ens = deploy(&world, name, |s| s.watch = Some(WATCH.into())).await;
    let claims = ens.claims(&world).await.unwrap();
    let from = claims[&1].clone();
    for n in 0..5 {
        ens.zk_cli(&world, &from, &["create", &format!("/kept{n}"), "before"])
            .await
            .unwrap();
    }
    // Member 2's volume is lost: its tags retired, a new blank volume for myid 2 in its AZ.
    let old = ens.member(2).unwrap().clone();
    world
        .ec2
        .delete_tags()
        .resources(&old.volume)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("kafka-agent:id")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let blank = world
        .create_volume(
            &old.az,
            1,
            &[
                ("kafka-agent:cluster", name),
                ("kafka-agent:role", "zookeeper"),
                ("kafka-agent:id", "2"),
                ("kafka-agent:volume", "new"),
            ],
        )
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
        Some(blank.as_str()),
        "{attach}"
    );
    let j = world.agent_journal(&replacement, "ensemble");
    assert_eq!(j["plan"], "join", "{j}");
    assert_eq!(j["holds_data"], false, "{j}");
    // Removed by the leader's watchdog once its instance was gone, then added back by the
    // replacement's reconfig.
    let removed: Vec<serde_json::Value> = claims
        .values()
        .filter(|i| **i != victim)
        .map(|i| world.agent_journal(i, "ensemble-watch"))
        .collect();
    assert!(
        removed.iter().any(|w| w["removed"]
            .as_array()
            .is_some_and(|r| r.iter().any(|e| e[0] == 2))),
        "{removed:#?}"
    );
    assert_eq!(j["add"], true, "{j}");
    // Synced: its server holds what the leader holds.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let mine = node_count(&world, &ens, &replacement, 2).await;
        let leader = node_count(&world, &ens, &replacement, 1).await;
        if mine.is_some() && mine == leader {
            break;
        }
        assert!(
            Instant::now() < until,
            "member 2 {mine:?} znodes, member 1 {leader:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    all_healthy(&world, &ens).await;
}

/// Kills the ZooKeeper server of member `myid` (its instance keeps running).
fn kill_server(world: &World, inst: &str) {
    let cfg = world.host_dir(inst).join("etc/zookeeper/conf/zoo.cfg");
    let out = std::process::Command::new("pkill")
        .args(["-KILL", "-f"])
        .arg(format!("QuorumPeerMain {}", cfg.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "no ZooKeeper server to kill on {inst}"
    );
}

/// Two of three members down: the member that restarts neither wipes its data nor starts a
/// new ensemble (its server does not serve alone), and `status` says why; when the others
/// return, the ensemble is whole with its data.
#[tokio::test(flavor = "multi_thread")]
async fn with_two_of_three_down_a_restarted_member_waits_and_the_ensemble_comes_back_whole() {
    let _turn = CLUSTERS.acquire().await.unwrap();
    let world = World::create(testbed::shared(), &["a", "b", "c"])
        .await
        .unwrap();
    let ens = deploy(&world, "zk-down", |_| {}).await;
    let claims = ens.claims(&world).await.unwrap();
    ens.zk_cli(&world, &claims[&1], &["create", "/kept", "before"])
        .await
        .unwrap();
    // Members 2 and 3's servers go down; member 1 restarts (a reboot: its boot runs again).
    kill_server(&world, &claims[&2]);
    kill_server(&world, &claims[&3]);
    world.reboot(&claims[&1]).await.unwrap();
    let one = &claims[&1];
    // Its boot resumes on its data (nothing wiped) and its server waits for a quorum.
    let until = Instant::now() + Duration::from_secs(60);
    let (code, out) = loop {
        let j = world.agent_journal(one, "ensemble");
        let (code, out) = status(&world, one).await;
        if j["plan"] == "resume" && out.contains("not serving") {
            break (code, out);
        }
        assert!(Instant::now() < until, "{j}\n{out}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no quorum"), "{out}");
    let v = status_json(&world, one).await;
    assert_eq!(v["ensemble"]["state"], "degraded", "{v:#}");
    assert_eq!(v["ensemble"]["plan"], "resume", "{v:#}");
    let j = world.agent_journal(one, "ensemble");
    assert_eq!(j["holds_data"], true, "{j}");
    // It stays so: no new ensemble of one.
    for _ in 0..10 {
        let srvr = ens.srvr(&world, one, 1).await.unwrap().unwrap_or_default();
        assert!(srvr.contains("not currently serving"), "{srvr}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The others return: whole, with the data.
    world.reboot(&claims[&2]).await.unwrap();
    world.reboot(&claims[&3]).await.unwrap();
    if let Err(e) = ens.wait_quorum(&world, 3, QUORUM).await {
        panic!("{e:#}");
    }
    let got = ens.zk_cli(&world, one, &["get", "/kept"]).await.unwrap();
    assert!(got.lines().any(|l| l.trim() == "before"), "{got}");
    all_healthy(&world, &ens).await;
}

/// What the client writing through a scale-out and scale-in saw.
#[derive(Debug, Default)]
struct Writes {
    /// The sequence numbers whose create was acknowledged.
    acked: Vec<u32>,
    /// Connection losses: the client reconnects (to another member) and goes on.
    reconnects: u32,
    /// Anything else: must stay empty.
    errors: Vec<String>,
    /// Acknowledged znodes missing when read back at the end.
    missing: Vec<u32>,
}

/// Creates `/w/nNNNNNN` every 100 ms through `connect` until `stop`; then reads every
/// acknowledged one back. Runs inside a host's network namespace.
async fn write_all_the_while(connect: String, stop: Arc<AtomicBool>) -> Writes {
    use zookeeper_client::{Client, Error};
    let mut w = Writes::default();
    let connected = Client::connector()
        .with_session_timeout(Duration::from_secs(30))
        .with_connection_timeout(Duration::from_secs(2))
        .connect(&connect)
        .await;
    let zk = match connected {
        Ok(c) => c,
        Err(e) => {
            w.errors.push(format!("connect: {e}"));
            return w;
        }
    };
    let _ = zk.create("/w", b"", &common::persistent()).await;
    let mut n = 0u32;
    while !stop.load(Ordering::Relaxed) {
        match zk
            .create(&format!("/w/n{n:06}"), b"x", &common::persistent())
            .await
        {
            Ok(_) => {
                w.acked.push(n);
                n += 1;
            }
            // The member it was connected to went away (the group terminated it, or it was
            // removed): the session goes on through another. A create whose answer was lost
            // may have applied: taken as done when it exists.
            Err(Error::ConnectionLoss) => w.reconnects += 1,
            Err(Error::Custom(e)) if e.to_string().contains("os error") => w.reconnects += 1,
            Err(Error::NodeExists) => {
                w.acked.push(n);
                n += 1;
            }
            Err(e) => {
                w.errors.push(format!("create n{n:06}: {e}"));
                if w.errors.len() > 20 {
                    return w;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in w.acked.clone() {
        for _ in 0..50 {
            match zk.check_stat(&format!("/w/n{n:06}")).await {
                Ok(Some(_)) => break,
                Ok(None) => {
                    w.missing.push(n);
                    break;
                }
                Err(Error::ConnectionLoss) => {
                    w.reconnects += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(Error::Custom(e)) if e.to_string().contains("os error") => {
                    w.reconnects += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    w.errors.push(format!("reading n{n:06} back: {e}"));
                    break;
                }
            }
        }
    }
    w
}

/// Waits until the membership, as a serving leader knows it, is exactly `ids` as voters.
async fn wait_membership(world: &World, ens: &DeployedEnsemble, ids: &[u32]) {
    let until = Instant::now() + QUORUM;
    loop {
        let modes = ens.modes(world).await;
        let leader = modes
            .iter()
            .find(|(_, m)| *m == "leader")
            .map(|(id, _)| *id);
        let from = ens.running(world).await.unwrap_or_default();
        if let (Some(leader), Some(from)) = (leader, from.first())
            && let Ok(Some(members)) = ens.membership(world, from, leader).await
            && members.keys().copied().collect::<Vec<_>>() == ids
        {
            return;
        }
        assert!(
            Instant::now() < until,
            "membership never {ids:?}: modes {modes:?}; {:#?}",
            ens.describe_hosts(world).await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Scale 3 -> 5 and back to 3 through the group's desired capacity: the new members join by
/// reconfig, the two the group terminates are removed by reconfig (the leader's watchdog),
/// and a client writing all the while sees no error beyond reconnects: every acknowledged
/// write is there at the end, and the membership is the three survivors.
#[tokio::test(flavor = "multi_thread")]
async fn scaling_out_to_five_and_in_to_three_keeps_a_writing_client_whole() {
    let _turn = CLUSTERS.acquire().await.unwrap();
    let world = World::create(testbed::shared(), &["a", "b", "c"])
        .await
        .unwrap();
    // The client's own host, outside the group (launched before the image is set: it runs
    // nothing of the project's).
    let client = world.launch("a", &[]).await.unwrap();
    let ens = deploy(&world, "zk-scale", |s| {
        s.max_members = 6;
        s.watch = Some(WATCH.into());
    })
    .await;
    let connect = ens
        .members
        .iter()
        .map(|m| format!("{}:2181", m.ip))
        .collect::<Vec<_>>()
        .join(",");
    let stop = Arc::new(AtomicBool::new(false));
    // The writer stops when the test ends, passed or not (a failing assertion must not
    // leave the runtime waiting on it).
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop_on_drop = StopOnDrop(stop.clone());
    let ns = world.netns(&client);
    let writer = {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || {
            testbed::netns::block_on_in(&ns, write_all_the_while(connect, stop))
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    ens.set_desired(5).await.unwrap();
    if let Err(e) = ens.wait_quorum(&world, 5, QUORUM).await {
        panic!("{e:#}");
    }
    let five = ens.claims(&world).await.unwrap();
    assert_eq!(five.len(), 5, "{five:?}");
    for (myid, inst) in &five {
        let j = world.agent_journal(inst, "ensemble");
        if *myid > 3 {
            assert_eq!(
                (j["plan"].as_str(), j["add"].as_bool()),
                (Some("join"), Some(true)),
                "{j}"
            );
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    ens.set_desired(3).await.unwrap();
    let until = Instant::now() + QUORUM;
    let survivors = loop {
        let running = ens.running(&world).await.unwrap();
        let claims = ens.claims(&world).await.unwrap();
        let live: Vec<u32> = claims
            .iter()
            .filter(|(_, i)| running.contains(i))
            .map(|(id, _)| *id)
            .collect();
        if running.len() == 3 && live.len() == 3 {
            break live;
        }
        assert!(
            Instant::now() < until,
            "the group never came down to 3: {running:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    wait_membership(&world, &ens, &survivors).await;
    if let Err(e) = ens.wait_quorum(&world, 3, QUORUM).await {
        panic!("{e:#}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let w = writer.await.unwrap().unwrap();
    eprintln!(
        "writes: {} acknowledged, {} reconnects, errors {:?}",
        w.acked.len(),
        w.reconnects,
        w.errors
    );
    assert!(w.errors.is_empty(), "{w:?}");
    assert!(w.missing.is_empty(), "{w:?}");
    assert!(w.acked.len() > 20, "{w:?}");
}

/// The watchdog on a ZooKeeper node: a member whose server died on a running instance is
/// marked Unhealthy (the others keep a quorum without it) and the group replaces it; with two
/// of three servers down, neither of their watchdogs marks anything (replacing a member the
/// quorum would rest on turns a sick node into an outage), and each says why.
#[tokio::test(flavor = "multi_thread")]
async fn the_watchdog_replaces_a_failed_member_only_while_the_others_keep_a_quorum() {
    let _turn = CLUSTERS.acquire().await.unwrap();
    let world = World::create(testbed::shared(), &["a", "b", "c"])
        .await
        .unwrap();
    let quick = "interval_seconds = 1\nunhealthy_after_seconds = 4\ngrace_period_seconds = 5";
    let ens = deploy(&world, "zk-watch", |s| s.watch = Some(quick.into())).await;
    let claims = ens.claims(&world).await.unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await; // past the watchdogs' grace period

    // One member's server dies: its watchdog marks it, the group replaces it.
    kill_server(&world, &claims[&3]);
    let replacement = successor(&world, &ens, 3, &claims[&3]).await;
    if let Err(e) = ens.wait_quorum(&world, 3, QUORUM).await {
        panic!("{e:#}");
    }
    let w = world.agent_journal(&claims[&3], "ensemble-watch");
    assert!(w["marked_unhealthy_unix"].is_u64(), "{w:#}");
    all_healthy(&world, &ens).await;
    tokio::time::sleep(Duration::from_secs(6)).await; // the replacement's watchdog past its grace

    // Two of three servers die: no mark, each watchdog holds back.
    let now = ens.claims(&world).await.unwrap();
    assert_eq!(now[&3], replacement);
    kill_server(&world, &now[&2]);
    kill_server(&world, &now[&3]);
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(
        ens.claims(&world).await.unwrap(),
        now,
        "a member was replaced"
    );
    for id in [2, 3] {
        let w = world.agent_journal(&now[&id], "ensemble-watch");
        assert_eq!(w["decision"], "hold_back", "myid {id}: {w:#}");
        assert!(w["marked_unhealthy_unix"].is_null(), "myid {id}: {w:#}");
        assert!(
            w["summary"].as_str().unwrap_or("").contains("no quorum"),
            "myid {id}: {w:#}"
        );
    }
    let group = ens.instances().await.unwrap();
    assert!(
        group.values().all(|(_, _, health)| health == "Healthy"),
        "{group:?}"
    );
}
