//! The CloudWatch Logs ledger: a claim is the log stream `id-<id>.epoch-<epoch>` in the
//! cluster's log group. CreateLogStream is atomic (a second create of the same name fails), so
//! a first claim creates epoch 0 and a takeover creates the next epoch: of two contenders
//! exactly one creates it. The highest epoch owns the id; its first event records the owner.
//!
//! The watchdog's replacement lease lives in the same group, made the same way: the stream
//! `replacing-<seq>` (see [`CwlLedger::read_lease`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;

use super::{ABANDONED_AFTER, ClaimError, Record, Slot};
use crate::aws::Clients;
use crate::aws::Transient;
use crate::aws::logs::{Created, Logs};
use crate::config::{Role, Settings};

pub struct CwlLedger {
    logs: Logs,
    group: String,
    /// The Kafka cluster's ZooKeeper, when known: its live registrations block their ids
    /// whatever the ledger. Reconnected after an error.
    registry: Option<(
        crate::config::Zookeeper,
        tokio::sync::Mutex<Option<zookeeper_client::Client>>,
    )>,
    /// Owner records already read, by stream: a stream's first event never changes.
    owners: std::sync::Mutex<std::collections::HashMap<String, Record>>,
    /// Streams an earlier, failed create of this boot may have made (a 5xx, a timeout), with
    /// the service's time (a lower bound) when that create was first asked.
    maybe_made: std::sync::Mutex<BTreeMap<String, Option<i64>>>,
}

/// Parses `id-<id>.epoch-<epoch>`.
pub fn parse_stream(name: &str) -> Option<(u32, u64)> {
    let (id, epoch) = name.strip_prefix("id-")?.split_once(".epoch-")?;
    Some((id.parse().ok()?, epoch.parse().ok()?))
}

