//! `kafka-agent watch`: the watchdog of a broker whose instance is healthy but whose Kafka is
//! not (issue 13). EC2's health checks see the machine; this looks at the broker, and after
//! `[watch] unhealthy_after_seconds` of continuous failure marks the instance Unhealthy
//! (SetInstanceHealth) so that the group replaces it, carefully enough never to turn an
//! outage into a cascade.
//!
//! * What it looks at ([`Observation`]), every `interval_seconds`: the broker's process (a
//!   pidfile's, when `[watch] pidfile` is set), its listener (a Kafka ApiVersions request to
//!   the inter-broker listener at this node's address must be answered: a wedged broker's
//!   socket still completes TCP handshakes), its registration (`/brokers/ids/<id>` exists and
//!   advertises this node, zookeeper mode), the coordination service (ZooKeeper answered),
//!   the replacement lease.
//! * What it decides ([`Watchdog::observe`], pure): [`Decision`]. Never before a successful
//!   boot, never within `grace_period_seconds` after it, never while ZooKeeper is unreachable
//!   (a failure streak does not count that time), only after `unhealthy_after` of continuous
//!   failure, and only while no other replacement is in flight in the cluster.
//! * The lease ([`lease_state`], pure): one per cluster, in the claim ledger, `{instance, id,
//!   since}`, taken before SetInstanceHealth; released when the holder's id is claimed by
//!   another instance and registered again, or after `lease_bound_seconds`; given back by a
//!   holder whose broker recovered or whose mark failed. ZooKeeper backend: the znode
//!   `<claim.path's parent>/replacing` ([`crate::claim::zookeeper`]); CloudWatch Logs backend:
//!   the highest-numbered stream `replacing-<seq>` of the claim log group, a new stream per
//!   take or give-back ([`crate::claim::cloudwatch`]).
//! * What it says: every change of decision is logged at info with structured fields, and
//!   every check is journalled as `watch.json` for `status`.
//! * Leaving: every `lifecycle_poll_seconds` it reads IMDS's target lifecycle state; once the
//!   group is terminating this instance (`Terminated`) it leaves cleanly ([`crate::leave`]:
//!   stops the broker, unmounts, releases the volume and the ENI, completes the termination
//!   hook) and from then on holds back (`leaving`): the broker is stopped on purpose.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::config::{Backend, KafkaMode, Role, Settings};

/// The journal's schema version (`<state_dir>/watch.json`).
pub const VERSION: u32 = 1;

// --- what is observed --------------------------------------------------------------------

/// One probe of the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "detail", rename_all = "snake_case")]
pub enum Probe {
    Ok,
    Failed(String),
    /// Not looked at: not configured, or not possible now (the registration while ZooKeeper
    /// is unreachable).
    NotChecked,
}

impl Probe {
    fn failed(&self) -> Option<&str> {
        match self {
            Probe::Failed(why) => Some(why),
            _ => None,
        }
    }
}

/// The replacement lease as the watchdog judges it (see [`lease_state`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LeaseState {
    /// No replacement was ever leased.
    Free,
    /// This instance holds it (a mark in progress, or done and awaiting the group).
    Ours,
    /// Another instance held it and it no longer holds.
    Released {
        holder: String,
        id: u32,
        why: String,
    },
    /// Another replacement is in flight.
    InFlight {
        holder: String,
        id: u32,
        age_seconds: Option<u64>,
    },
    /// Not known (not read: ZooKeeper or CloudWatch Logs unreachable, no claim yet, leaving).
    Unknown { why: String },
}

/// What one check saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Observation {
    /// When, on the watchdog's monotonic clock (failure streaks are counted on it).
    #[serde(skip)]
    pub at: Duration,
    /// Time since the last successful boot finished; None when there was none this boot
    /// (never booted, a boot running or failed: the boot tells its own failure).
    #[serde(serialize_with = "opt_secs")]
    pub since_boot: Option<Duration>,
    pub process: Probe,
    pub listener: Probe,
    pub registration: Probe,
    /// Ok(()) = the coordination service answered (or none is involved); Err says why not.
    #[serde(serialize_with = "reachability")]
    pub coordination: Result<(), String>,
    pub lease: LeaseState,
    /// The group is terminating this instance (target lifecycle state `Terminated`).
    pub leaving: bool,
}

// --- what is decided ---------------------------------------------------------------------

/// Why the watchdog holds back from marking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum HoldBack {
    /// No successful boot yet this boot: nothing to watch.
    NotBooted,
    /// Within the grace period after the boot: a starting broker (log recovery) is let be.
    WithinGrace {
        #[serde(serialize_with = "secs")]
        left: Duration,
    },
    /// The coordination service does not answer: the broker cannot register, and replacing
    /// every node would turn an outage into data loss.
    CoordinationUnreachable { why: String },
    /// Another node's replacement is in flight.
    ReplacementInFlight { holder: String, id: u32 },
    /// No lease can be taken: it could not be read (its ledger did not answer).
    NoLease { why: String },
    /// The group is terminating this instance (IMDS's target lifecycle state is
    /// `Terminated`): the broker is stopped on purpose, and nothing is marked.
    Leaving,
}

/// The decision after one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    Healthy,
    /// Failing since `since` (the watchdog's clock), `counted` of it while the coordination
    /// service answered; marked once `counted` reaches `unhealthy_after`.
    Failing {
        #[serde(skip)]
        since: Duration,
        #[serde(serialize_with = "secs")]
        counted: Duration,
        why: String,
    },
    HoldBack {
        #[serde(flatten)]
        why: HoldBack,
        /// The broker's failure meanwhile, if it fails.
        failing: Option<String>,
    },
    MarkUnhealthy {
        why: String,
    },
}

impl Decision {
    /// A short name for logs: healthy, failing, hold_back, mark_unhealthy.
    pub fn name(&self) -> &'static str {
        match self {
            Decision::Healthy => "healthy",
            Decision::Failing { .. } => "failing",
            Decision::HoldBack { .. } => "hold_back",
            Decision::MarkUnhealthy { .. } => "mark_unhealthy",
        }
    }
}

/// The settings the decision depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub unhealthy_after: Duration,
    pub grace_period: Duration,
}

/// A run of failed checks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Streak {
    since: Duration,
    counted: Duration,
    last_at: Duration,
    /// The last check failed while the coordination service answered: the time from it to
    /// the next failed check counts.
    counting: bool,
}

/// The watchdog's memory between checks: the current failure streak.
#[derive(Debug, Clone, Default)]
pub struct Watchdog {
    streak: Option<Streak>,
}

