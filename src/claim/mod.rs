//! Step 1: claim the one id (broker id / myid) that is this instance's own.
//!
//! Observe (eligible ids from the tagged resources in this AZ, the claim records, live broker
//! registrations, whether each record's owner still lives), plan (keep our own claim, else the
//! lowest eligible id that is free or held by a dead owner), apply (an atomic create, or a
//! fenced takeover that exactly one contender wins), and re-plan after a lost race.
//!
//! Two ledgers hold the claims: ZooKeeper (a znode per id, versioned writes) and CloudWatch
//! Logs (a stream per id and epoch; the highest epoch owns the id).

pub mod cloudwatch;
pub mod zookeeper;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::aws::Clients;
pub use crate::aws::ec2::Liveness;
use crate::aws::ec2::{Resource, ResourceKind, Tagged};
use crate::aws::imds::Identity;
use crate::aws::{Transient, is_transient, retry_transient};
use crate::backoff::Backoff;
use crate::config::{Backend, Settings};

/// A claim record: who holds an id, since when, at which epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub owner: String,
    pub az: String,
    pub cluster: String,
    pub epoch: u64,
    /// Seconds since the Unix epoch.
    pub time: u64,
}

/// What a ledger holds for one id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The record, or None when the slot exists but holds no readable record (yet).
    pub record: Option<Record>,
    /// The fencing token a takeover must present (ZooKeeper: znode version; CWL: epoch).
    pub version: i64,
    pub epoch: u64,
    /// How long the slot has existed, where the ledger knows and the slot is proven empty
    /// (the abandonment window runs on it).
    pub age: Option<Duration>,
    /// How long ago the current claim was made, on the ledger's own clock (CloudWatch Logs:
    /// the stream's creation time; ZooKeeper: the znode's mtime), never the instance's.
    pub held_for: Option<Duration>,
}

/// Everything the plan depends on.
#[derive(Debug, Clone)]
pub struct Observation {
    pub ids: Vec<u32>,
    /// Why an id cannot be ours whatever its claim (resources elsewhere, none tagged).
    pub ineligible: BTreeMap<u32, String>,
    pub slots: BTreeMap<u32, Slot>,
    /// Ids with a live broker registration (/brokers/ids).
    pub registered: BTreeSet<u32>,
    /// Ids first claimed while this boot was contending: held by a live contender.
    pub contended: BTreeSet<u32>,
    pub owners: BTreeMap<String, Liveness>,
    /// Ids whose slot holds no readable record but which a live instance of this cluster
    /// carries as its id tag (the tags a claim sets): never taken for abandoned.
    pub tagged: BTreeMap<u32, String>,
}

/// What to do, as plain data (printed by `claim --dry-run`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Keep {
        id: u32,
        epoch: u64,
    },
    Create {
        id: u32,
    },
    TakeOver {
        id: u32,
        from: Slot,
        why: String,
    },
    /// Nothing free now, but something may free up (a registration lingering, a claim being
    /// written): try again.
    Wait {
        why: String,
    },
    /// Nothing this instance can ever take as things stand.
    Exhausted {
        report: String,
    },
}

/// A slot without a readable record older than this is abandoned (its writer died).
pub const ABANDONED_AFTER: Duration = Duration::from_secs(120);

/// Decides what to claim: our own claim, else the lowest eligible id that is free or held by
/// a dead owner. Pure: the same observation gives the same plan.
pub fn plan(obs: &Observation, me: &str) -> Plan {
    plan_with(obs, me, |_| 0)
}