pub fn stream_name(id: u32, epoch: u64) -> String {
    format!("id-{id}.epoch-{epoch:06}")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl CwlLedger {
    pub async fn open(settings: &Settings, clients: &Clients) -> Result<CwlLedger> {
        let group = settings.claim.log_group.clone();
        // A retention policy deletes a live owner's record once it is old enough, and the id
        // then looks abandoned: refuse such a group rather than lose the claim with it.
        if let Some(days) = clients.logs.ensure_group(&group).await? {
            return Err(ClaimError::UnsafeLedger(format!(
                "log group {group} has a retention policy of {days} days: its claim records \
                 would expire while their owners live; remove the policy \
                 (aws logs delete-retention-policy --log-group-name {group})"
            ))
            .into());
        }
        let registry = settings
            .zookeeper
            .clone()
            .filter(|_| settings.cluster.role == Role::Kafka)
            .map(|zk| (zk, tokio::sync::Mutex::new(None)));
        Ok(CwlLedger {
            logs: clients.logs.clone(),
            group,
            registry,
            owners: Default::default(),
            maybe_made: Default::default(),
        })
    }

    /// Ids with a live broker registration in the cluster's ZooKeeper (none if not known).
    pub async fn registered(&self) -> Result<BTreeSet<u32>> {
        let Some((zk, session)) = &self.registry else {
            return Ok(BTreeSet::new());
        };
        let mut guard = session.lock().await;
        if guard.is_none() {
            *guard = Some(super::zookeeper::session(zk, &zk.connect).await?);
        }
        let r = super::zookeeper::registered(guard.as_ref().expect("set above")).await;
        if r.is_err() {
            *guard = None;
        }
        r
    }

    /// The highest epoch of every id; its owner record is read where `read(id)`.
    pub async fn slots(&self, read: &(dyn Fn(u32) -> bool + Sync)) -> Result<BTreeMap<u32, Slot>> {
        // Highest epoch per id.
        let mut top: BTreeMap<u32, (u64, crate::aws::logs::Stream)> = BTreeMap::new();
        for s in self.logs.streams(&self.group, "id-").await? {
            let Some((id, epoch)) = parse_stream(&s.name) else {
                continue;
            };
            if top.get(&id).is_none_or(|(e, _)| epoch > *e) {
                top.insert(id, (epoch, s));
            }
        }
        // Ages on the service's clock (the listing just answered), never this machine's.
        let service_now = self.logs.clock().now_ms();
        let mut out = BTreeMap::new();
        for (id, (epoch, stream)) in top {
            let name = stream.name;
            let since_created = match (stream.created_ms, service_now) {
                (Some(c), Some(now)) => {
                    Some(Duration::from_millis(now.saturating_sub(c).max(0) as u64))
                }
                _ => None,
            };
            let cached = self.owners.lock().unwrap().get(&name).cloned();
            if cached.is_some() || !read(id) {
                out.insert(
                    id,
                    Slot {
                        record: cached,
                        version: epoch as i64,
                        epoch,
                        age: None,
                        held_for: since_created,
                    },
                );
                continue;
            }
            let message = self.logs.first_message(&self.group, &name).await?;
            let record = message
                .as_deref()
                .and_then(|m| serde_json::from_str::<Record>(m).ok());
            // A stream whose first event is not a record (garbage) is neither empty nor owned.
            if let Some(r) = &record {
                self.owners.lock().unwrap().insert(name.clone(), r.clone());
            }
            // A slot has an age (and can ever be taken for abandoned) only when it is proven
            // empty: read to its end without an event, and the service reports no first event.
            let empty = message.is_none() && stream.first_event_ms.is_none();
            out.insert(
                id,
                Slot {
                    record,
                    version: epoch as i64,
                    epoch,
                    age: since_created.filter(|_| empty),
                    held_for: since_created,
                },
            );
        }
        Ok(out)
    }

    /// Creates the stream for (`id`, `epoch`) and records the owner: true once the record is
    /// readable as the stream's first event and no later epoch exists; false if another
    /// contender holds the stream.
    ///
    /// An existing stream is still ours to complete when its record is ours, or when it has no
    /// record, one of our own create attempts may have made it (its reply was lost: a timeout,
    /// a 5xx), and the service made it after that attempt began: the retry meets
    /// ResourceAlreadyExists for the stream this very agent made. An attempt refused with a 4xx
    /// (throttling) made nothing, so after such refusals alone the stream is another's.
    pub async fn create(&self, id: u32, epoch: u64, record: &Record) -> Result<bool> {
        let name = stream_name(id, epoch);
        let asked = Instant::now();
        let asked_ms = self.logs.clock().now_ms();
        let mut existing = None;
        let created = match self.logs.create_stream(&self.group, &name).await {
            Ok(c) => c,
            Err(e) => {
                if e.chain().any(|c| c.is::<crate::aws::logs::MaybeMade>()) {
                    self.maybe_made
                        .lock()
                        .unwrap()
                        .entry(name.clone())
                        .or_insert(asked_ms);
                }
                return Err(e);
            }
        };
        if let Created::Existed { maybe_applied } = created {
            // Ours only if one of our own attempts may have made it: an attempt refused with a
            // 4xx (throttling) was not applied, and the stream is then another's.
            let earlier = self.maybe_made.lock().unwrap().get(&name).copied();
            let maybe_ours = maybe_applied || earlier.is_some();
            // The earliest time one of our creates of this stream was asked.
            let asked_ms = match (earlier.flatten(), asked_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let Some(stream) = self.logs.stream(&self.group, &name).await? else {
                return Ok(false);
            };
            match self.record_of(&name).await? {
                Some(r) if r.owner == record.owner => existing = Some(r),
                Some(_) => return Ok(false),
                None => {
                    // Made by our own (retried) call only if one of our attempts may have
                    // been applied and the service made it after we asked: `asked_ms` is a
                    // lower bound of the service's time then.
                    let ours = maybe_ours
                        && matches!((asked_ms, stream.created_ms), (Some(a), Some(c)) if c >= a);
                    if !ours || stream.first_event_ms.is_some() {
                        return Ok(false);
                    }
                    tracing::info!(stream = %name, "completing the stream our retried create made");
                }
            }
        }
        let record = match existing {
            Some(r) => r,
            None => {
                let r = Record {
                    epoch,
                    ..record.clone()
                };
                self.record_owner(&name, &r).await?;
                r
            }
        };
        self.confirm(id, epoch, &name, &record, asked).await
    }

    /// The owner record of a stream's first event (None: no readable record).
    async fn record_of(&self, name: &str) -> Result<Option<Record>> {
        let message = self.logs.first_message(&self.group, name).await?;
        Ok(message
            .as_deref()
            .and_then(|m| serde_json::from_str::<Record>(m).ok()))
    }

    /// Puts the owner record, stamped with the service's time (this machine's clock may be
    /// off by hours), until the service accepts it. An event the service answers 200 for and
    /// still rejects (too new, too old) is put again with a fresh timestamp.
    async fn record_owner(&self, name: &str, record: &Record) -> Result<()> {
        let message = serde_json::to_string(record)?;
        let mut backoff = crate::backoff::Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(2),
            Instant::now() + ABANDONED_AFTER / 4,
        );
        loop {
            let timestamp = self.logs.clock().now_ms().unwrap_or_else(now_ms);
            let err = match self.logs.put(&self.group, name, timestamp, &message).await {
                Ok(None) => return Ok(()),
                Ok(Some(rejected)) => {
                    tracing::warn!(stream = %name, %rejected, "the owner record was rejected; putting it again");
                    Transient(anyhow::anyhow!(
                        "recording the owner in stream {name}: {rejected}"
                    ))
                    .into()
                }
                Err(e) => e,
            };
            if !backoff.wait().await {
                return Err(err);
            }
        }
    }

    /// A claim is won only when its record reads back as the stream's first event and no
    /// later epoch took the id meanwhile. A writer slower than half the abandonment window
    /// (paused, stuck in retries) may have been taken for dead: it waits out the window and
    /// looks for a later epoch before it believes it owns the id.
    async fn confirm(
        &self,
        id: u32,
        epoch: u64,
        name: &str,
        record: &Record,
        asked: Instant,
    ) -> Result<bool> {
        // PutLogEvents is eventually readable: poll briefly for our own event.
        let mut backoff = crate::backoff::Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(1),
            Instant::now() + Duration::from_secs(10),
        );
        loop {
            match self.record_of(name).await? {
                Some(r) if r.owner == record.owner && r.epoch == record.epoch => break,
                Some(r) => {
                    tracing::warn!(stream = %name, owner = %r.owner, "another record came first");
                    return Ok(false);
                }
                None => {
                    if !backoff.wait().await {
                        return Err(Transient(anyhow::anyhow!(
                            "the owner record put in {name} does not read back"
                        ))
                        .into());
                    }
                }
            }
        }
        if asked.elapsed() > ABANDONED_AFTER / 2 {
            let settle = (ABANDONED_AFTER + SETTLE).saturating_sub(asked.elapsed());
            tracing::warn!(
                stream = %name,
                waited_s = asked.elapsed().as_secs(),
                "the claim took longer than half the abandonment window; waiting it out before believing it"
            );
            tokio::time::sleep(settle).await;
        }
        let later = self
            .logs
            .streams(&self.group, &format!("id-{id}.epoch-"))
            .await?
            .iter()
            .filter_map(|s| parse_stream(&s.name))
            .any(|(i, e)| i == id && e > epoch);
        if later {
            tracing::warn!(stream = %name, "a later epoch took the id while this claim was written");
            return Ok(false);
        }
        Ok(true)
    }
}

