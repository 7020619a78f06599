//! How each ZooKeeper member is doing, asked over its client port with the four-letter words
//! `srvr`, `mntr` and `conf`: a short timeout per member, every member at once, and parsers
//! for what ZooKeeper 3.8 prints.
//!
//! A member that cannot see a quorum answers every word with [`NOT_SERVING`]; one that was not
//! told to allow a word (`4lw.commands.whitelist`) says so in a sentence. `srvr` cannot tell a
//! voting follower from a joiner the membership does not list yet (both say `Mode:
//! follower`); `conf` can: its `membership:` section lists the voters.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::EnsembleConfig;

/// What every word gets from a member that sees no quorum (ZooKeeper 3.8, verbatim).
pub const NOT_SERVING: &str = "This ZooKeeper instance is not currently serving requests";

/// How long one member gets to answer one word, connection included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// A longer reply is not a four-letter-word answer (`mntr` is about 25 KB on 3.8).
const MAX_REPLY: usize = 1 << 20;

/// The four-letter words the agent asks; a member's `4lw.commands.whitelist` must allow them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Word {
    /// Mode (leader / follower / observer / standalone) and the last zxid.
    Srvr,
    /// Metrics: quorum size, synced followers (on the leader), peer state.
    Mntr,
    /// The server's configuration, its myid and its view of the membership.
    Conf,
    /// `imok` from a running server, whatever its quorum.
    Ruok,
}

impl Word {
    /// Every word the agent asks, for the rendered whitelist.
    pub const ALL: [Word; 4] = [Word::Srvr, Word::Mntr, Word::Conf, Word::Ruok];

    pub fn as_str(self) -> &'static str {
        match self {
            Word::Srvr => "srvr",
            Word::Mntr => "mntr",
            Word::Conf => "conf",
            Word::Ruok => "ruok",
        }
    }
}

impl fmt::Display for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What came back from one member for one word, before parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Text(String),
    /// The connection was refused: the host is up, nothing listens on the client port.
    Refused,
    /// No answer within the timeout (host down, address not attached, server hung).
    TimedOut,
    /// Anything else: unreachable, reset, an empty or oversized reply.
    Failed(String),
}

/// A member's part in the ensemble, as `srvr` (`Mode:`) and `mntr` (`zk_server_state`) say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Leader,
    Follower,
    Observer,
    Standalone,
    /// A server that lost its quorum and serves reads only (`readonlymode.enabled`).
    ReadOnly,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Leader => "leader",
            Mode::Follower => "follower",
            Mode::Observer => "observer",
            Mode::Standalone => "standalone",
            Mode::ReadOnly => "read-only",
        }
    }

    fn parse(s: &str) -> Result<Mode> {
        Ok(match s {
            "leader" => Mode::Leader,
            "follower" => Mode::Follower,
            "observer" => Mode::Observer,
            "standalone" => Mode::Standalone,
            "read-only" => Mode::ReadOnly,
            other => bail!("unknown mode {other:?}"),
        })
    }
}

/// Request latency in milliseconds (`Latency min/avg/max:`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub min_ms: u64,
    pub avg_ms: f64,
    pub max_ms: u64,
}

/// A serving member's answer to `srvr`.
#[derive(Debug, Clone, PartialEq)]
pub struct Srvr {
    /// `Zookeeper version:` as printed (Debian's build says `3.8.0-${mvngit.commit.id}, ...`).
    pub version: String,
    pub mode: Mode,
    /// The last zxid it processed: epoch in the high 32 bits, counter in the low.
    pub zxid: u64,
    pub latency: Option<Latency>,
    pub connections: Option<u64>,
    pub outstanding: Option<u64>,
    pub node_count: Option<u64>,
}

/// What a member's `srvr` says about it.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// It serves, in this mode.
    Serving(Srvr),
    /// ZooKeeper runs but sees no quorum ([`NOT_SERVING`]).
    NotServing,
    /// Its host is up; ZooKeeper is not running.
    Refused,
    /// No answer within the timeout.
    TimedOut,
    /// An error, or a reply that is not a `srvr` answer (the message says which).
    Failed(String),
}

