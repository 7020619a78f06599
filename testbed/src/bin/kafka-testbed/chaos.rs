//! `chaos`: a chaos run against the demo's cluster, for the project's tests and for operators
//! who want to trust the agent before production. A 3-broker cluster is deployed through the
//! Auto Scaling Group as the demo deploys it, with `kafka-agent watch` on every broker (short
//! settings) and, when asked, the group's termination hook. A fault schedule drawn from the
//! seed (the same seed gives the same schedule, printed before anything runs) then terminates
//! instances, wedges (`HANG`) and kills brokers, restarts ZooKeeper members and opens windows
//! of AWS faults (throttling, 5xx, faults after the mutation, eventual consistency) on the
//! agents' calls, while a writer appends records through the stand-in's line protocol and
//! remembers the acknowledged ones.
//!
//! Every second it checks what must always hold: never two live brokers with one id, never a
//! volume mounted on two instances, never a volume or ENI detached from a live holder. Once the
//! schedule is done it waits (bounded) for the cluster to heal and checks the end: every id has
//! one owner, every acknowledged record is readable, every node's `kafka-agent status` exits 0.
//! It prints a timeline as it goes and the counts at the end; any violation fails the run.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kafka_testbed::aws::{Ec2State, ScopeSettings};
use kafka_testbed::cluster::{Deployed, LEAVE_HOOK, Spec};
use kafka_testbed::zookeeper::Ensemble;
use kafka_testbed::{Services, World};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Faults per minute of each kind (a Poisson process each).
#[derive(Debug, Clone)]
pub struct Rates {
    pub terminate: f64,
    pub wedge: f64,
    pub exit: f64,
    pub zk_restart: f64,
    pub aws_faults: f64,
}

/// What `kafka-testbed chaos` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub minutes: f64,
    pub seed: u64,
    pub rates: Rates,
    /// The share of the agents' AWS calls an AWS fault window hits.
    pub aws_fault_rate: f64,
    /// The claim backend: zookeeper or cloudwatch-logs.
    pub backend: String,
    /// The group's termination hook, and the watchdogs leave cleanly on it.
    pub termination_hook: bool,
    /// How long the end waits for the cluster to heal.
    pub heal_timeout: Duration,
    /// Print the schedule and stop.
    pub dry_run: bool,
}

const BROKERS: u32 = 3;
const ZK_MEMBERS: u32 = 3;
/// No fault before the cluster has served this long (its watchdogs past their grace).
const QUIET_START: Duration = Duration::from_secs(10);
const TOPIC: &str = "chaos";

/// An AWS fault window's kind, on the agents' scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AwsFault {
    /// A share of the calls is throttled.
    Throttle,
    /// A share of the calls gets a 5xx.
    Error,
    /// A share of the mutations is applied, then answered with a 5xx.
    FaultAfter,
    /// New instances stay invisible for 5 s, attached volumes read as available for 5 s.
    Stale,
}

impl AwsFault {
    const ALL: [AwsFault; 4] = [
        AwsFault::Throttle,
        AwsFault::Error,
        AwsFault::FaultAfter,
        AwsFault::Stale,
    ];

    fn name(self) -> &'static str {
        match self {
            AwsFault::Throttle => "throttling",
            AwsFault::Error => "5xx errors",
            AwsFault::FaultAfter => "faults after the mutation",
            AwsFault::Stale => "eventual consistency",
        }
    }

    /// The scope's settings during the window (`on`) or after it.
    fn settings(self, on: bool, rate: f64) -> ScopeSettings {
        let r = if on { rate } else { 0.0 };
        match self {
            AwsFault::Throttle => ScopeSettings {
                throttle_rate: Some(r),
                ..Default::default()
            },
            AwsFault::Error => ScopeSettings {
                error_rate: Some(r),
                ..Default::default()
            },
            AwsFault::FaultAfter => ScopeSettings {
                fault_after_rate: Some(r),
                fault_after_actions: Some(if on {
                    [
                        "AttachVolume",
                        "AttachNetworkInterface",
                        "DetachVolume",
                        "DetachNetworkInterface",
                        "CreateTags",
                        "CreateLogStream",
                        "PutLogEvents",
                        "SetInstanceHealth",
                        "CompleteLifecycleAction",
                        "RecordLifecycleActionHeartbeat",
                    ]
                    .map(String::from)
                    .to_vec()
                } else {
                    Vec::new()
                }),
                ..Default::default()
            },
            // awsbed.py's defaults after the window: visible after 1 s, no stale reads.
            AwsFault::Stale => ScopeSettings {
                visibility_delay: Some(if on { 5.0 } else { 1.0 }),
                stale_volume_reads: Some(if on { 5.0 } else { 0.0 }),
                ..Default::default()
            },
        }
    }
}