impl Watchdog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decides after one check. Pure: the observation carries the time.
    pub fn observe(&mut self, policy: &Policy, obs: &Observation) -> Decision {
        if obs.leaving {
            self.streak = None;
            return hold(HoldBack::Leaving, None);
        }
        let Some(since_boot) = obs.since_boot else {
            self.streak = None;
            return hold(HoldBack::NotBooted, None);
        };
        if since_boot < policy.grace_period {
            // A starting broker fails its checks: failures within the grace never count.
            self.streak = None;
            return hold(
                HoldBack::WithinGrace {
                    left: policy.grace_period - since_boot,
                },
                None,
            );
        }
        let failures: Vec<&str> = [&obs.process, &obs.listener, &obs.registration]
            .into_iter()
            .filter_map(Probe::failed)
            .collect();
        let why = failures.join("; ");
        if let Err(unreachable) = &obs.coordination {
            // The time until the next check does not count. A broker whose own probes pass
            // meanwhile is no failing broker.
            match (&mut self.streak, failures.is_empty()) {
                (_, true) => self.streak = None,
                (Some(s), false) => {
                    s.last_at = obs.at;
                    s.counting = false;
                }
                (None, false) => {
                    self.streak = Some(Streak {
                        since: obs.at,
                        counted: Duration::ZERO,
                        last_at: obs.at,
                        counting: false,
                    })
                }
            }
            return hold(
                HoldBack::CoordinationUnreachable {
                    why: unreachable.clone(),
                },
                (!failures.is_empty()).then_some(why),
            );
        }
        if failures.is_empty() {
            self.streak = None;
            return Decision::Healthy;
        }
        let streak = self.streak.get_or_insert(Streak {
            since: obs.at,
            counted: Duration::ZERO,
            last_at: obs.at,
            counting: true,
        });
        if streak.counting {
            streak.counted += obs.at.saturating_sub(streak.last_at);
        }
        streak.last_at = obs.at;
        streak.counting = true;
        if streak.counted < policy.unhealthy_after {
            return Decision::Failing {
                since: streak.since,
                counted: streak.counted,
                why,
            };
        }
        match &obs.lease {
            LeaseState::Free | LeaseState::Ours | LeaseState::Released { .. } => {
                Decision::MarkUnhealthy {
                    why: format!(
                        "failing for {}s (counted while the coordination service answered): {why}",
                        streak.counted.as_secs()
                    ),
                }
            }
            LeaseState::InFlight { holder, id, .. } => hold(
                HoldBack::ReplacementInFlight {
                    holder: holder.clone(),
                    id: *id,
                },
                Some(why),
            ),
            LeaseState::Unknown { why: no } => {
                hold(HoldBack::NoLease { why: no.clone() }, Some(why))
            }
        }
    }
}

fn hold(why: HoldBack, failing: Option<String>) -> Decision {
    Decision::HoldBack { why, failing }
}

// --- the lease ---------------------------------------------------------------------------

/// The replacement lease's record: which instance is being replaced, its id, and since when
/// (seconds since the Unix epoch on the holder's clock, for people; its age is judged on the
/// ledger's clock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub instance: String,
    pub id: u32,
    pub since: u64,
}

/// The record a holder gives a CloudWatch Logs lease back with (the next lease stream's first
/// event): no replacement is in flight from then on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GivenBack {
    pub given_back_by: String,
    pub since: u64,
}

/// What was read of a lease and of its holder's id, for [`lease_state`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSeen {
    /// The lease; None when its data is no lease (treated as stale once older than the bound).
    pub lease: Option<Lease>,
    /// Its age on the ledger's clock, when known.
    pub age: Option<Duration>,
    /// The instance that owns the held id's claim now.
    pub id_owner: Option<String>,
    /// The held id has a live registration made after the lease was written.
    pub id_registered: bool,
}

/// Whether a lease holds. Pure. Ours when we hold it; released once the held id is claimed
/// by another instance and registered again (the replacement's broker serves), or once the
/// lease is `bound` old; in flight otherwise, and while its age is not known.
pub fn lease_state(seen: Option<&LeaseSeen>, me: &str, bound: Duration) -> LeaseState {
    let Some(seen) = seen else {
        return LeaseState::Free;
    };
    let old = seen.age.is_some_and(|a| a >= bound);
    let Some(lease) = &seen.lease else {
        return if old {
            LeaseState::Released {
                holder: String::new(),
                id: 0,
                why: "an unreadable lease older than the bound".into(),
            }
        } else {
            LeaseState::InFlight {
                holder: "(unreadable lease)".into(),
                id: 0,
                age_seconds: seen.age.map(|a| a.as_secs()),
            }
        };
    };
    if lease.instance == me {
        return LeaseState::Ours;
    }
    let released = |why: String| LeaseState::Released {
        holder: lease.instance.clone(),
        id: lease.id,
        why,
    };
    match &seen.id_owner {
        Some(owner) if *owner != lease.instance && seen.id_registered => {
            return released(format!(
                "id {} is claimed by {owner} and registered again",
                lease.id
            ));
        }
        _ => {}
    }
    if old {
        return released(format!("older than the bound ({}s)", bound.as_secs()));
    }
    LeaseState::InFlight {
        holder: lease.instance.clone(),
        id: lease.id,
        age_seconds: seen.age.map(|a| a.as_secs()),
    }
}

// --- the listener probe ------------------------------------------------------------------

/// A Kafka ApiVersions request (api key 18, version 0, correlation id 0x6b610001, client id
/// `kafka-agent-watch`), then a line break. Kafka answers the frame (the line break is the
/// start of a next frame it waits for until the connection closes); any listener that reads
/// answers something or closes. No byte of the frame is a line break.
const APIVERSIONS: &[u8] =
    b"\x00\x00\x00\x1b\x00\x12\x00\x00\x6b\x61\x00\x01\x00\x11kafka-agent-watch\n";

/// Whether the listener at `at` answers within `timeout`: any byte back, or an orderly close,
/// means the process serves its sockets; a connection the kernel accepted and nobody answers
/// is a wedged broker.
pub async fn probe_listener(at: SocketAddr, timeout: Duration) -> Probe {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let work = async {
        let mut s = tokio::net::TcpStream::connect(at)
            .await
            .map_err(|e| format!("connecting to {at}: {e}"))?;
        s.write_all(APIVERSIONS)
            .await
            .map_err(|e| format!("writing to {at}: {e}"))?;
        let mut buf = [0u8; 64];
        s.read(&mut buf)
            .await
            .map(|_| ())
            .map_err(|e| format!("reading from {at}: {e}"))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(())) => Probe::Ok,
        Ok(Err(why)) => Probe::Failed(why),
        Err(_) => Probe::Failed(format!(
            "{at} answered nothing within {}s (a wedged broker's socket still accepts)",
            timeout.as_secs()
        )),
    }
}

/// Whether the process whose pid `pidfile` holds is alive (and no zombie).
pub fn probe_pidfile(pidfile: &Path) -> Probe {
    let text = match std::fs::read_to_string(pidfile) {
        Ok(t) => t,
        Err(e) => return Probe::Failed(format!("reading {}: {e}", pidfile.display())),
    };
    let Ok(pid) = text.trim().parse::<u32>() else {
        return Probe::Failed(format!("{} holds no pid", pidfile.display()));
    };
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name's closing parenthesis.
        Ok(stat) => match stat
            .rsplit_once(')')
            .map(|(_, r)| r.trim_start().chars().next())
        {
            Some(Some('Z' | 'X')) => Probe::Failed(format!("process {pid} has exited")),
            _ => Probe::Ok,
        },
        Err(_) => Probe::Failed(format!(
            "process {pid} (from {}) is not running",
            pidfile.display()
        )),
    }
}

// --- the loop ------------------------------------------------------------------------------

/// `<state_dir>/watch.json`: what the watchdog saw at its last check and what it decided.
#[derive(Debug, Clone, Serialize)]
pub struct Journal {
    pub version: u32,
    pub checked_unix: u64,
    pub instance_id: Option<String>,
    pub id: Option<u32>,
    /// When the current failure streak began (seconds since the Unix epoch).
    pub failing_since_unix: Option<u64>,
    pub observed: Observation,
    pub decision: Decision,
    /// When this instance was marked Unhealthy (SetInstanceHealth accepted), if it was.
    pub marked_unhealthy_unix: Option<u64>,
    pub settings: JournalSettings,
}

