//! Step 5 for a ZooKeeper node: zoo.cfg's static part, the dynamic file of members, and myid.
//!
//! **ZooKeeper owns its configuration once it runs.** The agent renders two files into the
//! configuration directory (`conf_dir`) at every boot, before ZooKeeper starts, and ZooKeeper
//! is started on `<conf_dir>/zoo.cfg`:
//! - `zoo.cfg`, the static part: the agent's settings, `dataDir` on the volume, and
//!   `dynamicConfigFile=<conf_dir>/zoo.cfg.dynamic`;
//! - `zoo.cfg.dynamic`, the members the plan says to start with (`server.N=` lines).
//!
//! ZooKeeper 3.8 rewrites `zoo.cfg` on its first election and at every reconfig (comments
//! dropped, keys reordered, `dynamicConfigFile` pointed at a `zoo.cfg.dynamic.<version>` it
//! writes beside it). The agent does not fight that: it never re-renders while ZooKeeper
//! runs, and the next boot renders both files afresh from the live membership, which is what
//! a member removed by reconfig needs to start again ("My id N not in the peer list"). So
//! `conf_dir` must be writable by ZooKeeper, and no operator-edited file lives there.
//!
//! The agent's dynamic file carries no version (a `.<version>` suffix in the name is how
//! ZooKeeper gives one; none reads as 0): the ensemble's own configuration, always newer once
//! it has elected a leader, wins over it at sync, and a joiner's list (current members plus
//! itself) is never mistaken for the committed configuration of the version it was read at.
//!
//! **The superuser.** Reconfig needs ZooKeeper's superuser. zoo.cfg carries
//! `DigestAuthenticationProvider.superDigest=super:<base64(sha1("super:<password>"))>`:
//! ZooKeeper turns keys it does not know into `zookeeper.`-prefixed system properties, which is
//! the property the digest provider reads (verified on 3.8.0: reconfig as `super` succeeds,
//! anonymous gets "Insufficient permission"). Not a `-D` flag: `/proc/<pid>/cmdline` is
//! world-readable. ZooKeeper's rewrite keeps the line but creates the file with its own umask
//! (0600 became 0644), so `conf_dir` itself must be closed (0750, ZooKeeper's user and
//! group). The digest is read precomputed from a file ([`SuperDigest`]); the agent never sees
//! the superuser's password here.
//!
//! myid goes into `dataDir` on the volume, where the identity gate finds it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

use super::{RenderError, properties};
use crate::ensemble::fourlw::Word;
use crate::ensemble::{EnsembleConfig, Member, Membership, PeerRole};

/// The static configuration's name in `conf_dir`; ZooKeeper is started on it.
pub const STATIC_FILE: &str = "zoo.cfg";
/// The agent's dynamic file in `conf_dir` (ZooKeeper's own are `zoo.cfg.dynamic.<version>`).
pub const DYNAMIC_FILE: &str = "zoo.cfg.dynamic";
/// myid's name in `dataDir`.
pub const MYID_FILE: &str = "myid";

/// The ZooKeeper server's settings (the role's configuration section).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServerSettings {
    /// Where zoo.cfg and the dynamic files live; ZooKeeper must be able to write there.
    pub conf_dir: PathBuf,
    pub client_port: u16,
    pub quorum_port: u16,
    pub election_port: u16,
    pub tick_time_ms: u32,
    /// Ticks a follower has to connect and sync to the leader.
    pub init_limit: u32,
    /// Ticks a follower may lag behind the leader.
    pub sync_limit: u32,
    /// Four-letter words allowed beyond the agent's own ([`Word::ALL`]); `*` allows all.
    pub four_letter_words: Vec<String>,
    /// Snapshots (and their logs) kept by the purge task; ZooKeeper's minimum is 3.
    pub snap_retain_count: u32,
    /// Hours between purges; 0 turns purging off.
    pub purge_interval_hours: u32,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            conf_dir: PathBuf::from("/var/lib/zookeeper/conf"),
            client_port: 2181,
            quorum_port: 2888,
            election_port: 3888,
            tick_time_ms: 2000,
            init_limit: 10,
            sync_limit: 5,
            four_letter_words: Vec::new(),
            snap_retain_count: 3,
            purge_interval_hours: 24,
        }
    }
}

impl ServerSettings {
    /// The member myid `id` is as a participant at `host` (its ENI's address), with these
    /// ports; clients reach it at `host` too.
    pub fn member(&self, id: u32, host: IpAddr) -> Member {
        Member {
            id,
            host,
            quorum_port: self.quorum_port,
            election_port: self.election_port,
            role: PeerRole::Participant,
            client: Some(SocketAddr::new(host, self.client_port)),
        }
    }
}

