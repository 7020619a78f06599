//! The ZooKeeper ledger: one persistent znode per id under `claim.path`, holding the JSON
//! record. A first claim is an atomic create; a takeover is a `set_data` conditioned on the
//! version read, so of two contenders exactly one wins. Live brokers are read from
//! `/brokers/ids`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result};
use zookeeper_client::{Acl, Acls, Client, CreateMode, Error as ZkError, Permission};

use super::{Record, Slot};
use crate::aws::Transient;
use crate::config::Settings;

pub struct ZkLedger {
    client: Client,
    path: String,
    /// Claims are created with [`PROTECTED`] (a digest is configured).
    protected: bool,
    /// The ensemble's clock at open (ms since the Unix epoch) and when that was read here.
    server_time: Option<(i64, std::time::Instant)>,
}

/// The ensemble's clock: the ctime of an ephemeral node made (and removed) for the purpose.
/// Claim ages are measured on it against znodes' mtimes, never on this machine's clock.
async fn server_time(client: &Client, path: &str) -> Option<(i64, std::time::Instant)> {
    let options = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
    match client
        .create(&format!("{path}/clock-"), b"", &options)
        .await
    {
        Ok((stat, seq)) => {
            let at = std::time::Instant::now();
            // Sent now, not waited for: the node is ephemeral and goes with the session
            // anyway, and the claim's next requests queue behind it in order.
            let removed = client.delete(&format!("{path}/clock-{seq}"), None);
            tokio::spawn(async move {
                let _ = removed.await;
            });
            Some((stat.ctime, at))
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read ZooKeeper's clock: owners are not checked for being gone");
            None
        }
    }
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

/// With a digest: full rights for the digest's identity (`auth`: whoever authenticated as
/// this session did), read for everyone else, so a claim is rewritten only by an agent of the
/// cluster (ZooKeeper Programmer's Guide, "Builtin ACL Schemes").
static PROTECTED: [Acl; 2] = [
    Acl::new_const(Permission::ALL, "auth", ""),
    Acl::new_const(Permission::READ, "world", "anyone"),
];

fn options(protected: bool) -> zookeeper_client::CreateOptions<'static> {
    CreateMode::Persistent.with_acls(if protected {
        Acls::new(&PROTECTED)
    } else {
        Acls::anyone_all()
    })
}

/// A session to `hosts` (with or without a chroot), authenticated with the digest when one
/// is configured.
pub(super) async fn session(zk: &crate::config::Zookeeper, hosts: &str) -> Result<Client> {
    let c = Client::connector()
        .with_session_timeout(zk.session_timeout)
        .with_connection_timeout(Duration::from_secs(2));
    let c = match &zk.digest {
        Some(d) => c.with_auth("digest", d.as_bytes()),
        None => c,
    };
    c.connect(hosts)
        .await
        .map_err(|e| zk_error(e, &format!("connecting to ZooKeeper {hosts}")))
}

/// A session to the cluster's ZooKeeper, below its chroot.
pub async fn connect(settings: &Settings) -> Result<Client> {
    let zk = settings
        .zookeeper
        .as_ref()
        .context("the zookeeper backend needs [zookeeper] connect")?;
    session(zk, &zk.connect).await
}

