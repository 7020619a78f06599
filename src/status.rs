//! `kafka-agent status`: what the journal says the agent did, checked against this host now.
//!
//! The journal under `state_dir` (`boot.json`, `claim.json`, `attach.json`, `storage.json`,
//! `network.json`, `render.json`) says what was done; live checks, all local and bounded
//! (netlink, `/proc/self/mountinfo`, statvfs, the rendered file), say whether it still holds:
//! the ENI's addresses are on an interface here, its policy rules and routes exist, the volume
//! is mounted from its device, the rendered file is the agent's and unchanged. What the
//! watchdog (`kafka-agent watch`) saw at its last check and why it acts or holds back comes
//! from its own journal, `watch.json`, and a clean leave in progress from `leave.json`.
//! Nothing asks AWS, IMDS or ZooKeeper, so status answers without credentials or network.
//!
//! [`collect`] observes, [`assess`] (pure) turns sections and the last boot into one health
//! with its exit code (0 healthy, 1 degraded, 2 failed, 3 unknown), [`human`] and `--json`
//! print it. The JSON is a stable, versioned schema (README, "kafka-agent status";
//! `tests/status.schema.json`). No secret reaches it: the configuration is never printed, only
//! the rendered file's path and hash (the file references secrets by path).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::claim::Claim;
use crate::config::{Role, Settings};

/// The version of the `--json` schema; bumped only when a field changes meaning or goes.
pub const VERSION: u32 = 1;

/// How long the live checks may take, together.
pub const LIVE_CHECK_LIMIT: Duration = Duration::from_secs(2);

/// A volume this full is degraded.
pub const USAGE_DEGRADED_PERCENT: f64 = 90.0;

/// The node's overall health, and its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Healthy,
    Degraded,
    Failed,
    Unknown,
}

impl Health {
    /// The exit code monitoring tools expect (Nagios-style): 0, 1, 2, 3.
    pub fn exit_code(self) -> i32 {
        match self {
            Health::Healthy => 0,
            Health::Degraded => 1,
            Health::Failed => 2,
            Health::Unknown => 3,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Failed => "failed",
            Health::Unknown => "unknown",
        }
    }
}

/// One check's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// It holds.
    Ok,
    /// The configuration asks for nothing to check here.
    NotConfigured,
    /// It could not be checked.
    Unknown,
    /// It holds, with something to look at (a full disk, a hand-edited config).
    Degraded,
    /// It does not hold.
    Failed,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::NotConfigured => "not configured",
            State::Unknown => "unknown",
            State::Degraded => "degraded",
            State::Failed => "failed",
        }
    }
}

/// What is wrong, for a human and a monitoring tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// journal | last_boot | claim | eni | volume | routing | config
    pub check: String,
    pub state: State,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClaimStatus {
    pub state: Option<State>,
    pub id: Option<u32>,
    pub epoch: Option<u64>,
    pub backend: Option<String>,
    /// kept | created | took_over
    pub how: Option<String>,
    pub instance_id: Option<String>,
    pub az: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EniStatus {
    pub state: Option<State>,
    pub id: Option<String>,
    pub addresses: Vec<String>,
    /// Every address is on an interface of this host.
    pub attached_here: Option<bool>,
    /// The interface holding the first address.
    pub interface: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub available_bytes: u64,
    pub used_percent: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VolumeStatus {
    pub state: Option<State>,
    pub id: Option<String>,
    pub device: Option<String>,
    pub mountpoint: Option<String>,
    /// The mountpoint is mounted from the device.
    pub mounted: Option<bool>,
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoutingStatus {
    pub state: Option<State>,
    pub table: Option<u32>,
    /// One rule `from <ip> lookup <table>` per address.
    pub rules_present: Option<bool>,
    /// The subnet route and the default route in the table.
    pub routes_present: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigStatus {
    pub state: Option<State>,
    pub path: Option<String>,
    /// Of the file as it is now (it references secrets by path and holds none).
    pub sha256: Option<String>,
    /// The file holds the agent's marked block.
    pub rendered_by_agent: Option<bool>,
    /// Not changed since the agent rendered it.
    pub unchanged_since_render: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// ok when something listens on the port, else unknown; never counts against health
    /// (Kafka starts after the boot).
    pub state: Option<State>,
    /// Registered in ZooKeeper: not checked (status asks no network service), always null.
    pub registered: Option<bool>,
    pub port: Option<u16>,
    /// A socket listens on the port on this host.
    pub listening: Option<bool>,
}

/// One step of the last boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepTime {
    pub step: String,
    pub ms: u64,
    /// ok | failed
    pub outcome: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootError {
    pub kind: String,
    pub message: String,
}

/// `boot.json`, as `boot` journals it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastBoot {
    pub started_unix: u64,
    pub finished_unix: Option<u64>,
    /// success | failure | running
    pub outcome: String,
    #[serde(default)]
    pub steps: Vec<StepTime>,
    #[serde(default)]
    pub error: Option<BootError>,
}

/// What the watchdog saw at its last check (`watch.json`) and the leave (`leave.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WatchStatus {
    /// ok: watching, the broker serves (or is let be: no boot yet, within the grace period);
    /// degraded: the broker fails its checks, the watchdog marked this instance Unhealthy, holds
    /// back for a cause to look at (the coordination service unreachable, another replacement in
    /// flight, no lease), or the group is terminating this instance; unknown: the journal is
    /// stale (no check for three intervals and a minute) or unreadable; not_configured: no
    /// watchdog ran on this host.
    pub state: Option<State>,
    pub checked_unix: Option<u64>,
    pub checked_seconds_ago: Option<u64>,
    /// healthy | failing | hold_back | mark_unhealthy
    pub decision: Option<String>,
    /// Why it holds back: not_booted | within_grace | coordination_unreachable |
    /// replacement_in_flight | no_lease | leaving.
    pub reason: Option<String>,
    /// One sentence: what it sees and why it acts or holds back.
    pub summary: Option<String>,
    /// What of the broker fails, when something does.
    pub failing: Option<String>,
    pub failing_since_unix: Option<u64>,
    pub marked_unhealthy_unix: Option<u64>,
    /// The coordination service (ZooKeeper) answered at the last check.
    pub coordination_reachable: Option<bool>,
    /// The replacement lease as judged: free | ours | released | in_flight | unknown.
    pub lease: Option<String>,
    /// The instance holding it, when another replacement is in flight or was.
    pub lease_holder: Option<String>,
    /// The clean leave (`leave.json`), once the group began terminating this instance.
    pub leave: Option<LeaveStatus>,
}

/// `leave.json`, in short.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaveStatus {
    pub noticed_unix: u64,
    /// The lifecycle action's completion (CONTINUE, no_active_action), or None: not yet.
    pub completed: Option<String>,
    pub heartbeats: u32,
    pub steps: Vec<LeaveStep>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaveStep {
    /// notice | stop | unmount | volume | eni | complete
    pub step: String,
    /// ok | already | kept | failed | skipped
    pub outcome: String,
    pub detail: Option<String>,
}

/// What `status` answers (`--json` prints it as it is).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub version: u32,
    pub health: Health,
    pub exit_code: i32,
    pub problems: Vec<Problem>,
    pub role: String,
    pub cluster: String,
    pub claim: ClaimStatus,
    pub eni: EniStatus,
    pub volume: VolumeStatus,
    pub routing: RoutingStatus,
    pub config: ConfigStatus,
    pub service: ServiceStatus,
    pub last_boot: Option<LastBoot>,
    /// Added in version 1 without a bump: absent from older agents' reports.
    #[serde(default)]
    pub watch: WatchStatus,
    /// A ZooKeeper node's server and ensemble (role zookeeper only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<EnsembleStatus>,
}

/// A ZooKeeper node: the boot's plan (`ensemble.json`) and what its server says now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EnsembleStatus {
    /// ok: a voting member (leader or follower) of a serving ensemble; degraded: the server
    /// runs but is not (yet) a voting member, or the boot's plan is to wait; failed: the server
    /// does not answer.
    pub state: Option<State>,
    /// join | bootstrap | resume | wait: what the last boot decided.
    pub plan: Option<String>,
    /// Why it waits (or why no quorum served when it resumed).
    pub reason: Option<String>,
    pub reason_kind: Option<String>,
    /// leader | follower | observer | standalone | read-only, or what the server answered.
    pub mode: Option<String>,
    /// The last zxid the server processed (hex).
    pub zxid: Option<String>,
    /// This server is a participant of the membership it knows.
    pub voting: Option<bool>,
    /// The voting members, and how many make a quorum.
    pub voters: Option<u32>,
    pub quorum_size: Option<u32>,
    /// The membership as the server knows it: `server.N=` lines.
    pub members: Vec<String>,
    /// The configuration version (hex).
    pub config_version: Option<String>,
}

