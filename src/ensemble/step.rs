//! The ZooKeeper role's step in `boot`: look at the ensemble (each member's ENI and volume,
//! whether its instance runs, what its server answers), decide (join, bootstrap, resume or
//! wait: [`super::decide`]), publish what this member's volume holds, and render zoo.cfg, the
//! dynamic file and myid for ZooKeeper to start on.
//!
//! **What a member's volume holds** is published as the volume's tag [`DATA_TAG`], so that
//! every member can tell a fresh ensemble from one whose members hold data before anything
//! starts: `empty@<instance>` (this instance found no transaction log and no snapshot past
//! zxid 0 on it), `member` (the volume's server joined a serving ensemble, or holds data).
//! A peer's `empty@` counts only while that same instance holds the member's ENI; anything
//! else (no tag, a tag of an instance that is gone) is not known and never taken as empty,
//! so no fresh ensemble is started beside members that may hold data.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::fourlw::{self, Answer};
use super::{Data, EnsembleConfig, Membership, Observations, Peer, Plan, WaitReason};
use crate::aws::Clients;
use crate::aws::ec2::ResourceKind;
use crate::aws::imds::Identity;
use crate::aws::retry_transient;
use crate::config::{EnsembleSettings, Role, Settings};
use crate::deadline::Deadline;
use crate::render::zoo::{self, SuperDigest};

/// The volume tag that says what the member's volume holds (see the module's doc).
pub const DATA_TAG: &str = "kafka-agent:zookeeper";
/// [`DATA_TAG`]'s value once the volume's server is a member (or its volume holds data).
pub const MEMBER: &str = "member";

/// How long the step looks again while its plan is to wait.
const LOOK_AGAIN: Duration = Duration::from_secs(2);
/// How long each member's `srvr` may take.
const SRVR_TIMEOUT: Duration = Duration::from_secs(1);

/// No quorum can be joined and no ensemble started: the boot ends here, nothing wiped and
/// nothing started, and `status` says why.
#[derive(Debug, thiserror::Error)]
#[error("the ensemble waits: {0}")]
pub struct Waits(pub WaitReason);

/// What the step decided and rendered (journalled as `ensemble.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepared {
    pub myid: u32,
    /// join | bootstrap | resume | wait
    pub plan: String,
    /// Why no quorum serves (resume), or why the node waits.
    pub reason: Option<String>,
    pub reason_kind: Option<String>,
    /// The serving leader's myid (join).
    pub leader: Option<u32>,
    /// The configuration version the join read (`/zookeeper/config`), hex as ZooKeeper
    /// writes it; the reconfig that adds this node is conditioned on it.
    pub config_version: Option<String>,
    /// This node must be added by reconfig (join): it is not in the membership as it is.
    pub add: bool,
    /// The `server.N=` lines ZooKeeper starts on.
    pub members: Vec<String>,
    /// This node's volume held data when it looked.
    pub holds_data: bool,
    /// What each member answered (`srvr`), by myid.
    pub answers: BTreeMap<u32, String>,
    pub files: Vec<PathBuf>,
}

fn plan_kind(plan: &Plan) -> &'static str {
    match plan {
        Plan::Join { .. } => "join",
        Plan::Bootstrap { .. } => "bootstrap",
        Plan::Resume { .. } => "resume",
        Plan::Wait { .. } => "wait",
    }
}

fn answer_text(a: &Answer) -> String {
    match a {
        Answer::Serving(s) => format!("{:?} zxid 0x{:x}", s.mode, s.zxid).to_lowercase(),
        Answer::NotServing => "not serving (no quorum)".into(),
        Answer::Refused => "refused (ZooKeeper not running)".into(),
        Answer::TimedOut => "no answer".into(),
        Answer::Failed(e) => format!("failed: {e}"),
    }
}

/// ZooKeeper's superuser digest, `base64(sha1("super:<password>"))`, of the password in
/// `path` (its first line; made when there is none, [`ensure_superuser_password`]).
pub fn super_digest(path: &Path) -> Result<SuperDigest> {
    let password = ensure_superuser_password(path)?;
    let sha = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("super:{password}").as_bytes(),
    );
    SuperDigest::from_precomputed(&base64(sha.as_ref()))
}

