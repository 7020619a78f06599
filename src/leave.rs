//! Leaving cleanly (issue 13): when the Auto Scaling group terminates this instance on purpose
//! (scale-in, an Unhealthy replacement, TerminateInstanceInAutoScalingGroup, an instance
//! refresh) and a termination lifecycle hook holds it in Terminating:Wait, IMDS's
//! `autoscaling/target-lifecycle-state` reads `Terminated` while EC2 still runs it. `kafka-agent
//! watch` sees that and, heartbeating the hook (`[watch] heartbeat_seconds`):
//!
//! 1. stops the broker with `[watch] stop_command` (`systemctl stop kafka.service`: Kafka's
//!    controlled shutdown moves its partition leaderships away first);
//! 2. unmounts the data volume (plain umount, which flushes; never lazily);
//! 3. detaches the volume and the ENI from this instance (plain detach, never by force) and
//!    waits, with backoff, until EC2 reports them free;
//! 4. completes the lifecycle action with CONTINUE.
//!
//! The successor then finds both free and attaches them at once, instead of waiting for EC2 to
//! release a terminated instance's resources. Every step is journalled with its times as
//! `<state_dir>/leave.json`; a rerun (the watchdog restarted mid-leave) converges: a stopped
//! broker is stopped again harmlessly, an unmounted volume and a released resource are
//! skipped (their first release keeps its time), and a completed action answers "no active
//! lifecycle action".
//!
//! What an operator expects when something fails (the instance goes away whatever happens:
//! both CONTINUE and ABANDON terminate it, and so does the hook's timeout):
//!
//! * **The data first.** Nothing is unmounted or detached while the broker may still run: the
//!   stop command must have succeeded (or the `[watch] pidfile`'s process be gone), and the
//!   broker's listener must no longer accept connections ([`broker_stopped`]).
//! * **A mounted volume is never detached.** If the unmount fails (busy), the volume stays
//!   attached, and EC2 releases it once the instance is terminated (its OS shut down and the
//!   filesystem with it); the successor waits for that release, as without a hook.
//! * **The ENI goes once the broker has stopped**, whatever became of the volume: it holds no
//!   data, and a successor can serve at the address at once.
//! * **The action is completed with CONTINUE in every case**, once each step has been tried
//!   (or the leave's bound, `[watch] leave_timeout_seconds`, has come): waiting longer helps
//!   no one, and ABANDON would cut short the group's other termination hooks (log shipping,
//!   say). Failures are in the journal and the log.
//! * **fstab is left as it is.** Its line names the volume by UUID with `nofail`, and this
//!   instance never boots again; the successor writes its own.
//!
//! Without `[watch] termination_hook` there is no Terminating:Wait to work in: EC2 takes the
//! instance down at once, and systemd stops Kafka on the way. IAM:
//! `ec2:DetachVolume`, `ec2:DetachNetworkInterface`, `autoscaling:CompleteLifecycleAction`,
//! `autoscaling:RecordLifecycleActionHeartbeat`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::aws::asg::{self, Hooked, LifecycleResult};
use crate::aws::ec2::{Mutation, Resource, ResourceKind};
use crate::aws::{Clients, retry_transient};
use crate::config::Settings;

/// The journal's schema version (`<state_dir>/leave.json`).
pub const VERSION: u32 = 1;

/// What IMDS's target lifecycle state reads while the group terminates the instance.
pub const TERMINATED: &str = "Terminated";

/// Time kept at the end of the leave's bound to complete the lifecycle action.
const COMPLETE_RESERVE: Duration = Duration::from_secs(20);

// --- what is decided ---------------------------------------------------------------------

/// Who holds a resource now, as EC2 reports it, from this instance's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holding {
    Nobody,
    /// This instance: the attachment's state, and an ENI's attachment id.
    Here {
        state: String,
        attachment: Option<String>,
    },
    /// Another instance (a successor that already took it).
    Elsewhere(String),
}

impl Holding {
    pub fn of(resource: &Resource, me: &str) -> Holding {
        match &resource.attachment {
            None => Holding::Nobody,
            Some(a) if a.state == "detached" => Holding::Nobody,
            Some(a) if a.instance == me => Holding::Here {
                state: a.state.clone(),
                attachment: a.id.clone(),
            },
            Some(a) => Holding::Elsewhere(a.instance.clone()),
        }
    }
}