/// Like [`plan`], but `pick(n)` chooses among the n actionable ids, lowest first. After a lost
/// race the agent spreads its next try over the lowest few, so a herd of agents booting
/// together does not fight over one id at a time.
pub fn plan_with(obs: &Observation, me: &str, pick: impl FnOnce(usize) -> usize) -> Plan {
    // Our own claim survives reboots, and our own lingering registration does not block it.
    for id in &obs.ids {
        if let Some(Slot {
            record: Some(r),
            epoch,
            ..
        }) = obs.slots.get(id)
            && r.owner == me
        {
            return Plan::Keep {
                id: *id,
                epoch: *epoch,
            };
        }
    }
    let mut waiting = Vec::new();
    let mut actionable = Vec::new();
    for id in &obs.ids {
        if obs.ineligible.contains_key(id) || obs.contended.contains(id) {
            continue;
        }
        let slot = obs.slots.get(id);
        let reclaim = match slot {
            None => None,
            Some(s) => match &s.record {
                Some(r) => match obs.owners.get(&r.owner) {
                    Some(Liveness::Dead(state)) => Some(format!("owner {} is {state}", r.owner)),
                    // One rule with attach: an owner that may come back keeps its id; wait
                    // for it (or for its replacement) within the deadline.
                    Some(l @ Liveness::Alive(state)) if l.may_come_back() => {
                        waiting.push(format!(
                            "{id}: owner {} is {state} and may come back",
                            r.owner
                        ));
                        continue;
                    }
                    _ => continue,
                },
                None if s.age.is_some_and(|a| a >= ABANDONED_AFTER) => {
                    if let Some(holder) = obs.tagged.get(id) {
                        waiting.push(format!(
                            "{id}: no readable claim, but {holder} (alive) carries its id tag"
                        ));
                        continue;
                    }
                    Some("the claim was never completed".to_string())
                }
                None => {
                    waiting.push(format!("{id}: a claim is being written"));
                    continue;
                }
            },
        };
        if obs.registered.contains(id) {
            waiting.push(format!(
                "{id}: a broker is still registered in /brokers/ids"
            ));
            continue;
        }
        actionable.push(match reclaim {
            None => Plan::Create { id: *id },
            Some(why) => Plan::TakeOver {
                id: *id,
                from: slot.cloned().unwrap(),
                why,
            },
        });
    }
    if !actionable.is_empty() {
        let i = pick(actionable.len()).min(actionable.len() - 1);
        return actionable.swap_remove(i);
    }
    if !waiting.is_empty() {
        return Plan::Wait {
            why: waiting.join("; "),
        };
    }
    Plan::Exhausted {
        report: report(obs),
    }
}

/// Who holds what, id by id.
pub fn report(obs: &Observation) -> String {
    let mut out = String::new();
    for id in &obs.ids {
        let what = if let Some(why) = obs.ineligible.get(id) {
            why.clone()
        } else if obs.contended.contains(id) {
            "claimed by another instance booting now".to_string()
        } else {
            match obs.slots.get(id).and_then(|s| s.record.as_ref()) {
                Some(r) => {
                    let state = match obs.owners.get(&r.owner) {
                        Some(Liveness::Alive(s)) | Some(Liveness::Dead(s)) => s.as_str(),
                        None => "unknown",
                    };
                    format!("held by {} ({state})", r.owner)
                }
                None if obs.slots.contains_key(id) => "claim being written".into(),
                None => "free".into(),
            }
        };
        let _ = write!(
            out,
            "{}{id}: {what}",
            if out.is_empty() { "" } else { "; " }
        );
    }
    out
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Plan::Keep { id, epoch } => write!(f, "keep id {id} (our own claim, epoch {epoch})"),
            Plan::Create { id } => write!(f, "claim id {id}: the lowest eligible free id"),
            Plan::TakeOver { id, why, from } => {
                write!(f, "take over id {id} at epoch {}: {why}", from.epoch + 1)
            }
            Plan::Wait { why } => write!(f, "wait: {why}"),
            Plan::Exhausted { report } => write!(f, "no eligible id: {report}"),
        }
    }
}

/// Claim failures a caller (and `status`, and the FAILURE reason) branches on.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("no eligible id for {instance} in {az}: {report}")]
    NoEligibleId {
        instance: String,
        az: String,
        report: String,
    },
    #[error("{service} unreachable until the boot deadline: {last}")]
    Unreachable { service: String, last: String },
    /// The ledger itself cannot be trusted to keep claims (a log group with a retention).
    #[error("unsafe claim ledger: {0}")]
    UnsafeLedger(String),
}

impl ClaimError {
    /// Stable snake_case kind for `status --json` and FAILURE reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            ClaimError::NoEligibleId { .. } => "no_eligible_id",
            ClaimError::Unreachable { .. } => "coordination_unreachable",
            ClaimError::UnsafeLedger(_) => "unsafe_ledger",
        }
    }
}

/// The outcome of the step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub id: u32,
    pub epoch: u64,
    pub backend: Backend,
    /// kept | created | took_over
    pub how: String,
    pub instance_id: String,
    pub az: String,
    /// How long the step took, from start to the claim held and journalled.
    pub elapsed_ms: u64,
    /// The id's ENI and volume in this AZ as the eligibility check found them, handed to the
    /// attach step of the same boot so that it does not ask EC2 again (not journalled: a later
    /// run looks afresh).
    #[serde(skip)]
    pub resources: Resources,
}

/// The one ENI and the one volume tagged for an id in this AZ, where exactly one was found,
/// as EC2 described them then (holder, addresses, tags).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub eni: Option<Resource>,
    pub volume: Option<Resource>,
}

impl Resources {
    pub fn of(&self, kind: ResourceKind) -> Option<&Resource> {
        match kind {
            ResourceKind::Eni => self.eni.as_ref(),
            ResourceKind::Volume => self.volume.as_ref(),
        }
    }
}