/// Makes the claim path: its parents open (other clusters' agents may share them), the path
/// itself protected when a digest is configured (whoever may create below it may claim).
async fn make_path(client: &Client, path: &str, protected: bool) -> Result<(), ZkError> {
    // Usually there already: one read, not two refused creates (each a write through the
    // ensemble's transaction log).
    if client.check_stat(path).await?.is_some() {
        return Ok(());
    }
    if let Some((parent, _)) = path.rsplit_once('/')
        && !parent.is_empty()
    {
        client.mkdir(parent, &options(false)).await?;
    }
    match client.create(path, b"", &options(protected)).await {
        Ok(_) | Err(ZkError::NodeExists) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The ids with a live broker registration under `/brokers/ids`.
pub async fn registered(client: &Client) -> Result<BTreeSet<u32>> {
    match client.list_children("/brokers/ids").await {
        Ok(ids) => Ok(ids.iter().filter_map(|i| i.parse().ok()).collect()),
        Err(ZkError::NoNode) => Ok(BTreeSet::new()),
        Err(e) => Err(zk_error(e, "listing /brokers/ids")),
    }
}

impl ZkLedger {
    pub async fn open(settings: &Settings) -> Result<ZkLedger> {
        let zk = settings
            .zookeeper
            .as_ref()
            .context("the zookeeper backend needs [zookeeper] connect")?;
        let protected = zk.digest.is_some();
        let client = session(zk, &zk.connect).await?;
        let path = &settings.claim.path;
        if !protected {
            tracing::warn!(
                path = %path,
                "no zookeeper.digest: the claim ledger is open to anyone who can reach ZooKeeper"
            );
        }
        match make_path(&client, path, protected).await {
            Err(ZkError::NoNode) if zk.connect.contains('/') => {
                // The chroot does not exist yet: make it, as Kafka does for its own (open:
                // Kafka registers its brokers below it).
                let i = zk.connect.find('/').unwrap();
                let root = session(zk, &zk.connect[..i]).await?;
                root.mkdir(&zk.connect[i..], &options(false))
                    .await
                    .map_err(|e| {
                        zk_error(e, &format!("creating the chroot {}", &zk.connect[i..]))
                    })?;
                make_path(&client, path, protected)
                    .await
                    .map_err(|e| zk_error(e, &format!("creating {path}")))?;
            }
            r => r.map_err(|e| zk_error(e, &format!("creating {path}")))?,
        }
        let server_time = server_time(&client, path).await;
        Ok(ZkLedger {
            client,
            path: path.clone(),
            protected,
            server_time,
        })
    }

    /// The ensemble's time now (its leader's clock), as measured at open and carried forward
    /// on the monotonic clock.
    fn server_now_ms(&self) -> Option<i64> {
        self.server_time
            .map(|(ms, at)| ms + at.elapsed().as_millis() as i64)
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
                    held_for: None,
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
                    held_for: self.server_now_ms().map(|now| {
                        Duration::from_millis(now.saturating_sub(stat.mtime).max(0) as u64)
                    }),
                },
            );
        }
        Ok(out)
    }

    pub async fn registered(&self) -> Result<BTreeSet<u32>> {
        registered(&self.client).await
    }

    pub async fn create(&self, id: u32, record: &Record) -> Result<bool> {
        let node = format!("{}/{id}", self.path);
        let data = serde_json::to_vec(record)?;
        match self
            .client
            .create(&node, &data, &options(self.protected))
            .await
        {
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

// --- the replacement lease (kafka-agent watch) --------------------------------------------
//
// One persistent znode `<claim.path's parent>/replacing` per cluster holds the JSON lease
// of the one replacement in flight (`crate::watch::Lease`). It is created atomically (a
// create fails if it exists) and a stale one is replaced by a `set_data` conditioned on the
// version read, as a claim is taken over: of two watchdogs exactly one wins. Whether a
// lease still holds is judged by `crate::watch::lease_state` (pure) from what is read here.

/// The lease znode of the cluster whose claims live under `claim_path`.
pub fn lease_path(claim_path: &str) -> String {
    match claim_path.rsplit_once('/') {
        Some((parent, _)) if !parent.is_empty() => format!("{parent}/replacing"),
        _ => "/replacing".to_string(),
    }
}

/// The lease znode as read: its data, its version (the fencing token of a replacement), and
/// its age on the ensemble's clock when that could be read.
#[derive(Debug, Clone)]
pub struct LeaseNode {
    pub data: Vec<u8>,
    pub version: i32,
    pub age: Option<Duration>,
    /// When it was last written, on the ensemble's clock (ms since the Unix epoch).
    pub mtime_ms: i64,
}

/// Reads the lease; None when no replacement was ever leased. `aged` asks for its age on the
/// ensemble's clock (two more calls: an ephemeral node made and removed under `claim_path`).
pub async fn read_lease(
    client: &Client,
    claim_path: &str,
    aged: bool,
) -> Result<Option<LeaseNode>> {
    let node = lease_path(claim_path);
    let (data, stat) = match client.get_data(&node).await {
        Ok(v) => v,
        Err(ZkError::NoNode) => return Ok(None),
        Err(e) => return Err(zk_error(e, &format!("reading {node}"))),
    };
    let age = if aged {
        server_time(client, claim_path).await.map(|(ms, at)| {
            let now = ms + at.elapsed().as_millis() as i64;
            Duration::from_millis(now.saturating_sub(stat.mtime).max(0) as u64)
        })
    } else {
        None
    };
    Ok(Some(LeaseNode {
        data,
        version: stat.version,
        age,
        mtime_ms: stat.mtime,
    }))
}

/// Takes the lease: creates it when there is none (`version` None), or replaces the stale
/// one read at `version`. False when another watchdog moved first.
pub async fn take_lease(
    client: &Client,
    claim_path: &str,
    protected: bool,
    version: Option<i32>,
    data: &[u8],
) -> Result<bool> {
    let node = lease_path(claim_path);
    let done = match version {
        None => client
            .create(&node, data, &options(protected))
            .await
            .map(|_| ()),
        Some(v) => client.set_data(&node, data, Some(v)).await.map(|_| ()),
    };
    match done {
        Ok(()) => Ok(true),
        Err(ZkError::NodeExists | ZkError::BadVersion | ZkError::NoNode) => Ok(false),
        Err(e) => Err(zk_error(e, &format!("taking the replacement lease {node}"))),
    }
}

/// Gives the lease back (the holder's broker recovered, or marking it failed): a delete
/// conditioned on the version the holder read. False when it changed meanwhile.
pub async fn release_lease(client: &Client, claim_path: &str, version: i32) -> Result<bool> {
    let node = lease_path(claim_path);
    match client.delete(&node, Some(version)).await {
        Ok(()) => Ok(true),
        Err(ZkError::BadVersion | ZkError::NoNode) => Ok(false),
        Err(e) => Err(zk_error(
            e,
            &format!("releasing the replacement lease {node}"),
        )),
    }
}

/// The instance that owns `id`'s claim record under `claim_path`, if any (read only).
pub async fn claim_owner(client: &Client, claim_path: &str, id: u32) -> Result<Option<String>> {
    let node = format!("{claim_path}/{id}");
    match client.get_data(&node).await {
        Ok((data, _)) => Ok(serde_json::from_slice::<Record>(&data)
            .ok()
            .map(|r| r.owner)),
        Err(ZkError::NoNode) => Ok(None),
        Err(e) => Err(zk_error(e, &format!("reading {node}"))),
    }
}