impl Answer {
    /// The answer a `srvr` reply gives.
    pub fn of_srvr(reply: Reply) -> Answer {
        match reply {
            Reply::Refused => Answer::Refused,
            Reply::TimedOut => Answer::TimedOut,
            Reply::Failed(e) => Answer::Failed(e),
            Reply::Text(t) if t.trim() == NOT_SERVING => Answer::NotServing,
            Reply::Text(t) => match parse_srvr(&t) {
                Ok(s) => Answer::Serving(s),
                Err(e) => Answer::Failed(format!("{e:#}")),
            },
        }
    }
}

/// Sends `word` to `addr` and reads the reply to its end, all within `timeout`.
pub async fn ask(addr: SocketAddr, word: Word, timeout: Duration) -> Reply {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(word.as_str().as_bytes()).await?;
        let mut buf = Vec::new();
        (&mut stream)
            .take(MAX_REPLY as u64 + 1)
            .read_to_end(&mut buf)
            .await?;
        Ok::<_, std::io::Error>(buf)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Reply::TimedOut,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Reply::Refused,
        Ok(Err(e)) => Reply::Failed(format!("asking {addr} `{word}`: {e}")),
        Ok(Ok(buf)) if buf.is_empty() => {
            Reply::Failed(format!("asking {addr} `{word}`: closed without a reply"))
        }
        Ok(Ok(buf)) if buf.len() > MAX_REPLY => Reply::Failed(format!(
            "asking {addr} `{word}`: the reply is longer than {MAX_REPLY} bytes"
        )),
        Ok(Ok(buf)) => Reply::Text(String::from_utf8_lossy(&buf).into_owned()),
    }
}

/// `srvr` of one member.
pub async fn srvr(addr: SocketAddr, timeout: Duration) -> Answer {
    Answer::of_srvr(ask(addr, Word::Srvr, timeout).await)
}

/// `srvr` of every member at once, by myid; the whole takes about one `timeout`.
pub async fn srvr_all(
    members: impl IntoIterator<Item = (u32, SocketAddr)>,
    timeout: Duration,
) -> BTreeMap<u32, Answer> {
    let asks = members
        .into_iter()
        .map(|(id, addr)| async move { (id, srvr(addr, timeout).await) });
    futures::future::join_all(asks).await.into_iter().collect()
}

/// `mntr` of one member; an error unless it serves.
pub async fn mntr(addr: SocketAddr, timeout: Duration) -> Result<Mntr> {
    let text = text_of(addr, Word::Mntr, ask(addr, Word::Mntr, timeout).await)?;
    parse_mntr(&text).with_context(|| format!("reading `mntr` of {addr}"))
}

/// `conf` of one member; an error unless it serves.
pub async fn conf(addr: SocketAddr, timeout: Duration) -> Result<Conf> {
    let text = text_of(addr, Word::Conf, ask(addr, Word::Conf, timeout).await)?;
    parse_conf(&text).with_context(|| format!("reading `conf` of {addr}"))
}

fn text_of(addr: SocketAddr, word: Word, reply: Reply) -> Result<String> {
    match reply {
        Reply::Text(t) => Ok(t),
        Reply::Refused => bail!("asking {addr} `{word}`: connection refused"),
        Reply::TimedOut => bail!("asking {addr} `{word}`: no answer in time"),
        Reply::Failed(e) => Err(anyhow!(e)),
    }
}

/// A reply that is not the word's answer: not serving, or the word not allowed.
fn refusal(text: &str) -> Result<()> {
    let t = text.trim();
    if t == NOT_SERVING {
        bail!("the server does not serve: it sees no quorum ({NOT_SERVING:?})");
    }
    if t.ends_with("is not in the whitelist.") {
        bail!("the server's 4lw.commands.whitelist does not allow the word ({t:?})");
    }
    Ok(())
}