/// What to do next about one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// Not attached here (any more).
    Done,
    /// Detach it (plain): the ENI's attachment id.
    Detach { attachment: Option<String> },
    /// A detachment (or attachment) in flight: look again.
    Wait(String),
    /// Not safe: leave it to EC2's release at termination.
    Keep(String),
}

/// Decides the next step for one resource. `safe`: Ok when nothing uses it any more (the
/// broker stopped; for the volume, nothing has it mounted), else why not. Pure.
pub fn release(holding: &Holding, safe: &Result<(), String>) -> Release {
    match holding {
        Holding::Nobody | Holding::Elsewhere(_) => Release::Done,
        Holding::Here { state, .. } if state == "detaching" => {
            Release::Wait("detaching from this instance".into())
        }
        Holding::Here { .. } if safe.is_err() => {
            Release::Keep(safe.clone().err().unwrap_or_default())
        }
        Holding::Here { state, attachment } if state == "attached" => Release::Detach {
            attachment: attachment.clone(),
        },
        Holding::Here { state, .. } => Release::Wait(format!("{state} here")),
    }
}

/// How the stop command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    Succeeded,
    Failed(String),
}

/// Whether the broker has stopped: the stop command succeeded or the pidfile's process is
/// gone (`process_alive`: None without `[watch] pidfile`), and its listener no longer accepts
/// (`listener`: Some(why) when it does). Pure.
pub fn broker_stopped(
    stop: &Stop,
    process_alive: Option<bool>,
    listener: Option<&str>,
) -> Result<(), String> {
    if let Some(accepts) = listener {
        return Err(format!("the broker still runs: {accepts}"));
    }
    match (stop, process_alive) {
        (_, Some(true)) => Err("the broker still runs: its pidfile's process is alive".into()),
        (Stop::Succeeded, _) => Ok(()),
        (Stop::Failed(_), Some(false)) => Ok(()),
        (Stop::Failed(why), None) => Err(format!(
            "the stop command failed ({why}) and, without [watch] pidfile, the broker's process \
             cannot be seen gone"
        )),
    }
}

/// The mount point of the filesystem on device `(major, minor)`, from `/proc/self/mountinfo`
/// text; None when it is not mounted. Pure.
pub fn mounted_device(mountinfo: &str, dev: (u64, u64)) -> Option<String> {
    mountinfo.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let (ma, mi) = f.get(2)?.split_once(':')?;
        ((ma.parse().ok()?, mi.parse().ok()?) == dev).then(|| f.get(4).unwrap_or(&"").to_string())
    })
}

// --- the journal ---------------------------------------------------------------------------

/// One step of the leave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// notice | stop | unmount | volume | eni | complete
    pub step: String,
    /// ok | already | kept | failed | skipped
    pub outcome: String,
    pub started_unix_ms: u64,
    pub finished_unix_ms: u64,
    pub detail: Option<String>,
}

/// `<state_dir>/leave.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub version: u32,
    pub instance_id: String,
    pub broker_id: Option<u32>,
    /// The group and hook told (None when neither is known: nothing heartbeats or completes).
    pub auto_scaling_group: Option<String>,
    pub lifecycle_hook: Option<String>,
    /// When this instance first saw its target lifecycle state `Terminated`.
    pub noticed_unix_ms: u64,
    /// How many times the leave ran (more than one after a restart mid-leave).
    pub runs: u32,
    pub heartbeats: u32,
    pub steps: Vec<Step>,
    /// CONTINUE accepted, `no_active_action`, or None (not told).
    pub completed: Option<String>,
}

impl Journal {
    /// Records a step. A step found done already keeps the record of when it was done.
    fn record(&mut self, step: Step) {
        match self.steps.iter_mut().find(|s| s.step == step.step) {
            Some(old) if step.outcome == "already" && old.outcome == "ok" => {}
            Some(old) => *old = step,
            None => self.steps.push(step),
        }
    }

    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.step == name)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A step in progress: started now, recorded when it ends.
struct Doing {
    step: &'static str,
    started: u64,
}

impl Doing {
    fn start(step: &'static str) -> Self {
        Doing {
            step,
            started: now_ms(),
        }
    }