/// The superuser's digest, precomputed: `base64(sha1("super:<password>"))`, 28 characters.
/// Make it with `printf 'super:%s' "$PASSWORD" | openssl sha1 -binary | base64`, or with
/// ZooKeeper's `org.apache.zookeeper.server.auth.DigestAuthenticationProvider super:<password>`
/// (which prints `super:<password>->super:<digest>`; keep only the digest). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SuperDigest(String);

impl fmt::Debug for SuperDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SuperDigest(<redacted>)")
    }
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

impl SuperDigest {
    /// A precomputed digest, as `<digest>` or `super:<digest>` (blanks around it ignored).
    /// Errors say what is wrong, never the text.
    pub fn from_precomputed(text: &str) -> Result<SuperDigest> {
        let t = text.trim();
        let digest = t.strip_prefix("super:").unwrap_or(t);
        // 20 bytes of SHA-1 in base64: 27 characters, the last carrying 2 bits, then one `=`.
        let bytes = digest.as_bytes();
        let valid = bytes.len() == 28
            && bytes[27] == b'='
            && bytes[..27].iter().all(|b| BASE64.contains(b))
            && BASE64
                .iter()
                .position(|b| *b == bytes[26])
                .is_some_and(|v| v % 4 == 0);
        if !valid {
            bail!(
                "not a superuser digest: expected base64(sha1(\"super:<password>\")), 28 characters ending in `=`, alone or after `super:`"
            );
        }
        Ok(SuperDigest(digest.to_string()))
    }

    /// Reads a precomputed digest from `path`.
    pub fn read(path: &Path) -> Result<SuperDigest> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the superuser digest {}", path.display()))?;
        SuperDigest::from_precomputed(&text).with_context(|| path.display().to_string())
    }

    /// The value of `DigestAuthenticationProvider.superDigest`: `super:<digest>`.
    fn value(&self) -> String {
        format!("super:{}", self.0)
    }
}

/// What this node is, as the earlier steps found it.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The claimed myid.
    pub myid: u32,
    /// ZooKeeper's `dataDir` on the mounted volume (`storage::data_dir`).
    pub data_dir: &'a Path,
    pub super_digest: &'a SuperDigest,
    pub settings: &'a ServerSettings,
}

/// One rendered file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub path: PathBuf,
    pub text: String,
}

/// The files a ZooKeeper node starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// `<conf_dir>/zoo.cfg`.
    pub static_cfg: Rendered,
    /// `<conf_dir>/zoo.cfg.dynamic`.
    pub dynamic: Rendered,
    /// `<dataDir>/myid`.
    pub myid: Rendered,
}

/// The files for this node to start on `members` (the plan's: the current members plus this
/// node, or the bootstrap list). This node must be among them, with a client address.
pub fn render(inputs: &Inputs, members: &Membership) -> Result<Files, RenderError> {
    let me = members.get(inputs.myid).ok_or_else(|| {
        RenderError::Input(format!(
            "myid {} is not among the members {:?}: ZooKeeper would not start",
            inputs.myid,
            members.ids()
        ))
    })?;
    if me.client.is_none() {
        return Err(RenderError::Input(format!(
            "member {} has no client address: ZooKeeper would not listen for clients",
            inputs.myid
        )));
    }
    let conf_dir = &inputs.settings.conf_dir;
    Ok(Files {
        static_cfg: Rendered {
            path: conf_dir.join(STATIC_FILE),
            text: static_cfg(inputs)?,
        },
        dynamic: Rendered {
            path: conf_dir.join(DYNAMIC_FILE),
            text: dynamic(members),
        },
        myid: Rendered {
            path: inputs.data_dir.join(MYID_FILE),
            text: myid(inputs.myid)?,
        },
    })
}