/// The journal as read: each file parsed, or the reason it could not be.
#[derive(Debug, Default)]
struct Journals {
    boot: Option<LastBoot>,
    claim: Option<Claim>,
    attach: Option<serde_json::Value>,
    storage: Option<serde_json::Value>,
    network: Option<serde_json::Value>,
    render: Option<serde_json::Value>,
    watch: Option<serde_json::Value>,
    leave: Option<crate::leave::Journal>,
    unreadable: Vec<String>,
}

fn read_journal<T: serde::de::DeserializeOwned>(
    dir: &Path,
    name: &str,
    unreadable: &mut Vec<String>,
) -> Option<T> {
    match crate::journal::read_if_any(dir, name) {
        Ok(v) => v,
        Err(e) => {
            unreadable.push(format!("{e:#}"));
            None
        }
    }
}

impl Journals {
    fn read(dir: &Path) -> Journals {
        let mut u = Vec::new();
        Journals {
            boot: read_journal(dir, "boot", &mut u),
            claim: read_journal(dir, "claim", &mut u),
            attach: read_journal(dir, "attach", &mut u),
            storage: read_journal(dir, "storage", &mut u),
            network: read_journal(dir, "network", &mut u),
            render: read_journal(dir, "render", &mut u),
            watch: read_journal(dir, "watch", &mut u),
            leave: read_journal(dir, "leave", &mut u),
            unreadable: u,
        }
    }

    /// Nothing says this node ever booted or claimed.
    fn never_booted(&self) -> bool {
        self.unreadable.is_empty() && self.boot.is_none() && self.claim.is_none()
    }
}

/// Turns the checks and the last boot into one health. Pure.
///
/// Unknown: the journal is unreadable or the node never booted. Failed: the last boot failed
/// or a live check fails. Degraded: a boot is running (or died running), or a check is
/// degraded or could not be made. Healthy otherwise.
///
/// The watchdog's view ([`watch_status`]) is degraded, never failed: a broker failing its
/// checks, an instance the watchdog marked Unhealthy, a watchdog holding back for a cause to
/// look at (the coordination service unreachable, another replacement in flight), a clean
/// leave in progress, or a watchdog journal gone stale all exit 1. Failed (2) stays what a
/// human must repair on this node (a failed boot, a lost mount or route); a marked or leaving
/// instance is being replaced by its group, and an operator wants to see it, not be paged for
/// it twice.
pub fn assess(never_booted: bool, last_boot: Option<&LastBoot>, problems: &[Problem]) -> Health {
    if never_booted || problems.iter().any(|p| p.check == "journal") {
        return Health::Unknown;
    }
    if last_boot.is_some_and(|b| b.outcome == "failure")
        || problems.iter().any(|p| p.state == State::Failed)
    {
        return Health::Failed;
    }
    if last_boot.is_some_and(|b| b.outcome != "success") || !problems.is_empty() {
        return Health::Degraded;
    }
    Health::Healthy
}

/// Reads the journal and checks it against this host, within [`LIVE_CHECK_LIMIT`].
pub async fn collect(settings: &Settings) -> Report {
    let dir = &settings.paths.state_dir;
    let j = Journals::read(dir);
    let mut problems: Vec<Problem> = Vec::new();
    let mut problem = |check: &str, state: State, message: String| {
        problems.push(Problem {
            check: check.into(),
            state,
            message,
        })
    };
    for u in &j.unreadable {
        problem("journal", State::Unknown, u.clone());
    }
    let never = j.never_booted();
    if never {
        problem(
            "journal",
            State::Unknown,
            format!(
                "never booted: no boot.json or claim.json in {}",
                dir.display()
            ),
        );
    }
    if let Some(b) = &j.boot {
        match (b.outcome.as_str(), &b.error) {
            ("failure", Some(e)) => problem(
                "last_boot",
                State::Failed,
                format!("the last boot failed [{}]: {}", e.kind, e.message),
            ),
            ("failure", None) => problem("last_boot", State::Failed, "the last boot failed".into()),
            ("success", _) => {}
            (other, _) => problem(
                "last_boot",
                State::Degraded,
                format!(
                    "the last boot, started {}, is {other} (or died so)",
                    utc(b.started_unix)
                ),
            ),
        }
    }

    let claim = match &j.claim {
        Some(c) => ClaimStatus {
            state: Some(State::Ok),
            id: Some(c.id),
            epoch: Some(c.epoch),
            backend: serde_json::to_value(c.backend)
                .ok()
                .and_then(|v| v.as_str().map(String::from)),
            how: Some(c.how.clone()),
            instance_id: Some(c.instance_id.clone()),
            az: Some(c.az.clone()),
        },
        None => {
            if !never {
                problem(
                    "claim",
                    State::Failed,
                    "no claim journalled (claim.json)".into(),
                );
            }
            ClaimStatus {
                state: Some(if never { State::Unknown } else { State::Failed }),
                ..Default::default()
            }
        }
    };

    let live = tokio::time::timeout(LIVE_CHECK_LIMIT, net_facts()).await;
    let net: Result<NetFacts> = match live {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!(
            "netlink did not answer within {LIVE_CHECK_LIMIT:?}"
        )),
    };

    let eni = eni_status(settings, &j, &net, never, &mut problem);
    let routing = routing_status(settings, &j, &net, never, &mut problem);
    let volume = volume_status(settings, &j, never, &mut problem);
    let config = config_status(settings, &j, &mut problem);
    let service = service_status(settings);
    let watch = watch_status(
        j.watch.as_ref(),
        j.leave.as_ref(),
        j.claim.as_ref().map(|c| c.instance_id.as_str()),
        now_unix(),
        &mut problem,
    );

    let ensemble = if settings.cluster.role == crate::config::Role::Zookeeper {
        Some(ensemble_status(settings, &j, &mut problem).await)
    } else {
        None
    };

    let health = assess(never, j.boot.as_ref(), &problems);
    Report {
        version: VERSION,
        health,
        exit_code: health.exit_code(),
        problems,
        role: settings.cluster.role.to_string(),
        cluster: settings.cluster.name.clone(),
        claim,
        eni,
        volume,
        routing,
        config,
        service,
        last_boot: j.boot,
        watch,
        ensemble,
    }
}