/// One fault of the schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// The instance serving the broker is terminated through EC2 (not the group).
    Terminate { broker: u32 },
    /// The broker stops answering (`HANG`); its socket accepts, its registration stays.
    Wedge { broker: u32 },
    /// The broker's process is killed (SIGKILL); its instance runs on.
    Exit { broker: u32 },
    /// One ZooKeeper member is stopped (SIGTERM) for `down`, then started again.
    ZkRestart { member: u32, down: Duration },
    /// An AWS fault window on the agents' calls.
    Aws { kind: AwsFault, window: Duration },
}

impl Fault {
    fn kind(&self) -> &'static str {
        match self {
            Fault::Terminate { .. } => "terminate",
            Fault::Wedge { .. } => "wedge",
            Fault::Exit { .. } => "exit",
            Fault::ZkRestart { .. } => "zk-restart",
            Fault::Aws { .. } => "aws",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Terminate { broker } => write!(f, "terminate broker {broker}'s instance"),
            Fault::Wedge { broker } => write!(f, "wedge broker {broker} (HANG)"),
            Fault::Exit { broker } => write!(f, "kill broker {broker}'s process (SIGKILL)"),
            Fault::ZkRestart { member, down } => {
                write!(f, "stop ZooKeeper member {member} for {} s", down.as_secs())
            }
            Fault::Aws { kind, window } => {
                write!(f, "AWS {} for {} s", kind.name(), window.as_secs())
            }
        }
    }
}

/// A fault and when it falls due, from the run's start.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub at: Duration,
    pub fault: Fault,
}

/// The fault schedule of a run of `length`: per kind a Poisson process at its rate, drawn from
/// a generator of its own seeded from `seed` and the kind (so changing one rate leaves the
/// other kinds' faults where they were), from [`QUIET_START`] on; sorted by time. Pure: the
/// same arguments give the same schedule (for one build: rand's `StdRng` may change across
/// its versions).
pub fn schedule(seed: u64, length: Duration, rates: &Rates) -> Vec<Planned> {
    let kinds: [(u64, f64); 5] = [
        (1, rates.terminate),
        (2, rates.wedge),
        (3, rates.exit),
        (4, rates.zk_restart),
        (5, rates.aws_faults),
    ];
    let mut out = Vec::new();
    for (k, per_minute) in kinds {
        if per_minute <= 0.0 {
            continue;
        }
        let mut rng = StdRng::seed_from_u64(seed ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut t = QUIET_START.as_secs_f64();
        loop {
            let u: f64 = rng.random();
            t += -(1.0 - u).ln() * 60.0 / per_minute;
            if t >= length.as_secs_f64() {
                break;
            }
            let fault = match k {
                1 => Fault::Terminate {
                    broker: rng.random_range(0..BROKERS),
                },
                2 => Fault::Wedge {
                    broker: rng.random_range(0..BROKERS),
                },
                3 => Fault::Exit {
                    broker: rng.random_range(0..BROKERS),
                },
                4 => Fault::ZkRestart {
                    member: rng.random_range(1..=ZK_MEMBERS),
                    down: Duration::from_secs(rng.random_range(2..=8)),
                },
                _ => Fault::Aws {
                    kind: AwsFault::ALL[rng.random_range(0..AwsFault::ALL.len())],
                    window: Duration::from_secs(rng.random_range(10..=30)),
                },
            };
            out.push(Planned {
                at: Duration::from_millis((t * 1000.0) as u64),
                fault,
            });
        }
    }
    out.sort_by_key(|p| p.at);
    out
}

/// The run's timeline, printed as it goes.
#[derive(Clone)]
struct Timeline {
    t0: Instant,
    events: Arc<Mutex<Vec<(Duration, String)>>>,
}

impl Timeline {
    fn note(&self, what: impl Into<String>) {
        let (at, what) = (self.t0.elapsed(), what.into());
        println!("  t+{:>6.1} s  {what}", at.as_secs_f64());
        self.events.lock().unwrap().push((at, what));
    }
}

/// Counts of the run.
#[derive(Default)]
struct Counts {
    /// Fault kind -> (injected, skipped: nothing to hit then).
    faults: BTreeMap<&'static str, (u32, u32)>,
    violations: Vec<String>,
    marks: BTreeSet<String>,
    leaves: BTreeSet<String>,
    launched: BTreeSet<String>,
}

/// What one look at the world saw.
#[derive(Default, Clone)]
struct Look {
    /// EC2's instances of the world: id -> state.
    ec2: BTreeMap<String, String>,
    /// The group's instances: id -> (lifecycle state, health).
    group: BTreeMap<String, (String, String)>,
    /// Per instance with a host: the id its claim journal holds, the broker.id its
    /// server.properties holds, and whether its broker process is alive.
    hosts: BTreeMap<String, HostView>,
    /// The cluster's volumes and ENIs: resource -> the instance EC2 has it attached to.
    attached: BTreeMap<String, String>,
    /// Volume -> the instances whose host directory has it mounted.
    mounted: BTreeMap<String, BTreeSet<String>>,
    /// Broker id -> the host its registration names (only the id's own host counts).
    serving: BTreeMap<u32, String>,
}

#[derive(Default, Clone, Debug)]
struct HostView {
    claim: Option<u32>,
    broker_id: Option<u32>,
    alive: bool,
}

impl Look {
    /// The running instance whose claim journal holds `id` and whose broker is alive.
    fn owner(&self, id: u32) -> Vec<String> {
        self.hosts
            .iter()
            .filter(|(i, h)| {
                h.claim == Some(id) && h.alive && self.ec2.get(*i).is_some_and(|s| s == "running")
            })
            .map(|(i, _)| i.clone())
            .collect()
    }
}

fn host_view(dir: &Path, inst: &str) -> HostView {
    let claim: serde_json::Value =
        std::fs::read_to_string(dir.join("var/lib/kafka-agent/claim.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
    let claim = (claim["instance_id"].as_str() == Some(inst))
        .then(|| claim["id"].as_u64().map(|i| i as u32))
        .flatten();
    let broker_id = std::fs::read_to_string(dir.join("etc/kafka/server.properties"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("broker.id="))
                .and_then(|v| v.trim().parse().ok())
        });
    HostView {
        claim,
        broker_id,
        alive: standin_pid(dir).is_some(),
    }
}

/// The pid of the host's stand-in broker while it runs (its `run/kafka.pid`, checked against
/// the process's command line so that a reused pid does not count).
fn standin_pid(dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join("run/kafka.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    (cmdline.contains("kafka-standin") && cmdline.contains(&*dir.to_string_lossy())).then_some(pid)
}

/// Volume -> instances whose host directory mounts it: the root mount table's mounts below
/// `<world>/hosts/<instance>/` of loop devices backed by `<world>/volumes/<volume>.img`.
fn mounts(world_dir: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let hosts = world_dir.join("hosts");
    let hosts = hosts.to_string_lossy();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in table.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (Some(majmin), Some(target)) = (f.get(2), f.get(4)) else {
            continue;
        };
        let Some(rest) = target.strip_prefix(&*hosts) else {
            continue;
        };
        let Some(inst) = rest.trim_start_matches('/').split('/').next() else {
            continue;
        };
        let backing = std::fs::read_to_string(format!("/sys/dev/block/{majmin}/loop/backing_file"))
            .unwrap_or_default();
        let Some(vol) = Path::new(backing.trim().trim_end_matches(" (deleted)"))
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".img"))
        else {
            continue;
        };
        out.entry(vol.to_string())
            .or_default()
            .insert(inst.to_string());
    }
    out
}