#[derive(Debug, Clone, Serialize)]
pub struct JournalSettings {
    pub interval_seconds: u64,
    pub unhealthy_after_seconds: u64,
    pub grace_period_seconds: u64,
    pub lease_bound_seconds: u64,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The kernel's boot, in seconds since the Unix epoch (from /proc/uptime).
fn kernel_boot_unix() -> Option<u64> {
    let up = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = up.split_whitespace().next()?.parse().ok()?;
    Some(now_unix().saturating_sub(secs as u64))
}

/// Time since this boot's successful `kafka-agent boot` finished (boot.json), None when
/// there was none since the kernel booted.
fn since_boot(settings: &Settings) -> Option<Duration> {
    let boot: crate::boot::BootJournal =
        crate::journal::read_if_any(&settings.paths.state_dir, "boot")
            .ok()
            .flatten()?;
    let finished = boot.finished_unix?;
    if boot.outcome != "success" {
        return None;
    }
    // A journal from before the kernel's boot is an earlier boot's (a little slack for
    // clocks read at different moments).
    if kernel_boot_unix().is_some_and(|k| boot.started_unix + 5 < k) {
        return None;
    }
    Some(Duration::from_secs(now_unix().saturating_sub(finished)))
}

/// This node's address: the attached ENI's (attach.json), or IMDS's local-ipv4.
async fn address(settings: &Settings) -> Result<IpAddr> {
    if settings.resources.eni {
        let attached: serde_json::Value =
            crate::journal::read(&settings.paths.state_dir, "attach")?;
        let ip = attached["eni"]["ips"][0]
            .as_str()
            .context("the attach journal names no ENI address")?;
        return ip
            .parse()
            .with_context(|| format!("the attach journal's ENI address {ip:?}"));
    }
    crate::aws::imds::Imds::new()
        .local_ipv4(Instant::now() + Duration::from_secs(10))
        .await
}

/// How long one ZooKeeper call of a check may take.
const ZK_CALL: Duration = Duration::from_secs(5);

/// The watchdog's ZooKeeper session, made again when it fails.
struct Zk {
    client: Option<zookeeper_client::Client>,
}

impl Zk {
    async fn client(&mut self, settings: &Settings) -> Result<&zookeeper_client::Client, String> {
        if self.client.is_none() {
            match tokio::time::timeout(ZK_CALL, crate::claim::zookeeper::connect(settings)).await {
                Ok(Ok(c)) => self.client = Some(c),
                Ok(Err(e)) => return Err(format!("{e:#}")),
                Err(_) => return Err("connecting to ZooKeeper: no answer".into()),
            }
        }
        Ok(self.client.as_ref().expect("connected above"))
    }

    /// Runs one call; a failed or unanswered call drops the session (the next is made anew).
    async fn call<T, F, Fut>(&mut self, settings: &Settings, f: F) -> Result<T, String>
    where
        F: FnOnce(zookeeper_client::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let client = self.client(settings).await?.clone();
        match tokio::time::timeout(ZK_CALL, f(client)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.client = None;
                Err(format!("{e:#}"))
            }
            Err(_) => {
                self.client = None;
                Err("ZooKeeper: no answer".into())
            }
        }
    }
}

/// Reads the registration of `id`; Ok(None) when there is none.
async fn registration(client: zookeeper_client::Client, id: u32) -> Result<Option<Vec<u8>>> {
    Ok(registration_with_ctime(client, id)
        .await?
        .map(|(data, _)| data))
}

/// The broker's registration and when it was made, on the ensemble's clock (ms).
async fn registration_with_ctime(
    client: zookeeper_client::Client,
    id: u32,
) -> Result<Option<(Vec<u8>, i64)>> {
    match client.get_data(&format!("/brokers/ids/{id}")).await {
        Ok((data, stat)) => Ok(Some((data, stat.ctime))),
        Err(zookeeper_client::Error::NoNode) => Ok(None),
        Err(e) => Err(anyhow::anyhow!("reading /brokers/ids/{id}: {e}")),
    }
}

/// Reads the lease and judges it; the node's version comes along for a takeover.
async fn read_lease(
    client: zookeeper_client::Client,
    claim_path: String,
    me: String,
    bound: Duration,
) -> Result<(LeaseState, Option<i32>)> {
    use crate::claim::zookeeper as zk;
    // Age and the holder's id are read only for someone else's lease.
    let Some(node) = zk::read_lease(&client, &claim_path, false).await? else {
        return Ok((LeaseState::Free, None));
    };
    let lease: Option<Lease> = serde_json::from_slice(&node.data).ok();
    if lease.as_ref().is_some_and(|l| l.instance == me) {
        return Ok((LeaseState::Ours, Some(node.version)));
    }
    let aged = zk::read_lease(&client, &claim_path, true).await?;
    let Some(node) = aged else {
        return Ok((LeaseState::Free, None));
    };
    let lease: Option<Lease> = serde_json::from_slice(&node.data).ok();
    // Registered *again*: the registration was made after the lease was written. The wedged
    // broker's own registration outlives its instance until its session expires, and is no
    // sign that the replacement serves.
    let (id_owner, id_registered) = match &lease {
        Some(l) => (
            zk::claim_owner(&client, &claim_path, l.id).await?,
            registration_with_ctime(client.clone(), l.id)
                .await?
                .is_some_and(|(_, ctime)| ctime > node.mtime_ms),
        ),
        None => (None, false),
    };
    let seen = LeaseSeen {
        lease,
        age: node.age,
        id_owner,
        id_registered,
    };
    Ok((lease_state(Some(&seen), &me, bound), Some(node.version)))
}

/// How long one CloudWatch Logs read or write of the lease may take.
const CWL_CALL: Duration = Duration::from_secs(20);

/// Reads the CloudWatch Logs lease and judges it; its sequence number comes along for a take.
/// `registrations`: the held id's registration may be read in ZooKeeper (Kafka in ZooKeeper
/// mode, the ensemble answering).
async fn read_cwl_lease(
    settings: &Settings,
    zk: &mut Zk,
    acting: &mut Acting,
    me: &Me,
    registrations: bool,
) -> Result<(LeaseState, Option<i32>), String> {
    let ledger = acting
        .ledger(settings)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let top = tokio::time::timeout(CWL_CALL, ledger.read_lease())
        .await
        .map_err(|_| "reading the replacement lease: CloudWatch Logs did not answer".to_string())?
        .map_err(|e| format!("reading the replacement lease: {e:#}"))?;
    let Some(top) = top else {
        return Ok((LeaseState::Free, None));
    };
    let version = i32::try_from(top.seq).ok();
    let data = top.data.as_deref();
    if data.is_some_and(|d| serde_json::from_str::<GivenBack>(d).is_ok()) {
        return Ok((LeaseState::Free, version));
    }
    let lease: Option<Lease> = data.and_then(|d| serde_json::from_str(d).ok());
    if lease.as_ref().is_some_and(|l| l.instance == me.instance_id) {
        return Ok((LeaseState::Ours, version));
    }
    let (id_owner, id_registered) = match &lease {
        Some(l) => {
            let id = l.id;
            let slots = tokio::time::timeout(CWL_CALL, ledger.slots(&|i| i == id))
                .await
                .map_err(|_| "reading the claims: CloudWatch Logs did not answer".to_string())?
                .map_err(|e| format!("reading the claims: {e:#}"))?;
            let owner = slots
                .get(&id)
                .and_then(|s| s.record.as_ref())
                .map(|r| r.owner.clone());
            // Registered *again*: made after the lease stream was (the ensemble's clock
            // against the service's; a skew between them only delays the release, unless it
            // is larger than the wedged broker's registration is old).
            let registered = registrations
                && zk
                    .call(settings, |c| registration_with_ctime(c, id))
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|(_, ctime)| top.created_ms.is_some_and(|made| ctime > made));
            (owner, registered)
        }
        None => (None, false),
    };
    let seen = LeaseSeen {
        lease,
        age: top.age,
        id_owner,
        id_registered,
    };
    Ok((
        lease_state(Some(&seen), &me.instance_id, settings.watch.lease_bound),
        version,
    ))
}