/// The ledger behind the claims.
pub enum Ledger {
    Zookeeper(zookeeper::ZkLedger),
    CloudwatchLogs(cloudwatch::CwlLedger),
}

impl Ledger {
    async fn open(settings: &Settings, clients: &Clients) -> Result<Ledger> {
        Ok(match settings.claim.backend {
            Backend::Zookeeper => Ledger::Zookeeper(zookeeper::ZkLedger::open(settings).await?),
            Backend::CloudwatchLogs => {
                Ledger::CloudwatchLogs(cloudwatch::CwlLedger::open(settings, clients).await?)
            }
        })
    }

    /// Whether the ledger is still usable after a transient error.
    fn survives_errors(&self) -> bool {
        matches!(self, Ledger::CloudwatchLogs(_))
    }

    fn service(settings: &Settings) -> String {
        match settings.claim.backend {
            Backend::Zookeeper => format!(
                "ZooKeeper ({})",
                settings
                    .zookeeper
                    .as_ref()
                    .map(|z| z.connect.as_str())
                    .unwrap_or("")
            ),
            Backend::CloudwatchLogs => {
                format!("CloudWatch Logs (log group {})", settings.claim.log_group)
            }
        }
    }

    /// The slots; owners are read only where `read(id)` (a ledger may skip the others).
    async fn slots(&self, read: &(dyn Fn(u32) -> bool + Sync)) -> Result<BTreeMap<u32, Slot>> {
        match self {
            Ledger::Zookeeper(l) => l.slots(read).await,
            Ledger::CloudwatchLogs(l) => l.slots(read).await,
        }
    }

    async fn registered(&self) -> Result<BTreeSet<u32>> {
        match self {
            Ledger::Zookeeper(l) => l.registered().await,
            Ledger::CloudwatchLogs(l) => l.registered().await,
        }
    }

    /// Creates the first claim on `id`; false if another contender was first.
    async fn create(&self, id: u32, record: &Record) -> Result<bool> {
        match self {
            Ledger::Zookeeper(l) => l.create(id, record).await,
            Ledger::CloudwatchLogs(l) => l.create(id, 0, record).await,
        }
    }

    /// Replaces the claim in `from` by ours; false if another contender was first.
    async fn take_over(&self, id: u32, from: &Slot, record: &Record) -> Result<bool> {
        match self {
            Ledger::Zookeeper(l) => l.take_over(id, from.version, record).await,
            Ledger::CloudwatchLogs(l) => l.create(id, from.epoch + 1, record).await,
        }
    }
}

/// What one boot remembers between its attempts.
#[derive(Default)]
struct Memory {
    /// Ids that had a slot when this boot first looked; later ones are contenders' claims.
    initial: Option<BTreeSet<u32>>,
    /// Owners' liveness already asked of EC2.
    known: BTreeMap<String, Liveness>,
    /// The eligibility found at the first look (tags do not change during a boot).
    ineligible: Option<BTreeMap<u32, String>>,
    /// Each eligible id's resources in this AZ, from the same look.
    resources: Option<BTreeMap<u32, Resources>>,
}

impl Memory {
    /// A fresh look at claims and owners; the eligibility (from tags) is kept.
    fn forget_but_tags(self) -> Memory {
        Memory {
            ineligible: self.ineligible,
            resources: self.resources,
            ..Memory::default()
        }
    }
}