/// The ZooKeeper node's view: the plan from `ensemble.json`, and `srvr` and `conf` of its
/// server on the ENI's address (or the loopback without one).
async fn ensemble_status(
    settings: &Settings,
    j: &Journals,
    problem: &mut impl FnMut(&str, State, String),
) -> EnsembleStatus {
    use crate::ensemble::fourlw::{self, Answer};
    let mut out = EnsembleStatus::default();
    let prepared: Option<crate::ensemble::step::Prepared> =
        crate::journal::read_if_any(&settings.paths.state_dir, "ensemble")
            .ok()
            .flatten();
    if let Some(p) = &prepared {
        out.plan = Some(p.plan.clone());
        out.reason = p.reason.clone();
        out.reason_kind = p.reason_kind.clone();
    }
    let Some(ens) = settings.ensemble.as_ref() else {
        return out;
    };
    let host = eni_from(j.attach.as_ref())
        .and_then(|(_, ips)| ips.first().and_then(|ip| ip.parse().ok()))
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    let at = std::net::SocketAddr::new(host, ens.server.client_port);
    let timeout = std::time::Duration::from_secs(1);
    let (srvr, conf) = tokio::join!(fourlw::srvr(at, timeout), fourlw::conf(at, timeout));
    let waits = prepared.as_ref().is_some_and(|p| p.plan == "wait");
    match &srvr {
        Answer::Serving(s) => {
            out.mode = Some(format!("{:?}", s.mode).to_lowercase());
            out.zxid = Some(format!("0x{:x}", s.zxid));
        }
        other => {
            out.mode = Some(match other {
                Answer::NotServing => "not serving (no quorum)".into(),
                Answer::Refused => "not running".into(),
                Answer::TimedOut => "no answer".into(),
                Answer::Failed(e) => e.clone(),
                Answer::Serving(_) => unreachable!(),
            });
        }
    }
    if let Ok(c) = &conf
        && let Some(config) = &c.config
    {
        out.voting = Some(c.is_voter());
        let voters = config.membership.voters().len() as u32;
        out.voters = Some(voters);
        out.quorum_size = Some(voters / 2 + 1);
        out.members = config
            .membership
            .members()
            .map(crate::render::zoo::server_line)
            .collect();
        out.config_version = Some(format!("{:x}", config.version));
    }
    let serving_voter = matches!(&srvr, Answer::Serving(s) if matches!(s.mode, fourlw::Mode::Leader | fourlw::Mode::Follower))
        && out.voting == Some(true);
    let state = if serving_voter {
        State::Ok
    } else if waits || matches!(srvr, Answer::NotServing | Answer::Serving(_)) {
        State::Degraded
    } else {
        State::Failed
    };
    out.state = Some(state);
    if state != State::Ok {
        let why = match (&prepared, waits) {
            (Some(p), true) => format!(
                "the ensemble waits [{}]: {}",
                p.reason_kind.as_deref().unwrap_or("?"),
                p.reason.as_deref().unwrap_or("?")
            ),
            _ => format!(
                "the ZooKeeper server at {at} is {}{}",
                out.mode.as_deref().unwrap_or("?"),
                if out.voting == Some(false) {
                    ", not a voting member"
                } else {
                    ""
                }
            ),
        };
        problem("ensemble", state, why);
    }
    out
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A watchdog journal older than this many of its intervals (plus a minute) is stale.
const WATCH_STALE_INTERVALS: u64 = 3;

/// The watchdog's view from its journal (`watch.json`, as [`crate::watch::Journal`] writes
/// it) and the leave's (`leave.json`, only this instance's). Pure.
pub fn watch_status(
    watch: Option<&serde_json::Value>,
    leave: Option<&crate::leave::Journal>,
    instance_id: Option<&str>,
    now: u64,
    problem: &mut impl FnMut(&str, State, String),
) -> WatchStatus {
    let leave = leave
        .filter(|l| instance_id.is_none_or(|i| i == l.instance_id))
        .map(|l| LeaveStatus {
            noticed_unix: l.noticed_unix_ms / 1000,
            completed: l.completed.clone(),
            heartbeats: l.heartbeats,
            steps: l
                .steps
                .iter()
                .map(|s| LeaveStep {
                    step: s.step.clone(),
                    outcome: s.outcome.clone(),
                    detail: s.detail.clone(),
                })
                .collect(),
        });
    let Some(w) = watch else {
        return WatchStatus {
            state: Some(State::NotConfigured),
            leave,
            ..Default::default()
        };
    };
    let str_of = |v: &serde_json::Value| v.as_str().map(String::from);
    let d = &w["decision"];
    let decision = str_of(&d["decision"]);
    let reason = str_of(&d["reason"]);
    let failing = match decision.as_deref() {
        Some("failing") => str_of(&d["why"]),
        Some("hold_back") => str_of(&d["failing"]),
        _ => None,
    };
    let marked = w["marked_unhealthy_unix"].as_u64();
    let checked = w["checked_unix"].as_u64();
    let ago = checked.map(|c| now.saturating_sub(c));
    let interval = w["settings"]["interval_seconds"].as_u64().unwrap_or(10);
    let lease = &w["observed"]["lease"];
    let mut s = WatchStatus {
        checked_unix: checked,
        checked_seconds_ago: ago,
        decision: decision.clone(),
        reason: reason.clone(),
        failing: failing.clone(),
        failing_since_unix: w["failing_since_unix"].as_u64(),
        marked_unhealthy_unix: marked,
        coordination_reachable: w["observed"]["coordination"]["reachable"].as_bool(),
        lease: str_of(&lease["state"]),
        lease_holder: str_of(&lease["holder"]).filter(|h| !h.is_empty()),
        leave,
        ..Default::default()
    };
    let unhealthy_after = w["settings"]["unhealthy_after_seconds"].as_u64();
    let mut summary = match (decision.as_deref(), reason.as_deref()) {
        (Some("healthy"), _) => "the broker serves: nothing to do".to_string(),
        (Some("failing"), _) => format!(
            "the broker fails its checks, {}s counted of {}s before the instance is marked \
             Unhealthy",
            d["counted"].as_u64().unwrap_or(0),
            unhealthy_after.map_or("?".into(), |u| u.to_string())
        ),
        (Some("mark_unhealthy"), _) => format!(
            "marks this instance Unhealthy so that the group replaces it: {}",
            str_of(&d["why"]).unwrap_or_default()
        ),
        (Some("hold_back"), Some("not_booted")) => {
            "holds back: no successful boot yet, nothing to watch".to_string()
        }
        (Some("hold_back"), Some("within_grace")) => format!(
            "holds back within the grace period after the boot ({}s left)",
            d["left"].as_u64().unwrap_or(0)
        ),
        (Some("hold_back"), Some("coordination_unreachable")) => format!(
            "holds back because the coordination service is unreachable ({}): the broker \
             cannot register, and replacing nodes now would turn an outage into data loss",
            str_of(&d["why"]).unwrap_or_default()
        ),
        (Some("hold_back"), Some("replacement_in_flight")) => format!(
            "holds back: another replacement is in flight (broker {} on {})",
            d["id"],
            str_of(&d["holder"]).unwrap_or_default()
        ),
        (Some("hold_back"), Some("no_lease")) => format!(
            "holds back: no replacement lease can be taken ({})",
            str_of(&d["why"]).unwrap_or_default()
        ),
        (Some("hold_back"), Some("leaving")) => {
            "holds back: the group is terminating this instance, which leaves cleanly".to_string()
        }
        (Some(other), r) => format!("{other} {}", r.unwrap_or_default()),
        (None, _) => "an unreadable watch.json".to_string(),
    };
    if let Some(f) = failing
        .as_deref()
        .filter(|_| decision.as_deref() != Some("failing"))
    {
        summary.push_str(&format!("; the broker fails meanwhile: {f}"));
    } else if let Some(f) = failing.as_deref() {
        summary.push_str(&format!(": {f}"));
    }
    if let Some(m) = marked {
        summary.push_str(&format!(
            "; marked Unhealthy at {}, the group replaces it",
            utc(m)
        ));
    }
    let stale = ago.is_some_and(|a| a > WATCH_STALE_INTERVALS * interval + 60) || ago.is_none();
    let leaving = reason.as_deref() == Some("leaving") || s.leave.is_some();
    let degraded = failing.is_some()
        || marked.is_some()
        || leaving
        || matches!(decision.as_deref(), Some("failing" | "mark_unhealthy"))
        || matches!(
            reason.as_deref(),
            Some("coordination_unreachable" | "replacement_in_flight" | "no_lease")
        );
    s.state = Some(if stale {
        problem(
            "watch",
            State::Unknown,
            format!(
                "the watchdog's last check was {} ago (it checks every {interval}s): is \
                 kafka-agent-watch running? It said: {summary}",
                ago.map_or("never".into(), |a| format!("{a}s"))
            ),
        );
        State::Unknown
    } else if degraded {
        problem("watch", State::Degraded, format!("the watchdog {summary}"));
        State::Degraded
    } else {
        State::Ok
    });
    if let Some(l) = &s.leave {
        let steps = l
            .steps
            .iter()
            .map(|s| format!("{} {}", s.step, s.outcome))
            .collect::<Vec<_>>()
            .join(", ");
        problem(
            "leave",
            State::Degraded,
            format!(
                "the group is terminating this instance (noticed {}); the leave: {steps}; {}",
                utc(l.noticed_unix),
                l.completed
                    .as_deref()
                    .map_or("the lifecycle action is not completed yet".into(), |c| {
                        format!("the lifecycle action is completed ({c})")
                    })
            ),
        );
    }
    s.summary = Some(summary);
    s
}

/// What netlink shows in this host's network namespace.
#[derive(Debug, Default)]
struct NetFacts {
    /// IPv4 address -> interface name.
    addresses: BTreeMap<Ipv4Addr, String>,
    /// (source address, table) of every `from <ip>/32 lookup <table>` rule.
    rules: Vec<(Ipv4Addr, u32)>,
    /// (table, destination prefix length, has a gateway) of every IPv4 route.
    routes: Vec<(u32, u8, bool)>,
}

async fn net_facts() -> Result<NetFacts> {
    use futures::TryStreamExt;
    use rtnetlink::IpVersion;
    use rtnetlink::packet_route::address::AddressAttribute;
    use rtnetlink::packet_route::link::LinkAttribute;
    use rtnetlink::packet_route::route::{RouteAttribute, RouteHeader};
    use rtnetlink::packet_route::rule::RuleAttribute;

    let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
    let task = tokio::spawn(conn);
    let mut facts = NetFacts::default();

    let mut names = BTreeMap::new();
    let mut links = handle.link().get().execute();
    while let Some(l) = links.try_next().await.context("listing links")? {
        if let Some(name) = l.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        }) {
            names.insert(l.header.index, name);
        }
    }
    let mut addrs = handle.address().get().execute();
    while let Some(a) = addrs.try_next().await.context("listing addresses")? {
        let name = names
            .get(&a.header.index)
            .cloned()
            .unwrap_or_else(|| format!("#{}", a.header.index));
        for attr in &a.attributes {
            if let AddressAttribute::Address(IpAddr::V4(ip))
            | AddressAttribute::Local(IpAddr::V4(ip)) = attr
            {
                facts.addresses.insert(*ip, name.clone());
            }
        }
    }
    let mut rules = handle.rule().get(IpVersion::V4).execute();
    while let Some(r) = rules.try_next().await.context("listing rules")? {
        let table = r
            .attributes
            .iter()
            .find_map(|a| match a {
                RuleAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(u32::from(r.header.table));
        let src = r.attributes.iter().find_map(|a| match a {
            RuleAttribute::Source(IpAddr::V4(s)) => Some(*s),
            _ => None,
        });
        if let (Some(s), 32) = (src, r.header.src_len) {
            facts.rules.push((s, table));
        }
    }
    let mut all = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().build();
    all.header.table = RouteHeader::RT_TABLE_UNSPEC;
    let mut routes = handle.route().get(all).execute();
    while let Some(r) = routes.try_next().await.context("listing routes")? {
        let table = r
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(u32::from(r.header.table));
        let gateway = r
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Gateway(_)));
        facts
            .routes
            .push((table, r.header.destination_prefix_length, gateway));
    }
    task.abort();
    Ok(facts)
}