/// Talks the stand-in's line protocol with `addr` from namespace `ns`.
fn ask(ns: &str, addr: &str, request: &str, timeout: Duration) -> Result<Vec<String>> {
    use std::io::{BufRead, BufReader, Write};
    let (addr, request) = (addr.to_string(), request.to_string());
    kafka_testbed::netns::in_netns(ns, move || -> Result<Vec<String>> {
        let stream = std::net::TcpStream::connect_timeout(
            &addr.parse().with_context(|| format!("address {addr}"))?,
            timeout,
        )
        .with_context(|| format!("connecting to the broker at {addr}"))?;
        stream.set_read_timeout(Some(timeout))?;
        (&stream).write_all(format!("{request}\n").as_bytes())?;
        let many = request.starts_with("READ");
        let mut lines = Vec::new();
        for line in BufReader::new(&stream).lines() {
            let line = line.with_context(|| format!("reading {addr}'s answer"))?;
            if line.starts_with("ERR") {
                lines.push(line);
                break;
            }
            if many && line == "END" {
                break;
            }
            lines.push(line);
            if !many {
                break;
            }
        }
        Ok(lines)
    })?
}

async fn ask_async(ns: &str, addr: &str, request: &str, timeout: Duration) -> Result<Vec<String>> {
    let (ns, addr, request) = (ns.to_string(), addr.to_string(), request.to_string());
    tokio::task::spawn_blocking(move || ask(&ns, &addr, &request, timeout)).await?
}

/// A broker's records of the run's topic (none yet: empty).
async fn read_records(ns: &str, ip: &str) -> Result<Vec<String>> {
    let lines = ask_async(
        ns,
        &format!("{ip}:9092"),
        &format!("READ {TOPIC}"),
        Duration::from_secs(3),
    )
    .await?;
    match lines.first() {
        Some(l) if l.starts_with("ERR UNKNOWN_TOPIC_OR_PARTITION") => Ok(Vec::new()),
        Some(l) if l.starts_with("ERR") => bail!("{l}"),
        _ => Ok(lines),
    }
}

/// `kafka-agent status` on the host: its exit code and first line.
async fn status(world: &World, agent: &Path, inst: &str) -> Result<(i32, String)> {
    let config = world.host_dir(inst).join("etc/kafka-agent/agent.toml");
    let mut cmd = world.command(inst, &agent.to_string_lossy())?;
    cmd.arg("--config").arg(config).arg("status");
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::from(cmd).output(),
    )
    .await
    .context("kafka-agent status took over 30 s")??;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok((
        out.status.code().unwrap_or(-1),
        text.lines().next().unwrap_or("").to_string(),
    ))
}

