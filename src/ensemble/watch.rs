//! `kafka-agent watch` on a ZooKeeper node: keeps the ensemble's membership true to the group
//! (members whose instances are gone are removed by reconfig, never a live one, never below a
//! quorum) and has the group replace this node when its server fails, only when the others
//! keep a quorum without it.
//!
//! Every `[watch] interval_seconds` it looks at the ensemble as the boot does (each member's
//! ENI and its holder, what each server answers to `srvr`, `/zookeeper/config`), then:
//! - **removals**, by the leader's agent only: [`super::removals`] of the members whose ENI no
//!   running instance holds and whose server does not answer, conditioned on the version read;
//! - **the mark**: this node's server not a serving voter for `unhealthy_after` (past the grace
//!   period after the watchdog's start), and [`super::watchdog_may_mark`] (the other serving
//!   voters are a quorum without it): SetInstanceHealth Unhealthy. Otherwise it holds back and
//!   says why: replacing a member the quorum rests on would turn a sick node into an outage.
//!
//! Each look is journalled as `ensemble-watch.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::fourlw::{Answer, Mode};
use super::step::observe;
use super::{Liveness, Observations};
use crate::aws::Clients;
use crate::config::Settings;

/// `ensemble-watch.json`: the last look and what came of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub checked_unix: u64,
    pub myid: u32,
    /// healthy | failing | hold_back | marked
    pub decision: String,
    pub summary: String,
    pub failing_since_unix: Option<u64>,
    pub marked_unhealthy_unix: Option<u64>,
    /// The members removed by this watchdog, with when.
    pub removed: Vec<(u32, u64)>,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether the server answered as a voter serving (leader or follower of the membership).
fn serving_voters(obs: &Observations) -> BTreeSet<u32> {
    let Some(config) = &obs.config else {
        return BTreeSet::new();
    };
    let voters = config.membership.voters();
    obs.peers
        .iter()
        .filter(|(id, p)| {
            voters.contains(id)
                && matches!(&p.answer, Answer::Serving(s) if matches!(s.mode, Mode::Leader | Mode::Follower))
        })
        .map(|(id, _)| *id)
        .collect()
}

/// Each member of the configuration as the group sees it: dead when no running instance
/// holds its ENI and its server does not answer at all; alive otherwise.
fn liveness(obs: &Observations) -> BTreeMap<u32, Liveness> {
    let Some(config) = &obs.config else {
        return BTreeMap::new();
    };
    config
        .membership
        .members()
        .map(|m| {
            let p = obs.peers.get(&m.id);
            let silent = p.is_none_or(|p| {
                matches!(
                    p.answer,
                    Answer::Refused | Answer::TimedOut | Answer::Failed(_)
                )
            });
            let held = p.is_some_and(|p| p.in_service);
            let l = if silent && !held {
                Liveness::Dead("no running instance holds its ENI".into())
            } else {
                Liveness::Alive("running".into())
            };
            (m.id, l)
        })
        .collect()
}

/// Removes `ids` by one reconfig as the superuser, conditioned on `version`, through `at`.
async fn remove(settings: &Settings, at: SocketAddr, ids: &[u32], version: u64) -> Result<()> {
    let ens = settings
        .ensemble
        .as_ref()
        .context("role zookeeper needs [ensemble]")?;
    let work = async {
        let zk = super::step::superuser_session(ens, at).await?;
        let leaving: Vec<String> = ids.iter().map(u32::to_string).collect();
        zk.update_ensemble(
            zookeeper_client::EnsembleUpdate::Incremental {
                joinings: [].iter().map(String::as_str),
                leavings: leaving.iter().map(String::as_str),
            },
            Some(version as i64),
        )
        .await
        .with_context(|| format!("reconfig removing {ids:?} from version {version:x}"))?;
        Ok::<_, anyhow::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(15), work)
        .await
        .context("no answer in 15 s")?
}