/// The static zoo.cfg. No client port here: it is in each member's dynamic line.
pub fn static_cfg(inputs: &Inputs) -> Result<String, RenderError> {
    let s = inputs.settings;
    let data_dir = plain_path(inputs.data_dir, "dataDir")?;
    let dynamic_file = s.conf_dir.join(DYNAMIC_FILE);
    let dynamic_file = plain_path(&dynamic_file, "dynamicConfigFile")?;
    if s.snap_retain_count < 3 {
        return Err(RenderError::Input(format!(
            "snap_retain_count is {}; ZooKeeper keeps at least 3",
            s.snap_retain_count
        )));
    }
    let mut words: Vec<String> = Word::ALL.iter().map(|w| w.as_str().to_string()).collect();
    for w in &s.four_letter_words {
        let ok = w == "*" || (w.len() == 4 && w.bytes().all(|b| b.is_ascii_lowercase()));
        if !ok {
            return Err(RenderError::Input(format!(
                "four_letter_words: {w:?} is not a four-letter word (4 lowercase letters) or `*`"
            )));
        }
        if !words.contains(w) {
            words.push(w.clone());
        }
    }
    let mut out = properties::comment(
        "Rendered by kafka-agent at boot from its settings. ZooKeeper rewrites this file as the membership changes; the agent renders it again before the next start.",
    );
    for (k, v) in [
        ("tickTime", s.tick_time_ms.to_string()),
        ("initLimit", s.init_limit.to_string()),
        ("syncLimit", s.sync_limit.to_string()),
        ("dataDir", data_dir.to_string()),
        ("standaloneEnabled", "false".to_string()),
        ("reconfigEnabled", "true".to_string()),
        ("4lw.commands.whitelist", words.join(",")),
        ("admin.enableServer", "false".to_string()),
        ("autopurge.snapRetainCount", s.snap_retain_count.to_string()),
        (
            "autopurge.purgeInterval",
            s.purge_interval_hours.to_string(),
        ),
        (
            "DigestAuthenticationProvider.superDigest",
            inputs.super_digest.value(),
        ),
        ("dynamicConfigFile", dynamic_file.to_string()),
    ] {
        out.push_str(&properties::line(k, &v));
    }
    Ok(out)
}

/// A path ZooKeeper can read back after its own rewrite, which writes values unescaped:
/// printable ASCII only, absolute.
fn plain_path<'p>(path: &'p Path, key: &str) -> Result<&'p str, RenderError> {
    let s = path
        .to_str()
        .filter(|s| s.starts_with('/') && s.bytes().all(|b| (b' '..=b'~').contains(&b)))
        .filter(|s| !s.contains('\\') && s.trim() == *s)
        .ok_or_else(|| {
            RenderError::Input(format!(
                "{} cannot be {key}: expected an absolute path of printable ASCII without `\\` or surrounding blanks (ZooKeeper rewrites zoo.cfg without escapes)",
                path.display()
            ))
        })?;
    Ok(s)
}

/// The dynamic file: one `server.N=` line per member, lowest myid first.
pub fn dynamic(members: &Membership) -> String {
    members.members().map(|m| server_line(m) + "\n").collect()
}

/// `server.N=host:quorumPort:electionPort:role;clientHost:clientPort` (the client part only
/// when the member has one).
pub fn server_line(m: &Member) -> String {
    let mut line = format!(
        "server.{}={}:{}:{}:{}",
        m.id,
        host(m.host),
        m.quorum_port,
        m.election_port,
        m.role.as_str()
    );
    if let Some(c) = m.client {
        line.push_str(&format!(";{}:{}", host(c.ip()), c.port()));
    }
    line
}

fn host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// myid's content.
pub fn myid(id: u32) -> Result<String, RenderError> {
    if id == 0 {
        return Err(RenderError::Input(
            "myid 0 is not a ZooKeeper server id; myids start at 1".to_string(),
        ));
    }
    Ok(format!("{id}\n"))
}

/// Parses the data of `/zookeeper/config` (also the `membership:` section of `conf`):
/// `server.N=` lines and `version=<hex>`. Server lines may give the client part as
/// `;port` (read as `0.0.0.0:port`, as ZooKeeper itself reports it) or `;host:port`, and may
/// leave out the role (a participant). Hierarchical quorums (`group.`, `weight.`) and
/// multiple addresses per server are refused.
pub fn parse_config(text: &str) -> Result<EnsembleConfig> {
    let mut members = Vec::new();
    let mut version = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let at = || format!("line {}: {line:?}", n + 1);
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| anyhow!("{}: expected key=value", at()))?;
        if key == "version" {
            if version.is_some() {
                bail!("{}: a second version", at());
            }
            version = Some(
                u64::from_str_radix(value, 16)
                    .map_err(|_| anyhow!("{}: the version is not hexadecimal", at()))?,
            );
        } else if let Some(id) = key.strip_prefix("server.") {
            let id: u32 = id
                .parse()
                .map_err(|_| anyhow!("{}: server.N needs a numeric myid", at()))?;
            members.push(parse_server(id, value).with_context(at)?);
        } else if key.starts_with("group.") || key.starts_with("weight.") {
            bail!("{}: hierarchical quorums are not supported", at());
        } else {
            bail!("{}: expected server.N=... or version=<hex>", at());
        }
    }
    let version = version.context("no version=<hex> line")?;
    Ok(EnsembleConfig {
        membership: Membership::new(members)?,
        version,
    })
}