/// The watchdog's settings on every broker: short, so that a chaos run's wedged and exited
/// brokers are replaced within it.
fn watch_settings(host: &Path, hook: bool) -> String {
    let mut s = format!(
        "# kafka-testbed chaos: the watchdog's settings for a short run.\n[watch]\n\
         interval_seconds = 1\nunhealthy_after_seconds = 5\ngrace_period_seconds = 5\n\
         listener_timeout_seconds = 1\nlease_bound_seconds = 120\nstop_timeout_seconds = 10\n\
         pidfile = \"{}\"\n",
        host.join("run/kafka.pid").display()
    );
    if hook {
        s.push_str(&format!(
            "termination_hook = \"{LEAVE_HOOK}\"\nlifecycle_poll_seconds = 1\nheartbeat_seconds = 2\n"
        ));
    }
    s
}

/// Starts `kafka-agent watch` on the host (as kafka-agent-watch.service would), its log in
/// `<host>/watch.log`. Killed when dropped.
fn start_watch(
    world: &World,
    agent: &Path,
    inst: &str,
    hook: bool,
) -> Result<tokio::process::Child> {
    let dir = world.host_dir(inst);
    std::fs::write(
        dir.join("etc/kafka-agent/config.d/90-chaos-watch.toml"),
        watch_settings(&dir, hook),
    )
    .with_context(|| format!("writing {inst}'s watch settings"))?;
    let log = std::fs::File::create(dir.join("watch.log"))?;
    let mut cmd = world.command(inst, &agent.to_string_lossy())?;
    cmd.arg("--config")
        .arg(dir.join("etc/kafka-agent/agent.toml"))
        .arg("watch")
        .stderr(log)
        .stdout(std::process::Stdio::null());
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    cmd.spawn()
        .with_context(|| format!("starting kafka-agent watch on {inst}"))
}

fn journal(world: &World, inst: &str, name: &str) -> serde_json::Value {
    world.agent_journal(inst, name)
}

/// The run: the world, the cluster and what watches it.
struct Run {
    world: World,
    cluster: Deployed,
    moto: kafka_testbed::aws::Moto,
    ensemble: Arc<Mutex<Ensemble>>,
    agent: PathBuf,
    /// The router namespace, from which the writer and the checks reach every broker.
    router: String,
    hook: bool,
    timeline: Timeline,
    counts: Counts,
    watchers: BTreeMap<String, tokio::process::Child>,
    last: Option<Look>,
    zk_busy: Arc<AtomicBool>,
    zk_tasks: Vec<tokio::task::JoinHandle<()>>,
    aws_until: BTreeMap<AwsFault, Instant>,
    aws_rate: f64,
}

impl Run {
    async fn look(&self) -> Result<Look> {
        let state: Ec2State = self.moto.state(&self.world.vpc_id).await?;
        let ec2: BTreeMap<String, String> = state
            .instances
            .iter()
            .map(|i| (i.id.clone(), i.state.clone()))
            .collect();
        let group = self
            .cluster
            .instances()
            .await?
            .into_iter()
            .map(|(i, (_, state, health))| (i, (state, health)))
            .collect();
        let hosts = ec2
            .keys()
            .map(|i| (i.clone(), host_view(&self.world.host_dir(i), i)))
            .collect();
        let ours: BTreeSet<&str> = self
            .cluster
            .brokers
            .iter()
            .flat_map(|b| [b.eni.as_str(), b.volume.as_str()])
            .collect();
        let mut attached = BTreeMap::new();
        for v in &state.volumes {
            if let Some(a) = &v.attachment
                && ours.contains(v.id.as_str())
            {
                attached.insert(v.id.clone(), a.instance_id.clone());
            }
        }
        for e in &state.enis {
            if let Some(a) = &e.attachment
                && ours.contains(e.id.as_str())
            {
                attached.insert(e.id.clone(), a.instance_id.clone());
            }
        }
        let serving = tokio::time::timeout(Duration::from_secs(3), self.cluster.serving())
            .await
            .ok()
            .and_then(Result::ok)
            .or_else(|| self.last.as_ref().map(|l| l.serving.clone()))
            .unwrap_or_default();
        Ok(Look {
            ec2,
            group,
            hosts,
            attached,
            mounted: mounts(&self.world.dir),
            serving,
        })
    }

    fn violation(&mut self, what: String) {
        self.timeline.note(format!("VIOLATION: {what}"));
        self.counts.violations.push(what);
    }