/// The ENI's addresses as `attach` journalled them.
fn eni_from(attach: Option<&serde_json::Value>) -> Option<(String, Vec<String>)> {
    let eni = attach?.get("eni")?;
    let id = eni.get("id")?.as_str()?.to_string();
    let ips = eni
        .get("ips")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    Some((id, ips))
}

fn eni_status(
    settings: &Settings,
    j: &Journals,
    net: &Result<NetFacts>,
    never: bool,
    problem: &mut impl FnMut(&str, State, String),
) -> EniStatus {
    if !settings.resources.eni {
        return EniStatus {
            state: Some(State::NotConfigured),
            ..Default::default()
        };
    }
    let Some((id, addresses)) = eni_from(j.attach.as_ref()) else {
        let state = if never { State::Unknown } else { State::Failed };
        if !never {
            problem(
                "eni",
                state,
                "no ENI attached (attach.json names none)".into(),
            );
        }
        return EniStatus {
            state: Some(state),
            ..Default::default()
        };
    };
    let mut s = EniStatus {
        id: Some(id.clone()),
        addresses: addresses.clone(),
        ..Default::default()
    };
    let facts = match net {
        Ok(f) => f,
        Err(e) => {
            problem("eni", State::Unknown, format!("{id}: {e:#}"));
            s.state = Some(State::Unknown);
            return s;
        }
    };
    let missing: Vec<&String> = addresses
        .iter()
        .filter(|a| {
            a.parse::<Ipv4Addr>()
                .ok()
                .is_none_or(|ip| !facts.addresses.contains_key(&ip))
        })
        .collect();
    s.interface = addresses
        .first()
        .and_then(|a| a.parse::<Ipv4Addr>().ok())
        .and_then(|ip| facts.addresses.get(&ip).cloned());
    s.attached_here = Some(missing.is_empty() && !addresses.is_empty());
    if s.attached_here == Some(true) {
        s.state = Some(State::Ok);
    } else {
        let what = if addresses.is_empty() {
            "has no address journalled".to_string()
        } else {
            format!(
                "address {} is on no interface of this host",
                missing
                    .iter()
                    .map(|a| a.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        problem("eni", State::Failed, format!("{id}: {what}"));
        s.state = Some(State::Failed);
    }
    s
}

fn routing_status(
    settings: &Settings,
    j: &Journals,
    net: &Result<NetFacts>,
    never: bool,
    problem: &mut impl FnMut(&str, State, String),
) -> RoutingStatus {
    if !settings.resources.eni {
        return RoutingStatus {
            state: Some(State::NotConfigured),
            ..Default::default()
        };
    }
    let routing = j.network.as_ref().and_then(|n| n.get("routing"));
    let table = routing
        .and_then(|r| r.get("table"))
        .and_then(|t| t.as_u64())
        .and_then(|t| u32::try_from(t).ok());
    let Some(table) = table else {
        let state = if never { State::Unknown } else { State::Failed };
        if !never {
            problem(
                "routing",
                state,
                "the ENI is not routed (no network.json)".into(),
            );
        }
        return RoutingStatus {
            state: Some(state),
            ..Default::default()
        };
    };
    let ips: Vec<Ipv4Addr> = routing
        .and_then(|r| r.get("ips"))
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str()?.parse().ok())
        .collect();
    let mut s = RoutingStatus {
        table: Some(table),
        ..Default::default()
    };
    let facts = match net {
        Ok(f) => f,
        Err(e) => {
            problem("routing", State::Unknown, format!("table {table}: {e:#}"));
            s.state = Some(State::Unknown);
            return s;
        }
    };
    let missing_rules: Vec<String> = ips
        .iter()
        .filter(|ip| !facts.rules.contains(&(**ip, table)))
        .map(|ip| format!("from {ip} lookup {table}"))
        .collect();
    let default = facts.routes.iter().any(|r| r.0 == table && r.1 == 0 && r.2);
    let subnet = facts.routes.iter().any(|r| r.0 == table && r.1 > 0);
    s.rules_present = Some(missing_rules.is_empty() && !ips.is_empty());
    s.routes_present = Some(default && subnet);
    let mut missing = missing_rules;
    if ips.is_empty() {
        missing.push("any address (network.json routes none)".into());
    }
    if !subnet {
        missing.push(format!("the subnet route in table {table}"));
    }
    if !default {
        missing.push(format!("the default route in table {table}"));
    }
    if missing.is_empty() {
        s.state = Some(State::Ok);
    } else {
        problem(
            "routing",
            State::Failed,
            format!("missing: {}", missing.join(", ")),
        );
        s.state = Some(State::Failed);
    }
    s
}

/// The major:minor of `dev` as mountinfo writes it.
fn dev_numbers(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major, minor)
}

/// The (major, minor) of what is mounted at `mountpoint` (the topmost mount), from
/// `/proc/self/mountinfo` text. Pure.
pub fn mounted_at(mountinfo: &str, mountpoint: &str) -> Option<(u64, u64)> {
    mountinfo.lines().rev().find_map(|l| {
        let mut f = l.split(' ');
        let (_, _, majmin, _, mp) = (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
        (unescape_mountinfo(mp) == mountpoint).then_some(())?;
        let (ma, mi) = majmin.split_once(':')?;
        Some((ma.parse().ok()?, mi.parse().ok()?))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn usage(path: &Path) -> Result<Usage> {
    let s =
        nix::sys::statvfs::statvfs(path).with_context(|| format!("statvfs {}", path.display()))?;
    // statvfs's field types differ by platform; all are unsigned and fit u64.
    fn wide<T: Into<u64>>(n: T) -> u64 {
        n.into()
    }
    let frsize = wide(s.fragment_size());
    let total = wide(s.blocks()) * frsize;
    let free = wide(s.blocks_free()) * frsize;
    let available = wide(s.blocks_available()) * frsize;
    let used = total.saturating_sub(free);
    // As df computes Use%: used / (used + available), rounded up.
    let denom = used + available;
    let used_percent = if denom == 0 {
        0.0
    } else {
        (used as f64 * 1000.0 / denom as f64).ceil() / 10.0
    };
    Ok(Usage {
        total_bytes: total,
        used_bytes: used,
        available_bytes: available,
        used_percent,
    })
}

fn volume_status(
    settings: &Settings,
    j: &Journals,
    never: bool,
    problem: &mut impl FnMut(&str, State, String),
) -> VolumeStatus {
    if !settings.resources.volume {
        return VolumeStatus {
            state: Some(State::NotConfigured),
            ..Default::default()
        };
    }
    let field = |k: &str| {
        j.storage
            .as_ref()
            .and_then(|s| s.get(k))
            .and_then(|v| v.as_str())
            .map(String::from)
    };
    let (Some(id), Some(device), Some(mountpoint)) =
        (field("volume"), field("device"), field("data_dir"))
    else {
        let state = if never { State::Unknown } else { State::Failed };
        if !never {
            problem(
                "volume",
                state,
                "no volume mounted (no storage.json)".into(),
            );
        }
        return VolumeStatus {
            state: Some(state),
            ..Default::default()
        };
    };
    let mut s = VolumeStatus {
        id: Some(id.clone()),
        device: Some(device.clone()),
        mountpoint: Some(mountpoint.clone()),
        ..Default::default()
    };
    let dev = match std::fs::metadata(&device) {
        Ok(m) => dev_numbers(m.rdev()),
        Err(e) => {
            problem(
                "volume",
                State::Failed,
                format!("{id}: device {device} is not here: {e}"),
            );
            s.mounted = Some(false);
            s.state = Some(State::Failed);
            return s;
        }
    };
    let at = match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(text) => mounted_at(&text, &mountpoint),
        Err(e) => {
            problem(
                "volume",
                State::Unknown,
                format!("{id}: reading /proc/self/mountinfo: {e}"),
            );
            s.state = Some(State::Unknown);
            return s;
        }
    };
    s.mounted = Some(at == Some(dev));
    if at != Some(dev) {
        let what = match at {
            None => format!("{mountpoint} is not a mount point"),
            Some((ma, mi)) => format!(
                "{mountpoint} is mounted from device {ma}:{mi}, not {device} ({}:{})",
                dev.0, dev.1
            ),
        };
        problem("volume", State::Failed, format!("{id}: {what}"));
        s.state = Some(State::Failed);
        return s;
    }
    match usage(Path::new(&mountpoint)) {
        Ok(u) => {
            s.state = Some(if u.used_percent >= USAGE_DEGRADED_PERCENT {
                problem(
                    "volume",
                    State::Degraded,
                    format!("{id}: {mountpoint} is {}% full", u.used_percent),
                );
                State::Degraded
            } else {
                State::Ok
            });
            s.usage = Some(u);
        }
        Err(e) => {
            problem("volume", State::Unknown, format!("{id}: {e:#}"));
            s.state = Some(State::Unknown);
        }
    }
    s
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn config_status(
    settings: &Settings,
    j: &Journals,
    problem: &mut impl FnMut(&str, State, String),
) -> ConfigStatus {
    let Some(kafka) = settings
        .kafka
        .as_ref()
        .filter(|_| settings.cluster.role == Role::Kafka)
    else {
        return ConfigStatus {
            state: Some(State::NotConfigured),
            ..Default::default()
        };
    };
    let journalled = j
        .render
        .as_ref()
        .and_then(|r| r.get("path"))
        .and_then(|p| p.as_str())
        .map(PathBuf::from);
    let path = journalled.clone().unwrap_or_else(|| kafka.output.clone());
    let shown = path.display().to_string();
    let booted_render = j.boot.as_ref().is_some_and(|b| {
        b.steps
            .iter()
            .any(|s| s.step == "render" && s.outcome == "ok")
    });
    let mut s = ConfigStatus {
        path: Some(shown.clone()),
        ..Default::default()
    };
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) => {
            let (state, what) = if journalled.is_some() || booted_render {
                (State::Failed, "the rendered file is gone")
            } else {
                (State::Unknown, "not rendered yet")
            };
            problem("config", state, format!("{shown}: {what} ({e})"));
            s.state = Some(state);
            return s;
        }
    };
    let hash = sha256_hex(&text);
    let ours = String::from_utf8_lossy(&text)
        .lines()
        .any(|l| l == crate::render::BEGIN);
    s.rendered_by_agent = Some(ours);
    // Unchanged: the hash the render journalled, if it did; else the file is no newer than
    // the journal written right after it (render.json, or boot.json of a boot that rendered).
    let recorded = j
        .render
        .as_ref()
        .and_then(|r| r.get("sha256"))
        .and_then(|h| h.as_str());
    let state_dir = &settings.paths.state_dir;
    s.unchanged_since_render = match recorded {
        Some(h) => Some(h.eq_ignore_ascii_case(&hash)),
        None => {
            let refs = [
                j.render.as_ref().and(mtime(&state_dir.join("render.json"))),
                booted_render
                    .then(|| mtime(&state_dir.join("boot.json")))
                    .flatten(),
            ];
            let newest = refs.into_iter().flatten().max();
            match (newest, mtime(&path)) {
                (Some(r), Some(f)) => Some(f <= r),
                _ => None,
            }
        }
    };
    s.sha256 = Some(hash);
    let mut state = State::Ok;
    if !ours {
        problem(
            "config",
            State::Degraded,
            format!(
                "{shown}: not rendered by kafka-agent (no `{}` block)",
                "# BEGIN kafka-agent"
            ),
        );
        state = State::Degraded;
    }
    match s.unchanged_since_render {
        Some(false) => {
            problem(
                "config",
                State::Degraded,
                format!("{shown}: changed since kafka-agent rendered it"),
            );
            state = State::Degraded;
        }
        None if ours => {
            problem(
                "config",
                State::Unknown,
                format!("{shown}: no render journalled to compare with"),
            );
            state = State::Unknown;
        }
        _ => {}
    }
    s.state = Some(state);
    s
}

/// The port a broker serves clients on.
fn service_port(settings: &Settings) -> Option<u16> {
    let kafka = settings.kafka.as_ref()?;
    if let Some(l) = kafka
        .inter_broker_listener
        .as_ref()
        .and_then(|n| kafka.listeners.get(n))
    {
        return Some(l.port);
    }
    let controller = kafka.kraft.as_ref().map(|k| k.controller_listener.as_str());
    kafka
        .listeners
        .iter()
        .find(|(n, _)| Some(n.as_str()) != controller)
        .map(|(_, l)| l.port)
        .or(Some(9092))
}

/// Whether `/proc/net/tcp{,6}` text shows a listening socket on `port`. Pure.
pub fn listens_on(proc_net_tcp: &str, port: u16) -> bool {
    proc_net_tcp.lines().skip(1).any(|l| {
        let mut f = l.split_whitespace();
        let local = f.nth(1);
        let state = f.nth(1);
        state == Some("0A")
            && local
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                == Some(port)
    })
}

fn service_status(settings: &Settings) -> ServiceStatus {
    let port = service_port(settings);
    let listening = port.map(|p| {
        ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .any(|t| listens_on(&t, p))
    });
    ServiceStatus {
        state: Some(if listening == Some(true) {
            State::Ok
        } else {
            State::Unknown
        }),
        registered: None,
        port,
        listening,
    }
}

/// Prints the report: JSON (`--json`, one line) or the human summary.
pub fn print(report: &Report, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, report)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", human(report))?;
    }
    out.flush()?;
    Ok(())
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or("?".into(), |v| v.to_string())
}

fn bytes(n: u64) -> String {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    const MIB: f64 = 1024.0 * 1024.0;
    if n as f64 >= GIB {
        format!("{:.1} GiB", n as f64 / GIB)
    } else {
        format!("{:.1} MiB", n as f64 / MIB)
    }
}

fn state(s: Option<State>) -> &'static str {
    s.unwrap_or(State::Unknown).as_str()
}