/// Observes the world for a plan, opening the ledger first when `ledger` is None. The
/// ledger's side (its session, the claims, the registrations, the owners' liveness) and EC2's
/// tags (the eligibility, asked once per look until kept in `memory`) are independent: they go
/// side by side, and the look takes as long as the longer of the two.
async fn observe(
    settings: &Settings,
    clients: &Clients,
    me: &Identity,
    ledger: &mut Option<Ledger>,
    early: &mut Option<EarlyLedger>,
    memory: &mut Memory,
) -> Result<Observation> {
    let ids: Vec<u32> = settings.cluster.ids().collect();
    let Memory {
        initial,
        known,
        ineligible: kept_ineligible,
        resources: kept_resources,
    } = memory;
    let need_tags = kept_ineligible.is_none() || kept_resources.is_none();
    let tags = async {
        if need_tags {
            Some(eligibility(settings, clients, me, &ids).await)
        } else {
            None
        }
    };
    let ledger_side = async {
        if ledger.is_none()
            && let Some(opening) = early.take()
        {
            *ledger = opening.await.ok().flatten();
        }
        if ledger.is_none() {
            *ledger = Some(Ledger::open(settings, clients).await?);
        }
        let ledger = ledger.as_ref().expect("opened above");
        let first = initial.clone();
        let is_initial = move |id: u32| first.as_ref().is_none_or(|i| i.contains(&id));
        let slots = ledger.slots(&is_initial).await?;
        let registered = ledger.registered().await?;
        let contended: BTreeSet<u32> = slots
            .keys()
            .copied()
            .filter(|id| !is_initial(*id))
            .collect();
        let owners: BTreeMap<String, Option<Duration>> = slots
            .iter()
            .filter(|(id, _)| !contended.contains(id))
            .filter_map(|(_, s)| s.record.as_ref().map(|r| (r.owner.clone(), s.held_for)))
            .filter(|(o, _)| *o != me.instance_id)
            .collect();
        // Ask EC2 only about owners not seen yet in this run.
        let unknown: BTreeMap<String, Option<Duration>> = owners
            .iter()
            .filter(|(o, _)| !known.contains_key(*o))
            .map(|(o, t)| (o.clone(), *t))
            .collect();
        known.extend(liveness(clients, &unknown).await?);
        let owners: BTreeMap<String, Liveness> = owners
            .into_keys()
            .filter_map(|o| known.get(&o).map(|l| (o, l.clone())))
            .collect();
        // Before a slot without a readable record can be taken for abandoned, EC2 must show
        // that no live instance carries the id (the tag a completed claim sets on its
        // instance).
        let mut tagged = BTreeMap::new();
        for (id, slot) in &slots {
            if slot.record.is_some() || slot.age.is_none_or(|a| a < ABANDONED_AFTER) {
                continue;
            }
            let holders = clients
                .ec2
                .instances_tagged(&settings.instance_tags(*id))
                .await?;
            if let Some((holder, _)) = holders.iter().find(|(i, state)| {
                **i != me.instance_id
                    && matches!(Liveness::of(Some(state.as_str())), Liveness::Alive(_))
            }) {
                tagged.insert(*id, holder.clone());
            }
        }
        Ok::<_, anyhow::Error>((slots, registered, contended, owners, tagged))
    };
    let (tags, looked) = tokio::join!(tags, ledger_side);
    // The tags are kept even when the ledger's side failed: the next attempt needs them too.
    if let Some(tags) = tags {
        let (i, r) = tags?;
        *kept_ineligible = Some(i);
        *kept_resources = Some(r);
    }
    let (slots, registered, contended, owners, tagged) = looked?;
    if initial.is_none() {
        *initial = Some(slots.keys().copied().collect());
    }
    Ok(Observation {
        ids,
        ineligible: kept_ineligible.clone().unwrap_or_default(),
        slots,
        registered,
        contended,
        owners,
        tagged,
    })
}

/// Ids whose tagged resources rule them out for this instance, with the reason; and the
/// resources of the others.
async fn eligibility(
    settings: &Settings,
    clients: &Clients,
    me: &Identity,
    ids: &[u32],
) -> Result<(BTreeMap<u32, String>, BTreeMap<u32, Resources>)> {
    let mut out = BTreeMap::new();
    let mut resources: BTreeMap<u32, Resources> = BTreeMap::new();
    let res = &settings.resources;
    if !res.eni && !res.volume {
        return Ok((out, resources));
    }
    let tags = &settings.tags;
    let selector = settings.resource_tags(None);
    // id -> kind -> AZs
    let mut found: BTreeMap<u32, BTreeMap<&str, BTreeSet<String>>> = BTreeMap::new();
    // id -> kind -> the resources in this AZ
    let mut here: BTreeMap<(u32, ResourceKind), Vec<Resource>> = BTreeMap::new();
    // Both kinds at once: two independent Describe calls.
    let look = |kind: ResourceKind, wanted: bool| {
        let selector = &selector;
        async move {
            if wanted {
                clients.ec2.tagged(kind, selector, None).await
            } else {
                Ok(Vec::new())
            }
        }
    };
    let (enis, volumes) = tokio::join!(
        look(ResourceKind::Eni, res.eni),
        look(ResourceKind::Volume, res.volume)
    );
    for (kind, found_now) in [(ResourceKind::Eni, enis?), (ResourceKind::Volume, volumes?)] {
        for Tagged { az, resource: r } in found_now {
            let id = r.tags.get(&tags.id_key).and_then(|v| tags.parse_id(v));
            if let Some(id) = id {
                found
                    .entry(id)
                    .or_default()
                    .entry(kind.name())
                    .or_default()
                    .insert(az.clone());
                if az == me.az {
                    here.entry((id, kind)).or_default().push(r);
                }
            }
        }
    }
    for id in ids {
        let kinds = found.get(id);
        let mut why = Vec::new();
        for (kind, wanted) in [("ENI", res.eni), ("volume", res.volume)] {
            if !wanted {
                continue;
            }
            match kinds.and_then(|k| k.get(kind)) {
                None => why.push(format!("no {kind} tagged")),
                Some(azs) if azs.iter().any(|az| *az != me.az) => {
                    let list: Vec<&str> = azs.iter().map(String::as_str).collect();
                    why.push(format!("{kind} in {}", list.join(",")));
                }
                Some(_) => {}
            }
        }
        if !why.is_empty() {
            out.insert(*id, why.join(", "));
        }
    }
    for ((id, kind), found) in here {
        if let [one] = found.as_slice() {
            let r = resources.entry(id).or_default();
            match kind {
                ResourceKind::Eni => r.eni = Some(one.clone()),
                ResourceKind::Volume => r.volume = Some(one.clone()),
            }
        }
    }
    Ok((out, resources))
}