    /// Looks at the world, checks the invariants against this look and the last, notes what
    /// changed, and keeps a watchdog on every broker.
    async fn tick(&mut self) -> Result<()> {
        let now = match self.look().await {
            Ok(l) => l,
            Err(e) => {
                self.timeline
                    .note(format!("(could not look at the world: {e:#})"));
                return Ok(());
            }
        };
        // (1) Never two live brokers with one id.
        let mut live: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
        for (inst, h) in &now.hosts {
            if let (true, Some(id)) = (h.alive, h.broker_id) {
                live.entry(id).or_default().push(inst);
            }
        }
        let mut found = Vec::new();
        for (id, insts) in &live {
            if insts.len() > 1 {
                found.push(format!("two live brokers with id {id}: {insts:?}"));
            }
        }
        for id in 0..BROKERS {
            let owners = now.owner(id);
            if owners.len() > 1 {
                found.push(format!("two live claims of id {id}: {owners:?}"));
            }
        }
        // (2) Never a volume mounted on two instances.
        for (vol, insts) in &now.mounted {
            if insts.len() > 1 {
                found.push(format!("volume {vol} mounted on {insts:?}"));
            }
        }
        // (3) Never a live holder detached: what was attached to an instance whose broker ran
        // is attached to it no longer, while the instance still runs and its broker lives.
        if let Some(last) = &self.last {
            for (res, holder) in &last.attached {
                let was_live = last.hosts.get(holder).is_some_and(|h| h.alive);
                let still_live = now.hosts.get(holder).is_some_and(|h| h.alive)
                    && now.ec2.get(holder).is_some_and(|s| s == "running");
                if was_live && still_live && now.attached.get(res) != Some(holder) {
                    found.push(format!(
                        "{res} detached from {holder} while its broker ran (now: {:?})",
                        now.attached.get(res)
                    ));
                }
            }
        }
        for v in found {
            self.violation(v);
        }
        self.notice(&now);
        self.keep_watchdogs(&now);
        self.last = Some(now);
        Ok(())
    }

    /// Notes what changed since the last look.
    fn notice(&mut self, now: &Look) {
        let empty = Look::default();
        let last = self.last.clone().unwrap_or(empty);
        for inst in now.group.keys() {
            if !last.group.contains_key(inst) && self.counts.launched.insert(inst.clone()) {
                self.timeline.note(format!("the group launched {inst}"));
            }
        }
        for inst in last.group.keys() {
            if !now.group.contains_key(inst) {
                self.timeline.note(format!("{inst} left the group"));
            }
        }
        for id in 0..BROKERS {
            match (
                last.serving.contains_key(&id),
                now.serving.contains_key(&id),
            ) {
                (false, true) => {
                    let on = now.owner(id);
                    self.timeline
                        .note(format!("broker {id} registered (on {})", on.join(", ")));
                }
                (true, false) => self
                    .timeline
                    .note(format!("broker {id}'s registration is gone")),
                _ => {}
            }
        }
        let watched: Vec<String> = self.watchers.keys().cloned().collect();
        for inst in watched {
            if !self.counts.marks.contains(&inst) {
                let j = journal(&self.world, &inst, "watch");
                if !j["marked_unhealthy_unix"].is_null() {
                    self.counts.marks.insert(inst.clone());
                    self.timeline.note(format!(
                        "the watchdog on {inst} marked it Unhealthy ({})",
                        j["observed"]
                            .as_object()
                            .map(|o| o
                                .iter()
                                .filter(|(_, v)| v["state"] == "failed")
                                .map(|(k, _)| k.as_str())
                                .collect::<Vec<_>>()
                                .join(", "))
                            .unwrap_or_default()
                    ));
                }
            }
            if self.hook && !self.counts.leaves.contains(&inst) {
                let j = journal(&self.world, &inst, "leave");
                if !j.is_null() {
                    self.counts.leaves.insert(inst.clone());
                    self.timeline
                        .note(format!("{inst} leaves cleanly (the termination hook)"));
                }
            }
        }
    }

    /// A watchdog on every running instance whose broker runs; none on an instance EC2 no
    /// longer runs.
    fn keep_watchdogs(&mut self, now: &Look) {
        for (inst, h) in &now.hosts {
            let running = now.ec2.get(inst).is_some_and(|s| s == "running");
            if running && h.alive && h.claim.is_some() && !self.watchers.contains_key(inst) {
                match start_watch(&self.world, &self.agent, inst, self.hook) {
                    Ok(child) => {
                        self.watchers.insert(inst.clone(), child);
                    }
                    Err(e) => self
                        .timeline
                        .note(format!("(no watchdog on {inst}: {e:#})")),
                }
            }
        }
        let gone: Vec<String> = self
            .watchers
            .keys()
            .filter(|i| {
                !now.ec2
                    .get(*i)
                    .is_some_and(|s| s == "running" || s == "pending")
            })
            .cloned()
            .collect();
        for inst in gone {
            if let Some(mut child) = self.watchers.remove(&inst) {
                let _ = child.start_kill();
            }
        }
    }

    /// The instance that serves broker `id` now.
    fn serving_instance(&self, id: u32) -> Option<String> {
        self.last.as_ref()?.owner(id).into_iter().next()
    }

    async fn inject(&mut self, planned: &Planned) {
        let result = self.apply(&planned.fault).await;
        let entry = self.counts.faults.entry(planned.fault.kind()).or_default();
        match result {
            Ok(what) => {
                entry.0 += 1;
                self.timeline.note(format!("FAULT {what}"));
            }
            Err(why) => {
                entry.1 += 1;
                self.timeline
                    .note(format!("fault skipped: {}: {why:#}", planned.fault));
            }
        }
    }