    fn end(self, outcome: &str, detail: Option<String>) -> Step {
        Step {
            step: self.step.into(),
            outcome: outcome.into(),
            started_unix_ms: self.started,
            finished_unix_ms: now_ms(),
            detail,
        }
    }
}

// --- the steps -----------------------------------------------------------------------------

/// Runs `[watch] stop_command` within `timeout`.
async fn stop(settings: &Settings, timeout: Duration) -> Stop {
    let argv = &settings.watch.stop_command;
    let run = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(o)) if o.status.success() => Stop::Succeeded,
        Ok(Ok(o)) => Stop::Failed(format!(
            "{} exited with {}: {}",
            argv.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(Err(e)) => Stop::Failed(format!("{}: {e}", argv[0])),
        Err(_) => Stop::Failed(format!(
            "{} still running after {}s",
            argv.join(" "),
            timeout.as_secs()
        )),
    }
}

/// Some(why) when something accepts connections at the broker's listener on this node. Only
/// asked while the address is this host's (a detached ENI's address may be a successor's).
async fn listener_accepts(address: IpAddr, port: u16) -> Option<String> {
    if std::net::TcpListener::bind(SocketAddr::new(address, 0)).is_err() {
        return None;
    }
    let at = SocketAddr::new(address, port);
    match tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(at)).await {
        Ok(Ok(_)) => Some(format!("{at} accepts connections")),
        _ => None,
    }
}

/// The data directory's mount, gone: plain umount (it flushes), again while busy for a few
/// seconds (a process that just exited). Ok(true) when unmounted now, Ok(false) when it was
/// not mounted.
async fn unmount(data_dir: &Path) -> Result<bool, String> {
    let dir = data_dir.to_string_lossy().into_owned();
    let mounted = || {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        crate::status::mounted_at(&info, &dir).is_some()
    };
    if !mounted() {
        return Ok(false);
    }
    let mut backoff = crate::backoff::Backoff::new(
        Duration::from_millis(200),
        Duration::from_secs(2),
        Instant::now() + Duration::from_secs(10),
    );
    loop {
        match nix::mount::umount(data_dir) {
            Ok(()) if !mounted() => return Ok(true),
            Ok(()) => continue, // another mount was stacked on it
            Err(e) => {
                if !backoff.wait().await {
                    return Err(format!("unmounting {dir}: {e}"));
                }
                tracing::info!(data_dir = %dir, error = %e, "unmounting: busy; again");
            }
        }
    }
}

/// Releases one resource: looks, decides ([`release`]), detaches, looks again until EC2
/// reports it free here, kept, or `until`. Returns the step's outcome and detail.
async fn release_one(
    clients: &Clients,
    kind: ResourceKind,
    id: &str,
    me: &str,
    safe: &Result<(), String>,
    until: Instant,
) -> (String, Option<String>) {
    let mut backoff = crate::backoff::Backoff::steady(
        Duration::from_millis(100),
        Duration::from_secs(3),
        Duration::from_secs(2),
        until,
    );
    let mut asked = false;
    loop {
        let seen = retry_transient(until, || clients.ec2.describe(kind, id)).await;
        let why = match seen.map(|r| release(&Holding::of(&r, me), safe)) {
            Ok(Release::Done) if asked => return ("ok".into(), None),
            Ok(Release::Done) => return ("already".into(), None),
            Ok(Release::Keep(why)) => {
                return (
                    "kept".into(),
                    Some(format!(
                        "{why}: EC2 releases it once the instance is terminated"
                    )),
                );
            }
            Ok(Release::Detach { attachment }) => {
                tracing::info!(resource = id, "detaching");
                let call = match (kind, attachment.as_deref()) {
                    (ResourceKind::Volume, _) => clients.ec2.detach_volume(id, me).await,
                    (ResourceKind::Eni, Some(a)) => clients.ec2.detach_eni(id, a, me).await,
                    (ResourceKind::Eni, None) => {
                        Err(anyhow::anyhow!("EC2 names no attachment id for {id}"))
                    }
                };
                match call {
                    Ok(Mutation::Applied) => {
                        asked = true;
                        "EC2 accepted the detach".to_string()
                    }
                    Ok(Mutation::Refused) => "EC2 refused the detach for now".to_string(),
                    Err(e) => format!("{e:#}"),
                }
            }
            Ok(Release::Wait(why)) => {
                asked = true;
                why
            }
            Err(e) => format!("{e:#}"),
        };
        tracing::debug!(resource = id, reason = %why, "waiting for the release");
        if !backoff.wait().await {
            return (
                "failed".into(),
                Some(format!("not released by the leave's bound: {why}")),
            );
        }
    }
}