/// Gives the lease taken at `version` back (the broker recovered, or the mark failed).
async fn give_back(
    settings: &Settings,
    zk: &mut Zk,
    acting: &mut Acting,
    me: &Me,
    version: i32,
) -> Result<bool, String> {
    match settings.claim.backend {
        Backend::Zookeeper => {
            let path = settings.claim.path.clone();
            zk.call(settings, |c| async move {
                crate::claim::zookeeper::release_lease(&c, &path, version).await
            })
            .await
        }
        Backend::CloudwatchLogs => {
            let marker = serde_json::to_string(&GivenBack {
                given_back_by: me.instance_id.clone(),
                since: now_unix(),
            })
            .map_err(|e| e.to_string())?;
            let ledger = acting
                .ledger(settings)
                .await
                .map_err(|e| format!("{e:#}"))?;
            let seq = u64::try_from(version).map_err(|e| e.to_string())?;
            tokio::time::timeout(CWL_CALL, ledger.release_lease(seq, &marker))
                .await
                .map_err(|_| "CloudWatch Logs did not answer".to_string())?
                .map_err(|e| format!("{e:#}"))
        }
    }
}

/// What the loop knows of this node (from the journal, read again until there).
struct Me {
    instance_id: String,
    id: u32,
    address: IpAddr,
}

async fn me(settings: &Settings) -> Result<Me> {
    let claim: crate::claim::Claim = crate::journal::read(&settings.paths.state_dir, "claim")?;
    let address = address(settings).await?;
    Ok(Me {
        instance_id: claim.instance_id,
        id: claim.id,
        address,
    })
}

/// One check: everything the decision needs, each part bounded.
async fn check(
    settings: &Settings,
    zk: &mut Zk,
    acting: &mut Acting,
    me: &Me,
    started: Instant,
) -> (Observation, Option<i32>) {
    let w = &settings.watch;
    let zk_mode = settings
        .kafka
        .as_ref()
        .is_none_or(|k| k.mode == KafkaMode::Zookeeper);
    let uses_zk = zk_mode || settings.claim.backend == Backend::Zookeeper;
    let process = match &w.pidfile {
        Some(p) => probe_pidfile(p),
        None => Probe::NotChecked,
    };
    let at = SocketAddr::new(
        me.address,
        crate::signal::peer_port(settings).unwrap_or(9092),
    );
    let listener = probe_listener(at, w.listener_timeout).await;
    let mut coordination = Ok(());
    let mut registration_probe = Probe::NotChecked;
    if uses_zk {
        let id = me.id;
        match zk.call(settings, |c| registration(c, id)).await {
            Ok(found) if zk_mode => {
                registration_probe = match found {
                    None => Probe::Failed(format!("/brokers/ids/{id} does not exist")),
                    Some(data) => match crate::signal::registration_serves(
                        &data,
                        &crate::signal::advertised_hosts(settings, id, me.address),
                    ) {
                        Ok(()) => Probe::Ok,
                        Err(why) => Probe::Failed(why),
                    },
                }
            }
            Ok(_) => {}
            Err(why) => coordination = Err(why),
        }
    }
    let (lease, version) = match settings.claim.backend {
        Backend::CloudwatchLogs => {
            let registrations = zk_mode && coordination.is_ok();
            match read_cwl_lease(settings, zk, acting, me, registrations).await {
                Ok(v) => v,
                Err(why) => (LeaseState::Unknown { why }, None),
            }
        }
        Backend::Zookeeper if coordination.is_err() => (
            LeaseState::Unknown {
                why: "ZooKeeper is unreachable".into(),
            },
            None,
        ),
        Backend::Zookeeper => {
            let (path, instance, bound) = (
                settings.claim.path.clone(),
                me.instance_id.clone(),
                w.lease_bound,
            );
            match zk
                .call(settings, |c| read_lease(c, path, instance, bound))
                .await
            {
                Ok(v) => v,
                Err(why) => (LeaseState::Unknown { why }, None),
            }
        }
    };
    let obs = Observation {
        at: started.elapsed(),
        since_boot: since_boot(settings),
        process,
        listener,
        registration: registration_probe,
        coordination,
        lease,
        leaving: false,
    };
    (obs, version)
}

/// The loop's memory besides the decision's.
struct Acting {
    clients: Option<crate::aws::Clients>,
    /// This instance's id, as IMDS told it when the clients were made.
    identity: Option<String>,
    marked_at: Option<(Instant, u64)>,
    /// The CloudWatch Logs claim ledger, for the lease on that backend.
    ledger: Option<crate::claim::cloudwatch::CwlLedger>,
}

impl Acting {
    async fn clients(&mut self) -> Result<&crate::aws::Clients> {
        if self.clients.is_none() {
            let (clients, me) =
                crate::aws::Clients::connect(Instant::now() + Duration::from_secs(30))
                    .await
                    .context("connecting to AWS")?;
            self.clients = Some(clients);
            self.identity = Some(me.instance_id);
        }
        Ok(self.clients.as_ref().expect("connected above"))
    }

    async fn ledger(
        &mut self,
        settings: &Settings,
    ) -> Result<&crate::claim::cloudwatch::CwlLedger> {
        if self.ledger.is_none() {
            let clients = self.clients().await?.clone();
            let opening = crate::claim::cloudwatch::CwlLedger::open(settings, &clients);
            let ledger = tokio::time::timeout(CWL_CALL, opening)
                .await
                .map_err(|_| anyhow::anyhow!("CloudWatch Logs did not answer"))?
                .with_context(|| {
                    format!("opening the claim log group {}", settings.claim.log_group)
                })?;
            self.ledger = Some(ledger);
        }
        Ok(self.ledger.as_ref().expect("opened above"))
    }
}