/// Parses a `srvr` answer: `Mode:` and `Zxid:` are required, the other lines are kept where
/// present.
pub fn parse_srvr(text: &str) -> Result<Srvr> {
    refusal(text)?;
    let mut version = None;
    let mut mode = None;
    let mut zxid = None;
    let mut latency = None;
    let mut connections = None;
    let mut outstanding = None;
    let mut node_count = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(": ") else {
            continue;
        };
        let value = value.trim();
        let number = || {
            value
                .parse::<u64>()
                .with_context(|| format!("srvr `{key}`: {value:?} is not a number"))
        };
        match key {
            "Zookeeper version" => version = Some(value.to_string()),
            "Mode" => mode = Some(Mode::parse(value).context("srvr `Mode`")?),
            "Zxid" => {
                let hex = value
                    .strip_prefix("0x")
                    .with_context(|| format!("srvr `Zxid`: {value:?} is not 0x<hex>"))?;
                zxid = Some(
                    u64::from_str_radix(hex, 16)
                        .with_context(|| format!("srvr `Zxid`: {value:?} is not 0x<hex>"))?,
                );
            }
            "Latency min/avg/max" => latency = parse_latency(value),
            "Connections" => connections = Some(number()?),
            "Outstanding" => outstanding = Some(number()?),
            "Node count" => node_count = Some(number()?),
            _ => {}
        }
    }
    Ok(Srvr {
        version: version.unwrap_or_default(),
        mode: mode.context("the reply has no `Mode:` line; is it a `srvr` answer?")?,
        zxid: zxid.context("the reply has no `Zxid:` line; is it a `srvr` answer?")?,
        latency,
        connections,
        outstanding,
        node_count,
    })
}

fn parse_latency(value: &str) -> Option<Latency> {
    let mut parts = value.split('/');
    let latency = Latency {
        min_ms: parts.next()?.parse().ok()?,
        avg_ms: parts.next()?.parse().ok()?,
        max_ms: parts.next()?.parse().ok()?,
    };
    parts.next().is_none().then_some(latency)
}

/// The `mntr` metrics the agent reads. The leader-only counts are None elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mntr {
    pub version: String,
    /// `zk_server_state`.
    pub state: Mode,
    /// `zk_peer_state`, e.g. `following - broadcast` (a synced learner); absent standalone.
    pub peer_state: Option<String>,
    /// `zk_quorum_size`: the voters in the server's current configuration (absent
    /// standalone). A joiner not yet added reports the ensemble's, which leaves it out.
    pub quorum_size: Option<u32>,
    /// `zk_synced_followers` (leader): every synced follower, non-voting ones included.
    pub synced_followers: Option<u32>,
    /// `zk_synced_non_voting_followers` (leader): followers outside the membership.
    pub synced_non_voting_followers: Option<u32>,
    /// `zk_synced_observers` (leader).
    pub synced_observers: Option<u32>,
    /// `zk_learners` (leader): connected followers and observers.
    pub learners: Option<u32>,
    /// `zk_pending_syncs` (leader).
    pub pending_syncs: Option<u32>,
    pub znode_count: Option<u64>,
    pub outstanding_requests: Option<u64>,
}

impl Mntr {
    /// On the leader: the followers in sync that vote (synced followers less non-voting).
    pub fn synced_voting_followers(&self) -> Option<u32> {
        Some(
            self.synced_followers?
                .saturating_sub(self.synced_non_voting_followers.unwrap_or(0)),
        )
    }
}

/// Parses a `mntr` answer (`key<TAB>value` lines; keys the agent does not read are skipped).
pub fn parse_mntr(text: &str) -> Result<Mntr> {
    refusal(text)?;
    let values: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    fn num<T: std::str::FromStr>(values: &BTreeMap<&str, &str>, key: &str) -> Result<Option<T>> {
        values
            .get(key)
            .map(|v| {
                v.parse::<T>()
                    .map_err(|_| anyhow!("mntr `{key}`: {v:?} is not a number"))
            })
            .transpose()
    }
    let state = values
        .get("zk_server_state")
        .context("the reply has no zk_server_state; is it a `mntr` answer?")?;
    Ok(Mntr {
        version: values.get("zk_version").unwrap_or(&"").to_string(),
        state: Mode::parse(state).context("mntr `zk_server_state`")?,
        peer_state: values.get("zk_peer_state").map(|s| s.to_string()),
        quorum_size: num(&values, "zk_quorum_size")?,
        synced_followers: num(&values, "zk_synced_followers")?,
        synced_non_voting_followers: num(&values, "zk_synced_non_voting_followers")?,
        synced_observers: num(&values, "zk_synced_observers")?,
        learners: num(&values, "zk_learners")?,
        pending_syncs: num(&values, "zk_pending_syncs")?,
        znode_count: num(&values, "zk_znode_count")?,
        outstanding_requests: num(&values, "zk_outstanding_requests")?,
    })
}

