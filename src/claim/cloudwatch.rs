//! The CloudWatch Logs ledger: a claim is the log stream `id-<id>.epoch-<epoch>` in the
//! cluster's log group. CreateLogStream is atomic (a second create of the same name fails), so
//! a first claim creates epoch 0 and a takeover creates the next epoch: of two contenders
//! exactly one creates it. The highest epoch owns the id; its first event records the owner.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use anyhow::Result;

use super::{ClaimError, Record, Slot};
use crate::aws::Clients;
use crate::aws::logs::Logs;
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
        let now_ms = now_ms();
        let mut out = BTreeMap::new();
        for (id, (epoch, stream)) in top {
            let name = stream.name;
            let cached = self.owners.lock().unwrap().get(&name).cloned();
            if cached.is_some() || !read(id) {
                out.insert(
                    id,
                    Slot {
                        record: cached,
                        version: epoch as i64,
                        epoch,
                        age: None,
                    },
                );
                continue;
            }
            let message = self.logs.first_message(&self.group, &name).await?;
            let record = message
                .as_deref()
                .and_then(|m| serde_json::from_str::<Record>(m).ok());
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
                    age: stream
                        .created_ms
                        .filter(|_| empty)
                        .map(|c| Duration::from_millis(now_ms.saturating_sub(c) as u64)),
                },
            );
        }
        Ok(out)
    }

    /// Creates the stream for (`id`, `epoch`) and records the owner; false if it existed.
    pub async fn create(&self, id: u32, epoch: u64, record: &Record) -> Result<bool> {
        let name = stream_name(id, epoch);
        if !self.logs.create_stream(&self.group, &name).await? {
            return Ok(false);
        }
        let record = Record {
            epoch,
            ..record.clone()
        };
        let message = serde_json::to_string(&record)?;
        let timestamp = now_ms();
        // The stream is ours: a failure to record the owner is retried until it holds (a
        // stream left without owner is only reclaimed once abandoned).
        let mut backoff = crate::backoff::Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(2),
            std::time::Instant::now() + Duration::from_secs(60),
        );
        loop {
            match self.logs.put(&self.group, &name, timestamp, &message).await {
                Ok(()) => return Ok(true),
                Err(err) => {
                    if !backoff.wait().await {
                        return Err(err);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_round_trip() {
        assert_eq!(stream_name(3, 12), "id-3.epoch-000012");
        assert_eq!(parse_stream("id-3.epoch-000012"), Some((3, 12)));
        assert_eq!(parse_stream("id-x.epoch-1"), None);
        assert_eq!(parse_stream("other"), None);
    }
}