/// EC2 keeps a terminated instance visible for about an hour; a claim older than this whose
/// owner EC2 does not list as terminated is checked for an owner that is gone altogether.
pub const GONE_CHECK_AFTER: Duration = Duration::from_secs(30 * 60);

/// EC2's view of each owner (with how long ago its claim was made, on the ledger's clock):
/// dead (terminated, shutting-down, gone) or alive.
///
/// Death is asked positively (owners in a terminated or shutting-down state), which answers
/// with the few dead and stays cheap when many owners live. Only owners of claims older than
/// [`GONE_CHECK_AFTER`] are also checked for existing at all.
async fn liveness(
    clients: &Clients,
    owners: &BTreeMap<String, Option<Duration>>,
) -> Result<BTreeMap<String, Liveness>> {
    let mut out: BTreeMap<String, Liveness> = owners
        .keys()
        .map(|o| (o.clone(), Liveness::Alive("alive".into())))
        .collect();
    if owners.is_empty() {
        return Ok(out);
    }
    let ids: Vec<String> = owners.keys().cloned().collect();
    for (id, state) in clients.ec2.not_running_among(&ids).await? {
        out.insert(id, Liveness::of(Some(&state)));
    }
    let old: Vec<String> = owners
        .iter()
        .filter(|(o, held_for)| {
            matches!(out.get(*o), Some(Liveness::Alive(_)))
                && held_for.is_some_and(|h| h >= GONE_CHECK_AFTER)
        })
        .map(|(o, _)| o.clone())
        .collect();
    if !old.is_empty() {
        let present = clients.ec2.instance_states(&old, &[]).await?;
        for o in old {
            let l = Liveness::of(present.get(&o).map(String::as_str));
            out.insert(o, l);
        }
    }
    Ok(out)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Observes and plans without writing anything.
pub async fn dry_run(
    settings: &Settings,
    clients: &Clients,
    me: &Identity,
    deadline: Instant,
) -> Result<Plan> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5), deadline);
    loop {
        let attempt = async {
            let obs = observe(
                settings,
                clients,
                me,
                &mut None,
                &mut None,
                &mut Memory::default(),
            )
            .await?;
            Ok::<_, anyhow::Error>(plan(&obs, &me.instance_id))
        };
        match attempt.await {
            Ok(p) => return Ok(p),
            Err(e) if is_transient(&e) => {
                if !backoff.wait().await {
                    return Err(unreachable(settings, e));
                }
            }
            Err(e) => return Err(e),
        }
    }
}

fn unreachable(settings: &Settings, last: anyhow::Error) -> anyhow::Error {
    ClaimError::Unreachable {
        service: Ledger::service(settings),
        last: format!("{last:#}"),
    }
    .into()
}

/// Runs the claim step to completion (or the boot deadline), then tags the instance with its
/// id.
pub async fn run(
    settings: &Settings,
    clients: &Clients,
    me: &Identity,
    deadline: Instant,
) -> Result<Claim> {
    let claim = hold(settings, clients, me, deadline).await?;
    tag_instance(settings, clients, me, claim.id, deadline).await;
    Ok(claim)
}

/// Claims an id (held in the ledger and journalled) without tagging the instance: `boot` tags
/// it after the attach step ([`tag_instance`]).
pub async fn hold(
    settings: &Settings,
    clients: &Clients,
    me: &Identity,
    deadline: Instant,
) -> Result<Claim> {
    hold_with(settings, clients, me, deadline, None).await
}

/// [`hold`], with the ledger's opening begun beforehand ([`open_early`]) when there is one.
pub async fn hold_with(
    settings: &Settings,
    clients: &Clients,
    me: &Identity,
    deadline: Instant,
    early: Option<EarlyLedger>,
) -> Result<Claim> {
    let mut claimer = Claimer::new(settings, clients, me, deadline);
    claimer.early = early;
    claimer.run().await
}