// --- the replacement lease (kafka-agent watch) --------------------------------------------
//
// The ZooKeeper lease's twin (`<claims parent>/replacing`), in the claim log group: every take
// of the lease is a new stream `replacing-<seq>` whose first event is the JSON lease
// (`crate::watch::Lease`), and the stream with the highest sequence number is the lease now.
// A take creates the next number after the one read (CreateLogStream is atomic: of two
// watchdogs exactly one creates it), as a claim's takeover creates the next epoch; the number
// read is the fencing token. A holder gives the lease back (its broker recovered, its mark
// failed) by creating the next number with a release marker as its first event. Nothing is
// deleted: a stream per replacement, a few a year. Whether a lease still holds is judged by
// `crate::watch::lease_state` (pure), with its age on the service's clock.

/// The lease streams' prefix.
pub const LEASE_PREFIX: &str = "replacing-";

pub fn lease_stream(seq: u64) -> String {
    format!("{LEASE_PREFIX}{seq:06}")
}

/// Parses `replacing-<seq>`.
pub fn parse_lease_stream(name: &str) -> Option<u64> {
    name.strip_prefix(LEASE_PREFIX)?.parse().ok()
}

/// The lease stream with the highest sequence number, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseStream {
    /// Its sequence number: the fencing token of the next take.
    pub seq: u64,
    /// Its first event's message; None while it has none (a take in progress, or one whose
    /// writer died before it wrote).
    pub data: Option<String>,
    /// Its creation time, milliseconds since the Unix epoch on the service's clock.
    pub created_ms: Option<i64>,
    /// Its age on the service's clock, when known.
    pub age: Option<Duration>,
}