/// The ZooKeeper superuser's password: the first line of the file at `path`.
pub fn superuser_password(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the superuser password {}", path.display()))?;
    let password = text.lines().next().unwrap_or("").trim_end();
    anyhow::ensure!(
        !password.is_empty(),
        "{} holds no superuser password",
        path.display()
    );
    Ok(password.to_string())
}

/// This member's superuser password: the file's, or, when there is no file yet, a new random
/// one written there (0600, atomically) for this member alone.
pub fn ensure_superuser_password(path: &Path) -> Result<String> {
    if path.exists() {
        return superuser_password(path);
    }
    use rand::Rng;
    let mut rng = rand::rng();
    let password: String = (0..32)
        .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
        .collect();
    let dir = path
        .parent()
        .with_context(|| format!("{} has no directory", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        writeln!(f, "{password}").with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
    tracing::info!(path = %path.display(), "made this member's ZooKeeper superuser password");
    superuser_password(path)
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A peer's data, from its volume's tags and who holds its ENI now.
fn peer_data(tags: &BTreeMap<String, String>, state_tag: &str, holder: Option<&str>) -> Data {
    match tags.get(DATA_TAG).map(String::as_str) {
        Some(MEMBER) => Data::Holds,
        Some(v) => match v.strip_prefix("empty@") {
            Some(inst) if Some(inst) == holder => Data::Empty,
            _ => Data::Unknown,
        },
        // A volume no one has formatted yet holds nothing.
        None if tags.get(state_tag).map(String::as_str) == Some("new") => Data::Empty,
        None => Data::Unknown,
    }
}

/// One look at the ensemble.
pub(crate) async fn observe(
    settings: &Settings,
    ens: &EnsembleSettings,
    clients: &Clients,
    myid: u32,
    holds_data: bool,
    at: std::time::Instant,
) -> Result<Observations> {
    let tags = settings.resource_tags(None);
    let (enis, volumes) = tokio::try_join!(
        retry_transient(at, || clients.ec2.tagged(ResourceKind::Eni, &tags, None)),
        retry_transient(at, || clients.ec2.tagged(ResourceKind::Volume, &tags, None)),
    )?;
    let id_of = |t: &BTreeMap<String, String>| {
        t.get(&settings.tags.id_key)
            .and_then(|v| settings.tags.parse_id(v))
    };
    let mut addresses: BTreeMap<u32, (IpAddr, Option<String>)> = BTreeMap::new();
    for e in &enis {
        let Some(id) = id_of(&e.resource.tags) else {
            continue;
        };
        let Some(ip) = e.resource.ips.first().and_then(|ip| ip.parse().ok()) else {
            continue;
        };
        let holder = e.resource.attachment.as_ref().map(|a| a.instance.clone());
        addresses.insert(id, (ip, holder));
    }
    let holders: Vec<String> = addresses.values().filter_map(|(_, h)| h.clone()).collect();
    let dead = if holders.is_empty() {
        BTreeMap::new()
    } else {
        retry_transient(at, || clients.ec2.not_running_among(&holders)).await?
    };
    let volume_tags: BTreeMap<u32, BTreeMap<String, String>> = volumes
        .iter()
        .filter_map(|v| Some((id_of(&v.resource.tags)?, v.resource.tags.clone())))
        .collect();
    let server = &ens.server;
    let members: BTreeMap<u32, super::Member> = settings
        .cluster
        .ids()
        .filter_map(|id| Some((id, server.member(id, addresses.get(&id)?.0))))
        .collect();
    let answers = fourlw::srvr_all(
        members
            .iter()
            .filter_map(|(id, m)| Some((*id, m.client_address()?))),
        SRVR_TIMEOUT,
    )
    .await;
    let mut peers = BTreeMap::new();
    for (id, member) in members {
        let holder = addresses.get(&id).and_then(|(_, h)| h.clone());
        // EC2 lists the holders that are not running; the rest run.
        let running = holder.as_ref().is_some_and(|h| !dead.contains_key(h));
        let data = if id == myid {
            if holds_data { Data::Holds } else { Data::Empty }
        } else {
            volume_tags.get(&id).map_or(Data::Unknown, |t| {
                peer_data(t, &settings.storage.state_tag, holder.as_deref())
            })
        };
        peers.insert(
            id,
            Peer {
                member,
                in_service: running,
                answer: answers.get(&id).cloned().unwrap_or(Answer::TimedOut),
                data,
            },
        );
    }
    let config = read_config(&peers).await;
    // The members that count: the membership's, the initial ensemble's, and this node.
    let mut keep: std::collections::BTreeSet<u32> = config
        .as_ref()
        .map(|c| c.membership.ids())
        .unwrap_or_default();
    keep.extend(1..=ens.initial_size);
    keep.insert(myid);
    peers.retain(|id, _| keep.contains(id));
    Ok(Observations {
        me: myid,
        peers,
        config,
    })
}

/// The plan for this node ([`super::decide`]), except that a member beyond the initial
/// ensemble with no data of its own never starts one: it waits for an ensemble to join.
pub fn plan(obs: &Observations, initial_size: u32, holds_data: bool) -> Plan {
    if obs.me > initial_size && obs.config.is_none() && !holds_data {
        return Plan::Wait {
            reason: WaitReason::JoinsOnly {
                me: obs.me,
                initial: initial_size,
            },
        };
    }
    super::decide(obs)
}

/// `/zookeeper/config` from a member that serves; None when none does or none answers.
async fn read_config(peers: &BTreeMap<u32, Peer>) -> Option<EnsembleConfig> {
    for p in peers.values() {
        if !matches!(p.answer, Answer::Serving(_)) {
            continue;
        }
        let Some(addr) = p.member.client_address() else {
            continue;
        };
        match get_config(addr).await {
            Ok(c) => return Some(c),
            Err(e) => tracing::debug!(%addr, error = %format!("{e:#}"), "no /zookeeper/config"),
        }
    }
    None
}

/// Reads `/zookeeper/config` from the member at `addr` (synced with the leader first).
pub async fn get_config(addr: SocketAddr) -> Result<EnsembleConfig> {
    let read = async {
        let zk = zookeeper_client::Client::connector()
            .with_session_timeout(Duration::from_secs(4))
            .with_connection_timeout(Duration::from_secs(2))
            .connect(&addr.to_string())
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        zk.sync("/zookeeper/config")
            .await
            .with_context(|| format!("syncing /zookeeper/config on {addr}"))?;
        let (data, _) = zk
            .get_config()
            .await
            .with_context(|| format!("reading /zookeeper/config on {addr}"))?;
        zoo::parse_config(&String::from_utf8_lossy(&data))
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .with_context(|| format!("reading /zookeeper/config on {addr}: no answer in 5 s"))?
}

/// The step: looks until the plan is not to wait (or the deadline is near: [`Waits`]),
/// publishes what the volume holds, renders the files and journals `ensemble.json`.
pub async fn run(
    settings: &Settings,
    clients: &Clients,
    me: &Identity,
    myid: u32,
    volume: Option<&str>,
    deadline: &Deadline,
) -> Result<Prepared> {
    let ens = settings
        .ensemble
        .as_ref()
        .context("role zookeeper needs [ensemble]")?;
    let data_dir = crate::storage::data_dir(Role::Zookeeper, &settings.storage.data_dir);
    let digest = super_digest(&ens.superuser_password_file)?;
    let holds_data = super::volume_holds_data(&data_dir)?;
    let at = deadline.at();
    // Publish what this volume holds before looking, so that members booting together see
    // each other as empty (a fresh ensemble) or not.
    if let Some(vol) = volume {
        let value = if holds_data {
            MEMBER.to_string()
        } else {
            format!("empty@{}", me.instance_id)
        };
        publish(clients, vol, &value, at).await?;
    }
    let (obs, plan) = loop {
        let obs = observe(settings, ens, clients, myid, holds_data, at).await?;
        let plan = plan(&obs, ens.initial_size, holds_data);
        let Plan::Wait { reason } = &plan else {
            break (obs, plan);
        };
        let waiting = prepared(myid, &plan, &obs, holds_data, Vec::new());
        crate::journal::record(&settings.paths.state_dir, "ensemble", &waiting)?;
        tracing::info!(reason = %reason, "the ensemble waits; looking again");
        if deadline.remaining() < LOOK_AGAIN * 2 {
            return Err(Waits(reason.clone()).into());
        }
        tokio::time::sleep(LOOK_AGAIN).await;
    };
    let members = match &plan {
        Plan::Join { members, .. } | Plan::Bootstrap { members } | Plan::Resume { members, .. } => {
            members.clone()
        }
        Plan::Wait { .. } => unreachable!("the loop ends on a plan that is not to wait"),
    };
    // Joining a serving ensemble brings its data: the volume is a member's from here on.
    if let (Plan::Join { .. }, Some(vol)) = (&plan, volume) {
        publish(clients, vol, MEMBER, at).await?;
    }
    let files = zoo::render(
        &zoo::Inputs {
            myid,
            data_dir: &data_dir,
            super_digest: &digest,
            settings: &ens.server,
        },
        &members,
    )?;
    let mut written = Vec::new();
    for f in [&files.static_cfg, &files.dynamic, &files.myid] {
        crate::render::write(&f.path, &f.text, None)?;
        written.push(f.path.clone());
    }
    let done = prepared(myid, &plan, &obs, holds_data, written);
    crate::journal::record(&settings.paths.state_dir, "ensemble", &done)?;
    tracing::info!(plan = %done.plan, members = ?done.members, "ensemble files rendered");
    Ok(done)
}

async fn publish(
    clients: &Clients,
    volume: &str,
    value: &str,
    at: std::time::Instant,
) -> Result<()> {
    let tag = [(DATA_TAG.to_string(), value.to_string())];
    retry_transient(at, || clients.ec2.tag(volume, &tag))
        .await
        .with_context(|| format!("tagging {volume} {DATA_TAG}={value}"))
}

fn prepared(
    myid: u32,
    plan: &Plan,
    obs: &Observations,
    holds_data: bool,
    files: Vec<PathBuf>,
) -> Prepared {
    let lines = |m: &Membership| m.members().map(zoo::server_line).collect::<Vec<_>>();
    let (reason, leader, version, add, members) = match plan {
        Plan::Join {
            leader,
            members,
            version,
            add,
        } => (None, Some(*leader), Some(*version), *add, lines(members)),
        Plan::Bootstrap { members } => (None, None, None, false, lines(members)),
        Plan::Resume { members, reason } => (Some(reason), None, None, false, lines(members)),
        Plan::Wait { reason } => (Some(reason), None, None, false, Vec::new()),
    };
    Prepared {
        myid,
        plan: plan_kind(plan).into(),
        reason: reason.map(|r| r.to_string()),
        reason_kind: reason.map(|r| r.kind().to_string()),
        leader,
        config_version: version.map(|v| format!("{v:x}")),
        add,
        members,
        holds_data,
        answers: obs
            .peers
            .iter()
            .map(|(id, p)| (*id, answer_text(&p.answer)))
            .collect(),
        files,
    }
}

/// Tags this node's volume [`MEMBER`] once its server is a voting member: from here on it
/// may hold committed data, and no member may take the ensemble for a fresh one.
pub async fn mark_member(settings: &Settings, clients: &Clients, deadline: std::time::Instant) {
    let attached: serde_json::Value = match crate::journal::read(
        &settings.paths.state_dir,
        "attach",
    ) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "no attach journal: the volume is not tagged a member's");
            return;
        }
    };
    let Some(volume) = attached["volume"]["id"].as_str() else {
        return;
    };
    if let Err(e) = publish(clients, volume, MEMBER, deadline).await {
        tracing::warn!(error = %format!("{e:#}"), "the volume is not tagged a member's");
    }
}

/// What `signal` has done towards this node's membership (kept between its looks).
#[derive(Debug, Default)]
pub struct Joining {
    /// The reconfig that adds this node was accepted (or the node was found in the config).
    added: bool,
}

/// One look of `signal` for a ZooKeeper node: None once the server at `address` serves as a
/// voting member (leader or follower, and a participant of the membership it knows, which a
/// joiner not yet added is not); else what was seen. A node the boot's plan says to add is
/// added here, once its server follows the leader (ZooKeeper refuses to add a server that has
/// not connected): by reconfig as the superuser, conditioned on the configuration version
/// the boot read, so two joiners cannot clobber each other (the second re-reads and adds
/// itself to the newer version).
pub async fn voting_member(
    settings: &Settings,
    joining: &mut Joining,
    address: IpAddr,
) -> Option<String> {
    let Some(ens) = settings.ensemble.as_ref() else {
        return Some("role zookeeper needs [ensemble]".into());
    };
    let prepared: Prepared = match crate::journal::read(&settings.paths.state_dir, "ensemble") {
        Ok(p) => p,
        Err(e) => return Some(format!("{e:#}")),
    };
    let local = SocketAddr::new(address, ens.server.client_port);
    let srvr = match fourlw::srvr(local, SRVR_TIMEOUT).await {
        Answer::Serving(s) => s,
        other => return Some(format!("the local server: {}", answer_text(&other))),
    };
    if !matches!(srvr.mode, fourlw::Mode::Leader | fourlw::Mode::Follower) {
        return Some(format!("the local server is {:?}", srvr.mode).to_lowercase());
    }
    let conf = match fourlw::conf(local, SRVR_TIMEOUT).await {
        Ok(c) => c,
        Err(e) => return Some(format!("`conf` of the local server: {e:#}")),
    };
    if conf.is_voter() {
        return None;
    }
    if !prepared.add || joining.added {
        return Some("the local server follows but is not a voting member yet".into());
    }
    match add_self(ens, prepared.myid, address, local).await {
        Ok(()) => {
            joining.added = true;
            Some("added by reconfig; waiting for the new configuration".into())
        }
        Err(e) => Some(format!("adding this node by reconfig: {e:#}")),
    }
}

/// A session with the server at `at` (this member's own), authenticated as ZooKeeper's
/// superuser with this member's password: reconfig needs it.
pub(crate) async fn superuser_session(
    ens: &EnsembleSettings,
    at: SocketAddr,
) -> Result<zookeeper_client::Client> {
    let password = superuser_password(&ens.superuser_password_file)?;
    let zk = zookeeper_client::Client::connector()
        .with_session_timeout(Duration::from_secs(6))
        .with_connection_timeout(Duration::from_secs(2))
        .connect(&at.to_string())
        .await
        .with_context(|| format!("connecting to {at}"))?;
    zk.auth("digest", format!("super:{password}").as_bytes())
        .await
        .context("authenticating as the superuser")?;
    Ok(zk)
}

/// Adds this node as a participant: reads the configuration (and its version) through the
/// local server, and unless this node is in it already, reconfigures conditioned on it.
async fn add_self(
    ens: &EnsembleSettings,
    myid: u32,
    address: IpAddr,
    local: SocketAddr,
) -> Result<()> {
    let me = ens.server.member(myid, address);
    let line = zoo::server_line(&me);
    let work = async {
        let zk = superuser_session(ens, local).await?;
        zk.sync("/zookeeper/config").await.context("syncing")?;
        let (data, _) = zk.get_config().await.context("reading /zookeeper/config")?;
        let config = zoo::parse_config(&String::from_utf8_lossy(&data))?;
        if config.membership.get(myid) == Some(&me) {
            tracing::info!(myid, "already a member of the configuration");
            return Ok(());
        }
        // The entry `server.N=...` without the `server.` prefix is what reconfig takes.
        let entry = line.trim_start_matches("server.");
        let joining = [entry];
        zk.update_ensemble(
            zookeeper_client::EnsembleUpdate::Incremental {
                joinings: joining.iter().copied(),
                leavings: [].iter().copied(),
            },
            Some(config.version as i64),
        )
        .await
        .with_context(|| format!("reconfig adding {line} to version {:x}", config.version))?;
        tracing::info!(myid, server = %line, from_version = format!("{:x}", config.version), "added by reconfig");
        Ok::<_, anyhow::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(15), work)
        .await
        .context("no answer in 15 s")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_beyond_the_initial_ensemble_never_starts_one() {
        use crate::ensemble::{Member, PeerRole};
        let peer = |id: u32, answer: Answer, data: Data| Peer {
            member: Member {
                id,
                host: format!("10.0.0.{id}").parse().unwrap(),
                quorum_port: 2888,
                election_port: 3888,
                role: PeerRole::Participant,
                client: Some(format!("10.0.0.{id}:2181").parse().unwrap()),
            },
            in_service: true,
            answer,
            data,
        };
        let obs = Observations {
            me: 4,
            peers: (1..=4)
                .map(|id| (id, peer(id, Answer::Refused, Data::Empty)))
                .collect(),
            config: None,
        };
        // Every member present and empty: myids 1 to 4 would bootstrap, but 4 is a joiner.
        assert!(matches!(super::super::decide(&obs), Plan::Bootstrap { .. }));
        match plan(&obs, 3, false) {
            Plan::Wait { reason } => assert_eq!(reason.kind(), "joins_only"),
            other => panic!("{other:?}"),
        }
        // With data of its own it resumes as any member does.
        let mut with_data = obs.clone();
        with_data.peers.get_mut(&4).unwrap().data = Data::Holds;
        assert!(matches!(plan(&with_data, 3, true), Plan::Resume { .. }));
        // Within the initial ensemble nothing changes.
        assert!(matches!(
            plan(&Observations { me: 3, ..obs }, 4, false),
            Plan::Bootstrap { .. }
        ));
    }

    #[test]
    fn base64_pads_as_the_standard_does() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn the_superuser_digest_is_zookeepers() {
        // ZooKeeper's DigestAuthenticationProvider prints super:kafka-testbed ->
        // super:CGTPitvsvKIEYBk3UBo6tRBYsEM= (the testbed's ensembles use it).
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "kafka-testbed\n").unwrap();
        let d = super_digest(&p).unwrap();
        assert_eq!(
            d,
            SuperDigest::from_precomputed("CGTPitvsvKIEYBk3UBo6tRBYsEM=").unwrap()
        );
        std::fs::write(&p, "\n").unwrap();
        assert!(super_digest(&p).is_err());
        // None yet: one is made, private, and kept.
        let made = dir.path().join("etc/made");
        let first = ensure_superuser_password(&made).unwrap();
        assert_eq!(first.len(), 32);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&made).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(ensure_superuser_password(&made).unwrap(), first);
        assert_eq!(super_digest(&made).unwrap(), super_digest(&made).unwrap());
    }

    #[test]
    fn a_peers_empty_tag_counts_only_for_the_instance_that_wrote_it() {
        let tags = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let st = "kafka-agent:volume";
        let t = tags(&[(DATA_TAG, "empty@i-1")]);
        assert_eq!(peer_data(&t, st, Some("i-1")), Data::Empty);
        assert_eq!(peer_data(&t, st, Some("i-2")), Data::Unknown);
        assert_eq!(peer_data(&t, st, None), Data::Unknown);
        assert_eq!(
            peer_data(&tags(&[(DATA_TAG, MEMBER)]), st, Some("i-1")),
            Data::Holds
        );
        assert_eq!(peer_data(&tags(&[(st, "new")]), st, None), Data::Empty);
        assert_eq!(
            peer_data(&tags(&[(st, "formatted")]), st, None),
            Data::Unknown
        );
        assert_eq!(peer_data(&tags(&[]), st, None), Data::Unknown);
    }
}