/// A ledger being opened on a task of its own ([`open_early`]).
pub type EarlyLedger = tokio::task::JoinHandle<Option<Ledger>>;

/// Begins opening a ZooKeeper ledger before the instance's identity and AWS clients exist (it
/// needs neither): boot's start step reads IMDS meanwhile, and the claim's first look takes
/// the ledger where it looks at the ledger, beside EC2's tags, without waiting for it
/// elsewhere. `None` for the CloudWatch Logs ledger (it needs the clients). The task's ledger
/// is `None` when the open fails or `deadline` passes: the claim then opens the ledger itself,
/// and meets the failure where it is retried and reported.
pub fn open_early(settings: &Settings, deadline: Instant) -> Option<EarlyLedger> {
    if settings.claim.backend != Backend::Zookeeper {
        return None;
    }
    let settings = settings.clone();
    Some(tokio::spawn(async move {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, zookeeper::ZkLedger::open(&settings)).await {
            Ok(Ok(l)) => Some(Ledger::Zookeeper(l)),
            Ok(Err(e)) => {
                tracing::debug!(error = %format!("{e:#}"), "the early ledger open failed: the claim opens it");
                None
            }
            Err(_) => None,
        }
    }))
}

/// What one attempt came to.
enum Step {
    Done(Box<Claim>),
    /// Another contender won the id tried; the observation minus that id.
    Lost(Observation),
    /// A reused observation planned nothing to try: look afresh.
    LookAgain,
    Wait(String),
    Exhausted(String),
}

/// One boot's claim: what it learned so far, and one method per attempt.
struct Claimer<'a> {
    settings: &'a Settings,
    clients: &'a Clients,
    me: &'a Identity,
    started: Instant,
    deadline: Instant,
    backoff: Backoff,
    /// Opened on first use; a ZooKeeper ledger is reopened after a transient error.
    ledger: Option<Ledger>,
    /// The ledger's opening, begun before the claim ([`open_early`]); taken by the first look.
    early: Option<EarlyLedger>,
    memory: Memory,
    /// Races lost so far: each widens the spread of the next pick.
    losses: u32,
    /// After a lost race the same observation is reused, minus the ids lost: one call per try
    /// instead of a fresh look; a fresh look is taken before concluding anything else.
    cached: Option<Observation>,
    /// Why the last complete look found no id free: if the deadline then cuts an attempt
    /// short, that (not "unreachable") is what the operator needs to read.
    waiting_for: Option<String>,
}