impl CwlLedger {
    /// The lease now: the highest-numbered lease stream; None when no lease was ever taken.
    pub async fn read_lease(&self) -> Result<Option<LeaseStream>> {
        let top = self
            .logs
            .streams(&self.group, LEASE_PREFIX)
            .await?
            .into_iter()
            .filter_map(|s| Some((parse_lease_stream(&s.name)?, s)))
            .max_by_key(|(seq, _)| *seq);
        let Some((seq, stream)) = top else {
            return Ok(None);
        };
        let age = match (stream.created_ms, self.logs.clock().now_ms()) {
            (Some(c), Some(now)) => {
                Some(Duration::from_millis(now.saturating_sub(c).max(0) as u64))
            }
            _ => None,
        };
        let data = self.logs.first_message(&self.group, &stream.name).await?;
        Ok(Some(LeaseStream {
            seq,
            data,
            created_ms: stream.created_ms,
            age,
        }))
    }

    /// Takes the lease after the one read at `read` (None: none was ever taken) by creating
    /// the next lease stream and writing `data` as its first event: the taken stream's
    /// sequence number, or None when another watchdog created it first.
    pub async fn take_lease(&self, read: Option<u64>, data: &str) -> Result<Option<u64>> {
        let seq = read.map_or(0, |s| s + 1);
        let name = lease_stream(seq);
        match self.logs.create_stream(&self.group, &name).await? {
            Created::Made => {}
            Created::Existed { maybe_applied } => {
                // Ours only if an attempt of ours may have made it and nobody wrote in it, or
                // our own data is already there.
                match self.logs.first_message(&self.group, &name).await? {
                    Some(m) if m == data => return Ok(Some(seq)),
                    None if maybe_applied => {}
                    _ => return Ok(None),
                }
            }
        }
        self.record_owner_message(&name, data).await?;
        Ok(Some(seq))
    }

    /// Gives back the lease taken at `seq`: creates the next lease stream with `marker` (a
    /// release record) as its first event. False when the lease moved on meanwhile.
    pub async fn release_lease(&self, seq: u64, marker: &str) -> Result<bool> {
        Ok(self.take_lease(Some(seq), marker).await?.is_some())
    }

    /// Puts `message` as a stream's event, stamped with the service's time, until accepted.
    async fn record_owner_message(&self, name: &str, message: &str) -> Result<()> {
        let mut backoff = crate::backoff::Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(1),
            Instant::now() + Duration::from_secs(10),
        );
        loop {
            let timestamp = self.logs.clock().now_ms().unwrap_or_else(now_ms);
            let err = match self.logs.put(&self.group, name, timestamp, message).await {
                Ok(None) => return Ok(()),
                Ok(Some(rejected)) => Transient(anyhow::anyhow!(
                    "writing the lease in stream {name}: {rejected}"
                ))
                .into(),
                Err(e) => e,
            };
            if !backoff.wait().await {
                return Err(err);
            }
        }
    }
}

/// How long past the abandonment window a slow writer waits for a taker's stream to show.
const SETTLE: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_round_trip() {
        assert_eq!(stream_name(3, 12), "id-3.epoch-000012");
        assert_eq!(parse_stream("id-3.epoch-000012"), Some((3, 12)));
        assert_eq!(parse_stream("id-x.epoch-1"), None);
        assert_eq!(parse_stream("other"), None);
        assert_eq!(lease_stream(7), "replacing-000007");
        assert_eq!(parse_lease_stream("replacing-000007"), Some(7));
        assert_eq!(parse_lease_stream("id-3.epoch-000012"), None);
        // Claim streams and lease streams never share a prefix.
        assert!(!lease_stream(0).starts_with("id-"));
    }
}