/// Parses `host:quorumPort:electionPort[:role][;[clientHost:]clientPort]`.
pub fn parse_server(id: u32, spec: &str) -> Result<Member> {
    const FORM: &str =
        "expected host:quorumPort:electionPort[:participant|observer][;[clientHost:]clientPort]";
    let (servers, client) = match spec.split_once(';') {
        Some((s, c)) => (s, Some(c)),
        None => (spec, None),
    };
    if servers.contains('|') {
        bail!("more than one address per server is not supported");
    }
    let (host, rest) = split_host(servers).context(FORM)?;
    let parts: Vec<&str> = rest.split(':').collect();
    let (quorum, election, role) = match parts.as_slice() {
        [q, e] => (q, e, PeerRole::Participant),
        [q, e, "participant"] => (q, e, PeerRole::Participant),
        [q, e, "observer"] => (q, e, PeerRole::Observer),
        _ => bail!(FORM),
    };
    let client = match client {
        None => None,
        Some(c) if c.contains(':') => {
            let (h, port) = split_host(c).context(FORM)?;
            Some(SocketAddr::new(h, port_of(port)?))
        }
        Some(port) => Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port_of(port)?,
        )),
    };
    Ok(Member {
        id,
        host,
        quorum_port: port_of(quorum)?,
        election_port: port_of(election)?,
        role,
        client,
    })
}

/// `a.b.c.d:rest` or `[v6]:rest` into the address and `rest`.
fn split_host(s: &str) -> Result<(IpAddr, &str)> {
    let (host, rest) = match s.strip_prefix('[') {
        Some(v6) => {
            let (h, r) = v6.split_once(']').context("an unclosed `[`")?;
            (h, r.strip_prefix(':').context("no port after the address")?)
        }
        None => s.split_once(':').context("no port after the address")?,
    };
    let ip = host.parse::<IpAddr>().map_err(|_| {
        anyhow!("{host:?} is not an IP address (the agent's members are ENI addresses)")
    })?;
    Ok((ip, rest))
}

