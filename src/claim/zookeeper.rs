//! The ZooKeeper ledger: one persistent znode per id under `claim.path`, holding the JSON
//! record. A first claim is an atomic create; a takeover is a `set_data` conditioned on the
//! version read, so of two contenders exactly one wins. Live brokers are read from
//! `/brokers/ids`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result};
use zookeeper_client::{Acls, Client, CreateMode, Error as ZkError};

use super::{Record, Slot, Transient};
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
        if let Some(i) = zk.connect.find('/') {
            // Make the chroot, as Kafka does for its own.
            let root = connector()
                .connect(&zk.connect[..i])
                .await
                .map_err(|e| zk_error(e, &format!("connecting to ZooKeeper {}", zk.connect)))?;
            root.mkdir(&zk.connect[i..], &options())
                .await
                .map_err(|e| zk_error(e, &format!("creating the chroot {}", &zk.connect[i..])))?;
        }
        let client = connector()
            .connect(&zk.connect)
            .await
            .map_err(|e| zk_error(e, &format!("connecting to ZooKeeper {}", zk.connect)))?;
        client
            .mkdir(&settings.claim.path, &options())
            .await
            .map_err(|e| zk_error(e, &format!("creating {}", settings.claim.path)))?;
        Ok(ZkLedger {
            client,
            path: settings.claim.path.clone(),
        })
    }

    pub async fn slots(&self) -> Result<BTreeMap<u32, Slot>> {
        let children = self
            .client
            .list_children(&self.path)
            .await
            .map_err(|e| zk_error(e, &format!("listing {}", self.path)))?;
        let mut out = BTreeMap::new();
        for child in children {
            let Ok(id) = child.parse::<u32>() else {
                continue;
            };
            let node = format!("{}/{child}", self.path);
            let (data, stat) = match self.client.get_data(&node).await {
                Ok(v) => v,
                Err(ZkError::NoNode) => continue,
                Err(e) => return Err(zk_error(e, &format!("reading {node}"))),
            };
            let record: Option<Record> = serde_json::from_slice(&data).ok();
            out.insert(
                id,
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