/// What `conf` says of a server: its myid and, in an ensemble, the membership it knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conf {
    /// `serverId` (absent standalone).
    pub server_id: Option<u32>,
    /// `clientPort`.
    pub client_port: Option<u16>,
    /// The `membership:` section: `server.N=` lines and `version=`.
    pub config: Option<EnsembleConfig>,
}

impl Conf {
    /// The server is a voter of the membership it knows: what `signal` waits for, since a
    /// joiner not yet added says `Mode: follower` all the same.
    pub fn is_voter(&self) -> bool {
        match (self.server_id, &self.config) {
            (Some(id), Some(c)) => c.membership.get(id).is_some_and(|m| m.is_voter()),
            _ => false,
        }
    }
}

/// Parses a `conf` answer: `key=value` lines, then `membership:` and the membership in the
/// form of `/zookeeper/config`.
pub fn parse_conf(text: &str) -> Result<Conf> {
    refusal(text)?;
    let (head, membership) = match text.split_once("\nmembership:") {
        Some((head, tail)) => (head, Some(tail)),
        None => (text, None),
    };
    let values: BTreeMap<&str, &str> = head
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    if !values.contains_key("clientPort") && !values.contains_key("dataDir") {
        bail!("the reply has neither clientPort nor dataDir; is it a `conf` answer?");
    }
    let server_id = values
        .get("serverId")
        .map(|v| {
            v.parse()
                .map_err(|_| anyhow!("conf `serverId`: {v:?} is not a myid"))
        })
        .transpose()?;
    let client_port = values
        .get("clientPort")
        .map(|v| {
            v.parse()
                .map_err(|_| anyhow!("conf `clientPort`: {v:?} is not a port"))
        })
        .transpose()?;
    let config = membership
        .map(|m| crate::render::zoo::parse_config(m).context("conf `membership:`"))
        .transpose()?;
    Ok(Conf {
        server_id,
        client_port,
        config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real answers of ZooKeeper 3.8.0 (Debian's package), captured from servers started from
    // QuorumPeerMain on 127.0.0.1 (client ports 22181..22184). `mntr` answers are verbatim
    // prefixes: the rest are histogram lines the agent does not read.

    /// The leader of two voters, after a reconfig added the second.
    const SRVR_LEADER: &str = "\
Zookeeper version: 3.8.0-${mvngit.commit.id}, built on 2024-12-29 17:54 UTC\n\
Latency min/avg/max: 1/11.0/50\n\
Received: 17\n\
Sent: 22\n\
Connections: 1\n\
Outstanding: 0\n\
Zxid: 0x100000006\n\
Mode: leader\n\
Node count: 5\n\
Proposal sizes last/min/max: 48/36/208\n";

    /// A voting follower.
    const SRVR_FOLLOWER: &str = "\
Zookeeper version: 3.8.0-${mvngit.commit.id}, built on 2024-12-29 17:54 UTC\n\
Latency min/avg/max: 0/0.0/0\n\
Received: 5\n\
Sent: 8\n\
Connections: 1\n\
Outstanding: 0\n\
Zxid: 0x100000006\n\
Mode: follower\n\
Node count: 5\n";

    /// A joiner that is not in the membership yet: it says follower too.
    const SRVR_NON_VOTING: &str = "\
Zookeeper version: 3.8.0-${mvngit.commit.id}, built on 2024-12-29 17:54 UTC\n\
Latency min/avg/max: 0/0.0/0\n\
Received: 3\n\
Sent: 4\n\
Connections: 1\n\
Outstanding: 0\n\
Zxid: 0x100000001\n\
Mode: follower\n\
Node count: 5\n";

    /// An observer.
    const SRVR_OBSERVER: &str = "\
Zookeeper version: 3.8.0-${mvngit.commit.id}, built on 2024-12-29 17:54 UTC\n\
Latency min/avg/max: 0/0.0/0\n\
Received: 1\n\
Sent: 0\n\
Connections: 1\n\
Outstanding: 0\n\
Zxid: 0x300000004\n\
Mode: observer\n\
Node count: 5\n";

    /// A standalone server (standaloneEnabled=true, one server, no dynamic file).
    const SRVR_STANDALONE: &str = "\
Zookeeper version: 3.8.0-${mvngit.commit.id}, built on 2024-12-29 17:54 UTC\n\
Latency min/avg/max: 0/0.0/0\n\
Received: 1\n\
Sent: 0\n\
Connections: 1\n\
Outstanding: 0\n\
Zxid: 0x0\n\
Mode: standalone\n\
Node count: 5\n";

    /// A participant that cannot see a quorum: the same to srvr, mntr and conf.
    const NOT_SERVING_REPLY: &str = "\
This ZooKeeper instance is not currently serving requests\n";

    /// The leader of one voter while a joiner syncs as a non-voting follower: the first 38 of 520 lines.
    const MNTR_LEADER_WITH_JOINER: &str = "\
zk_version\t3.8.0-${mvngit.commit.id}, built on 2024-12-29 17:54 UTC\n\
zk_server_state\tleader\n\
zk_peer_state\tleading - broadcast\n\
zk_ephemerals_count\t0\n\
zk_num_alive_connections\t1\n\
zk_avg_latency\t5.5\n\
zk_min_proposal_size\t48\n\
zk_outstanding_requests\t0\n\
zk_znode_count\t5\n\
zk_global_sessions\t1\n\
zk_non_mtls_remote_conn_count\t0\n\
zk_last_client_response_size\t164\n\
zk_packets_sent\t11\n\
zk_packets_received\t8\n\
zk_max_proposal_size\t48\n\
zk_max_client_response_size\t164\n\
zk_synced_followers\t1\n\
zk_connection_drop_probability\t0.0\n\
zk_watch_count\t0\n\
zk_synced_non_voting_followers\t1\n\
zk_synced_observers\t0\n\
zk_auth_failed_count\t0\n\
zk_min_latency\t3\n\
zk_max_file_descriptor_count\t20000\n\
zk_approximate_data_size\t120\n\
zk_open_file_descriptor_count\t44\n\
zk_last_proposal_size\t48\n\
zk_pending_syncs\t0\n\
zk_leader_uptime\t21391\n\
zk_local_sessions\t0\n\
zk_uptime\t21418\n\
zk_max_latency\t8\n\
zk_outstanding_tls_handshake\t0\n\
zk_learners\t1\n\
zk_min_client_response_size\t164\n\
zk_non_mtls_local_conn_count\t0\n\
zk_quorum_size\t1\n\
zk_proposal_count\t1\n";

    /// A voting follower: the first 29 of 492 lines.
    const MNTR_FOLLOWER: &str = "\
zk_version\t3.8.0-${mvngit.commit.id}, built on 2024-12-29 17:54 UTC\n\
zk_server_state\tfollower\n\
zk_peer_state\tfollowing - broadcast\n\
zk_ephemerals_count\t0\n\
zk_num_alive_connections\t1\n\
zk_avg_latency\t0.0\n\
zk_outstanding_requests\t0\n\
zk_znode_count\t5\n\
zk_global_sessions\t2\n\
zk_non_mtls_remote_conn_count\t0\n\
zk_last_client_response_size\t-1\n\
zk_packets_sent\t9\n\
zk_packets_received\t6\n\
zk_max_client_response_size\t-1\n\
zk_connection_drop_probability\t0.0\n\
zk_watch_count\t0\n\
zk_auth_failed_count\t0\n\
zk_min_latency\t0\n\
zk_max_file_descriptor_count\t20000\n\
zk_approximate_data_size\t179\n\
zk_open_file_descriptor_count\t42\n\
zk_local_sessions\t0\n\
zk_uptime\t14108\n\
zk_max_latency\t0\n\
zk_outstanding_tls_handshake\t0\n\
zk_min_client_response_size\t-1\n\
zk_non_mtls_local_conn_count\t0\n\
zk_quorum_size\t2\n\
zk_proposal_count\t0\n";

    /// An observer: the first 30 of 507 lines.
    const MNTR_OBSERVER: &str = "\
zk_version\t3.8.0-${mvngit.commit.id}, built on 2024-12-29 17:54 UTC\n\
zk_server_state\tobserver\n\
zk_peer_state\tobserving - broadcast\n\
zk_observer_master_id\t1\n\
zk_ephemerals_count\t0\n\
zk_avg_latency\t0.0\n\
zk_num_alive_connections\t1\n\
zk_outstanding_requests\t0\n\
zk_znode_count\t5\n\
zk_global_sessions\t2\n\
zk_non_mtls_remote_conn_count\t0\n\
zk_last_client_response_size\t-1\n\
zk_packets_sent\t1\n\
zk_packets_received\t2\n\
zk_max_client_response_size\t-1\n\
zk_connection_drop_probability\t0.0\n\
zk_watch_count\t0\n\
zk_auth_failed_count\t0\n\
zk_min_latency\t0\n\
zk_max_file_descriptor_count\t20000\n\
zk_approximate_data_size\t176\n\
zk_open_file_descriptor_count\t42\n\
zk_local_sessions\t0\n\
zk_uptime\t2143\n\
zk_max_latency\t0\n\
zk_outstanding_tls_handshake\t0\n\
zk_min_client_response_size\t-1\n\
zk_non_mtls_local_conn_count\t0\n\
zk_quorum_size\t1\n\
zk_proposal_count\t2\n";

    /// A standalone server: the first 27 of 485 lines.
    const MNTR_STANDALONE: &str = "\
zk_version\t3.8.0-${mvngit.commit.id}, built on 2024-12-29 17:54 UTC\n\
zk_server_state\tstandalone\n\
zk_ephemerals_count\t0\n\
zk_num_alive_connections\t1\n\
zk_avg_latency\t0.0\n\
zk_outstanding_requests\t0\n\
zk_znode_count\t5\n\
zk_global_sessions\t0\n\
zk_non_mtls_remote_conn_count\t0\n\
zk_last_client_response_size\t-1\n\
zk_packets_sent\t1\n\
zk_packets_received\t2\n\
zk_max_client_response_size\t-1\n\
zk_connection_drop_probability\t0.0\n\
zk_watch_count\t0\n\
zk_auth_failed_count\t0\n\
zk_min_latency\t0\n\
zk_max_file_descriptor_count\t20000\n\
zk_approximate_data_size\t44\n\
zk_open_file_descriptor_count\t39\n\
zk_local_sessions\t0\n\
zk_uptime\t4760\n\
zk_max_latency\t0\n\
zk_outstanding_tls_handshake\t0\n\
zk_min_client_response_size\t-1\n\
zk_non_mtls_local_conn_count\t0\n\
zk_proposal_count\t0\n";

    /// The joiner (myid 2) before the reconfig that adds it: not in its own membership.
    const CONF_NON_VOTING: &str = "\
clientPort=22182\n\
secureClientPort=-1\n\
dataDir=/tmp/zkwork/f2/data/version-2\n\
dataDirSize=1119\n\
dataLogDir=/tmp/zkwork/f2/data/version-2\n\
dataLogSize=1119\n\
tickTime=2000\n\
maxClientCnxns=60\n\
minSessionTimeout=4000\n\
maxSessionTimeout=40000\n\
clientPortListenBacklog=-1\n\
serverId=2\n\
initLimit=10\n\
syncLimit=5\n\
electionAlg=3\n\
electionPort=23889\n\
quorumPort=22889\n\
peerType=0\n\
membership: \n\
server.1=127.0.0.1:22888:23888:participant;127.0.0.1:22181\n\
version=100000000";

    /// The same server after the reconfig.
    const CONF_FOLLOWER: &str = "\
clientPort=22182\n\
secureClientPort=-1\n\
dataDir=/tmp/zkwork/f2/data/version-2\n\
dataDirSize=67109999\n\
dataLogDir=/tmp/zkwork/f2/data/version-2\n\
dataLogSize=67109999\n\
tickTime=2000\n\
maxClientCnxns=60\n\
minSessionTimeout=4000\n\
maxSessionTimeout=40000\n\
clientPortListenBacklog=-1\n\
serverId=2\n\
initLimit=10\n\
syncLimit=5\n\
electionAlg=3\n\
electionPort=23889\n\
quorumPort=22889\n\
peerType=0\n\
membership: \n\
server.1=127.0.0.1:22888:23888:participant;127.0.0.1:22181\n\
server.2=127.0.0.1:22889:23889:participant;127.0.0.1:22182\n\
version=100000002";

    #[test]
    fn srvr_of_each_mode() {
        let leader = parse_srvr(SRVR_LEADER).unwrap();
        assert_eq!(leader.mode, Mode::Leader);
        assert_eq!(leader.zxid, 0x1_0000_0006);
        assert_eq!(
            leader.latency,
            Some(Latency {
                min_ms: 1,
                avg_ms: 11.0,
                max_ms: 50
            })
        );
        assert_eq!(leader.node_count, Some(5));
        assert_eq!(leader.connections, Some(1));
        assert!(leader.version.starts_with("3.8.0"), "{}", leader.version);
        for (text, mode, zxid) in [
            (SRVR_FOLLOWER, Mode::Follower, 0x1_0000_0006),
            (SRVR_NON_VOTING, Mode::Follower, 0x1_0000_0001),
            (SRVR_OBSERVER, Mode::Observer, 0x3_0000_0004),
            (SRVR_STANDALONE, Mode::Standalone, 0),
        ] {
            let s = parse_srvr(text).unwrap();
            assert_eq!((s.mode, s.zxid), (mode, zxid), "{text}");
        }
    }

    #[test]
    fn srvr_answers() {
        assert_eq!(
            Answer::of_srvr(Reply::Text(NOT_SERVING_REPLY.to_string())),
            Answer::NotServing
        );
        assert!(matches!(
            Answer::of_srvr(Reply::Text(SRVR_FOLLOWER.to_string())),
            Answer::Serving(Srvr {
                mode: Mode::Follower,
                ..
            })
        ));
        let Answer::Failed(why) = Answer::of_srvr(Reply::Text(
            "srvr is not executed because it is not in the whitelist.\n".to_string(),
        )) else {
            panic!("a whitelist refusal is not an answer");
        };
        assert!(why.contains("4lw.commands.whitelist"), "{why}");
        assert!(matches!(
            Answer::of_srvr(Reply::Text("imok".to_string())),
            Answer::Failed(_)
        ));
        assert_eq!(Answer::of_srvr(Reply::Refused), Answer::Refused);
    }

    #[test]
    fn srvr_refuses_a_bad_zxid_or_mode() {
        let bad = SRVR_FOLLOWER.replace("Zxid: 0x100000006", "Zxid: 100000006");
        assert!(parse_srvr(&bad).unwrap_err().to_string().contains("Zxid"));
        let bad = SRVR_FOLLOWER.replace("Mode: follower", "Mode: looking");
        assert!(format!("{:#}", parse_srvr(&bad).unwrap_err()).contains("looking"));
    }

    #[test]
    fn mntr_of_a_leader_counts_the_joiner_as_non_voting() {
        let m = parse_mntr(MNTR_LEADER_WITH_JOINER).unwrap();
        assert_eq!(m.state, Mode::Leader);
        assert_eq!(m.peer_state.as_deref(), Some("leading - broadcast"));
        assert_eq!(m.quorum_size, Some(1));
        assert_eq!(m.synced_followers, Some(1));
        assert_eq!(m.synced_non_voting_followers, Some(1));
        assert_eq!(m.synced_voting_followers(), Some(0));
        assert_eq!(m.synced_observers, Some(0));
        assert_eq!(m.learners, Some(1));
        assert_eq!(m.pending_syncs, Some(0));
        assert_eq!(m.znode_count, Some(5));
    }

    #[test]
    fn mntr_of_learners_and_standalone() {
        let f = parse_mntr(MNTR_FOLLOWER).unwrap();
        assert_eq!(f.state, Mode::Follower);
        assert_eq!(f.peer_state.as_deref(), Some("following - broadcast"));
        assert_eq!(f.quorum_size, Some(2));
        assert_eq!(f.synced_followers, None);
        assert_eq!(f.synced_voting_followers(), None);
        let o = parse_mntr(MNTR_OBSERVER).unwrap();
        assert_eq!(o.state, Mode::Observer);
        assert_eq!(o.peer_state.as_deref(), Some("observing - broadcast"));
        let s = parse_mntr(MNTR_STANDALONE).unwrap();
        assert_eq!(s.state, Mode::Standalone);
        assert_eq!((s.peer_state, s.quorum_size), (None, None));
        let e = parse_mntr(NOT_SERVING_REPLY).unwrap_err();
        assert!(e.to_string().contains("no quorum"), "{e}");
    }

    #[test]
    fn conf_tells_a_joiner_from_a_voter() {
        let joiner = parse_conf(CONF_NON_VOTING).unwrap();
        assert_eq!(joiner.server_id, Some(2));
        assert_eq!(joiner.client_port, Some(22182));
        let c = joiner.config.as_ref().unwrap();
        assert_eq!(c.version, 0x1_0000_0000);
        assert_eq!(c.membership.ids(), [1].into());
        assert!(!joiner.is_voter());

        let voter = parse_conf(CONF_FOLLOWER).unwrap();
        let c = voter.config.as_ref().unwrap();
        assert_eq!(c.version, 0x1_0000_0002);
        assert_eq!(c.membership.voters(), [1, 2].into());
        assert_eq!(
            c.membership.get(2).unwrap().client_address(),
            Some("127.0.0.1:22182".parse().unwrap())
        );
        assert!(voter.is_voter());
        assert!(parse_conf(NOT_SERVING_REPLY).is_err());
    }

    /// A listener on a free local port that answers one connection with `reply` (after
    /// reading the word), or never answers when `reply` is None.
    async fn listener(
        reply: Option<&'static str>,
    ) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut word = [0u8; 4];
            s.read_exact(&mut word).await.unwrap();
            match reply {
                Some(r) => s.write_all(r.as_bytes()).await.unwrap(),
                None => tokio::time::sleep(Duration::from_secs(30)).await,
            }
            String::from_utf8_lossy(&word).into_owned()
        });
        (addr, task)
    }

    #[tokio::test]
    async fn ask_sends_the_word_and_reads_to_the_end() {
        let (addr, task) = listener(Some(SRVR_LEADER)).await;
        let answer = srvr(addr, Duration::from_secs(5)).await;
        assert_eq!(task.await.unwrap(), "srvr");
        let Answer::Serving(s) = answer else {
            panic!("{answer:?}");
        };
        assert_eq!(s.mode, Mode::Leader);
    }

    #[tokio::test]
    async fn ask_gives_up_on_a_silent_member_and_tells_refused() {
        let (silent, task) = listener(None).await;
        // A port that was just free: nothing listens there.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let (talking, talker) = listener(Some(NOT_SERVING_REPLY)).await;
        let answers = srvr_all(
            [(1, silent), (2, closed), (3, talking)],
            Duration::from_millis(200),
        )
        .await;
        assert_eq!(answers[&1], Answer::TimedOut);
        assert_eq!(answers[&2], Answer::Refused);
        assert_eq!(answers[&3], Answer::NotServing);
        task.abort();
        assert_eq!(talker.await.unwrap(), "srvr");
    }

    #[tokio::test]
    async fn mntr_and_conf_over_tcp() {
        let (addr, _t) = listener(Some(MNTR_FOLLOWER)).await;
        assert_eq!(
            mntr(addr, Duration::from_secs(5))
                .await
                .unwrap()
                .quorum_size,
            Some(2)
        );
        let (addr, _t) = listener(Some(NOT_SERVING_REPLY)).await;
        let e = conf(addr, Duration::from_secs(5)).await.unwrap_err();
        assert!(format!("{e:#}").contains(&addr.to_string()), "{e:#}");
    }
}