fn port_of(s: &str) -> Result<u16> {
    s.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| anyhow!("{s:?} is not a port"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Measured on ZooKeeper 3.8.0: `printf super:secret | openssl sha1 -binary | base64`, and
    // DigestAuthenticationProvider printed `super:secret->super:lK75jTNcA+U9vtVEw5vB51mj/w4=`.
    const DIGEST: &str = "lK75jTNcA+U9vtVEw5vB51mj/w4=";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn settings() -> ServerSettings {
        ServerSettings {
            conf_dir: PathBuf::from("/var/lib/zookeeper/conf"),
            ..ServerSettings::default()
        }
    }

    fn three(s: &ServerSettings) -> Membership {
        Membership::new([
            s.member(3, ip("10.0.3.10")),
            s.member(1, ip("10.0.1.10")),
            s.member(2, ip("10.0.2.10")),
        ])
        .unwrap()
    }

    #[test]
    fn the_static_part() {
        let s = settings();
        let digest = SuperDigest::from_precomputed(DIGEST).unwrap();
        let inputs = Inputs {
            myid: 2,
            data_dir: Path::new("/data/zookeeper"),
            super_digest: &digest,
            settings: &s,
        };
        let text = static_cfg(&inputs).unwrap();
        let body: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            body,
            [
                "tickTime=2000",
                "initLimit=10",
                "syncLimit=5",
                "dataDir=/data/zookeeper",
                "standaloneEnabled=false",
                "reconfigEnabled=true",
                "4lw.commands.whitelist=srvr,mntr,conf,ruok",
                "admin.enableServer=false",
                "autopurge.snapRetainCount=3",
                "autopurge.purgeInterval=24",
                "DigestAuthenticationProvider.superDigest=super:lK75jTNcA+U9vtVEw5vB51mj/w4=",
                "dynamicConfigFile=/var/lib/zookeeper/conf/zoo.cfg.dynamic",
            ]
        );
        assert!(!text.contains("clientPort"), "{text}");
    }

    #[test]
    fn extra_words_are_added_once_and_checked() {
        let mut s = settings();
        s.four_letter_words = vec!["stat".into(), "srvr".into()];
        let digest = SuperDigest::from_precomputed(DIGEST).unwrap();
        let inputs = Inputs {
            myid: 1,
            data_dir: Path::new("/data/zookeeper"),
            super_digest: &digest,
            settings: &s,
        };
        let text = static_cfg(&inputs).unwrap();
        assert!(
            text.contains("4lw.commands.whitelist=srvr,mntr,conf,ruok,stat\n"),
            "{text}"
        );
        s.four_letter_words = vec!["srvr,dump".into()];
        let inputs = Inputs {
            myid: 1,
            data_dir: Path::new("/data/zookeeper"),
            super_digest: &digest,
            settings: &s,
        };
        let e = static_cfg(&inputs).unwrap_err();
        assert!(e.to_string().contains("four_letter_words"), "{e}");
    }

    #[test]
    fn paths_zookeeper_cannot_rewrite_are_refused() {
        let s = settings();
        let digest = SuperDigest::from_precomputed(DIGEST).unwrap();
        for bad in [
            "/data/zoo\\keeper",
            "/data/zoo\nkeeper",
            "data/zookeeper",
            "/data/zoökeeper",
        ] {
            let inputs = Inputs {
                myid: 1,
                data_dir: Path::new(bad),
                super_digest: &digest,
                settings: &s,
            };
            let e = static_cfg(&inputs).unwrap_err();
            assert!(e.to_string().contains("dataDir"), "{bad:?}: {e}");
            assert_eq!(e.kind(), "invalid_config");
        }
    }

    #[test]
    fn the_dynamic_file_is_sorted_by_myid() {
        let s = settings();
        let mut m = three(&s);
        m = m.with(Member {
            role: PeerRole::Observer,
            ..s.member(4, ip("10.0.1.20"))
        });
        assert_eq!(
            dynamic(&m),
            "server.1=10.0.1.10:2888:3888:participant;10.0.1.10:2181\n\
             server.2=10.0.2.10:2888:3888:participant;10.0.2.10:2181\n\
             server.3=10.0.3.10:2888:3888:participant;10.0.3.10:2181\n\
             server.4=10.0.1.20:2888:3888:observer;10.0.1.20:2181\n"
        );
    }

    #[test]
    fn render_places_the_three_files() {
        let s = settings();
        let digest = SuperDigest::from_precomputed(DIGEST).unwrap();
        let inputs = Inputs {
            myid: 2,
            data_dir: Path::new("/data/zookeeper"),
            super_digest: &digest,
            settings: &s,
        };
        let files = render(&inputs, &three(&s)).unwrap();
        assert_eq!(
            files.static_cfg.path,
            Path::new("/var/lib/zookeeper/conf/zoo.cfg")
        );
        assert_eq!(
            files.dynamic.path,
            Path::new("/var/lib/zookeeper/conf/zoo.cfg.dynamic")
        );
        assert_eq!(files.myid.path, Path::new("/data/zookeeper/myid"));
        assert_eq!(files.myid.text, "2\n");
        assert_eq!(files.dynamic.text.lines().count(), 3);
        // This node must be a member, or ZooKeeper stops with "My id 4 not in the peer list".
        let e = render(&Inputs { myid: 4, ..inputs }, &three(&s)).unwrap_err();
        assert!(e.to_string().contains("myid 4"), "{e}");
        assert!(myid(0).is_err());
    }

    #[test]
    fn the_dynamic_file_reads_back() {
        let s = settings();
        let m = three(&s).with(Member {
            role: PeerRole::Observer,
            ..s.member(5, ip("fd00::5"))
        });
        let text = dynamic(&m) + "version=100000000\n";
        assert!(text.contains("server.5=[fd00::5]:2888:3888:observer;[fd00::5]:2181\n"));
        let c = parse_config(&text).unwrap();
        assert_eq!(c.membership, m);
        assert_eq!(c.version, 0x1_0000_0000);
    }

    #[test]
    fn zookeeper_config_as_read_from_the_znode() {
        // `get /zookeeper/config` on 3.8.0; server.3 was configured as `...:23890;22183`.
        let c = parse_config(
            "server.1=127.0.0.1:22888:23888:participant;127.0.0.1:22181\n\
             server.2=127.0.0.1:22889:23889:observer;127.0.0.1:22182\n\
             server.3=127.0.0.1:22890:23890:participant;0.0.0.0:22183\n\
             version=300000003",
        )
        .unwrap();
        assert_eq!(c.version, 0x3_0000_0003);
        assert_eq!(c.membership.voters(), [1, 3].into());
        let m3 = c.membership.get(3).unwrap();
        assert_eq!(m3.client, Some("0.0.0.0:22183".parse().unwrap()));
        assert_eq!(
            m3.client_address(),
            Some("127.0.0.1:22183".parse().unwrap())
        );
        let m2 = c.membership.get(2).unwrap();
        assert_eq!(
            (m2.role, m2.quorum_port, m2.election_port),
            (PeerRole::Observer, 22889, 23889)
        );
    }

    #[test]
    fn short_forms_of_server_lines() {
        let c = parse_config("server.7=10.1.2.3:2888:3888;2181\nversion=a").unwrap();
        let m = c.membership.get(7).unwrap();
        assert_eq!(m.role, PeerRole::Participant);
        assert_eq!(m.client, Some("0.0.0.0:2181".parse().unwrap()));
        assert_eq!(m.client_address(), Some("10.1.2.3:2181".parse().unwrap()));
        let c = parse_config("server.1=10.1.2.3:2888:3888\nversion=1").unwrap();
        assert_eq!(c.membership.get(1).unwrap().client, None);
    }

    #[test]
    fn malformed_config_is_refused_with_the_line() {
        for (text, says) in [
            ("server.1=10.0.0.1:2888:3888\n", "version"),
            (
                "server.1=zk1:2888:3888;2181\nversion=1",
                "not an IP address",
            ),
            ("server.x=10.0.0.1:2888:3888\nversion=1", "numeric myid"),
            ("server.1=10.0.0.1:2888\nversion=1", "expected host"),
            (
                "server.1=10.0.0.1:2888:3888:voter\nversion=1",
                "expected host",
            ),
            ("server.1=10.0.0.1:2888:3888;99999\nversion=1", "not a port"),
            (
                "server.1=10.0.0.1:2888:3888|10.0.0.2:2888:3888\nversion=1",
                "more than one",
            ),
            ("group.1=1:2:3\nversion=1", "hierarchical"),
            ("serverId=1\nversion=1", "expected server.N"),
            ("version=xyz", "hexadecimal"),
            ("version=1\nversion=2", "second version"),
            (
                "server.1=10.0.0.1:2888:3888\nserver.1=10.0.0.2:2888:3888\nversion=1",
                "twice",
            ),
        ] {
            let e = format!("{:#}", parse_config(text).unwrap_err());
            assert!(e.contains(says), "{text:?}: {e}");
        }
        let e = format!(
            "{:#}",
            parse_config("version=1\nserver.2=10.0.0.1:2888\n").unwrap_err()
        );
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn superuser_digest_forms() {
        assert_eq!(
            SuperDigest::from_precomputed(&format!("super:{DIGEST}\n")).unwrap(),
            SuperDigest::from_precomputed(DIGEST).unwrap()
        );
        // `printf super: | openssl sha1 -binary | base64`: also a digest.
        assert!(SuperDigest::from_precomputed("ntK0uRI/TdJ1mOFJMdWc5P3hDBU=").is_ok());
        for bad in [
            "secret",
            "super:secret->super:lK75jTNcA+U9vtVEw5vB51mj/w4=",
            "lK75jTNcA+U9vtVEw5vB51mj/w4",
            "lK75jTNcA+U9vtVEw5vB51mj/w5=",
            "lK75jTNcA+U9vtVEw5vB51mj/w4==",
            "lK75jTNcA+U9vtVEw5vB51mj_w4=",
        ] {
            let e = SuperDigest::from_precomputed(bad).unwrap_err().to_string();
            assert!(e.contains("not a superuser digest"), "{bad:?}: {e}");
            assert!(!e.contains("secret") && !e.contains("lK75"), "{e}");
        }
        let d = SuperDigest::from_precomputed(DIGEST).unwrap();
        assert!(!format!("{d:?}").contains("lK75"));
    }

    #[test]
    fn superuser_digest_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("super.digest");
        std::fs::write(&path, format!("{DIGEST}\n")).unwrap();
        assert_eq!(
            SuperDigest::read(&path).unwrap(),
            SuperDigest::from_precomputed(DIGEST).unwrap()
        );
        std::fs::write(&path, "hunter2\n").unwrap();
        let e = format!("{:#}", SuperDigest::read(&path).unwrap_err());
        assert!(e.contains("super.digest") && !e.contains("hunter2"), "{e}");
    }
}