/// What the leave knows of this node from its journal (none when it never booted).
#[derive(Debug, Default)]
struct Node {
    broker_id: Option<u32>,
    eni: Option<String>,
    address: Option<IpAddr>,
    volume: Option<String>,
    device: Option<String>,
}

fn node(settings: &Settings) -> Node {
    let dir = &settings.paths.state_dir;
    let claim: Option<crate::claim::Claim> =
        crate::journal::read_if_any(dir, "claim").ok().flatten();
    let attach: serde_json::Value = crate::journal::read_if_any(dir, "attach")
        .ok()
        .flatten()
        .unwrap_or_default();
    let storage: serde_json::Value = crate::journal::read_if_any(dir, "storage")
        .ok()
        .flatten()
        .unwrap_or_default();
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
    Node {
        broker_id: claim.map(|c| c.id),
        eni: text(&attach["eni"]["id"]),
        address: attach["eni"]["ips"][0]
            .as_str()
            .and_then(|s| s.parse().ok()),
        volume: text(&attach["volume"]["id"]),
        device: text(&storage["device"]),
    }
}

/// Whether the volume's device is mounted anywhere on this host: Err names where (or why it
/// cannot be told).
fn volume_unmounted(device: Option<&str>, data_dir: &Path) -> Result<(), String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    if crate::status::mounted_at(&info, &data_dir.to_string_lossy()).is_some() {
        return Err(format!("{} is still mounted", data_dir.display()));
    }
    let Some(device) = device else {
        return Ok(());
    };
    let Ok(st) = nix::sys::stat::stat(device) else {
        return Ok(()); // the device is gone from this host
    };
    let dev = (
        nix::sys::stat::major(st.st_rdev),
        nix::sys::stat::minor(st.st_rdev),
    );
    match mounted_device(&info, dev) {
        Some(at) => Err(format!("{device} is still mounted at {at}")),
        None => Ok(()),
    }
}

/// Whom to tell: the termination hook and its group.
async fn hook_target(settings: &Settings, clients: &Clients, me: &str) -> Option<(String, String)> {
    let hook = settings.watch.termination_hook.clone()?;
    let group = match &settings.signal.auto_scaling_group {
        Some(g) => Some(g.clone()),
        None => {
            let until = Instant::now() + Duration::from_secs(30);
            match retry_transient(until, || clients.ec2.tags_of(me)).await {
                Ok(tags) => tags.get(crate::signal::GROUP_TAG).cloned(),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "reading the instance's tags for its group");
                    None
                }
            }
        }
    };
    match group {
        Some(g) => Some((g, hook)),
        None => {
            tracing::warn!(
                hook,
                "no [signal] auto_scaling_group and no {} tag: the hook is neither heartbeated nor completed (its timeout applies)",
                crate::signal::GROUP_TAG
            );
            None
        }
    }
}

/// Heartbeats the hook every `[watch] heartbeat_seconds` until dropped (or the action is gone).
async fn heartbeats<T>(
    settings: &Settings,
    clients: &Clients,
    target: Option<&(String, String)>,
    me: &str,
    count: Arc<AtomicU32>,
) -> T {
    let Some((group, hook)) = target else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(settings.watch.heartbeat);
    tick.tick().await; // the first tick is immediate: the action just began
    loop {
        tick.tick().await;
        match asg::heartbeat(&clients.autoscaling, group, hook, me).await {
            Ok(Hooked::Accepted) => {
                count.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(group = %group, hook = %hook, "heartbeat");
            }
            Ok(Hooked::NoActiveAction(why)) => {
                tracing::info!(group = %group, hook = %hook, reason = %why, "no action to heartbeat");
                return std::future::pending().await;
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "heartbeat"),
        }
    }
}