/// The loop; returns on SIGTERM.
pub async fn run(settings: &Settings) -> Result<()> {
    let w = &settings.watch;
    let claim: crate::claim::Claim = crate::journal::read(&settings.paths.state_dir, "claim")?;
    let myid = claim.id;
    let ens = settings
        .ensemble
        .as_ref()
        .context("role zookeeper needs [ensemble]")?;
    let (clients, me) = Clients::connect(Instant::now() + Duration::from_secs(60)).await?;
    tracing::info!(
        myid,
        interval_s = w.interval.as_secs(),
        unhealthy_after_s = w.unhealthy_after.as_secs(),
        grace_period_s = w.grace_period.as_secs(),
        "watching the ZooKeeper server and the ensemble's membership"
    );
    let started = Instant::now();
    let mut failing_since: Option<(Instant, u64)> = None;
    let mut marked: Option<u64> = None;
    let mut removed: Vec<(u32, u64)> = Vec::new();
    let mut last = String::new();
    let mut tick = tokio::time::interval(w.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = term.recv() => {
                tracing::info!("SIGTERM: the watchdog stops");
                return Ok(());
            }
        }
        let at = Instant::now() + w.interval.max(Duration::from_secs(5));
        let obs = match observe(settings, ens, &clients, myid, false, at).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot look at the ensemble");
                continue;
            }
        };
        let serving = serving_voters(&obs);
        let i_serve = serving.contains(&myid);
        let i_lead = matches!(obs.peers.get(&myid).map(|p| &p.answer), Some(Answer::Serving(s)) if s.mode == Mode::Leader);
        // Removals: the leader's agent only, and only of members known gone.
        if i_lead && let Some(config) = &obs.config {
            let gone = super::removals(&config.membership, &liveness(&obs));
            if !gone.is_empty() {
                let local = obs.peers.get(&myid).and_then(|p| p.member.client_address());
                if let Some(local) = local {
                    match remove(settings, local, &gone, config.version).await {
                        Ok(()) => {
                            tracing::info!(removed = ?gone, "removed members whose instances are gone, by reconfig");
                            removed.extend(gone.iter().map(|id| (*id, now_unix())));
                        }
                        Err(e) => tracing::warn!(error = %format!("{e:#}"), "not removed"),
                    }
                }
            }
        }
        // This node's health, and the mark.
        let (decision, summary) = if i_serve {
            failing_since = None;
            (
                "healthy",
                format!(
                    "a serving voting member ({} of {} voters serve)",
                    serving.len(),
                    obs.config
                        .as_ref()
                        .map_or(0, |c| c.membership.voters().len())
                ),
            )
        } else {
            let since = *failing_since.get_or_insert((Instant::now(), now_unix()));
            let answer = obs
                .peers
                .get(&myid)
                .map(|p| format!("{:?}", p.answer))
                .unwrap_or_default();
            if started.elapsed() < w.grace_period {
                (
                    "hold_back",
                    format!("within the grace period; the server: {answer}"),
                )
            } else if since.0.elapsed() < w.unhealthy_after {
                (
                    "failing",
                    format!(
                        "not a serving voter for {}s: {answer}",
                        since.0.elapsed().as_secs()
                    ),
                )
            } else if marked.is_some() {
                (
                    "marked",
                    "marked Unhealthy; the group replaces this instance".to_string(),
                )
            } else if !obs
                .config
                .as_ref()
                .is_some_and(|c| super::watchdog_may_mark(&c.membership, &serving, myid))
            {
                (
                    "hold_back",
                    format!(
                        "failing, but the other serving voters ({serving:?}) are no quorum without this member: not marked"
                    ),
                )
            } else {
                match crate::aws::asg::set_unhealthy(&clients.autoscaling, &me.instance_id, true)
                    .await
                {
                    Ok(()) => {
                        marked = Some(now_unix());
                        tracing::warn!(myid, instance = %me.instance_id, "marked Unhealthy: the group replaces this instance");
                        (
                            "marked",
                            "marked Unhealthy; the group replaces this instance".to_string(),
                        )
                    }
                    Err(e) => ("failing", format!("not marked Unhealthy: {e:#}")),
                }
            }
        };
        let line = format!("{decision}: {summary}");
        if line != last {
            tracing::info!(myid, decision, summary = %summary, "ensemble watch");
            last = line;
        }
        let journal = Journal {
            checked_unix: now_unix(),
            myid,
            decision: decision.into(),
            summary,
            failing_since_unix: failing_since.map(|(_, u)| u),
            marked_unhealthy_unix: marked,
            removed: removed.clone(),
        };
        if let Err(e) =
            crate::journal::record(&settings.paths.state_dir, "ensemble-watch", &journal)
        {
            tracing::warn!(error = %format!("{e:#}"), "cannot journal the look");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ensemble::fourlw::Srvr;
    use crate::ensemble::{Data, EnsembleConfig, Member, Membership, Peer, PeerRole};

    fn member(id: u32) -> Member {
        Member {
            id,
            host: format!("10.0.0.{id}").parse().unwrap(),
            quorum_port: 2888,
            election_port: 3888,
            role: PeerRole::Participant,
            client: Some(format!("10.0.0.{id}:2181").parse().unwrap()),
        }
    }

    fn serving(mode: Mode) -> Answer {
        Answer::Serving(Srvr {
            version: "3.8.0".into(),
            mode,
            zxid: 1,
            latency: None,
            connections: None,
            outstanding: None,
            node_count: None,
        })
    }

    fn obs(peers: &[(u32, Answer, bool)]) -> Observations {
        Observations {
            me: 1,
            peers: peers
                .iter()
                .map(|(id, a, held)| {
                    (
                        *id,
                        Peer {
                            member: member(*id),
                            in_service: *held,
                            answer: a.clone(),
                            data: Data::Holds,
                        },
                    )
                })
                .collect(),
            config: Some(EnsembleConfig {
                membership: Membership::new((1..=3).map(member)).unwrap(),
                version: 0x100000000,
            }),
        }
    }

    #[test]
    fn a_member_is_dead_only_when_silent_and_no_running_instance_holds_its_eni() {
        let o = obs(&[
            (1, serving(Mode::Leader), true),
            (2, Answer::Refused, true),
            (3, Answer::TimedOut, false),
        ]);
        let l = liveness(&o);
        assert!(matches!(l[&1], Liveness::Alive(_)));
        // Its server is down, but its instance runs: a member booting or restarting.
        assert!(matches!(l[&2], Liveness::Alive(_)));
        assert!(matches!(l[&3], Liveness::Dead(_)));
        // An instance gone but a server answering (the address moved?) is not removed.
        let o = obs(&[
            (1, serving(Mode::Leader), true),
            (2, serving(Mode::Follower), false),
            (3, Answer::NotServing, false),
        ]);
        let l = liveness(&o);
        assert!(matches!(l[&2], Liveness::Alive(_)));
        assert!(matches!(l[&3], Liveness::Alive(_)));
        // A member missing from the look (its ENI gone) counts as silent and unheld.
        let o = obs(&[
            (1, serving(Mode::Leader), true),
            (2, serving(Mode::Follower), true),
        ]);
        assert!(matches!(liveness(&o)[&3], Liveness::Dead(_)));
    }

    #[test]
    fn serving_voters_are_leaders_and_followers_of_the_membership() {
        let mut o = obs(&[
            (1, serving(Mode::Leader), true),
            (2, serving(Mode::Follower), true),
            (3, Answer::NotServing, true),
        ]);
        assert_eq!(serving_voters(&o), BTreeSet::from([1, 2]));
        o.peers.insert(
            4,
            Peer {
                member: member(4),
                in_service: true,
                answer: serving(Mode::Follower),
                data: Data::Empty,
            },
        );
        // 4 follows but is not in the membership: a joiner, no voter.
        assert_eq!(serving_voters(&o), BTreeSet::from([1, 2]));
        o.config = None;
        assert!(serving_voters(&o).is_empty());
    }
}