impl<'a> Claimer<'a> {
    fn new(
        settings: &'a Settings,
        clients: &'a Clients,
        me: &'a Identity,
        deadline: Instant,
    ) -> Self {
        let started = Instant::now();
        Claimer {
            settings,
            clients,
            me,
            started,
            deadline,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(5), deadline),
            ledger: None,
            early: None,
            memory: Memory::default(),
            losses: 0,
            cached: None,
            waiting_for: None,
        }
    }

    async fn run(mut self) -> Result<Claim> {
        loop {
            let remaining = self.deadline.saturating_duration_since(Instant::now());
            // No single attempt (a connect to a dead ensemble, say) may outlive the deadline.
            let result = match tokio::time::timeout(remaining, self.attempt()).await {
                Ok(r) => r,
                Err(_) => {
                    Err(Transient(anyhow::anyhow!("no answer before the boot deadline")).into())
                }
            };
            if let Some(claim) = self.settle(result).await? {
                return Ok(claim);
            }
        }
    }

    /// One attempt: observe (or reuse the last look after a lost race), plan, apply the plan.
    async fn attempt(&mut self) -> Result<Step> {
        let (mut obs, stale) = match self.cached.take() {
            Some(o) => (o, true),
            None => (
                observe(
                    self.settings,
                    self.clients,
                    self.me,
                    &mut self.ledger,
                    &mut self.early,
                    &mut self.memory,
                )
                .await?,
                false,
            ),
        };
        let ledger = self.ledger.as_ref().expect("opened by the first look");
        let spread = if self.losses == 0 {
            1
        } else {
            4usize << self.losses.min(10)
        };
        let p = plan_with(&obs, &self.me.instance_id, |n| {
            rand::random_range(0..n.min(spread))
        });
        tracing::debug!(plan = %p, "claim plan");
        Ok(match p {
            Plan::Keep { id, epoch } => Step::Done(Box::new(self.claim(id, epoch, "kept"))),
            Plan::Create { id } => {
                if ledger.create(id, &self.record(0)).await? {
                    Step::Done(Box::new(self.claim(id, 0, "created")))
                } else {
                    obs.contended.insert(id);
                    Step::Lost(obs)
                }
            }
            Plan::TakeOver { id, from, why } => {
                let epoch = from.epoch + 1;
                if ledger.take_over(id, &from, &self.record(epoch)).await? {
                    tracing::info!(id, epoch, reason = %why, "took over a dead owner's id");
                    Step::Done(Box::new(self.claim(id, epoch, "took_over")))
                } else {
                    obs.contended.insert(id);
                    Step::Lost(obs)
                }
            }
            _ if stale => Step::LookAgain,
            Plan::Wait { why } => Step::Wait(why),
            Plan::Exhausted { report } => Step::Exhausted(report),
        })
    }

    /// What an attempt's outcome means: the claim (tagged and journalled), another attempt
    /// (at once, or after a pause), or the step's failure.
    async fn settle(&mut self, result: Result<Step>) -> Result<Option<Claim>> {
        match result {
            Ok(Step::Done(mut c)) => {
                c.elapsed_ms = self.started.elapsed().as_millis() as u64;
                journal(self.settings, &c)?;
                tracing::info!(id = c.id, epoch = c.epoch, how = %c.how, "claimed");
                Ok(Some(*c))
            }
            Ok(Step::Lost(obs)) => {
                // Another contender won that id: try another at once, spreading wider.
                self.losses += 1;
                self.cached = Some(obs);
                Ok(None)
            }
            Ok(Step::LookAgain) => Ok(None),
            Ok(Step::Wait(why)) => {
                tracing::info!(reason = %why, "no id free yet; waiting");
                self.memory = Memory::default();
                self.waiting_for = Some(why.clone());
                if !self.backoff.wait().await {
                    return Err(
                        self.no_eligible_id(format!("still waiting at the boot deadline: {why}"))
                    );
                }
                Ok(None)
            }
            Ok(Step::Exhausted(report)) => Err(self.no_eligible_id(report)),
            Err(e) if is_transient(&e) => {
                tracing::warn!(error = %format!("{e:#}"), "claim attempt failed; retrying");
                // A ZooKeeper session may be broken: reconnect. The CloudWatch Logs ledger has
                // no session and keeps the owner records it already read, so a throttled
                // attempt's progress is not lost.
                if self.ledger.as_ref().is_some_and(|l| !l.survives_errors()) {
                    self.ledger = None;
                }
                self.memory = std::mem::take(&mut self.memory).forget_but_tags();
                if !self.backoff.wait().await {
                    // The service answered before and said "wait": the id is what is missing,
                    // not the service.
                    return Err(match &self.waiting_for {
                        Some(why) => self.no_eligible_id(format!(
                            "still waiting at the boot deadline: {why} (last attempt: {e:#})"
                        )),
                        None => unreachable(self.settings, e),
                    });
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn record(&self, epoch: u64) -> Record {
        Record {
            owner: self.me.instance_id.clone(),
            az: self.me.az.clone(),
            cluster: self.settings.cluster.name.clone(),
            epoch,
            time: now_secs(),
        }
    }

    fn claim(&self, id: u32, epoch: u64, how: &str) -> Claim {
        Claim {
            id,
            epoch,
            backend: self.settings.claim.backend,
            how: how.to_string(),
            instance_id: self.me.instance_id.clone(),
            az: self.me.az.clone(),
            elapsed_ms: 0,
            resources: self
                .memory
                .resources
                .as_ref()
                .and_then(|r| r.get(&id))
                .cloned()
                .unwrap_or_default(),
        }
    }

    fn no_eligible_id(&self, report: String) -> anyhow::Error {
        ClaimError::NoEligibleId {
            instance: self.me.instance_id.clone(),
            az: self.me.az.clone(),
            report,
        }
        .into()
    }
}

/// Tags the instance with its id and cluster (retrying throttling and 5xx until the deadline):
/// the tag is how a live holder of an id is recognised when its claim record cannot be read.
pub async fn tag_instance(
    settings: &Settings,
    clients: &Clients,
    me: &Identity,
    id: u32,
    deadline: Instant,
) {
    let tags = settings.instance_tags(id);
    if let Err(e) = retry_transient(deadline, || clients.ec2.tag(&me.instance_id, &tags)).await {
        tracing::warn!(
            error = %format!("{e:#}"),
            "the claim holds, but the instance tag is missing"
        );
    }
}

fn journal(settings: &Settings, claim: &Claim) -> Result<()> {
    crate::journal::record(&settings.paths.state_dir, "claim", claim)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(owner: &str) -> Record {
        Record {
            owner: owner.into(),
            az: "us-east-1a".into(),
            cluster: "c".into(),
            epoch: 0,
            time: 0,
        }
    }

    fn slot(owner: &str) -> Slot {
        Slot {
            record: Some(rec(owner)),
            version: 0,
            epoch: 0,
            age: None,
            held_for: None,
        }
    }

    fn obs(n: u32) -> Observation {
        Observation {
            ids: (0..n).collect(),
            ineligible: BTreeMap::new(),
            slots: BTreeMap::new(),
            registered: BTreeSet::new(),
            contended: BTreeSet::new(),
            owners: BTreeMap::new(),
            tagged: BTreeMap::new(),
        }
    }

    #[test]
    fn spreading_picks_among_actionable_ids_only() {
        let mut o = obs(4);
        o.slots.insert(1, slot("i-a"));
        o.owners
            .insert("i-a".into(), Liveness::Alive("running".into()));
        assert_eq!(plan_with(&o, "i-me", |n| n - 1), Plan::Create { id: 3 });
        assert_eq!(plan_with(&o, "i-me", |_| 1), Plan::Create { id: 2 });
    }

    #[test]
    fn lowest_free_id_first() {
        let mut o = obs(3);
        o.slots.insert(0, slot("i-a"));
        o.owners
            .insert("i-a".into(), Liveness::Alive("running".into()));
        assert_eq!(plan(&o, "i-me"), Plan::Create { id: 1 });
    }

    #[test]
    fn own_claim_is_kept_even_when_registered() {
        let mut o = obs(3);
        o.slots.insert(0, slot("i-a"));
        o.slots.insert(2, slot("i-me"));
        o.registered.insert(2);
        assert_eq!(plan(&o, "i-me"), Plan::Keep { id: 2, epoch: 0 });
    }

    #[test]
    fn dead_owner_is_taken_over_live_one_never() {
        let mut o = obs(2);
        o.slots.insert(0, slot("i-a"));
        o.slots.insert(1, slot("i-b"));
        o.owners
            .insert("i-a".into(), Liveness::Alive("stopped".into()));
        o.owners
            .insert("i-b".into(), Liveness::Dead("terminated".into()));
        match plan(&o, "i-me") {
            Plan::TakeOver { id: 1, .. } => {}
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn owners_that_may_come_back_are_waited_for_running_ones_are_not() {
        for (state, waits) in [
            ("pending", true),
            ("stopping", true),
            ("stopped", true),
            ("running", false),
        ] {
            let mut o = obs(1);
            o.slots.insert(0, slot("i-a"));
            o.owners.insert("i-a".into(), Liveness::Alive(state.into()));
            match plan(&o, "i-me") {
                Plan::Wait { why } if waits => assert!(why.contains(state), "{why}"),
                Plan::Exhausted { .. } if !waits => {}
                p => panic!("{state}: {p:?}"),
            }
        }
    }

    #[test]
    fn registered_ids_are_never_taken_but_waited_for() {
        let mut o = obs(1);
        o.registered.insert(0);
        assert!(matches!(plan(&o, "i-me"), Plan::Wait { .. }));
    }

    #[test]
    fn ineligible_ids_are_skipped_and_reported() {
        let mut o = obs(2);
        o.ineligible.insert(0, "ENI in us-east-1a".into());
        o.slots.insert(1, slot("i-a"));
        o.owners
            .insert("i-a".into(), Liveness::Alive("running".into()));
        match plan(&o, "i-me") {
            Plan::Exhausted { report } => {
                assert_eq!(report, "0: ENI in us-east-1a; 1: held by i-a (running)")
            }
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn unfinished_claims_block_until_abandoned() {
        let mut o = obs(1);
        o.slots.insert(
            0,
            Slot {
                record: None,
                version: 0,
                epoch: 3,
                age: Some(Duration::from_secs(5)),
                held_for: None,
            },
        );
        assert!(matches!(plan(&o, "i-me"), Plan::Wait { .. }));
        o.slots.get_mut(&0).unwrap().age = Some(ABANDONED_AFTER);
        assert!(matches!(plan(&o, "i-me"), Plan::TakeOver { id: 0, .. }));
    }

    #[test]
    fn a_slot_without_record_is_never_abandoned_while_a_live_instance_carries_the_id() {
        let mut o = obs(1);
        o.slots.insert(
            0,
            Slot {
                record: None,
                version: 0,
                epoch: 0,
                age: Some(ABANDONED_AFTER * 10),
                held_for: None,
            },
        );
        o.tagged.insert(0, "i-live".into());
        assert!(matches!(plan(&o, "i-me"), Plan::Wait { .. }));
    }
}