/// Takes the lease (unless ours) and marks the instance Unhealthy.
async fn mark(
    settings: &Settings,
    zk: &mut Zk,
    me: &Me,
    lease: &LeaseState,
    version: Option<i32>,
    acting: &mut Acting,
) -> Result<()> {
    use crate::claim::zookeeper as zkl;
    let record = Lease {
        instance: me.instance_id.clone(),
        id: me.id,
        since: now_unix(),
    };
    let taken_version = match lease {
        LeaseState::Ours => version,
        LeaseState::Free | LeaseState::Released { .. } => {
            let (took, name) = match settings.claim.backend {
                Backend::Zookeeper => {
                    let protected = settings
                        .zookeeper
                        .as_ref()
                        .is_some_and(|z| z.digest.is_some());
                    let (path, data) = (settings.claim.path.clone(), serde_json::to_vec(&record)?);
                    let took = zk
                        .call(settings, |c| async move {
                            zkl::take_lease(&c, &path, protected, version, &data).await
                        })
                        .await
                        .map_err(|e| anyhow::anyhow!("taking the replacement lease: {e}"))?;
                    // Created: version 0; replaced: one more than read.
                    (
                        took.then(|| version.map_or(0, |v| v + 1)),
                        zkl::lease_path(&settings.claim.path),
                    )
                }
                Backend::CloudwatchLogs => {
                    let data = serde_json::to_string(&record)?;
                    let ledger = acting.ledger(settings).await?;
                    let read = version.and_then(|v| u64::try_from(v).ok());
                    let took = tokio::time::timeout(CWL_CALL, ledger.take_lease(read, &data))
                        .await
                        .map_err(|_| {
                            anyhow::anyhow!(
                                "taking the replacement lease: CloudWatch Logs did not answer"
                            )
                        })?
                        .context("taking the replacement lease")?;
                    let seq = read.map_or(0, |s| s + 1);
                    (
                        took.and_then(|s| i32::try_from(s).ok()),
                        format!(
                            "{}/{}",
                            settings.claim.log_group,
                            crate::claim::cloudwatch::lease_stream(seq)
                        ),
                    )
                }
            };
            let Some(taken) = took else {
                bail!("another watchdog took the replacement lease first");
            };
            tracing::info!(broker_id = me.id, instance = %me.instance_id, lease = %name, "took the replacement lease");
            Some(taken)
        }
        _ => bail!("no replacement lease to take"),
    };
    let clients = acting
        .clients()
        .await
        .context("connecting to AWS to mark this instance Unhealthy")?
        .clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    let marked = crate::aws::retry_transient(deadline, || {
        crate::aws::asg::set_unhealthy(&clients.autoscaling, &me.instance_id, true)
    })
    .await;
    if let Err(e) = marked {
        // Give the lease back, so that another replacement is not held up by one that never
        // began.
        if let Some(v) = taken_version {
            let _ = give_back(settings, zk, acting, me, v).await;
        }
        return Err(e);
    }
    acting.marked_at = Some((Instant::now(), now_unix()));
    Ok(())
}

/// `kafka-agent watch`: checks the broker every `[watch] interval_seconds` until stopped;
/// logs every change of decision, journals every check (`watch.json`), marks the instance
/// Unhealthy when the decision says so, leaves cleanly when the group terminates the instance.
/// Returns Ok on SIGTERM (after a leave in progress), an error only on a problem it cannot
/// watch through (a role it does not watch).
pub async fn run(settings: &Settings) -> Result<()> {
    if settings.cluster.role == Role::Zookeeper {
        return crate::ensemble::watch::run(settings).await;
    }
    let w = &settings.watch;
    let policy = Policy {
        unhealthy_after: w.unhealthy_after,
        grace_period: w.grace_period,
    };
    tracing::info!(
        interval_s = w.interval.as_secs(),
        unhealthy_after_s = w.unhealthy_after.as_secs(),
        grace_period_s = w.grace_period.as_secs(),
        lease_bound_s = w.lease_bound.as_secs(),
        pidfile = ?w.pidfile,
        "watching the broker"
    );
    let started = Instant::now();
    let mut watchdog = Watchdog::new();
    let mut zk = Zk { client: None };
    let mut node: Option<Me> = None;
    let mut acting = Acting {
        clients: None,
        identity: None,
        marked_at: None,
        ledger: None,
    };
    let mut last: Option<String> = None;
    let mut tick = tokio::time::interval(w.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut poll = tokio::time::interval(w.lifecycle_poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let imds = crate::aws::imds::Imds::new();
    // Whether the group is terminating this instance, and whether the leave is done.
    let (mut leaving, mut left) = (false, false);
    // SIGTERM (systemctl stop, the OS shutting down once the hook is completed) ends the loop
    // between checks: a leave in progress finishes, its journal written, first.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    loop {
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM: the watchdog stops");
                return Ok(());
            }
            _ = tick.tick() => {}
            _ = poll.tick() => {
                if left {
                    continue;
                }
                if crate::leave::target_state(&imds).await.as_deref() != Some(crate::leave::TERMINATED) {
                    continue;
                }
                if !leaving {
                    tracing::info!(broker_id = ?node.as_ref().map(|m| m.id), "the target lifecycle state is Terminated: the group is terminating this instance");
                    leaving = true;
                }
                left = leave(settings, &mut acting).await;
            }
        }
        if node.is_none() && !leaving {
            match me(settings).await {
                Ok(m) => {
                    tracing::info!(broker_id = m.id, instance = %m.instance_id, address = %m.address, "watching this node's broker");
                    node = Some(m);
                }
                Err(e) => tracing::debug!(error = %format!("{e:#}"), "not booted yet"),
            }
        }
        let (obs, version) = match &node {
            _ if leaving => (
                Observation {
                    at: started.elapsed(),
                    since_boot: since_boot(settings),
                    process: Probe::NotChecked,
                    listener: Probe::NotChecked,
                    registration: Probe::NotChecked,
                    coordination: Ok(()),
                    lease: LeaseState::Unknown {
                        why: "leaving: not read".into(),
                    },
                    leaving: true,
                },
                None,
            ),
            Some(m) => check(settings, &mut zk, &mut acting, m, started).await,
            None => (
                Observation {
                    at: started.elapsed(),
                    since_boot: None,
                    process: Probe::NotChecked,
                    listener: Probe::NotChecked,
                    registration: Probe::NotChecked,
                    coordination: Ok(()),
                    lease: LeaseState::Unknown {
                        why: "no claim journalled yet".into(),
                    },
                    leaving: false,
                },
                None,
            ),
        };
        let decision = watchdog.observe(&policy, &obs);
        // A change of decision or of its reason, not of the seconds counted.
        let summary = match &decision {
            Decision::HoldBack { why, .. } => {
                format!(
                    "hold_back {}",
                    serde_json::to_string(why).unwrap_or_default()
                )
            }
            other => other.name().to_string(),
        };
        if last.as_ref() != Some(&summary) {
            log_transition(&decision, &obs, node.as_ref());
            last = Some(summary);
        }
        if let Some(m) = &node {
            match &decision {
                Decision::MarkUnhealthy { why } => {
                    // Once marked, again only every unhealthy_after: a mark within the
                    // group's own grace period is ignored there.
                    let due = acting
                        .marked_at
                        .is_none_or(|(at, _)| at.elapsed() >= w.unhealthy_after);
                    if due {
                        match mark(settings, &mut zk, m, &obs.lease, version, &mut acting).await {
                            Ok(()) => {
                                tracing::info!(broker_id = m.id, instance = %m.instance_id, reason = %why, "marked Unhealthy: the group replaces this instance")
                            }
                            Err(e) => {
                                tracing::warn!(broker_id = m.id, error = %format!("{e:#}"), "not marked Unhealthy")
                            }
                        }
                    }
                }
                Decision::Healthy if obs.lease == LeaseState::Ours => {
                    if let Some(v) = version {
                        let given = give_back(settings, &mut zk, &mut acting, m, v).await;
                        tracing::info!(broker_id = m.id, released = ?given, "the broker recovered: gave the replacement lease back");
                    }
                    acting.marked_at = None;
                }
                _ => {}
            }
        }
        let failing_since_unix = match &decision {
            Decision::Failing { since, .. } => {
                Some(now_unix().saturating_sub(obs.at.saturating_sub(*since).as_secs()))
            }
            _ => None,
        };
        let journal = Journal {
            version: VERSION,
            checked_unix: now_unix(),
            instance_id: node.as_ref().map(|m| m.instance_id.clone()),
            id: node.as_ref().map(|m| m.id),
            failing_since_unix,
            observed: obs,
            decision,
            marked_unhealthy_unix: acting.marked_at.map(|(_, u)| u),
            settings: JournalSettings {
                interval_seconds: w.interval.as_secs(),
                unhealthy_after_seconds: w.unhealthy_after.as_secs(),
                grace_period_seconds: w.grace_period.as_secs(),
                lease_bound_seconds: w.lease_bound.as_secs(),
            },
        };
        if let Err(e) = crate::journal::record(&settings.paths.state_dir, "watch", &journal) {
            tracing::warn!(error = %format!("{e:#}"), "journalling watch.json");
        }
    }
}