/// The human summary: one line per check, then what is wrong.
pub fn human(r: &Report) -> String {
    let mut o = String::new();
    let mut line = |k: &str, v: String| o.push_str(&format!("{k:<10}{v}\n"));
    line(
        "health",
        format!("{} (exit {})", r.health.as_str(), r.exit_code),
    );
    let c = &r.claim;
    line(
        "node",
        match c.id {
            Some(id) => format!(
                "{} {} of cluster {}: id {id} (epoch {}, {}, {}) on {} in {}",
                r.role,
                if r.role == "kafka" { "broker" } else { "node" },
                r.cluster,
                opt(&c.epoch),
                opt(&c.backend),
                opt(&c.how),
                opt(&c.instance_id),
                opt(&c.az),
            ),
            None => format!("{} of cluster {}: no id claimed", r.role, r.cluster),
        },
    );
    let e = &r.eni;
    line(
        "eni",
        match &e.id {
            Some(id) => format!(
                "{id} {} on {}: {}",
                if e.addresses.is_empty() {
                    "(no address)".to_string()
                } else {
                    e.addresses.join(", ")
                },
                e.interface.as_deref().unwrap_or("no interface here"),
                state(e.state)
            ),
            None => state(e.state).into(),
        },
    );
    let v = &r.volume;
    line(
        "volume",
        match &v.id {
            Some(id) => format!(
                "{id} {} at {}{}: {}",
                opt(&v.device),
                opt(&v.mountpoint),
                v.usage.as_ref().map_or(
                    if v.mounted == Some(false) {
                        " (not mounted)".to_string()
                    } else {
                        String::new()
                    },
                    |u| format!(
                        ", {} of {} used ({}%)",
                        bytes(u.used_bytes),
                        bytes(u.total_bytes),
                        u.used_percent
                    )
                ),
                state(v.state)
            ),
            None => state(v.state).into(),
        },
    );
    let t = &r.routing;
    line(
        "routing",
        match t.table {
            Some(table) => format!(
                "table {table}, rules {}, routes {}: {}",
                present(t.rules_present),
                present(t.routes_present),
                state(t.state)
            ),
            None => state(t.state).into(),
        },
    );
    let f = &r.config;
    line(
        "config",
        match &f.path {
            Some(p) => format!(
                "{p}{}{}{}: {}",
                f.sha256.as_ref().map_or(String::new(), |h| format!(
                    " sha256 {}",
                    &h[..16.min(h.len())]
                )),
                match f.rendered_by_agent {
                    Some(true) => ", rendered by kafka-agent",
                    Some(false) => ", not rendered by kafka-agent",
                    None => "",
                },
                match f.unchanged_since_render {
                    Some(true) => ", unchanged since",
                    Some(false) => ", changed since",
                    None => "",
                },
                state(f.state)
            ),
            None => state(f.state).into(),
        },
    );
    let s = &r.service;
    line(
        "service",
        match s.port {
            Some(p) => format!(
                "port {p} {}, registration not checked",
                match s.listening {
                    Some(true) => "listening",
                    _ => "not listening",
                }
            ),
            None => "not checked".into(),
        },
    );
    if let Some(e) = &r.ensemble {
        line(
            "ensemble",
            format!(
                "{} (zxid {}), {}; {} of {} voters make a quorum; plan {}{}: {}",
                opt(&e.mode),
                opt(&e.zxid),
                match e.voting {
                    Some(true) => "a voting member",
                    Some(false) => "not a voting member",
                    None => "membership unknown",
                },
                opt(&e.quorum_size),
                opt(&e.voters),
                opt(&e.plan),
                e.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default(),
                state(e.state),
            ),
        );
        for m in &e.members {
            line("", format!("  {m}"));
        }
    }
    let w = &r.watch;
    line(
        "watch",
        match (&w.summary, w.checked_seconds_ago) {
            (Some(sum), Some(ago)) => format!("{sum} (checked {ago}s ago): {}", state(w.state)),
            (Some(sum), None) => format!("{sum}: {}", state(w.state)),
            _ => "no watchdog journal (watch.json) on this host".into(),
        },
    );
    if let Some(l) = &w.leave {
        line(
            "leave",
            format!(
                "noticed {}: {}{}",
                utc(l.noticed_unix),
                l.steps
                    .iter()
                    .map(|s| format!("{} {}", s.step, s.outcome))
                    .collect::<Vec<_>>()
                    .join(", "),
                l.completed
                    .as_deref()
                    .map_or(", not completed".into(), |c| format!("; completed {c}"))
            ),
        );
    }
    line(
        "last boot",
        match &r.last_boot {
            Some(b) => {
                let steps = b
                    .steps
                    .iter()
                    .map(|s| {
                        format!(
                            "{} {} ms{}",
                            s.step,
                            s.ms,
                            if s.outcome == "ok" { "" } else { " (failed)" }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                let mut v = format!(
                    "{} {}{}",
                    utc(b.started_unix),
                    b.outcome,
                    b.finished_unix.map_or(", not finished".into(), |f| format!(
                        " after {} s",
                        f.saturating_sub(b.started_unix)
                    ))
                );
                if !steps.is_empty() {
                    v.push_str(&format!(": {steps}"));
                }
                if let Some(e) = &b.error {
                    v.push_str(&format!("; [{}] {}", e.kind, e.message));
                }
                v
            }
            None => "none journalled".into(),
        },
    );
    for p in &r.problems {
        o.push_str(&format!(
            "{}: {}: {}\n",
            p.state.as_str(),
            p.check,
            p.message
        ));
    }
    o
}

fn present(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "present",
        Some(false) => "missing",
        None => "unchecked",
    }
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SSZ`. Pure.
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// SHA-256 of `data` as lower-case hex (FIPS 180-4). Pure; small enough not to need a crate.
pub fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    let bits = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_be_bytes());
    for chunk in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, b) in chunk.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// watch.json as the watchdog writes it, checked `ago` seconds before `NOW`.
    fn watch_json(
        obs: crate::watch::Observation,
        decision: crate::watch::Decision,
        marked: Option<u64>,
        ago: u64,
    ) -> serde_json::Value {
        serde_json::to_value(crate::watch::Journal {
            version: crate::watch::VERSION,
            checked_unix: NOW - ago,
            instance_id: Some("i-1".into()),
            id: Some(1),
            failing_since_unix: None,
            observed: obs,
            decision,
            marked_unhealthy_unix: marked,
            settings: crate::watch::JournalSettings {
                interval_seconds: 10,
                unhealthy_after_seconds: 60,
                grace_period_seconds: 600,
                lease_bound_seconds: 900,
            },
        })
        .unwrap()
    }

    const NOW: u64 = 1_700_000_000;

    fn observed() -> crate::watch::Observation {
        use crate::watch::{LeaseState, Probe};
        crate::watch::Observation {
            at: Duration::ZERO,
            since_boot: Some(Duration::from_secs(900)),
            process: Probe::NotChecked,
            listener: Probe::Ok,
            registration: Probe::Ok,
            coordination: Ok(()),
            lease: LeaseState::Free,
            leaving: false,
        }
    }

    fn judged(
        w: Option<&serde_json::Value>,
        leave: Option<&crate::leave::Journal>,
    ) -> (WatchStatus, Vec<Problem>) {
        let mut problems = Vec::new();
        let s = watch_status(
            w,
            leave,
            Some("i-1"),
            NOW,
            &mut |c: &str, state, message| {
                problems.push(Problem {
                    check: c.into(),
                    state,
                    message,
                })
            },
        );
        (s, problems)
    }

    #[test]
    fn the_watchdogs_view_says_why_it_acts_or_holds_back() {
        use crate::watch::{Decision, HoldBack, LeaseState, Probe};
        // No watchdog here: nothing to say, nothing wrong.
        let (s, p) = judged(None, None);
        assert_eq!(s.state, Some(State::NotConfigured));
        assert!(p.is_empty());
        // Healthy: ok.
        let w = watch_json(observed(), Decision::Healthy, None, 5);
        let (s, p) = judged(Some(&w), None);
        assert_eq!(
            (s.state, s.decision.as_deref()),
            (Some(State::Ok), Some("healthy"))
        );
        assert_eq!(s.checked_seconds_ago, Some(5));
        assert_eq!(s.lease.as_deref(), Some("free"));
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(assess(false, None, &p), Health::Healthy);
        // ZooKeeper down: degraded, and it says why it holds back.
        let down = crate::watch::Observation {
            coordination: Err("connecting to ZooKeeper: no answer".into()),
            registration: Probe::NotChecked,
            lease: LeaseState::Unknown {
                why: "ZooKeeper is unreachable".into(),
            },
            ..observed()
        };
        let d = Decision::HoldBack {
            why: HoldBack::CoordinationUnreachable {
                why: "connecting to ZooKeeper: no answer".into(),
            },
            failing: None,
        };
        let (s, p) = judged(Some(&watch_json(down, d, None, 1)), None);
        assert_eq!(s.state, Some(State::Degraded));
        assert_eq!(s.reason.as_deref(), Some("coordination_unreachable"));
        assert_eq!(s.coordination_reachable, Some(false));
        let sum = s.summary.unwrap();
        assert!(sum.contains("coordination service is unreachable"), "{sum}");
        assert_eq!(p[0].check, "watch");
        assert_eq!(assess(false, None, &p), Health::Degraded);
        // Within the grace: ok, it says how long is left.
        let d = Decision::HoldBack {
            why: HoldBack::WithinGrace {
                left: Duration::from_secs(42),
            },
            failing: None,
        };
        let (s, p) = judged(Some(&watch_json(observed(), d, None, 1)), None);
        assert_eq!(s.state, Some(State::Ok));
        assert!(s.summary.unwrap().contains("42s left"));
        assert!(p.is_empty());
        // Another replacement in flight while the broker fails: degraded, names the holder.
        let d = Decision::HoldBack {
            why: HoldBack::ReplacementInFlight {
                holder: "i-other".into(),
                id: 2,
            },
            failing: Some("10.0.0.5:9092 answered nothing".into()),
        };
        let (s, p) = judged(Some(&watch_json(observed(), d, None, 1)), None);
        assert_eq!(s.state, Some(State::Degraded));
        let sum = s.summary.unwrap();
        assert!(
            sum.contains("i-other") && sum.contains("answered nothing"),
            "{sum}"
        );
        assert_eq!(s.failing.as_deref(), Some("10.0.0.5:9092 answered nothing"));
        assert_eq!(assess(false, None, &p), Health::Degraded);
        // Marked Unhealthy: degraded (the group replaces it), never failed.
        let d = Decision::MarkUnhealthy {
            why: "failing for 60s".into(),
        };
        let (s, p) = judged(Some(&watch_json(observed(), d, Some(NOW - 3), 1)), None);
        assert_eq!(s.marked_unhealthy_unix, Some(NOW - 3));
        assert!(s.summary.unwrap().contains("marked Unhealthy at"));
        assert_eq!(assess(false, None, &p), Health::Degraded);
        // A stale journal: the watchdog is not running.
        let (s, p) = judged(
            Some(&watch_json(observed(), Decision::Healthy, None, 600)),
            None,
        );
        assert_eq!(s.state, Some(State::Unknown));
        assert!(
            p[0].message.contains("is kafka-agent-watch running"),
            "{p:?}"
        );
        assert_eq!(assess(false, None, &p), Health::Degraded);
    }

    #[test]
    fn a_leave_in_progress_is_degraded_and_shown_step_by_step() {
        use crate::watch::{Decision, HoldBack};
        let leave: crate::leave::Journal = serde_json::from_value(serde_json::json!({
            "version": 1, "instance_id": "i-1", "broker_id": 1,
            "auto_scaling_group": "g", "lifecycle_hook": "leave",
            "noticed_unix_ms": (NOW - 20) * 1000, "runs": 1, "heartbeats": 3,
            "steps": [
                {"step": "stop", "outcome": "ok", "started_unix_ms": 0, "finished_unix_ms": 1, "detail": null},
                {"step": "unmount", "outcome": "ok", "started_unix_ms": 1, "finished_unix_ms": 2, "detail": null}
            ],
            "completed": null
        }))
        .unwrap();
        let d = Decision::HoldBack {
            why: HoldBack::Leaving,
            failing: None,
        };
        let obs = crate::watch::Observation {
            leaving: true,
            ..observed()
        };
        let w = watch_json(obs, d, None, 1);
        let (s, p) = judged(Some(&w), Some(&leave));
        assert_eq!(s.state, Some(State::Degraded));
        let l = s.leave.as_ref().unwrap();
        assert_eq!(
            (l.noticed_unix, l.heartbeats, l.steps.len()),
            (NOW - 20, 3, 2)
        );
        assert!(
            p.iter()
                .any(|p| p.check == "leave" && p.message.contains("not completed"))
        );
        assert_eq!(assess(false, None, &p), Health::Degraded);
        // Another instance's leave.json (a volume's journal carried over) is not this one's.
        let other = crate::leave::Journal {
            instance_id: "i-0".into(),
            ..leave
        };
        let (s, _) = judged(
            Some(&watch_json(observed(), Decision::Healthy, None, 1)),
            Some(&other),
        );
        assert!(s.leave.is_none());
    }

    fn boot(outcome: &str) -> LastBoot {
        LastBoot {
            started_unix: 1_700_000_000,
            finished_unix: Some(1_700_000_002),
            outcome: outcome.into(),
            steps: vec![],
            error: None,
        }
    }

    fn p(check: &str, state: State) -> Problem {
        Problem {
            check: check.into(),
            state,
            message: String::new(),
        }
    }

    #[test]
    fn health_follows_the_monitoring_convention() {
        assert_eq!(assess(true, None, &[]), Health::Unknown);
        assert_eq!(
            assess(
                false,
                Some(&boot("success")),
                &[p("journal", State::Unknown)]
            ),
            Health::Unknown
        );
        assert_eq!(assess(false, Some(&boot("failure")), &[]), Health::Failed);
        assert_eq!(
            assess(
                false,
                Some(&boot("success")),
                &[p("eni", State::Failed), p("volume", State::Degraded)]
            ),
            Health::Failed
        );
        assert_eq!(
            assess(
                false,
                Some(&boot("success")),
                &[p("volume", State::Degraded)]
            ),
            Health::Degraded
        );
        assert_eq!(assess(false, Some(&boot("running")), &[]), Health::Degraded);
        assert_eq!(assess(false, Some(&boot("success")), &[]), Health::Healthy);
        // Steps run one by one (no boot.json) and all holding: healthy.
        assert_eq!(assess(false, None, &[]), Health::Healthy);
        assert_eq!(
            [
                Health::Healthy,
                Health::Degraded,
                Health::Failed,
                Health::Unknown
            ]
            .map(Health::exit_code),
            [0, 1, 2, 3]
        );
    }

    #[test]
    fn sha256_matches_fips_vectors() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            sha256_hex(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
    }

    #[test]
    fn mountinfo_finds_the_topmost_mount() {
        let text = "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
                    40 22 259:3 / /var/lib/kafka rw,noatime - xfs /dev/nvme1n1 rw\n\
                    41 22 7:2 / /var/lib/with\\040space rw - xfs /dev/loop2 rw\n\
                    42 40 259:5 / /var/lib/kafka rw - xfs /dev/nvme2n1 rw\n";
        assert_eq!(mounted_at(text, "/var/lib/kafka"), Some((259, 5)));
        assert_eq!(mounted_at(text, "/var/lib/with space"), Some((7, 2)));
        assert_eq!(mounted_at(text, "/var/lib"), None);
        assert_eq!(dev_numbers(0x10305), (259, 5));
    }

    #[test]
    fn listening_sockets_are_read_from_proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                    0: 00000000:2384 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1\n\
                    1: 0100007F:1F90 0100007F:A000 01 00000000:00000000 00:00000000 00000000     0        0 2\n";
        assert!(listens_on(text, 9092));
        assert!(!listens_on(text, 8080), "established, not listening");
        assert!(!listens_on(text, 2181));
    }

    #[test]
    fn utc_formats_unix_time() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn the_human_summary_names_the_node_and_the_failure() {
        let r = Report {
            version: VERSION,
            health: Health::Failed,
            exit_code: 2,
            problems: vec![Problem {
                check: "last_boot".into(),
                state: State::Failed,
                message: "the last boot failed [resource_in_use]: eni-1 is attached to i-2".into(),
            }],
            role: "kafka".into(),
            cluster: "orders".into(),
            claim: ClaimStatus {
                state: Some(State::Ok),
                id: Some(1),
                epoch: Some(0),
                backend: Some("zookeeper".into()),
                how: Some("created".into()),
                instance_id: Some("i-1".into()),
                az: Some("us-east-1a".into()),
            },
            eni: EniStatus {
                state: Some(State::Ok),
                id: Some("eni-1".into()),
                addresses: vec!["10.0.1.9".into()],
                attached_here: Some(true),
                interface: Some("ens6".into()),
            },
            volume: VolumeStatus {
                state: Some(State::Ok),
                id: Some("vol-1".into()),
                device: Some("/dev/nvme1n1".into()),
                mountpoint: Some("/var/lib/kafka".into()),
                mounted: Some(true),
                usage: Some(Usage {
                    total_bytes: 10 << 30,
                    used_bytes: 1 << 30,
                    available_bytes: 9 << 30,
                    used_percent: 10.0,
                }),
            },
            routing: RoutingStatus::default(),
            config: ConfigStatus::default(),
            service: ServiceStatus::default(),
            last_boot: Some(LastBoot {
                error: Some(BootError {
                    kind: "resource_in_use".into(),
                    message: "eni-1 is attached to i-2".into(),
                }),
                ..boot("failure")
            }),
            watch: WatchStatus {
                state: Some(State::Degraded),
                checked_seconds_ago: Some(4),
                summary: Some("holds back because the coordination service is unreachable".into()),
                leave: Some(LeaveStatus {
                    noticed_unix: 0,
                    completed: Some("CONTINUE".into()),
                    heartbeats: 1,
                    steps: vec![LeaveStep {
                        step: "stop".into(),
                        outcome: "ok".into(),
                        detail: None,
                    }],
                }),
                ..Default::default()
            },
            ensemble: None,
        };
        let h = human(&r);
        for want in [
            "watch     holds back because the coordination service is unreachable (checked 4s ago): degraded",
            "leave     noticed 1970-01-01T00:00:00Z: stop ok; completed CONTINUE",
            "failed (exit 2)",
            "id 1",
            "eni-1 10.0.1.9 on ens6",
            "vol-1 /dev/nvme1n1 at /var/lib/kafka, 1.0 GiB of 10.0 GiB used (10%)",
            "[resource_in_use]",
        ] {
            assert!(h.contains(want), "{want:?} in\n{h}");
        }
    }
}