    async fn apply(&mut self, fault: &Fault) -> Result<String> {
        match *fault {
            Fault::Terminate { broker } => {
                let inst = self
                    .serving_instance(broker)
                    .with_context(|| format!("nothing serves broker {broker}"))?;
                self.world
                    .ec2
                    .terminate_instances()
                    .instance_ids(&inst)
                    .send()
                    .await
                    .with_context(|| format!("terminating {inst}"))?;
                Ok(format!("terminated {inst} (broker {broker})"))
            }
            Fault::Wedge { broker } => {
                let inst = self
                    .serving_instance(broker)
                    .with_context(|| format!("nothing serves broker {broker}"))?;
                let ip = &self.cluster.brokers[broker as usize].ip;
                let answer = ask_async(
                    &self.router,
                    &format!("{ip}:9092"),
                    "HANG",
                    Duration::from_secs(2),
                )
                .await?;
                if answer != ["OK HANG"] {
                    bail!("broker {broker} answered {answer:?}");
                }
                Ok(format!("wedged broker {broker} on {inst}"))
            }
            Fault::Exit { broker } => {
                let inst = self
                    .serving_instance(broker)
                    .with_context(|| format!("nothing serves broker {broker}"))?;
                let pid = standin_pid(&self.world.host_dir(&inst))
                    .with_context(|| format!("broker {broker} on {inst} runs no process"))?;
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .with_context(|| format!("killing {pid}"))?;
                Ok(format!("killed broker {broker} on {inst} (pid {pid})"))
            }
            Fault::ZkRestart { member, down } => {
                if self.zk_busy.swap(true, Ordering::SeqCst) {
                    bail!("a ZooKeeper member is down already (one at a time keeps the quorum)");
                }
                let (zk, busy, timeline) = (
                    self.ensemble.clone(),
                    self.zk_busy.clone(),
                    self.timeline.clone(),
                );
                let zk2 = zk.clone();
                tokio::task::spawn_blocking(move || zk.lock().unwrap().stop(member))
                    .await?
                    .with_context(|| format!("stopping ZooKeeper member {member}"))?;
                self.zk_tasks.push(tokio::spawn(async move {
                    tokio::time::sleep(down).await;
                    let started = Instant::now();
                    let r =
                        tokio::task::spawn_blocking(move || zk2.lock().unwrap().restart(member))
                            .await;
                    match r {
                        Ok(Ok(())) => timeline.note(format!(
                            "ZooKeeper member {member} is back ({:.1} s to rejoin)",
                            started.elapsed().as_secs_f64()
                        )),
                        Ok(Err(e)) => timeline.note(format!(
                            "(ZooKeeper member {member} did not come back: {e:#})"
                        )),
                        Err(e) => timeline.note(format!("(restarting member {member}: {e})")),
                    }
                    busy.store(false, Ordering::SeqCst);
                }));
                Ok(format!(
                    "stopped ZooKeeper member {member} for {} s",
                    down.as_secs()
                ))
            }
            Fault::Aws { kind, window } => {
                self.moto
                    .configure(&self.world.scope, &kind.settings(true, self.aws_rate))
                    .await?;
                let until = Instant::now() + window;
                let e = self.aws_until.entry(kind).or_insert(until);
                *e = (*e).max(until);
                Ok(format!(
                    "AWS {} on the agents' calls for {} s{}",
                    kind.name(),
                    window.as_secs(),
                    if kind == AwsFault::Stale {
                        String::new()
                    } else {
                        format!(" (share {})", self.aws_rate)
                    }
                ))
            }
        }
    }

    /// Ends the AWS fault windows that are over (all with `all`).
    async fn end_aws_windows(&mut self, all: bool) -> Result<()> {
        let now = Instant::now();
        let over: Vec<AwsFault> = self
            .aws_until
            .iter()
            .filter(|(_, until)| all || **until <= now)
            .map(|(k, _)| *k)
            .collect();
        for kind in over {
            self.moto
                .configure(&self.world.scope, &kind.settings(false, 0.0))
                .await?;
            self.aws_until.remove(&kind);
            self.timeline
                .note(format!("AWS {} window ends", kind.name()));
        }
        Ok(())
    }

    /// Whether the cluster has healed: every id served by one running, in-service instance
    /// whose broker answers; the group at its size, every instance in service.
    async fn healed(&self) -> bool {
        let Some(look) = &self.last else {
            return false;
        };
        if look.group.len() != BROKERS as usize
            || look
                .group
                .values()
                .any(|(state, health)| state != "InService" || health != "Healthy")
        {
            return false;
        }
        for b in &self.cluster.brokers {
            let owners = look.owner(b.id);
            if owners.len() != 1 || !look.serving.contains_key(&b.id) {
                return false;
            }
            if read_records(&self.router, &b.ip).await.is_err() {
                return false;
            }
        }
        true
    }
}