/// Leaves cleanly ([`crate::leave::run`]); true once done (every step tried and the hook
/// told, or no hook to tell), false to try again at the next poll.
async fn leave(settings: &Settings, acting: &mut Acting) -> bool {
    if settings.watch.termination_hook.is_none() {
        tracing::info!(
            "no [watch] termination_hook: EC2 takes this instance down, and systemd stops the broker on the way"
        );
        return true;
    }
    if acting.clients.is_none() {
        match crate::aws::Clients::connect(Instant::now() + Duration::from_secs(30)).await {
            Ok((clients, me)) => {
                acting.clients = Some(clients);
                acting.identity = Some(me.instance_id);
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "connecting to AWS to leave; again at the next poll");
                return false;
            }
        }
    }
    let (Some(clients), Some(me)) = (&acting.clients, &acting.identity) else {
        return false;
    };
    match crate::leave::run(settings, clients, me).await {
        Ok(j) => j.completed.is_some() || j.lifecycle_hook.is_none(),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "leaving; again at the next poll");
            false
        }
    }
}

fn log_transition(decision: &Decision, obs: &Observation, node: Option<&Me>) {
    let id = node.map(|m| m.id);
    let lease = serde_json::to_string(&obs.lease).unwrap_or_default();
    match decision {
        Decision::Healthy => {
            tracing::info!(broker_id = ?id, decision = "healthy", "the broker serves")
        }
        Decision::Failing { counted, why, .. } => tracing::info!(
            broker_id = ?id,
            decision = "failing",
            counted_s = counted.as_secs(),
            reason = %why,
            "the broker fails its checks"
        ),
        Decision::HoldBack { why, failing } => tracing::info!(
            broker_id = ?id,
            decision = "hold_back",
            hold_back = %serde_json::to_string(why).unwrap_or_default(),
            failing = ?failing,
            lease = %lease,
            "holding back"
        ),
        Decision::MarkUnhealthy { why } => tracing::info!(
            broker_id = ?id,
            decision = "mark_unhealthy",
            reason = %why,
            lease = %lease,
            "marking this instance Unhealthy"
        ),
    }
}

// --- serde helpers ---------------------------------------------------------------------

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

fn opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs()),
        None => s.serialize_none(),
    }
}