/// Leaves: stops the broker, unmounts, releases the volume and the ENI, completes the
/// termination hook with CONTINUE; each step journalled in `leave.json`. `me`: this instance
/// (IMDS's). Errors only when the journal cannot be written; every step's own failure is
/// journalled and the leave goes on to completing the action.
pub async fn run(settings: &Settings, clients: &Clients, me: &str) -> Result<Journal> {
    let started = Instant::now();
    let w = &settings.watch;
    let until = started + w.leave_timeout;
    let work_until = until - COMPLETE_RESERVE.min(w.leave_timeout / 2);
    let dir = &settings.paths.state_dir;
    let node = node(settings);
    let previous: Option<Journal> = crate::journal::read_if_any(dir, "leave").ok().flatten();
    let target = hook_target(settings, clients, me).await;
    let mut journal = match previous {
        Some(j) if j.instance_id == me => Journal {
            runs: j.runs + 1,
            ..j
        },
        _ => Journal {
            version: VERSION,
            instance_id: me.to_string(),
            broker_id: node.broker_id,
            auto_scaling_group: None,
            lifecycle_hook: None,
            noticed_unix_ms: now_ms(),
            runs: 1,
            heartbeats: 0,
            steps: Vec::new(),
            completed: None,
        },
    };
    journal.auto_scaling_group = target.as_ref().map(|t| t.0.clone());
    journal.lifecycle_hook = target.as_ref().map(|t| t.1.clone());
    tracing::info!(
        broker_id = ?node.broker_id,
        group = ?journal.auto_scaling_group,
        hook = ?journal.lifecycle_hook,
        "the group is terminating this instance: leaving cleanly"
    );
    crate::journal::record(dir, "leave", &journal)?;

    let beats = Arc::new(AtomicU32::new(journal.heartbeats));
    let work = async {
        let mut steps = Vec::new();
        // 1. Stop the broker.
        let doing = Doing::start("stop");
        let room = work_until.saturating_duration_since(Instant::now());
        let stopped = stop(settings, w.stop_timeout.min(room)).await;
        let alive = w
            .pidfile
            .as_ref()
            .map(|p| crate::watch::probe_pidfile(p) == crate::watch::Probe::Ok);
        let accepts = match (node.address, crate::signal::peer_port(settings)) {
            (Some(a), Some(port)) => listener_accepts(a, port).await,
            _ => None,
        };
        let broker = broker_stopped(&stopped, alive, accepts.as_deref());
        tracing::info!(stop = ?stopped, stopped = ?broker, "stopping the broker");
        steps.push(match (&stopped, &broker) {
            (_, Ok(())) => doing.end(
                "ok",
                match &stopped {
                    Stop::Failed(why) => Some(format!("{why}; its process is gone")),
                    Stop::Succeeded => None,
                },
            ),
            (_, Err(why)) => doing.end("failed", Some(why.clone())),
        });

        // 2. Unmount the data volume.
        let doing = Doing::start("unmount");
        let data_dir = &settings.storage.data_dir;
        let unmounted = match &broker {
            Err(why) => {
                steps.push(doing.end("skipped", Some(why.clone())));
                Err(why.clone())
            }
            Ok(()) => match unmount(data_dir).await {
                Ok(now) => {
                    steps.push(doing.end(if now { "ok" } else { "already" }, None));
                    Ok(())
                }
                Err(why) => {
                    tracing::warn!(reason = %why, "not unmounted: the volume stays attached");
                    steps.push(doing.end("failed", Some(why.clone())));
                    Err(why)
                }
            },
        };
        let volume_safe = unmounted.and_then(|()| {
            volume_unmounted(node.device.as_deref(), data_dir)
                .map_err(|why| format!("never detached while mounted: {why}"))
        });

        // 3. Release the volume and the ENI, side by side.
        let volume = async {
            let id = node.volume.as_deref()?;
            let doing = Doing::start("volume");
            let (outcome, detail) = release_one(
                clients,
                ResourceKind::Volume,
                id,
                me,
                &volume_safe,
                work_until,
            )
            .await;
            tracing::info!(volume = id, outcome, detail = ?detail, "the volume");
            Some(doing.end(&outcome, detail.or(Some(id.to_string()))))
        };
        let eni = async {
            let id = node.eni.as_deref()?;
            let doing = Doing::start("eni");
            let (outcome, detail) =
                release_one(clients, ResourceKind::Eni, id, me, &broker, work_until).await;
            tracing::info!(eni = id, outcome, detail = ?detail, "the ENI");
            Some(doing.end(&outcome, detail.or(Some(id.to_string()))))
        };
        let (v, e) = tokio::join!(volume, eni);
        steps.extend(v);
        steps.extend(e);
        steps
    };
    let steps = tokio::select! {
        steps = work => steps,
        never = heartbeats(settings, clients, target.as_ref(), me, beats.clone()) => never,
    };
    for s in steps {
        journal.record(s);
    }
    journal.heartbeats = beats.load(Ordering::Relaxed);
    crate::journal::record(dir, "leave", &journal)?;

    // 4. Complete the action: CONTINUE, whatever came of the steps.
    if let Some((group, hook)) = &target {
        let doing = Doing::start("complete");
        let by = until.max(Instant::now() + COMPLETE_RESERVE);
        let told = retry_transient(by, || {
            asg::complete(
                &clients.autoscaling,
                group,
                hook,
                me,
                LifecycleResult::Continue,
            )
        })
        .await;
        let step = match told {
            Ok(Hooked::Accepted) => {
                tracing::info!(group = %group, hook = %hook, "completed the termination hook with CONTINUE");
                journal.completed = Some("CONTINUE".into());
                doing.end("ok", None)
            }
            Ok(Hooked::NoActiveAction(why)) => {
                tracing::info!(group = %group, hook = %hook, reason = %why, "the hook waits for no answer from this instance");
                journal.completed = Some("no_active_action".into());
                doing.end("already", Some(why))
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "completing the termination hook; its timeout applies");
                doing.end("failed", Some(format!("{e:#}")))
            }
        };
        journal.record(step);
    }
    crate::journal::record(dir, "leave", &journal)?;
    let summary: BTreeMap<&str, &str> = journal
        .steps
        .iter()
        .map(|s| (s.step.as_str(), s.outcome.as_str()))
        .collect();
    tracing::info!(
        steps = %serde_json::to_string(&summary).unwrap_or_default(),
        took_ms = started.elapsed().as_millis() as u64,
        "left"
    );
    Ok(journal)
}

