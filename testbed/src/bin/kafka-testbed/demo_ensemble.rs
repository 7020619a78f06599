//! The demo on a self-healing ZooKeeper ensemble (`kafka-testbed demo --zookeeper-ensemble`):
//! before the Kafka cluster, a 3-member ensemble deployed through a group of its own (the
//! agent in role zookeeper, the real ZooKeeper 3.8 server in every instance, on its myid's
//! ENI address), which the cluster then uses for its registrations and, with the zookeeper
//! backend, its claims; after the Kafka acts, one more: ZooKeeper member 2's instance dies
//! and the group heals the ensemble as it heals brokers, while every broker keeps serving.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use kafka_testbed::cluster::Deployed;
use kafka_testbed::ensemble::{DeployedEnsemble, EnsembleSpec};
use kafka_testbed::{Services, World};

use crate::demo::status;

/// The member that dies in the act.
const VICTIM: u32 = 2;
/// The ensemble's watchdog: it removes members whose instances are gone (the leader's, by
/// reconfig, never below a quorum); slow to mark a live member unhealthy.
const WATCH: &str = "interval_seconds = 1\nunhealthy_after_seconds = 60\ngrace_period_seconds = 60";
const QUORUM: Duration = Duration::from_secs(180);

/// `myid 1 follower, myid 2 leader, …`.
fn modes_line(modes: &BTreeMap<u32, String>) -> String {
    modes
        .iter()
        .map(|(id, mode)| format!("myid {id} {mode}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Deploys the ensemble `name` over AZs a, b and c, prints its members and waits for its
/// quorum of three.
pub async fn deploy(
    world: &World,
    services: &Services,
    name: &str,
    agent: &Path,
) -> Result<DeployedEnsemble> {
    let mut spec = EnsembleSpec::new(name, &["a", "b", "c"], agent);
    spec.watch = Some(WATCH.into());
    let started = Instant::now();
    let ens = DeployedEnsemble::deploy(world, services, spec).await?;
    println!(
        "ZooKeeper ensemble {name}: stack {}, group {} over 3 AZs; each instance runs the agent \
         (role zookeeper, myids claimed in CloudWatch Logs), then ZooKeeper 3.8",
        ens.stack, ens.group
    );
    for m in &ens.members {
        println!(
            "  myid {}: us-east-1{}, ENI {} ({}), volume {}",
            m.myid, m.az, m.eni, m.ip, m.volume
        );
    }
    ens.wait_quorum(world, 3, QUORUM).await?;
    println!(
        "\nthe ensemble has 3 voters, {:.1} s after its group was created: {}\n",
        started.elapsed().as_secs_f64(),
        modes_line(&ens.modes(world).await)
    );
    Ok(ens)
}

/// Prints `what` once, `at` after the act's start.
struct Timeline {
    t0: Instant,
    seen: BTreeSet<String>,
}

impl Timeline {
    fn event(&mut self, key: &str, what: String) {
        if self.seen.insert(key.to_string()) {
            println!("  +{:>6.2} s  {what}", self.t0.elapsed().as_secs_f64());
        }
    }
}

/// The act: member [`VICTIM`]'s instance is terminated; prints what follows until the
/// replacement holds its myid and the ensemble has three voters again; then checks that
/// every broker still serves and every member's `kafka-agent status` exits 0.
pub async fn heal_a_member(
    world: &World,
    ens: &DeployedEnsemble,
    cluster: &Deployed,
    agent: &Path,
) -> Result<()> {
    let member = ens.member(VICTIM)?.clone();
    println!(
        "\nZooKeeper member {VICTIM} dies (its instance is terminated); the group heals the \
         ensemble, the brokers keep serving:"
    );
    let before: BTreeSet<String> = ens.instances().await?.into_keys().collect();
    let mut timeline = Timeline {
        t0: Instant::now(),
        seen: BTreeSet::new(),
    };
    let victim = ens.terminate(world, VICTIM).await?;
    timeline.event(
        "terminate",
        format!("terminate {victim} (myid {VICTIM}, {})", member.ip),
    );
    let until = Instant::now() + QUORUM;
    let replacement = loop {
        let instances = ens.instances().await.unwrap_or_default();
        if !instances.contains_key(&victim) {
            timeline.event("gone", format!("{victim} left the group"));
        }
        let launched = instances.iter().find(|(i, _)| !before.contains(*i));
        if let Some((inst, (az, _, _))) = launched {
            timeline.event("launch", format!("the group launched {inst} in {az}"));
        }
        let modes = ens.modes(world).await;
        let leader = modes
            .iter()
            .find(|(_, m)| *m == "leader")
            .map(|(id, _)| *id);
        if let (Some(leader), Some(from)) = (leader, ens.running(world).await?.first())
            && let Some(members) = ens.membership(world, from, leader).await?
            && !members.contains_key(&VICTIM)
        {
            timeline.event(
                "removed",
                format!(
                    "myid {VICTIM} is out of the membership (the leader's watchdog: reconfig \
                     -{VICTIM}); voters {:?}",
                    members.keys().collect::<Vec<_>>()
                ),
            );
        }
        if let Some((inst, _)) = launched {
            let claim = world.agent_journal(inst, "claim");
            if claim["id"].as_u64() == Some(VICTIM as u64) {
                timeline.event(
                    "claim",
                    format!(
                        "{inst} claimed myid {VICTIM} ({})",
                        claim["how"].as_str().unwrap_or("?")
                    ),
                );
            }
            let attach = world.agent_journal(inst, "attach");
            if attach["volume"]["id"].is_string() && attach["eni"]["id"].is_string() {
                timeline.event(
                    "attach",
                    format!(
                        "ENI {} ({}) and volume {} attached",
                        attach["eni"]["id"].as_str().unwrap_or(""),
                        member.ip,
                        attach["volume"]["id"].as_str().unwrap_or("")
                    ),
                );
            }
            let plan = world.agent_journal(inst, "ensemble");
            if let Some(p) = plan["plan"].as_str() {
                timeline.event(
                    "plan",
                    format!(
                        "its agent's plan: {p} (holds data: {})",
                        plan["holds_data"].as_bool().unwrap_or(false)
                    ),
                );
            }
            if let Some(mode) = modes.get(&VICTIM) {
                timeline.event(
                    "serves",
                    format!("myid {VICTIM} answers again on {}: {mode}", member.ip),
                );
            }
            if ens.instance_of(world, VICTIM).await?.as_deref() == Some(inst.as_str())
                && modes.len() == 3
                && modes.values().all(|m| m == "leader" || m == "follower")
            {
                break inst.clone();
            }
        }
        if Instant::now() > until {
            bail!(
                "the ensemble did not heal within {QUORUM:?}: modes {modes:?}; the group: {:#?}",
                ens.describe_hosts(world).await
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    ens.wait_quorum(world, 3, Duration::from_secs(60)).await?;
    timeline.event("quorum", "the ensemble has 3 voters again".into());
    let claims = ens.claims(world).await?;
    let modes = ens.modes(world).await;
    println!(
        "\nhealed: myid {VICTIM} serves again at {} on {replacement}",
        member.ip
    );
    for (myid, inst) in &claims {
        println!(
            "  myid {myid} on {inst}: {}",
            modes.get(myid).map(String::as_str).unwrap_or("?")
        );
    }
    cluster
        .wait_serving(world, Duration::from_secs(120))
        .await?;
    let serving = cluster.serving().await?;
    println!(
        "every broker still serves (registered in the ensemble): {}",
        serving
            .iter()
            .map(|(id, host)| format!("broker {id} at {host}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (myid, inst) in &claims {
        let until = Instant::now() + Duration::from_secs(60);
        let (code, line) = loop {
            let (code, line) = status(world, agent, inst).await?;
            if code == 0 || Instant::now() > until {
                break (code, line);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        println!("  {inst} (myid {myid}): kafka-agent status exit {code}: {line}");
        if code != 0 {
            bail!("ZooKeeper member {myid} on {inst} is not healthy: status exit {code}: {line}");
        }
    }
    let kept = claims.len() == 3 && claims.get(&VICTIM) == Some(&replacement);
    if !kept {
        bail!(
            "the ensemble's myids are not 1, 2, 3 with {replacement} on myid {VICTIM}: {claims:?}"
        );
    }
    println!("same myid, same address, 3 voters; zero manual steps");
    Ok(())
}