#[tokio::main]
pub async fn run(opts: Options) -> Result<()> {
    let length = Duration::from_secs_f64(opts.minutes * 60.0);
    let plan = schedule(opts.seed, length, &opts.rates);
    println!(
        "chaos: {} min, seed {}, {} claims{}; per minute: terminate {}, wedge {}, exit {}, \
         ZooKeeper restart {}, AWS fault windows {} (share {})",
        opts.minutes,
        opts.seed,
        opts.backend,
        if opts.termination_hook {
            ", termination hook"
        } else {
            ""
        },
        opts.rates.terminate,
        opts.rates.wedge,
        opts.rates.exit,
        opts.rates.zk_restart,
        opts.rates.aws_faults,
        opts.aws_fault_rate
    );
    println!("schedule ({} faults):", plan.len());
    for p in &plan {
        println!("  t+{:>6.1} s  {}", p.at.as_secs_f64(), p.fault);
    }
    if opts.dry_run {
        return Ok(());
    }

    let dir = std::env::current_exe()?
        .parent()
        .context("this binary's directory")?
        .to_path_buf();
    let agent = dir.join("kafka-agent");
    let standin = dir.join("kafka-standin");
    for p in [&agent, &standin] {
        if !p.exists() {
            bail!(
                "{} does not exist: build it (scripts/demo does)",
                p.display()
            );
        }
    }
    eprintln!("starting moto and a 3-member ZooKeeper ensemble...");
    let services = Services::start(ZK_MEMBERS)?;
    let world = World::create(&services, &["a", "b", "c"]).await?;
    let spec = Spec {
        name: "chaos".into(),
        backend: opts.backend.clone(),
        azs: vec!["a".into(), "b".into(), "c".into()],
        agent: agent.clone(),
        standin,
        deadline_seconds: 300,
        launch_before_terminate: false,
        // The run starts the watchdogs itself, with short settings (see `watch_settings`).
        termination_hook: false,
        watch: None,
        zookeeper: None,
    };
    let cluster = Deployed::deploy(&world, &services, spec).await?;
    if opts.termination_hook {
        let autoscaling = aws_sdk_autoscaling::Client::new(
            &services.moto.sdk_config(&format!("{}-admin", world.id)),
        );
        kafka_testbed::cluster::put_leave_hook(&autoscaling, &cluster.group).await?;
    }
    cluster
        .wait_serving(&world, Duration::from_secs(180))
        .await?;
    // From here on the run owns the ensemble (to stop and start its members).
    let Services {
        dir: _,
        moto,
        zookeeper,
    } = services;
    let router = format!("{}-vpc", world.id);
    if !kafka_testbed::netns::path(&router).exists() {
        bail!("the world's router namespace {router} is missing");
    }
    println!(
        "cluster {}: group {}, brokers {}",
        cluster.spec.name,
        cluster.group,
        cluster
            .brokers
            .iter()
            .map(|b| format!("{} at {} (volume {}, ENI {})", b.id, b.ip, b.volume, b.eni))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let timeline = Timeline {
        t0: Instant::now(),
        events: Arc::default(),
    };
    let mut run = Run {
        world,
        cluster,
        moto,
        ensemble: Arc::new(Mutex::new(zookeeper)),
        agent,
        router,
        hook: opts.termination_hook,
        timeline: timeline.clone(),
        counts: Counts::default(),
        watchers: BTreeMap::new(),
        last: None,
        zk_busy: Arc::default(),
        zk_tasks: Vec::new(),
        aws_until: BTreeMap::new(),
        aws_rate: opts.aws_fault_rate,
    };
    run.tick().await?;
    if let Some(l) = &run.last {
        // What the checks see, so that a reader knows they are not vacuous.
        timeline.note(format!(
            "all 3 brokers serve; the run starts (the checks see {} live brokers, {} volumes \
             mounted, {} volumes and ENIs attached)",
            l.hosts.values().filter(|h| h.alive).count(),
            l.mounted.len(),
            l.attached.len()
        ));
    }
    let initial: BTreeSet<String> = run
        .last
        .as_ref()
        .map(|l| l.group.keys().cloned().collect())
        .unwrap_or_default();

    // The writer: appends to each broker in turn, remembering what was acknowledged.
    let acked: Arc<Mutex<Vec<(u32, String)>>> = Arc::default();
    let attempts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, attempts, stop) = (acked.clone(), attempts.clone(), stop.clone());
        let router = run.router.clone();
        let ips: Vec<String> = run.cluster.brokers.iter().map(|b| b.ip.clone()).collect();
        tokio::spawn(async move {
            let mut n: u64 = 0;
            while !stop.load(Ordering::SeqCst) {
                let id = (n % ips.len() as u64) as u32;
                let text = format!("r{n}");
                attempts.fetch_add(1, Ordering::SeqCst);
                let answer = ask_async(
                    &router,
                    &format!("{}:9092", ips[id as usize]),
                    &format!("APPEND {TOPIC} {text}"),
                    Duration::from_secs(2),
                )
                .await;
                if answer.is_ok_and(|a| a.first().is_some_and(|l| l.starts_with("OK "))) {
                    acked.lock().unwrap().push((id, text));
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    // The schedule, with a look at the world every second.
    let mut next = 0;
    let mut looks: u32 = 0;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while timeline.t0.elapsed() < length {
        ticker.tick().await;
        while next < plan.len() && plan[next].at <= timeline.t0.elapsed() {
            let p = plan[next].clone();
            run.inject(&p).await;
            next += 1;
        }
        run.end_aws_windows(false).await?;
        run.tick().await?;
        looks += 1;
    }

    // The end: no more faults; wait for the cluster to heal, checking all along.
    run.end_aws_windows(true).await?;
    timeline.note("the schedule is done; waiting for the cluster to heal");
    for t in std::mem::take(&mut run.zk_tasks) {
        let _ = t.await;
    }
    let until = Instant::now() + opts.heal_timeout;
    let mut healed = false;
    while Instant::now() < until {
        ticker.tick().await;
        run.tick().await?;
        looks += 1;
        if run.healed().await {
            healed = true;
            break;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let _ = writer.await;
    run.tick().await?;
    let mut failures = Vec::new();
    if healed {
        timeline.note("healed: every id served by one instance in service");
    } else {
        failures.push(format!(
            "the cluster did not heal within {} s",
            opts.heal_timeout.as_secs()
        ));
    }

    // Every id has one owner.
    let look = run.last.clone().unwrap_or_default();
    for id in 0..BROKERS {
        let owners = look.owner(id);
        let live: Vec<&String> = look
            .hosts
            .iter()
            .filter(|(_, h)| h.alive && h.broker_id == Some(id))
            .map(|(i, _)| i)
            .collect();
        println!("  broker {id}: owner {owners:?}, live brokers {live:?}");
        if owners.len() != 1 || live.len() != 1 {
            failures.push(format!(
                "broker {id} has owners {owners:?} and live brokers {live:?}"
            ));
        }
    }
    // Every acknowledged record is readable.
    let acked = acked.lock().unwrap().clone();
    let mut readable = 0;
    for b in &run.cluster.brokers {
        let want: Vec<&String> = acked
            .iter()
            .filter(|(id, _)| *id == b.id)
            .map(|(_, t)| t)
            .collect();
        match read_records(&run.router, &b.ip).await {
            Ok(records) => {
                let have: BTreeSet<&String> = records.iter().collect();
                let missing: Vec<&&String> = want.iter().filter(|t| !have.contains(**t)).collect();
                readable += want.len() - missing.len();
                println!(
                    "  broker {}: {} records acknowledged, {} on the broker, {} missing",
                    b.id,
                    want.len(),
                    records.len(),
                    missing.len()
                );
                if !missing.is_empty() {
                    failures.push(format!(
                        "broker {}: acknowledged records missing: {missing:?}",
                        b.id
                    ));
                }
            }
            Err(e) => failures.push(format!("broker {}: READ failed: {e:#}", b.id)),
        }
    }
    // Every node's status exits 0.
    for id in 0..BROKERS {
        let Some(inst) = look.owner(id).into_iter().next() else {
            continue;
        };
        match status(&run.world, &run.agent, &inst).await {
            Ok((code, line)) => {
                println!("  {inst}: kafka-agent status exit {code}: {line}");
                if code != 0 {
                    failures.push(format!("{inst}: kafka-agent status exit {code}: {line}"));
                }
            }
            Err(e) => failures.push(format!("{inst}: kafka-agent status: {e:#}")),
        }
    }

    let c = &run.counts;
    println!("\ncounts:");
    for kind in ["terminate", "wedge", "exit", "zk-restart", "aws"] {
        let (done, skipped) = c.faults.get(kind).copied().unwrap_or_default();
        println!("  faults {kind:<11} {done} injected, {skipped} skipped (nothing to hit)");
    }
    let replacements = c.launched.difference(&initial).count();
    println!("  replacements launched by the group: {replacements}");
    println!("  watchdog marks: {}", c.marks.len());
    if run.hook {
        println!("  clean leaves (termination hook): {}", c.leaves.len());
    }
    println!(
        "  records: {} appends tried, {} acknowledged, {readable} of them readable at the end",
        attempts.load(Ordering::SeqCst),
        acked.len()
    );
    println!(
        "  invariant violations: {} (in {looks} looks at the world)",
        c.violations.len()
    );
    for v in &c.violations {
        println!("    {v}");
    }
    for f in &failures {
        println!("  END CHECK FAILED: {f}");
    }
    let violations = c.violations.len();
    for (_, mut w) in std::mem::take(&mut run.watchers) {
        let _ = w.start_kill();
    }
    let Run {
        world,
        moto,
        ensemble,
        ..
    } = run;
    drop(world);
    drop(moto);
    drop(ensemble);
    if violations + failures.len() > 0 {
        bail!(
            "chaos: {violations} invariant violations, {} end checks failed",
            failures.len()
        );
    }
    println!("chaos: no violation; every end check passed");
    Ok(())
}
