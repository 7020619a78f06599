//! The ZooKeeper ledger: one persistent znode per id under `claim.path`, holding the JSON
//! record. A first claim is an atomic create; a takeover is a `set_data` conditioned on the
//! version read, so of two contenders exactly one wins. Live brokers are read from
//! `/brokers/ids`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result};
use zookeeper_client::{Acls, Client, CreateMode, Error as ZkError};

use super::{Record, Slot};
use crate::aws::Transient;
use crate::config::Settings;

pub struct ZkLedger {
    client: Client,
    path: String,
}

/// Connection trouble is worth retrying; answers about nodes are not.
fn zk_error(e: ZkError, doing: &str) -> anyhow::Error {
    let fatal = matches!(
        e,
        ZkError::NoAuth | ZkError::AuthFailed | ZkError::InvalidAcl | ZkError::BadArguments(_)
    );
    let err = anyhow::anyhow!("{doing}: {e}");
    if fatal { err } else { Transient(err).into() }
}

fn options() -> zookeeper_client::CreateOptions<'static> {
    CreateMode::Persistent.with_acls(Acls::anyone_all())
}

impl ZkLedger {
    pub async fn open(settings: &Settings) -> Result<ZkLedger> {
        let zk = settings
            .zookeeper
            .as_ref()
            .context("the zookeeper backend needs [zookeeper] connect")?;
        let connector = || {
            let c = Client::connector()
                .with_session_timeout(zk.session_timeout)
                .with_connection_timeout(Duration::from_secs(2));
            match &zk.digest {
                Some(d) => c.with_auth("digest", d.as_bytes()),
                None => c,
            }
        };
        let connect = |cluster: String| {
            let c = connector();
            async move {
                c.connect(&cluster)
                    .await
                    .map_err(|e| zk_error(e, &format!("connecting to ZooKeeper {cluster}")))
            }
        };
        let client = connect(zk.connect.clone()).await?;
        match client.mkdir(&settings.claim.path, &options()).await {
            Ok(()) => {}
            Err(ZkError::NoNode) if zk.connect.contains('/') => {
                // The chroot does not exist yet: make it, as Kafka does for its own.
                let i = zk.connect.find('/').unwrap();
                let root = connect(zk.connect[..i].to_string()).await?;
                root.mkdir(&zk.connect[i..], &options())
                    .await
                    .map_err(|e| {
                        zk_error(e, &format!("creating the chroot {}", &zk.connect[i..]))
                    })?;
                client
                    .mkdir(&settings.claim.path, &options())
                    .await
                    .map_err(|e| zk_error(e, &format!("creating {}", settings.claim.path)))?;
            }
            Err(e) => return Err(zk_error(e, &format!("creating {}", settings.claim.path))),
        }
        Ok(ZkLedger {
            client,
            path: settings.claim.path.clone(),
        })
    }

    /// Every claimed id; the record is read where `read(id)` (cheap, but a herd of agents
    /// re-reading each other's fresh claims adds up).
    pub async fn slots(&self, read: &(dyn Fn(u32) -> bool + Sync)) -> Result<BTreeMap<u32, Slot>> {
        let children = self
            .client
            .list_children(&self.path)
            .await
            .map_err(|e| zk_error(e, &format!("listing {}", self.path)))?;
        // Read every record at once: one round trip's latency, not one per id.
        let all: Vec<u32> = children.iter().filter_map(|c| c.parse().ok()).collect();
        let (ids, unread): (Vec<u32>, Vec<u32>) = all.into_iter().partition(|id| read(*id));
        let reads = ids.iter().map(|id| {
            let node = format!("{}/{id}", self.path);
            async move { (node.clone(), self.client.get_data(&node).await) }
        });
        let mut out: BTreeMap<u32, Slot> = unread
            .into_iter()
            .map(|id| {
                let slot = Slot {
                    record: None,
                    version: -1,
                    epoch: 0,
                    age: None,
                };
                (id, slot)
            })
            .collect();
        for (id, (node, read)) in ids.iter().zip(futures::future::join_all(reads).await) {
            let (data, stat) = match read {
                Ok(v) => v,
                Err(ZkError::NoNode) => continue,
                Err(e) => return Err(zk_error(e, &format!("reading {node}"))),
            };
            let record: Option<Record> = serde_json::from_slice(&data).ok();
            out.insert(
                *id,
                Slot {
                    epoch: record.as_ref().map_or(0, |r| r.epoch),
                    record,
                    version: i64::from(stat.version),
                    age: None,
                },
            );
        }
        Ok(out)
    }

    pub async fn registered(&self) -> Result<BTreeSet<u32>> {
        match self.client.list_children("/brokers/ids").await {
            Ok(ids) => Ok(ids.iter().filter_map(|i| i.parse().ok()).collect()),
            Err(ZkError::NoNode) => Ok(BTreeSet::new()),
            Err(e) => Err(zk_error(e, "listing /brokers/ids")),
        }
    }

    pub async fn create(&self, id: u32, record: &Record) -> Result<bool> {
        let node = format!("{}/{id}", self.path);
        let data = serde_json::to_vec(record)?;
        match self.client.create(&node, &data, &options()).await {
            Ok(_) => Ok(true),
            Err(ZkError::NodeExists) => Ok(false),
            Err(e) => Err(zk_error(e, &format!("creating {node}"))),
        }
    }

    pub async fn take_over(&self, id: u32, version: i64, record: &Record) -> Result<bool> {
        let node = format!("{}/{id}", self.path);
        let data = serde_json::to_vec(record)?;
        match self
            .client
            .set_data(&node, &data, Some(version as i32))
            .await
        {
            Ok(_) => Ok(true),
            Err(ZkError::BadVersion | ZkError::NoNode) => Ok(false),
            Err(e) => Err(zk_error(e, &format!("taking over {node}"))),
        }
    }
}