fn reachability<S: serde::Serializer>(r: &Result<(), String>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(2))?;
    match r {
        Ok(()) => {
            m.serialize_entry("reachable", &true)?;
            m.serialize_entry("detail", &None::<String>)?;
        }
        Err(why) => {
            m.serialize_entry("reachable", &false)?;
            m.serialize_entry("detail", &Some(why))?;
        }
    }
    m.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn policy() -> Policy {
        Policy {
            unhealthy_after: 60 * S,
            grace_period: 300 * S,
        }
    }

    /// A check at `at` seconds of the watchdog, `boot` seconds after the boot.
    fn obs(at: u64, boot: u64) -> Observation {
        Observation {
            at: Duration::from_secs(at),
            since_boot: Some(Duration::from_secs(boot)),
            process: Probe::NotChecked,
            listener: Probe::Ok,
            registration: Probe::Ok,
            coordination: Ok(()),
            lease: LeaseState::Free,
            leaving: false,
        }
    }

    fn hung(at: u64, boot: u64) -> Observation {
        Observation {
            listener: Probe::Failed("answered nothing".into()),
            ..obs(at, boot)
        }
    }

    fn zk_down(o: Observation) -> Observation {
        Observation {
            coordination: Err("ZooKeeper: no answer".into()),
            registration: Probe::NotChecked,
            lease: LeaseState::Unknown {
                why: "ZooKeeper is unreachable".into(),
            },
            ..o
        }
    }

    /// Runs checks every 10 s from `from` for `n` checks, returning the decisions.
    fn run(w: &mut Watchdog, checks: impl IntoIterator<Item = Observation>) -> Vec<Decision> {
        checks
            .into_iter()
            .map(|o| w.observe(&policy(), &o))
            .collect()
    }

    fn marks(d: &[Decision]) -> usize {
        d.iter()
            .filter(|d| matches!(d, Decision::MarkUnhealthy { .. }))
            .count()
    }

    #[test]
    fn a_serving_broker_is_healthy() {
        let mut w = Watchdog::new();
        let d = run(&mut w, (0..10).map(|i| obs(i * 10, 400 + i * 10)));
        assert!(d.iter().all(|d| *d == Decision::Healthy), "{d:?}");
    }

    #[test]
    fn a_broker_failing_continuously_is_marked_after_unhealthy_after() {
        let mut w = Watchdog::new();
        let d = run(&mut w, (0..8).map(|i| hung(i * 10, 400 + i * 10)));
        // 0 s .. 50 s counted: failing; at 60 s counted reaches 60 s: marked.
        for (i, d) in d.iter().enumerate().take(6) {
            match d {
                Decision::Failing {
                    since,
                    counted,
                    why,
                } => {
                    assert_eq!(*since, Duration::ZERO);
                    assert_eq!(*counted, Duration::from_secs(i as u64 * 10));
                    assert!(why.contains("answered nothing"), "{why}");
                }
                other => panic!("check {i}: {other:?}"),
            }
        }
        assert!(matches!(d[6], Decision::MarkUnhealthy { .. }), "{:?}", d[6]);
        assert!(matches!(d[7], Decision::MarkUnhealthy { .. }), "{:?}", d[7]);
    }

    #[test]
    fn one_good_check_restarts_the_streak() {
        let mut w = Watchdog::new();
        let mut checks: Vec<Observation> = (0..5).map(|i| hung(i * 10, 400 + i * 10)).collect();
        checks.push(obs(50, 450));
        checks.extend((6..12).map(|i| hung(i * 10, 400 + i * 10)));
        let d = run(&mut w, checks);
        assert_eq!(d[5], Decision::Healthy);
        assert_eq!(marks(&d), 0, "{d:?}");
        match &d[11] {
            Decision::Failing { since, counted, .. } => {
                assert_eq!(*since, 60 * S);
                assert_eq!(*counted, 50 * S);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn any_failed_probe_fails_and_all_are_named() {
        let mut w = Watchdog::new();
        let o = Observation {
            process: Probe::Failed("process 7 is not running".into()),
            registration: Probe::Failed("/brokers/ids/1 does not exist".into()),
            ..hung(0, 400)
        };
        match w.observe(&policy(), &o) {
            Decision::Failing { why, .. } => {
                assert!(why.contains("process 7"), "{why}");
                assert!(why.contains("answered nothing"), "{why}");
                assert!(why.contains("/brokers/ids/1"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nothing_before_a_boot_nor_within_the_grace_period() {
        let mut w = Watchdog::new();
        let not_booted = Observation {
            since_boot: None,
            ..hung(0, 0)
        };
        assert_eq!(
            w.observe(&policy(), &not_booted),
            Decision::HoldBack {
                why: HoldBack::NotBooted,
                failing: None
            }
        );
        // Failing from the boot on, for 40 minutes of checks; the grace is 300 s.
        let d = run(&mut w, (0..240).map(|i| hung(i * 10, i * 10)));
        for (i, d) in d.iter().enumerate().take(30) {
            assert!(
                matches!(d, Decision::HoldBack { why: HoldBack::WithinGrace { left }, .. } if *left == Duration::from_secs(300 - i as u64 * 10)),
                "{i}: {d:?}"
            );
        }
        // The failures within the grace never counted: the streak starts at its end.
        match &d[30] {
            Decision::Failing { since, counted, .. } => {
                assert_eq!(*since, 300 * S);
                assert_eq!(*counted, Duration::ZERO);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(d[35], Decision::Failing { .. }), "{:?}", d[35]);
        assert!(
            matches!(d[36], Decision::MarkUnhealthy { .. }),
            "{:?}",
            d[36]
        );
    }

    #[test]
    fn nothing_while_the_coordination_service_is_unreachable() {
        let mut w = Watchdog::new();
        // The broker hangs and ZooKeeper is down for an hour: never marked.
        let d = run(
            &mut w,
            (0..360).map(|i| zk_down(hung(i * 10, 400 + i * 10))),
        );
        assert_eq!(marks(&d), 0);
        assert!(d.iter().all(|d| matches!(
            d,
            Decision::HoldBack {
                why: HoldBack::CoordinationUnreachable { .. },
                failing: Some(_)
            }
        )));
    }

    #[test]
    fn a_streak_does_not_count_the_time_the_coordination_service_was_unreachable() {
        let mut w = Watchdog::new();
        // 30 s failing (counted 30), ZooKeeper down for 10 minutes, back: counting resumes
        // from 30 s, not from 630 s.
        let mut checks: Vec<Observation> = (0..4).map(|i| hung(i * 10, 400 + i * 10)).collect();
        checks.extend((4..64).map(|i| zk_down(hung(i * 10, 400 + i * 10))));
        checks.extend((64..72).map(|i| hung(i * 10, 400 + i * 10)));
        let d = run(&mut w, checks);
        assert_eq!(marks(&d[..64]), 0);
        match &d[64] {
            Decision::Failing { since, counted, .. } => {
                assert_eq!(*since, Duration::ZERO, "the streak went on");
                assert_eq!(*counted, 30 * S, "the outage's 10 minutes did not count");
            }
            other => panic!("{other:?}"),
        }
        // 30 s more of counted failure: at 670 s the streak has 60 s.
        assert!(matches!(d[66], Decision::Failing { .. }), "{:?}", d[66]);
        assert!(
            matches!(d[67], Decision::MarkUnhealthy { .. }),
            "{:?}",
            d[67]
        );
    }

    #[test]
    fn a_broker_whose_own_probes_pass_during_the_outage_is_not_failing_after_it() {
        let mut w = Watchdog::new();
        let mut checks: Vec<Observation> = (0..5).map(|i| hung(i * 10, 400 + i * 10)).collect();
        checks.push(zk_down(obs(50, 450)));
        checks.extend((6..10).map(|i| hung(i * 10, 400 + i * 10)));
        let d = run(&mut w, checks);
        match &d[6] {
            Decision::Failing { since, counted, .. } => {
                assert_eq!(*since, 60 * S);
                assert_eq!(*counted, Duration::ZERO);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(marks(&d), 0);
    }

    #[test]
    fn another_replacement_in_flight_holds_back_until_it_is_released() {
        let mut w = Watchdog::new();
        let in_flight = LeaseState::InFlight {
            holder: "i-other".into(),
            id: 2,
            age_seconds: Some(30),
        };
        let mut checks: Vec<Observation> = (0..10)
            .map(|i| Observation {
                lease: in_flight.clone(),
                ..hung(i * 10, 400 + i * 10)
            })
            .collect();
        checks.push(Observation {
            lease: LeaseState::Released {
                holder: "i-other".into(),
                id: 2,
                why: "id 2 is claimed by i-new and registered again".into(),
            },
            ..hung(100, 500)
        });
        let d = run(&mut w, checks);
        assert!(matches!(d[5], Decision::Failing { .. }));
        for d in &d[6..10] {
            assert!(
                matches!(d, Decision::HoldBack { why: HoldBack::ReplacementInFlight { holder, id: 2 }, failing: Some(_) } if holder == "i-other"),
                "{d:?}"
            );
        }
        assert!(
            matches!(d[10], Decision::MarkUnhealthy { .. }),
            "{:?}",
            d[10]
        );
    }

    #[test]
    fn our_own_lease_goes_on_and_an_unknown_one_holds_back() {
        let mut w = Watchdog::new();
        let d = run(
            &mut w,
            (0..8).map(|i| Observation {
                lease: LeaseState::Ours,
                ..hung(i * 10, 400 + i * 10)
            }),
        );
        assert!(matches!(d[6], Decision::MarkUnhealthy { .. }));
        let mut w = Watchdog::new();
        let d = run(
            &mut w,
            (0..8).map(|i| Observation {
                lease: LeaseState::Unknown {
                    why: "no lease on this backend".into(),
                },
                ..hung(i * 10, 400 + i * 10)
            }),
        );
        assert_eq!(marks(&d), 0);
        assert!(matches!(
            &d[7],
            Decision::HoldBack {
                why: HoldBack::NoLease { .. },
                ..
            }
        ));
    }

    #[test]
    fn nothing_is_marked_while_the_group_terminates_this_instance() {
        let mut w = Watchdog::new();
        // Failing long enough to be marked, then the group begins to terminate the instance.
        let mut checks: Vec<Observation> = (0..5).map(|i| hung(i * 10, 400 + i * 10)).collect();
        checks.extend((5..20).map(|i| Observation {
            leaving: true,
            ..hung(i * 10, 400 + i * 10)
        }));
        let d = run(&mut w, checks);
        assert_eq!(marks(&d), 0, "{d:?}");
        for d in &d[5..] {
            assert_eq!(
                *d,
                Decision::HoldBack {
                    why: HoldBack::Leaving,
                    failing: None
                }
            );
        }
        let v = serde_json::json!({"decision": d[5]});
        assert_eq!(v["decision"]["reason"], "leaving");
    }

    #[test]
    fn the_streak_counts_time_not_checks() {
        // Checks 25 s apart: the third (50 s) has not counted 60 s, the fourth (75 s) has.
        let mut w = Watchdog::new();
        let d = run(&mut w, (0..4).map(|i| hung(i * 25, 400 + i * 25)));
        assert!(matches!(d[2], Decision::Failing { .. }));
        assert!(matches!(d[3], Decision::MarkUnhealthy { .. }));
    }

    fn seen(instance: &str, id: u32, age: Option<u64>) -> LeaseSeen {
        LeaseSeen {
            lease: Some(Lease {
                instance: instance.into(),
                id,
                since: 0,
            }),
            age: age.map(Duration::from_secs),
            id_owner: Some(instance.into()),
            id_registered: false,
        }
    }

    #[test]
    fn a_lease_holds_until_its_id_serves_again_elsewhere_or_the_bound() {
        let bound = 900 * S;
        assert_eq!(lease_state(None, "i-me", bound), LeaseState::Free);
        let held = seen("i-a", 2, Some(60));
        assert_eq!(lease_state(Some(&held), "i-a", bound), LeaseState::Ours);
        assert!(matches!(
            lease_state(Some(&held), "i-me", bound),
            LeaseState::InFlight { ref holder, id: 2, age_seconds: Some(60) } if holder == "i-a"
        ));
        // The predecessor's registration lingering (its session not yet expired) under its
        // own claim: still in flight.
        let lingering = LeaseSeen {
            id_registered: true,
            ..held.clone()
        };
        assert!(matches!(
            lease_state(Some(&lingering), "i-me", bound),
            LeaseState::InFlight { .. }
        ));
        // Claimed by the successor, not registered yet: in flight.
        let claimed = LeaseSeen {
            id_owner: Some("i-b".into()),
            ..held.clone()
        };
        assert!(matches!(
            lease_state(Some(&claimed), "i-me", bound),
            LeaseState::InFlight { .. }
        ));
        // Claimed and registered: released.
        let serving = LeaseSeen {
            id_registered: true,
            ..claimed
        };
        assert!(matches!(
            lease_state(Some(&serving), "i-me", bound),
            LeaseState::Released { ref why, .. } if why.contains("i-b")
        ));
        // Past the bound: released; of unknown age: never by age.
        assert!(matches!(
            lease_state(Some(&seen("i-a", 2, Some(900))), "i-me", bound),
            LeaseState::Released { .. }
        ));
        assert!(matches!(
            lease_state(Some(&seen("i-a", 2, None)), "i-me", bound),
            LeaseState::InFlight {
                age_seconds: None,
                ..
            }
        ));
        // Garbage in the lease: in flight until the bound.
        let garbage = LeaseSeen {
            lease: None,
            age: Some(10 * S),
            id_owner: None,
            id_registered: false,
        };
        assert!(matches!(
            lease_state(Some(&garbage), "i-me", bound),
            LeaseState::InFlight { .. }
        ));
        let old_garbage = LeaseSeen {
            age: Some(1000 * S),
            ..garbage
        };
        assert!(matches!(
            lease_state(Some(&old_garbage), "i-me", bound),
            LeaseState::Released { .. }
        ));
    }

    #[test]
    fn a_given_back_lease_is_no_lease_and_a_lease_no_give_back() {
        let lease = serde_json::to_string(&Lease {
            instance: "i-a".into(),
            id: 2,
            since: 1,
        })
        .unwrap();
        let back = serde_json::to_string(&GivenBack {
            given_back_by: "i-a".into(),
            since: 2,
        })
        .unwrap();
        assert!(serde_json::from_str::<GivenBack>(&lease).is_err());
        assert!(serde_json::from_str::<Lease>(&back).is_err());
        assert!(serde_json::from_str::<Lease>(&lease).is_ok());
    }

    #[test]
    fn the_apiversions_frame_is_what_kafka_reads() {
        let frame = &APIVERSIONS[..APIVERSIONS.len() - 1];
        let size = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(size, frame.len() - 4);
        assert_eq!(&frame[4..6], &18u16.to_be_bytes(), "ApiVersions");
        assert_eq!(&frame[6..8], &0u16.to_be_bytes(), "version 0");
        let client_len = u16::from_be_bytes(frame[12..14].try_into().unwrap()) as usize;
        assert_eq!(&frame[14..14 + client_len], b"kafka-agent-watch");
        assert!(!frame.contains(&b'\n'));
        assert_eq!(APIVERSIONS.last(), Some(&b'\n'));
    }

    #[tokio::test]
    async fn a_listener_that_accepts_and_never_answers_is_wedged() {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        // One that answers a line, as the stand-in does.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    let mut lines = tokio::io::BufReader::new(r).lines();
                    while let Ok(Some(_)) = lines.next_line().await {
                        let _ = w.write_all(b"ERR unknown request\n").await;
                    }
                });
            }
        });
        assert_eq!(probe_listener(at, 5 * S).await, Probe::Ok);
        // One whose socket is open and nobody accepts: the kernel completes the handshake.
        let wedged = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let at = wedged.local_addr().unwrap();
        let p = probe_listener(at, Duration::from_millis(300)).await;
        assert!(
            matches!(&p, Probe::Failed(why) if why.contains("answered nothing")),
            "{p:?}"
        );
        drop(wedged);
        // None at all: refused.
        let p = probe_listener(at, 5 * S).await;
        assert!(
            matches!(&p, Probe::Failed(why) if why.contains("connecting")),
            "{p:?}"
        );
    }

    #[test]
    fn a_pidfile_names_a_live_process_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("kafka.pid");
        std::fs::write(&f, format!("{}\n", std::process::id())).unwrap();
        assert_eq!(probe_pidfile(&f), Probe::Ok);
        std::fs::write(&f, "4194305").unwrap(); // beyond pid_max
        assert!(matches!(probe_pidfile(&f), Probe::Failed(_)));
        std::fs::write(&f, "x").unwrap();
        assert!(matches!(probe_pidfile(&f), Probe::Failed(w) if w.contains("no pid")));
        assert!(matches!(
            probe_pidfile(&dir.path().join("none")),
            Probe::Failed(_)
        ));
    }

    #[test]
    fn the_journal_says_what_is_seen_and_why() {
        let mut w = Watchdog::new();
        let o = zk_down(hung(0, 400));
        let d = w.observe(&policy(), &o);
        let v = serde_json::json!({"observed": o, "decision": d});
        assert_eq!(v["decision"]["decision"], "hold_back");
        assert_eq!(v["decision"]["reason"], "coordination_unreachable");
        assert_eq!(v["observed"]["listener"]["state"], "failed");
        assert_eq!(v["observed"]["coordination"]["reachable"], false);
        assert_eq!(v["observed"]["since_boot"], 400);
        assert_eq!(v["observed"]["lease"]["state"], "unknown");
    }

    #[test]
    fn the_watch_table_has_defaults_and_names_a_bad_key() {
        let base = "[cluster]\nname = \"o\"\nrole = \"kafka\"\nsize = 1\n\
                    [zookeeper]\nconnect = \"zk1:2181\"\n";
        let s = crate::config::parse(&[(std::path::PathBuf::from("/etc/a.toml"), base.into())])
            .unwrap();
        assert_eq!(s.watch.interval, 10 * S);
        assert_eq!(s.watch.unhealthy_after, 60 * S);
        assert_eq!(s.watch.grace_period, 600 * S);
        assert_eq!(s.watch.lease_bound, 900 * S);
        assert_eq!(s.watch.listener_timeout, 5 * S);
        assert_eq!(s.watch.pidfile, None);
        assert!(s.to_toml().contains("[watch]"), "{}", s.to_toml());
        for (bad, key) in [
            ("interval_seconds = 0", "watch.interval_seconds"),
            (
                "unhealthy_after_seconds = -1",
                "watch.unhealthy_after_seconds",
            ),
            (
                "grace_period_seconds = 100000",
                "watch.grace_period_seconds",
            ),
            ("lease_bound_seconds = 5", "watch.lease_bound_seconds"),
            (
                "listener_timeout_seconds = 61",
                "watch.listener_timeout_seconds",
            ),
            ("pidfile = \"kafka.pid\"", "watch.pidfile"),
            ("unit = \"kafka.service\"", "watch.unit"),
        ] {
            let text = format!("{base}[watch]\n{bad}\n");
            let e = crate::config::parse(&[(std::path::PathBuf::from("/etc/a.toml"), text)])
                .unwrap_err();
            assert!(e.to_string().contains(key), "{bad}: {e}");
        }
    }
}