/// Reads the target lifecycle state; logs a failure (the caller asks again at its next poll).
pub async fn target_state(imds: &crate::aws::imds::Imds) -> Option<String> {
    match imds.target_lifecycle_state().await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %format!("{e:#}"), "reading the target lifecycle state");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn here(state: &str) -> Holding {
        Holding::Here {
            state: state.into(),
            attachment: Some("eni-attach-1".into()),
        }
    }

    #[test]
    fn a_resource_is_detached_only_when_safe_and_attached_here() {
        let ok = Ok(());
        let busy = Err("the broker still runs".to_string());
        assert_eq!(
            release(&here("attached"), &ok),
            Release::Detach {
                attachment: Some("eni-attach-1".into())
            }
        );
        assert_eq!(
            release(&here("attached"), &busy),
            Release::Keep("the broker still runs".into())
        );
        assert!(matches!(release(&here("detaching"), &ok), Release::Wait(_)));
        assert!(matches!(
            release(&here("detaching"), &busy),
            Release::Wait(_)
        ));
        assert!(matches!(release(&here("attaching"), &ok), Release::Wait(_)));
        assert_eq!(release(&Holding::Nobody, &busy), Release::Done);
        assert_eq!(
            release(&Holding::Elsewhere("i-successor".into()), &ok),
            Release::Done
        );
    }

    #[test]
    fn the_holding_is_seen_from_this_instance() {
        let r = |inst: &str, state: &str| Resource {
            id: "vol-1".into(),
            attachment: Some(crate::aws::ec2::Attachment {
                instance: inst.into(),
                id: None,
                state: state.into(),
            }),
            ips: vec![],
            mac: None,
            tags: Default::default(),
        };
        assert_eq!(
            Holding::of(&r("i-me", "attached"), "i-me"),
            Holding::Here {
                state: "attached".into(),
                attachment: None
            }
        );
        assert_eq!(
            Holding::of(&r("i-other", "attached"), "i-me"),
            Holding::Elsewhere("i-other".into())
        );
        assert_eq!(Holding::of(&r("i-me", "detached"), "i-me"), Holding::Nobody);
    }

    #[test]
    fn the_broker_counts_as_stopped_only_when_nothing_says_it_runs() {
        let failed = Stop::Failed("exit 1".into());
        assert_eq!(broker_stopped(&Stop::Succeeded, None, None), Ok(()));
        assert_eq!(broker_stopped(&Stop::Succeeded, Some(false), None), Ok(()));
        assert!(broker_stopped(&Stop::Succeeded, Some(true), None).is_err());
        assert!(broker_stopped(&Stop::Succeeded, None, Some("10.0.1.5:9092 accepts")).is_err());
        assert_eq!(broker_stopped(&failed, Some(false), None), Ok(()));
        let e = broker_stopped(&failed, None, None).unwrap_err();
        assert!(e.contains("exit 1") && e.contains("pidfile"), "{e}");
        assert!(broker_stopped(&failed, Some(false), Some("accepts")).is_err());
    }

    #[test]
    fn a_device_is_found_mounted_by_its_numbers() {
        let info = "22 1 259:1 / / rw - xfs /dev/nvme0n1p1 rw\n\
                    90 22 259:3 / /var/lib/kafka rw,noatime - xfs /dev/nvme1n1 rw\n";
        assert_eq!(
            mounted_device(info, (259, 3)).as_deref(),
            Some("/var/lib/kafka")
        );
        assert_eq!(mounted_device(info, (259, 4)), None);
    }

    #[test]
    fn a_rerun_keeps_when_a_step_was_done() {
        let mut j = Journal {
            version: VERSION,
            instance_id: "i-me".into(),
            broker_id: Some(1),
            auto_scaling_group: None,
            lifecycle_hook: None,
            noticed_unix_ms: 1,
            runs: 1,
            heartbeats: 0,
            steps: vec![],
            completed: None,
        };
        let step = |outcome: &str, at: u64| Step {
            step: "volume".into(),
            outcome: outcome.into(),
            started_unix_ms: at,
            finished_unix_ms: at,
            detail: None,
        };
        j.record(step("ok", 10));
        j.record(step("already", 20));
        assert_eq!(j.step("volume").unwrap().finished_unix_ms, 10);
        j.record(step("failed", 30));
        assert_eq!(j.step("volume").unwrap().outcome, "failed");
        j.record(step("ok", 40));
        assert_eq!(j.step("volume").unwrap().finished_unix_ms, 40);
    }

    #[test]
    fn the_leave_settings_have_defaults_and_bounds() {
        let base = "[cluster]\nname = \"o\"\nrole = \"kafka\"\nsize = 1\n\
                    [zookeeper]\nconnect = \"zk1:2181\"\n";
        let parse = |extra: &str| {
            crate::config::parse(&[(
                std::path::PathBuf::from("/etc/a.toml"),
                format!("{base}{extra}"),
            )])
        };
        let s = parse("").unwrap();
        assert_eq!(s.watch.lifecycle_poll, Duration::from_secs(5));
        assert_eq!(s.watch.termination_hook, None);
        assert_eq!(
            s.watch.stop_command,
            ["/usr/bin/systemctl", "stop", "kafka.service"]
        );
        assert_eq!(s.watch.stop_timeout, Duration::from_secs(300));
        assert_eq!(s.watch.leave_timeout, Duration::from_secs(900));
        assert_eq!(s.watch.heartbeat, Duration::from_secs(60));
        let s = parse("[watch]\ntermination_hook = \"leave\"\n").unwrap();
        assert_eq!(s.watch.termination_hook.as_deref(), Some("leave"));
        for (bad, key) in [
            ("lifecycle_poll_seconds = 0", "watch.lifecycle_poll_seconds"),
            ("termination_hook = \"\"", "watch.termination_hook"),
            ("stop_command = [\"systemctl\"]", "watch.stop_command"),
            ("stop_command = []", "watch.stop_command"),
            ("stop_timeout_seconds = 0", "watch.stop_timeout_seconds"),
            (
                "stop_timeout_seconds = 900\nleave_timeout_seconds = 900",
                "watch.stop_timeout_seconds",
            ),
            ("leave_timeout_seconds = 10", "watch.leave_timeout_seconds"),
            ("heartbeat_seconds = 0", "watch.heartbeat_seconds"),
        ] {
            let e = parse(&format!("[watch]\n{bad}\n")).unwrap_err();
            assert!(e.to_string().contains(key), "{bad}: {e}");
        }
    }
}
