//! The CloudWatch Logs ledger: a claim is the log stream `id-<id>.epoch-<epoch>` in the
//! cluster's log group. CreateLogStream is atomic (a second create of the same name fails), so
//! a first claim creates epoch 0 and a takeover creates the next epoch: of two contenders
//! exactly one creates it. The highest epoch owns the id; its first event records the owner.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use aws_sdk_cloudwatchlogs::types::InputLogEvent;

use super::{Record, Slot};
use crate::aws::Clients;
use crate::aws::aws_error;
use crate::config::Settings;

pub struct CwlLedger {
    logs: aws_sdk_cloudwatchlogs::Client,
    group: String,
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

impl CwlLedger {
    pub async fn open(settings: &Settings, clients: &Clients) -> Result<CwlLedger> {
        let group = settings.claim.log_group.clone();
        match clients
            .logs
            .create_log_group()
            .log_group_name(&group)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_already_exists_exception()) => {}
            Err(e) => return Err(aws_error(e, &format!("creating log group {group}"))),
        }
        Ok(CwlLedger {
            logs: clients.logs.clone(),
            group,
            owners: Default::default(),
        })
    }

    /// The highest epoch of every id; its owner record is read where `read(id)`.
    pub async fn slots(&self, read: &(dyn Fn(u32) -> bool + Sync)) -> Result<BTreeMap<u32, Slot>> {
        // Highest epoch per id, with its creation time.
        let mut top: BTreeMap<u32, (u64, String, Option<i64>)> = BTreeMap::new();
        let mut pages = self
            .logs
            .describe_log_streams()
            .log_group_name(&self.group)
            .log_stream_name_prefix("id-")
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| aws_error(e, &format!("listing streams of {}", self.group)))?;
            for s in page.log_streams() {
                let Some(name) = s.log_stream_name() else {
                    continue;
                };
                let Some((id, epoch)) = parse_stream(name) else {
                    continue;
                };
                if top.get(&id).is_none_or(|(e, _, _)| epoch > *e) {
                    top.insert(id, (epoch, name.to_string(), s.creation_time()));
                }
            }
        }
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let mut out = BTreeMap::new();
        for (id, (epoch, name, created)) in top {
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
            let events = self
                .logs
                .get_log_events()
                .log_group_name(&self.group)
                .log_stream_name(&name)
                .start_from_head(true)
                .limit(1)
                .send()
                .await
                .map_err(|e| aws_error(e, &format!("reading stream {name}")))?;
            let record = events
                .events()
                .first()
                .and_then(|e| e.message())
                .and_then(|m| serde_json::from_str::<Record>(m).ok());
            if let Some(r) = &record {
                self.owners.lock().unwrap().insert(name.clone(), r.clone());
            }
            out.insert(
                id,
                Slot {
                    record,
                    version: epoch as i64,
                    epoch,
                    age: created.map(|c| Duration::from_millis(now_ms.saturating_sub(c) as u64)),
                },
            );
        }
        Ok(out)
    }

    /// Creates the stream for (`id`, `epoch`) and records the owner; false if it existed.
    pub async fn create(&self, id: u32, epoch: u64, record: &Record) -> Result<bool> {
        let name = stream_name(id, epoch);
        match self
            .logs
            .create_log_stream()
            .log_group_name(&self.group)
            .log_stream_name(&name)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_already_exists_exception()) =>
            {
                return Ok(false);
            }
            Err(e) => return Err(aws_error(e, &format!("creating stream {name}"))),
        }
        let record = Record {
            epoch,
            ..record.clone()
        };
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let event = InputLogEvent::builder()
            .timestamp(now_ms)
            .message(serde_json::to_string(&record)?)
            .build()?;
        // The stream is ours: a failure to record the owner is retried until it holds (a
        // stream left without owner is only reclaimed once abandoned).
        let mut backoff = crate::backoff::Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(2),
            std::time::Instant::now() + Duration::from_secs(60),
        );
        loop {
            match self
                .logs
                .put_log_events()
                .log_group_name(&self.group)
                .log_stream_name(&name)
                .log_events(event.clone())
                .send()
                .await
            {
                Ok(_) => return Ok(true),
                Err(e) => {
                    let err = aws_error(e, &format!("recording the owner in stream {name}"));
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
