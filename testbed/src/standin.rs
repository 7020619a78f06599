//! A STAND-IN for a Kafka broker (no Kafka build can be installed on the testbed): the parts
//! of Kafka's startup the agent can see, and nothing else. The `kafka-standin` binary runs it.
//!
//! * [`properties`]: `server.properties` read as `java.util.Properties.load(InputStream)`
//!   (Java 17) reads it;
//! * [`Config::from_properties`]: what `KafkaConfig` refuses (a missing `broker.id` /
//!   `node.id`, `advertised.listeners` on 0.0.0.0, a listener without a security protocol,
//!   no log directory, ...), with Kafka's messages;
//! * [`check_zk_meta`] / [`check_kraft_meta`]: `meta.properties` in each log directory, as
//!   Kafka checks it (InconsistentClusterIdException, InconsistentBrokerIdException, "No
//!   `meta.properties` found");
//! * [`registration`]: the JSON of `/brokers/ids/<id>` (BrokerIdZNode, version 5);
//! * [`Log`] and [`Request`]: the stand-in's own line protocol for tests (not Kafka's wire
//!   protocol): `APPEND <topic> <text>`, `READ <topic>`, `HANG`.
//!
//! Deliberate differences from Kafka: a missing `broker.id` is refused (Kafka would generate
//! one from `/brokers/seqid`), and so is a missing `log.dirs`/`log.dir` (Kafka would write to
//! `/tmp/kafka-logs`): the agent always renders both, and a broker silently writing elsewhere
//! than its volume is exactly what the testbed must expose.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Kafka refusing to start: the exception it would throw and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub exception: &'static str,
    pub message: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.exception, self.message)
    }
}

impl std::error::Error for Refused {}

fn config_error(message: impl Into<String>) -> Refused {
    Refused {
        exception: "org.apache.kafka.common.config.ConfigException",
        message: message.into(),
    }
}

/// `require(...)` in KafkaConfig: an IllegalArgumentException "requirement failed: ...".
fn requirement(message: impl fmt::Display) -> Refused {
    Refused {
        exception: "java.lang.IllegalArgumentException",
        message: format!("requirement failed: {message}"),
    }
}

fn illegal(message: impl Into<String>) -> Refused {
    Refused {
        exception: "java.lang.IllegalArgumentException",
        message: message.into(),
    }
}

pub mod properties {
    //! `java.util.Properties.load(InputStream)` as OpenJDK 17 implements it: bytes read as
    //! ISO-8859-1; natural lines end at `\n`, `\r` or `\r\n`; leading blanks (space, tab,
    //! form feed) skipped; a logical line that starts with `#` or `!` is a comment; an odd
    //! number of backslashes at a line's end continues it on the next line (whose leading
    //! blanks are skipped); the key ends at the first unescaped `=`, `:` or blank, then blanks
    //! and at most one `=`/`:` are skipped; `\t \n \r \f \uXXXX` and `\x` (= x) are unescaped.

    use std::collections::BTreeMap;

    /// A logical line `load` refuses (`Malformed \uxxxx encoding.`).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Malformed {
        /// The natural line (1-based) the logical line starts on.
        pub line: usize,
    }

    impl std::fmt::Display for Malformed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "java.lang.IllegalArgumentException: Malformed \\uxxxx encoding. (line {})",
                self.line
            )
        }
    }

    impl std::error::Error for Malformed {}

    /// What `load` read: every entry in file order (a later key replaces an earlier one).
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct Properties {
        pub entries: Vec<(String, String)>,
    }

    impl Properties {
        /// The value `getProperty` gives: the last entry with this key.
        pub fn get(&self, key: &str) -> Option<&str> {
            self.entries
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        }

        /// The whole map, as `Properties` holds it.
        pub fn map(&self) -> BTreeMap<String, String> {
            self.entries.iter().cloned().collect()
        }
    }

    fn blank(c: char) -> bool {
        matches!(c, ' ' | '\t' | '\u{c}')
    }

    /// Reads `bytes` as `Properties.load(InputStream)` does.
    pub fn parse(bytes: &[u8]) -> Result<Properties, Malformed> {
        // ISO-8859-1: every byte is the char of the same value.
        let chars: Vec<char> = bytes.iter().map(|&b| b as char).collect();
        let mut props = Properties::default();
        for (line, logical) in logical_lines(&chars) {
            let (key, value) = split(&logical);
            let key = convert(key).map_err(|()| Malformed { line })?;
            let value = convert(value).map_err(|()| Malformed { line })?;
            props.entries.push((key, value));
        }
        Ok(props)
    }

    /// `Properties.LineReader.readLine` (Java 17), line after line: each logical line with
    /// the natural line it starts on.
    fn logical_lines(chars: &[char]) -> Vec<(usize, Vec<char>)> {
        let mut out = Vec::new();
        let mut line_no = 1;
        let mut start = 1;
        let mut buf: Vec<char> = Vec::new();
        let mut skip_white = true;
        let mut appended_line_begin = false;
        let mut preceding_backslash = false;
        let mut skip_lf = false;
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            i += 1;
            // The natural line this char is on (a "\r\n" counts once).
            let here = line_no;
            if c == '\n' || (c == '\r' && chars.get(i) != Some(&'\n')) {
                line_no += 1;
            }
            if skip_lf {
                skip_lf = false;
                if c == '\n' {
                    continue;
                }
            }
            if skip_white {
                if blank(c) {
                    continue;
                }
                if !appended_line_begin && (c == '\r' || c == '\n') {
                    continue;
                }
                skip_white = false;
                appended_line_begin = false;
            }
            if buf.is_empty() && (c == '#' || c == '!') {
                // A comment: consume the rest of the natural line, its terminator included.
                while i < chars.len() {
                    let d = chars[i];
                    i += 1;
                    if d == '\n' || (d == '\r' && chars.get(i) != Some(&'\n')) {
                        line_no += 1;
                    }
                    if d == '\r' || d == '\n' {
                        break;
                    }
                }
                skip_white = true;
                continue;
            }
            if c != '\n' && c != '\r' {
                if buf.is_empty() {
                    start = here;
                }
                buf.push(c);
                preceding_backslash = c == '\\' && !preceding_backslash;
                continue;
            }
            // End of a natural line.
            if buf.is_empty() {
                skip_white = true;
                continue;
            }
            if preceding_backslash {
                // The backslash is not part of the line; the next one continues it.
                buf.pop();
                skip_white = true;
                appended_line_begin = true;
                preceding_backslash = false;
                if c == '\r' {
                    skip_lf = true;
                }
            } else {
                out.push((start, std::mem::take(&mut buf)));
                skip_white = true;
                appended_line_begin = false;
            }
        }
        // At the end of the input, what was read is a line (a trailing backslash dropped),
        // even when that leaves it empty.
        if !buf.is_empty() {
            if preceding_backslash {
                buf.pop();
            }
            out.push((start, buf));
        }
        out
    }

    /// `Properties.load0`: the raw key and raw value of one logical line.
    fn split(line: &[char]) -> (&[char], &[char]) {
        let limit = line.len();
        let mut key_len = 0;
        let mut value_start = limit;
        let mut has_sep = false;
        let mut preceding_backslash = false;
        while key_len < limit {
            let c = line[key_len];
            if (c == '=' || c == ':') && !preceding_backslash {
                value_start = key_len + 1;
                has_sep = true;
                break;
            } else if blank(c) && !preceding_backslash {
                value_start = key_len + 1;
                break;
            }
            preceding_backslash = c == '\\' && !preceding_backslash;
            key_len += 1;
        }
        while value_start < limit {
            let c = line[value_start];
            if !blank(c) {
                if !has_sep && (c == '=' || c == ':') {
                    has_sep = true;
                } else {
                    break;
                }
            }
            value_start += 1;
        }
        (&line[..key_len], &line[value_start.min(limit)..])
    }

    /// `Properties.loadConvert`: escapes undone; Err for a malformed `\uXXXX`.
    fn convert(raw: &[char]) -> Result<String, ()> {
        let mut units: Vec<u16> = Vec::with_capacity(raw.len());
        let mut i = 0;
        let mut buf = [0u16; 2];
        while i < raw.len() {
            let c = raw[i];
            i += 1;
            if c != '\\' {
                units.extend_from_slice(c.encode_utf16(&mut buf));
                continue;
            }
            let Some(&e) = raw.get(i) else { break };
            i += 1;
            let plain = match e {
                'u' => {
                    if i + 4 > raw.len() {
                        return Err(());
                    }
                    let mut value: u16 = 0;
                    for &h in &raw[i..i + 4] {
                        value = (value << 4) + h.to_digit(16).ok_or(())? as u16;
                    }
                    i += 4;
                    units.push(value);
                    continue;
                }
                't' => '\t',
                'r' => '\r',
                'n' => '\n',
                'f' => '\u{c}',
                other => other,
            };
            units.extend_from_slice(plain.encode_utf16(&mut buf));
        }
        Ok(String::from_utf16_lossy(&units))
    }
}

use properties::Properties;

/// The security protocols Kafka knows (`SecurityProtocol`).
pub const SECURITY_PROTOCOLS: [&str; 4] = ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"];

/// One listener: `NAME://host:port` with its security protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Upper-cased, as `ListenerName.normalised`.
    pub name: String,
    /// None: every interface.
    pub host: Option<String>,
    pub port: u16,
    pub protocol: String,
}

impl Listener {
    /// `EndPoint.connectionString`: `NAME://host:port`, an IPv6 host in brackets.
    pub fn connection_string(&self) -> String {
        format!("{}://{}", self.name, self.address())
    }

    /// `host:port` (`Utils.formatAddress`); an absent host is empty, as Kafka prints it.
    pub fn address(&self) -> String {
        match &self.host {
            Some(h) if h.contains(':') => format!("[{h}]:{}", self.port),
            Some(h) => format!("{h}:{}", self.port),
            None => format!(":{}", self.port),
        }
    }

    /// What to bind: the host, or every interface.
    pub fn bind_address(&self) -> String {
        match self.host.as_deref() {
            None | Some("") => format!("0.0.0.0:{}", self.port),
            Some(h) if h.contains(':') => format!("[{h}]:{}", self.port),
            Some(h) => format!("{h}:{}", self.port),
        }
    }
}

/// ZooKeeper mode or KRaft.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Zookeeper {
        broker_id: i32,
        /// `hosts[/chroot]`.
        connect: String,
        session_timeout: Duration,
        connection_timeout: Duration,
    },
    Kraft {
        node_id: i32,
        roles: Vec<String>,
    },
}

/// What the stand-in takes from `server.properties`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub mode: Mode,
    pub listeners: Vec<Listener>,
    /// What the broker registers: `advertised.listeners`, or `listeners` when unset (without
    /// KRaft controller listeners).
    pub advertised: Vec<Listener>,
    pub inter_broker_listener: String,
    pub log_dirs: Vec<PathBuf>,
    pub rack: Option<String>,
}

impl Config {
    /// The id: `broker.id` or `node.id`.
    pub fn id(&self) -> i32 {
        match self.mode {
            Mode::Zookeeper { broker_id, .. } => broker_id,
            Mode::Kraft { node_id, .. } => node_id,
        }
    }
}

/// `CoreUtils.parseCsvList`: split at commas (with the blanks around them), empties dropped.
pub fn csv(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn int(props: &Properties, key: &str) -> Result<Option<i64>, Refused> {
    match props.get(key).map(str::trim) {
        None => Ok(None),
        Some(v) => v.parse::<i32>().map(|n| Some(n as i64)).map_err(|_| {
            config_error(format!(
                "Invalid value {v} for configuration {key}: Not a number of type INT"
            ))
        }),
    }
}

fn duration_ms(props: &Properties, key: &str, default: u64) -> Result<Duration, Refused> {
    Ok(Duration::from_millis(
        int(props, key)?.map_or(default, |v| v.max(0) as u64),
    ))
}

/// `listener.security.protocol.map`, names upper-cased; the default (each protocol its own
/// name) when unset.
fn protocol_map(props: &Properties) -> Result<BTreeMap<String, String>, Refused> {
    let Some(raw) = props.get("listener.security.protocol.map") else {
        return Ok(SECURITY_PROTOCOLS
            .iter()
            .map(|p| (p.to_string(), p.to_string()))
            .collect());
    };
    let mut map = BTreeMap::new();
    for entry in csv(raw) {
        let Some((name, protocol)) = entry.split_once(':') else {
            return Err(config_error(format!(
                "Invalid value {raw} for configuration listener.security.protocol.map: \
                 Map entry should be of form <key>:<value>"
            )));
        };
        let protocol = protocol.trim().to_uppercase();
        if !SECURITY_PROTOCOLS.contains(&protocol.as_str()) {
            return Err(illegal(format!(
                "No enum constant org.apache.kafka.common.security.auth.SecurityProtocol.{protocol}"
            )));
        }
        map.insert(name.trim().to_uppercase(), protocol);
    }
    Ok(map)
}

/// `CoreUtils.listenerListToEndPoints`: `NAME://host:port,...` with each name's protocol.
fn endpoints(
    key: &str,
    value: &str,
    map: &BTreeMap<String, String>,
) -> Result<Vec<Listener>, Refused> {
    let mut out = Vec::new();
    for item in csv(value) {
        let parsed = item.split_once("://").and_then(|(name, rest)| {
            let (host, port) = rest.rsplit_once(':')?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let legal = host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-%._:".contains(c));
            let port: i64 = port.parse().ok()?;
            (legal && (0..=65535).contains(&port)).then(|| {
                (
                    name.to_uppercase(),
                    (!host.is_empty()).then(|| host.to_string()),
                    port as u16,
                )
            })
        });
        let Some((name, host, port)) = parsed else {
            return Err(illegal(format!(
                "Error creating broker listeners from '{value}': Unable to parse {item} to a broker endpoint"
            )));
        };
        let Some(protocol) = map.get(&name) else {
            return Err(illegal(format!(
                "Error creating broker listeners from '{value}': No security protocol defined for listener {name}"
            )));
        };
        out.push(Listener {
            name,
            host,
            port,
            protocol: protocol.clone(),
        });
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(dup) = out.iter().find(|l| !seen.insert(l.name.clone())) {
        return Err(requirement(format!(
            "Each listener must have a different name, {key}: {value} ({} appears twice)",
            dup.name
        )));
    }
    Ok(out)
}

impl Config {
    /// What KafkaConfig makes of `server.properties`, or what it refuses.
    pub fn from_properties(props: &Properties) -> Result<Config, Refused> {
        let roles = props.get("process.roles").map(csv).unwrap_or_default();
        let kraft = !roles.is_empty();
        let map = protocol_map(props)?;
        let listeners_raw = props.get("listeners").unwrap_or("PLAINTEXT://:9092");
        let listeners = endpoints("listeners", listeners_raw, &map)?;
        let controller_names: Vec<String> = props
            .get("controller.listener.names")
            .map(csv)
            .unwrap_or_default()
            .into_iter()
            .map(|n| n.to_uppercase())
            .collect();
        let advertised = match props.get("advertised.listeners") {
            Some(v) => endpoints("advertised.listeners", v, &map)?,
            None => listeners
                .iter()
                .filter(|l| !controller_names.contains(&l.name))
                .cloned()
                .collect(),
        };
        let mode = if kraft {
            for role in &roles {
                if role != "broker" && role != "controller" {
                    return Err(config_error(format!(
                        "Unknown process role '{role}' (only 'broker' and 'controller' are allowed roles)"
                    )));
                }
            }
            let node_id = int(props, "node.id")?.unwrap_or(-1);
            if node_id < 0 {
                return Err(config_error(
                    "Missing configuration `node.id` which is required when `process.roles` is \
                     defined (i.e. when running in KRaft mode).",
                ));
            }
            if controller_names.is_empty() {
                return Err(requirement(
                    "controller.listener.names must contain at least one value when running KRaft",
                ));
            }
            for name in &controller_names {
                if !map.contains_key(name) {
                    return Err(illegal(format!(
                        "No security protocol defined for listener {name}"
                    )));
                }
            }
            let voters = props.get("controller.quorum.voters").map(csv);
            let bootstrap = props.get("controller.quorum.bootstrap.servers").map(csv);
            if voters.unwrap_or_default().is_empty() && bootstrap.unwrap_or_default().is_empty() {
                return Err(config_error(
                    "If using process.roles, either controller.quorum.bootstrap.servers must \
                     contain the set of bootstrap controllers or controller.quorum.voters must \
                     contain a parseable set of controllers.",
                ));
            }
            if roles.iter().any(|r| r == "broker")
                && let Some(l) = advertised
                    .iter()
                    .find(|l| controller_names.contains(&l.name))
            {
                return Err(requirement(format!(
                    "The advertised.listeners config must not contain KRaft controller listeners \
                     from controller.listener.names when process.roles contains the broker role \
                     ({} is one)",
                    l.name
                )));
            }
            Mode::Kraft {
                node_id: node_id as i32,
                roles: roles.clone(),
            }
        } else {
            let broker_id = int(props, "broker.id")?;
            let Some(broker_id) = broker_id.filter(|&id| id >= 0) else {
                // Kafka would generate an id (broker.id.generation.enable); the stand-in
                // refuses: the agent always renders one.
                return Err(config_error(
                    "Missing required configuration \"broker.id\" (the stand-in does not \
                     generate broker ids; real Kafka would, from /brokers/seqid)",
                ));
            };
            let reserved = int(props, "reserved.broker.max.id")?.unwrap_or(1000);
            if broker_id > reserved {
                return Err(requirement(
                    "broker.id must be greater than or equal to -1 and not greater than reserved.broker.max.id",
                ));
            }
            let connect = props
                .get("zookeeper.connect")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    config_error(
                        "Missing required configuration `zookeeper.connect` which has no default value.",
                    )
                })?;
            let session_timeout = duration_ms(props, "zookeeper.session.timeout.ms", 18_000)?;
            let connection_timeout = match int(props, "zookeeper.connection.timeout.ms")? {
                Some(ms) => Duration::from_millis(ms.max(0) as u64),
                None => session_timeout,
            };
            Mode::Zookeeper {
                broker_id: broker_id as i32,
                connect: connect.to_string(),
                session_timeout,
                connection_timeout,
            }
        };
        let names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
        if let Some(l) = advertised
            .iter()
            .find(|l| !names.contains(&l.name.as_str()))
        {
            return Err(requirement(format!(
                "advertised.listeners listener names must be equal to or a subset of the ones \
                 defined in listeners. Found {}. The valid options based on the current \
                 configuration are {}",
                l.name,
                names.join(",")
            )));
        }
        if advertised
            .iter()
            .any(|l| l.host.as_deref() == Some("0.0.0.0"))
        {
            return Err(requirement(
                "advertised.listeners cannot use the nonroutable meta-address 0.0.0.0. Use a routable IP address.",
            ));
        }
        let broker_role = !kraft || roles.iter().any(|r| r == "broker");
        let inter_broker_listener = match (
            props.get("inter.broker.listener.name"),
            props.get("security.inter.broker.protocol"),
        ) {
            (Some(_), Some(_)) => {
                return Err(config_error(
                    "Only one of inter.broker.listener.name and security.inter.broker.protocol should be set.",
                ));
            }
            (Some(name), None) => name.trim().to_uppercase(),
            (None, Some(protocol)) => protocol.trim().to_uppercase(),
            (None, None) => "PLAINTEXT".to_string(),
        };
        if broker_role && !advertised.iter().any(|l| l.name == inter_broker_listener) {
            let valid: Vec<&str> = advertised.iter().map(|l| l.name.as_str()).collect();
            return Err(requirement(format!(
                "inter.broker.listener.name must be a listener name defined in \
                 advertised.listeners. The valid options based on currently configured listeners \
                 are {}",
                valid.join(",")
            )));
        }
        let dirs = props
            .get("log.dirs")
            .or_else(|| props.get("log.dir"))
            .map(csv)
            .unwrap_or_default();
        if dirs.is_empty() {
            // Kafka would fall back to /tmp/kafka-logs; the stand-in refuses.
            return Err(config_error(
                "Missing required configuration \"log.dirs\" (the stand-in does not fall back \
                 to log.dir's default /tmp/kafka-logs)",
            ));
        }
        Ok(Config {
            mode,
            listeners,
            advertised,
            inter_broker_listener,
            log_dirs: dirs.into_iter().map(PathBuf::from).collect(),
            rack: props
                .get("broker.rack")
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::to_string),
        })
    }
}

// --- meta.properties ---------------------------------------------------------------------

/// What a log directory's `meta.properties` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub version: i64,
    /// `broker.id` (version 0) or `node.id` (version 1).
    pub id: Option<i64>,
    pub cluster_id: Option<String>,
}

pub const META: &str = "meta.properties";

/// Reads `<dir>/meta.properties`; None when there is none.
pub fn read_meta(dir: &Path) -> Result<Option<Meta>, Refused> {
    let path = dir.join(META);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Refused {
                exception: "java.io.IOException",
                message: format!("reading {}: {e}", path.display()),
            });
        }
    };
    let props = properties::parse(&bytes).map_err(|e| Refused {
        exception: "java.lang.IllegalArgumentException",
        message: format!("{e} in {}", path.display()),
    })?;
    let number = |key: &str| -> Result<Option<i64>, Refused> {
        props
            .get(key)
            .map(|v| {
                v.trim().parse::<i64>().map_err(|_| {
                    illegal(format!("Failed to parse {key} in {}: {v}", path.display()))
                })
            })
            .transpose()
    };
    let version = number("version")?.ok_or_else(|| {
        illegal(format!(
            "Failed to find version in {}: not a valid meta.properties",
            path.display()
        ))
    })?;
    let id = match version {
        0 => number("broker.id")?,
        1 => number("node.id")?,
        v => {
            return Err(illegal(format!(
                "Unsupported meta.properties version {v} in {}",
                path.display()
            )));
        }
    };
    Ok(Some(Meta {
        version,
        id,
        cluster_id: props.get("cluster.id").map(str::to_string),
    }))
}

/// Every log directory's meta.properties must agree with the others.
fn consistent(found: &[(PathBuf, Meta)]) -> Result<(), Refused> {
    let first = found.first().map(|(_, m)| (m.id, m.cluster_id.clone()));
    if found
        .iter()
        .any(|(_, m)| Some((m.id, m.cluster_id.clone())) != first)
    {
        let list: Vec<String> = found
            .iter()
            .map(|(d, m)| {
                format!(
                    "{} -> id {:?}, cluster.id {:?}",
                    d.display(),
                    m.id,
                    m.cluster_id
                )
            })
            .collect();
        return Err(Refused {
            exception: "kafka.common.InconsistentBrokerMetadataException",
            message: format!(
                "BrokerMetadata is not consistent across log.dirs. This could happen if multiple \
                 brokers shared a log directory (log.dirs) or partial data was manually copied \
                 from another broker. Found: {}",
                list.join(", ")
            ),
        });
    }
    Ok(())
}

/// ZooKeeper mode: checks each log dir's meta.properties against the cluster id (from
/// `/cluster/id`) and `broker.id`, as KafkaServer.startup does. Ok: the directories that have
/// none yet (Kafka writes it there).
pub fn check_zk_meta(
    dirs: &[PathBuf],
    broker_id: i32,
    cluster_id: &str,
) -> Result<Vec<PathBuf>, Refused> {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for dir in dirs {
        match read_meta(dir)? {
            Some(m) => found.push((dir.clone(), m)),
            None => missing.push(dir.clone()),
        }
    }
    consistent(&found)?;
    if let Some((_, m)) = found.first() {
        if let Some(stored) = &m.cluster_id
            && stored != cluster_id
        {
            return Err(Refused {
                exception: "kafka.common.InconsistentClusterIdException",
                message: format!(
                    "The Cluster ID {cluster_id} doesn't match stored clusterId Some({stored}) in \
                     meta.properties. The broker is trying to join the wrong cluster. Configured \
                     zookeeper.connect may be wrong."
                ),
            });
        }
        if let Some(stored) = m.id
            && stored != broker_id as i64
        {
            return Err(Refused {
                exception: "kafka.common.InconsistentBrokerIdException",
                message: format!(
                    "Configured broker.id {broker_id} doesn't match stored broker.id Some({stored}) \
                     in meta.properties. If you moved your data, make sure your configured \
                     broker.id matches. If you intend to create a new broker, you should remove \
                     all data in your data directories (log.dirs)."
                ),
            });
        }
    }
    Ok(missing)
}

/// KRaft: every log dir must hold meta.properties (written by `kafka-storage format`) with
/// this node.id. Ok: the cluster id they hold.
pub fn check_kraft_meta(dirs: &[PathBuf], node_id: i32) -> Result<Option<String>, Refused> {
    let mut found = Vec::new();
    for dir in dirs {
        match read_meta(dir)? {
            Some(m) => found.push((dir.clone(), m)),
            None => {
                return Err(Refused {
                    exception: "java.lang.RuntimeException",
                    message: format!(
                        "No `meta.properties` found in {} (have you run `kafka-storage.sh` to \
                         format the directory?)",
                        dir.display()
                    ),
                });
            }
        }
    }
    for (dir, m) in &found {
        if m.version != 1 {
            return Err(Refused {
                exception: "java.lang.RuntimeException",
                message: format!(
                    "Invalid meta.properties in {}: version {} is not KRaft's (1); format the \
                     directory with `kafka-storage.sh`",
                    dir.display(),
                    m.version
                ),
            });
        }
    }
    consistent(&found)?;
    let first = &found[0].1;
    if first.id != Some(node_id as i64) {
        return Err(Refused {
            exception: "kafka.common.InconsistentNodeIdException",
            message: format!(
                "Configured node.id `{node_id}` doesn't match stored node.id `{}` in \
                 meta.properties. If you moved your data, make sure your configured node.id \
                 matches. If you intend to create a new node, you should remove all data in your \
                 data directories.",
                first.id.map_or("none".to_string(), |i| i.to_string())
            ),
        });
    }
    Ok(first.cluster_id.clone())
}

/// The meta.properties Kafka writes in ZooKeeper mode (version 0).
pub fn zk_meta_text(broker_id: i32, cluster_id: &str) -> String {
    format!(
        "#\n#{}\ncluster.id={cluster_id}\nversion=0\nbroker.id={broker_id}\n",
        timestamp()
    )
}

/// Writes `<dir>/meta.properties` as Kafka does: a temporary file, synced, renamed.
pub fn write_meta(dir: &Path, text: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join("meta.properties.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(META))?;
    std::fs::File::open(dir)?.sync_all()
}

// --- ZooKeeper data ----------------------------------------------------------------------

/// `Uuid.randomUuid().toString()`: 16 random bytes in URL-safe base64 without padding (never
/// starting with '-').
pub fn random_cluster_id() -> String {
    loop {
        let id = base64_url(&rand::random::<[u8; 16]>());
        if !id.starts_with('-') {
            return id;
        }
    }
}

fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// The data of `/cluster/id` (ClusterIdZNode).
pub fn cluster_id_json(id: &str) -> String {
    serde_json::json!({"version": "1", "id": id}).to_string()
}

/// The id in `/cluster/id`'s data.
pub fn parse_cluster_id(data: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    v["id"].as_str().map(str::to_string)
}

/// The data of `/brokers/ids/<id>` (BrokerIdZNode, version 5): the advertised endpoints and
/// their protocols; `host`/`port` of the first PLAINTEXT endpoint (null/-1 without one);
/// `rack` when set.
pub fn registration(config: &Config, timestamp_ms: u128) -> serde_json::Value {
    let plaintext = config.advertised.iter().find(|l| l.protocol == "PLAINTEXT");
    let mut v = serde_json::json!({
        "features": {},
        "listener_security_protocol_map": config
            .advertised
            .iter()
            .map(|l| (l.name.clone(), serde_json::Value::from(l.protocol.clone())))
            .collect::<serde_json::Map<_, _>>(),
        "endpoints": config.advertised.iter().map(Listener::connection_string).collect::<Vec<_>>(),
        "jmx_port": -1,
        "host": plaintext.and_then(|l| l.host.clone()),
        "port": plaintext.map_or(-1, |l| l.port as i64),
        "timestamp": timestamp_ms.to_string(),
        "version": 5,
    });
    if let Some(rack) = &config.rack {
        v["rack"] = rack.clone().into();
    }
    v
}

// --- the test protocol -------------------------------------------------------------------

/// A request of the stand-in's line protocol (one line each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `APPEND <topic> <text>`: answers `OK <offset>`.
    Append { topic: String, text: String },
    /// `READ <topic>`: answers each record on a line, then `END`.
    Read { topic: String },
    /// `HANG`: answers `OK HANG`, then nothing ever again.
    Hang,
    /// Anything else: answers `ERR <why>`.
    Bad(String),
}

impl Request {
    pub fn parse(line: &str) -> Request {
        let line = line.trim_end_matches(['\r', '\n']);
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "APPEND" => match rest.split_once(' ') {
                Some((topic, text)) if valid_topic(topic) => Request::Append {
                    topic: topic.into(),
                    text: text.into(),
                },
                Some((topic, _)) => Request::Bad(format!("invalid topic name {topic:?}")),
                None => Request::Bad("usage: APPEND <topic> <text>".into()),
            },
            "READ" if valid_topic(rest) => Request::Read { topic: rest.into() },
            "READ" => Request::Bad(format!("invalid topic name {rest:?}")),
            "HANG" if rest.is_empty() => Request::Hang,
            _ => Request::Bad(format!("unknown request {word:?}")),
        }
    }
}

/// Kafka's legal topic names: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// The records of partition 0 of each topic, one per line in
/// `<dir>/<topic>-0/00000000000000000000.log` (a record's offset is its line number from 0).
#[derive(Debug, Clone)]
pub struct Log {
    pub dir: PathBuf,
}

impl Log {
    pub fn segment(&self, topic: &str) -> PathBuf {
        self.dir
            .join(format!("{topic}-0"))
            .join("00000000000000000000.log")
    }

    /// Appends a record (synced to disk); its offset. A record holds no line break.
    pub fn append(&self, topic: &str, text: &str) -> std::io::Result<u64> {
        let path = self.segment(topic);
        std::fs::create_dir_all(path.parent().expect("a segment has a directory"))?;
        let offset = match std::fs::read(&path) {
            Ok(b) => b.iter().filter(|&&c| c == b'\n').count() as u64,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        f.write_all(format!("{}\n", text.replace(['\r', '\n'], " ")).as_bytes())?;
        f.sync_data()?;
        Ok(offset)
    }

    /// The topic's records; None when the topic has no log here.
    pub fn read(&self, topic: &str) -> std::io::Result<Option<Vec<String>>> {
        match std::fs::read(self.segment(topic)) {
            Ok(b) => Ok(Some(
                String::from_utf8_lossy(&b)
                    .lines()
                    .map(str::to_string)
                    .collect(),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The answer to a request other than `HANG`: its lines, each without its line break.
pub fn answer(log: &Log, request: &Request) -> Vec<String> {
    match request {
        Request::Append { topic, text } => match log.append(topic, text) {
            Ok(offset) => vec![format!("OK {offset}")],
            Err(e) => vec![format!("ERR appending to {topic}: {e}")],
        },
        Request::Read { topic } => match log.read(topic) {
            Ok(Some(mut records)) => {
                records.push("END".into());
                records
            }
            Ok(None) => vec![format!("ERR UNKNOWN_TOPIC_OR_PARTITION {topic}")],
            Err(e) => vec![format!("ERR reading {topic}: {e}")],
        },
        Request::Hang => vec!["OK HANG".into()],
        Request::Bad(why) => vec![format!("ERR {why}")],
    }
}

// --- logging -----------------------------------------------------------------------------

/// `yyyy-MM-dd HH:mm:ss,SSS` (UTC), as Kafka's log4j layout prints it.
pub fn timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02},{:03}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// One log line: `[time] LEVEL message (kafka-standin)`, line breaks in `message` flattened.
pub fn log_line(level: &str, message: &str) -> String {
    format!(
        "[{}] {level} {} (kafka-standin)",
        timestamp(),
        message.replace(['\r', '\n'], " ")
    )
}

#[cfg(test)]
mod tests {
    use super::properties::parse;
    use super::*;

    fn kv(text: &str) -> Vec<(String, String)> {
        parse(text.as_bytes()).unwrap().entries
    }

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn separators_comments_and_blanks() {
        assert_eq!(
            kv("# c\n! c\n\n  a=1\nb : 2\nc 3\nd\t=\t4\ne\nf=\ng==x\nh:=y\ni = : z\n"),
            p(&[
                ("a", "1"),
                ("b", "2"),
                ("c", "3"),
                ("d", "4"),
                ("e", ""),
                ("f", ""),
                ("g", "=x"),
                ("h", "=y"),
                ("i", ": z"),
            ])
        );
    }

    #[test]
    fn escapes_and_unicode() {
        assert_eq!(
            kv("k\\:e\\=y\\ x=v\\tw\nu=caf\\u00e9 \\u00E9\nq=\\q\\\\\n\\ lead=\\ v\n"),
            p(&[
                ("k:e=y x", "v\tw"),
                ("u", "café é"),
                ("q", "q\\"),
                (" lead", " v"),
            ])
        );
        // A pair of \u escapes is one character beyond the BMP.
        assert_eq!(kv("e=\\uD83D\\uDE00"), p(&[("e", "\u{1F600}")]));
        // Bytes are ISO-8859-1: UTF-8 é is two characters.
        assert_eq!(
            parse(b"x=caf\xc3\xa9").unwrap().entries,
            p(&[("x", "caf\u{c3}\u{a9}")])
        );
    }

    #[test]
    fn continuations() {
        assert_eq!(
            kv("a=1,\\\n    2,\\\r\n\t3\nb=x\\\\\nc=y\\\\\\\n  z\n"),
            p(&[("a", "1,2,3"), ("b", "x\\"), ("c", "y\\z")])
        );
        // A continued line is never a comment...
        assert_eq!(
            kv("a=\\\n  # not a comment\n"),
            p(&[("a", "# not a comment")])
        );
        // ...but a comment line does not continue.
        assert_eq!(kv("# x \\\na=1\n"), p(&[("a", "1")]));
        // An empty continuation ends the line; a trailing backslash at the end is dropped.
        assert_eq!(kv("a=1\\\n\nb=2\\"), p(&[("a", "1"), ("b", "2")]));
        // \r alone ends lines too.
        assert_eq!(
            kv("a=1\rb=2\r\nc=3"),
            p(&[("a", "1"), ("b", "2"), ("c", "3")])
        );
    }

    #[test]
    fn later_keys_win_and_malformed_unicode_names_its_line() {
        let props = parse(b"a=1\nb=2\na=3\n").unwrap();
        assert_eq!(props.get("a"), Some("3"));
        assert_eq!(props.map().len(), 2);
        assert_eq!(parse(b"a=1\n\n\\u00zz=2\n").unwrap_err().line, 3);
        assert_eq!(parse(b"a=\\u12").unwrap_err().line, 1);
    }

    /// The parser and Java 17's `Properties.load(InputStream)` read the same map from a file
    /// full of corner cases.
    #[test]
    fn reads_what_java_reads() {
        let text: &[u8] = b"# comment \\\n! other\n  \t\x0c\n\
            a=1\nb : 2\nc 3\nd\t=\t4\ne\nf=\ng==x\nh:=y\ni = : z\n\
            k\\:e\\=y\\ x=v\\tw\\nz\nu=caf\\u00e9 \\u00E9 \\uD83D\\uDE00\nq=\\q\\\\\n\\ lead=\\ v\n\
            cont=1,\\\n    2,\\\r\n\t3\nbs=x\\\\\nodd=y\\\\\\\n  z\n\
            hash=\\\n  # not a comment\n\
            \\\n#j17comment=1\n\
            emptycont=1\\\n\nlatin=caf\xe9 \xc3\xa9\ncr=1\rcr2=2\r\n\
            dup=first\ndup=second\n\
            trailing=value\\";
        let dir = std::env::temp_dir().join(format!("standin-props-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("corner.properties");
        std::fs::write(&file, text).unwrap();
        let java = crate::java::load(&file).unwrap();
        let mut ours: Vec<String> = parse(text)
            .unwrap()
            .map()
            .iter()
            .map(|(k, v)| format!("{}={}", crate::java::esc(k), crate::java::esc(v)))
            .collect();
        ours.sort();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(ours, java);
        assert!(ours.contains(&"cont=1,2,3".to_string()), "{ours:?}");
    }

    fn config(text: &str) -> Result<Config, Refused> {
        Config::from_properties(&parse(text.as_bytes()).unwrap())
    }

    const ZK: &str = "broker.id=1\nzookeeper.connect=zk:2181/kafka\n\
        listeners=CLIENT://0.0.0.0:9092,INTERNAL://0.0.0.0:9091\n\
        advertised.listeners=CLIENT://10.0.2.15:9092,INTERNAL://10.0.2.15:9091\n\
        listener.security.protocol.map=CLIENT:SSL,INTERNAL:PLAINTEXT\n\
        inter.broker.listener.name=INTERNAL\nlog.dirs=/a, /b\nbroker.rack=us-east-1b\n";

    #[test]
    fn reads_a_rendered_zookeeper_config() {
        let c = config(ZK).unwrap();
        assert_eq!(
            c.mode,
            Mode::Zookeeper {
                broker_id: 1,
                connect: "zk:2181/kafka".into(),
                session_timeout: Duration::from_secs(18),
                connection_timeout: Duration::from_secs(18),
            }
        );
        assert_eq!(c.log_dirs, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(c.listeners[0].bind_address(), "0.0.0.0:9092");
        let r = registration(&c, 1234);
        assert_eq!(
            r,
            serde_json::json!({
                "features": {},
                "listener_security_protocol_map": {"CLIENT": "SSL", "INTERNAL": "PLAINTEXT"},
                "endpoints": ["CLIENT://10.0.2.15:9092", "INTERNAL://10.0.2.15:9091"],
                "jmx_port": -1, "host": "10.0.2.15", "port": 9091,
                "timestamp": "1234", "version": 5, "rack": "us-east-1b",
            })
        );
    }

    #[test]
    fn reads_the_golden_renders() {
        for (file, id) in [
            ("zookeeper-template", 1),
            ("sasl-ssl", 0),
            ("kraft", 2),
            ("dns-pattern", 7),
        ] {
            let path = format!(
                "{}/../tests/golden/{file}.properties",
                env!("CARGO_MANIFEST_DIR")
            );
            let text = std::fs::read(&path).unwrap();
            let c = Config::from_properties(&parse(&text).unwrap())
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(c.id(), id, "{file}");
        }
    }

    #[test]
    fn refuses_what_kafka_refuses() {
        let without = |key: &str| -> String {
            ZK.lines()
                .filter(|l| !l.starts_with(&format!("{key}=")))
                .map(|l| format!("{l}\n"))
                .collect()
        };
        let e = config(&without("broker.id")).unwrap_err();
        assert!(e.message.contains("broker.id"), "{e}");
        let e = config(&without("log.dirs")).unwrap_err();
        assert!(e.message.contains("log.dirs"), "{e}");
        assert_eq!(
            config(&format!("{}log.dir=/x\n", without("log.dirs")))
                .unwrap()
                .log_dirs,
            vec![PathBuf::from("/x")]
        );
        let e = config(&without("zookeeper.connect")).unwrap_err();
        assert!(e.message.contains("zookeeper.connect"), "{e}");
        let e = config(&format!("{ZK}broker.id=x\n")).unwrap_err();
        assert!(e.message.contains("Not a number of type INT"), "{e}");
        let e = config(&format!(
            "{ZK}advertised.listeners=CLIENT://0.0.0.0:9092,INTERNAL://10.0.2.15:9091\n"
        ))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "java.lang.IllegalArgumentException: requirement failed: advertised.listeners cannot \
             use the nonroutable meta-address 0.0.0.0. Use a routable IP address."
        );
        // A listener without a protocol in the map.
        let e = config(&format!(
            "{ZK}listener.security.protocol.map=INTERNAL:PLAINTEXT\n"
        ))
        .unwrap_err();
        assert!(
            e.message
                .contains("No security protocol defined for listener CLIENT"),
            "{e}"
        );
        // Without a map, only security protocol names are listener names.
        let e = config(&without("listener.security.protocol.map")).unwrap_err();
        assert!(e.message.contains("No security protocol defined"), "{e}");
        let ok = config(
            "broker.id=0\nzookeeper.connect=zk:2181\nlisteners=plaintext://:9092,SSL://:9093\n\
             log.dirs=/d\n",
        )
        .unwrap();
        assert_eq!(ok.advertised[0].name, "PLAINTEXT");
        assert_eq!(ok.advertised[1].protocol, "SSL");
        // Advertised names must be listeners; the inter-broker listener must be advertised.
        let e = config(&format!(
            "{ZK}advertised.listeners=CLIENT://10.0.2.15:9092\n"
        ))
        .unwrap_err();
        assert!(e.message.contains("inter.broker.listener.name"), "{e}");
        let e = config(&format!(
            "{ZK}advertised.listeners=OTHER://10.0.2.15:9092\n"
        ))
        .unwrap_err();
        assert!(e.message.contains("No security protocol"), "{e}");
        let e = config(&format!("{ZK}listeners=CLIENT://:9092,CLIENT://:9093\n")).unwrap_err();
        assert!(e.message.contains("different name"), "{e}");
        let e = config(&format!("{ZK}listeners=CLIENT://:port\n")).unwrap_err();
        assert!(e.message.contains("Unable to parse"), "{e}");
    }

    #[test]
    fn refuses_kraft_without_node_id() {
        let kraft = "process.roles=broker\ncontroller.quorum.voters=0@c:9093\n\
            controller.listener.names=CONTROLLER\nlisteners=PLAINTEXT://:9092\n\
            advertised.listeners=PLAINTEXT://10.0.0.1:9092\n\
            listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\nlog.dirs=/d\n";
        let e = config(kraft).unwrap_err();
        assert!(e.message.contains("Missing configuration `node.id`"), "{e}");
        // broker.id is no node.id.
        assert!(config(&format!("{kraft}broker.id=3\n")).is_err());
        let c = config(&format!("{kraft}node.id=3\n")).unwrap();
        assert_eq!(
            c.mode,
            Mode::Kraft {
                node_id: 3,
                roles: vec!["broker".into()]
            }
        );
        let e = config(&format!("{kraft}node.id=3\ncontroller.quorum.voters=\n")).unwrap_err();
        assert!(e.message.contains("controller.quorum"), "{e}");
    }

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "standin-{name}-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn meta_properties_as_kafka_checks_them() {
        let root = tempdir("meta");
        let (a, b) = (root.join("a"), root.join("b"));
        let dirs = vec![a.clone(), b.clone()];
        // Nothing yet: both get one.
        assert_eq!(check_zk_meta(&dirs, 1, "C1").unwrap(), dirs);
        write_meta(&a, &zk_meta_text(1, "C1")).unwrap();
        assert_eq!(
            read_meta(&a).unwrap(),
            Some(Meta {
                version: 0,
                id: Some(1),
                cluster_id: Some("C1".into())
            })
        );
        assert_eq!(check_zk_meta(&dirs, 1, "C1").unwrap(), vec![b.clone()]);
        let e = check_zk_meta(&dirs, 2, "C1").unwrap_err();
        assert_eq!(e.exception, "kafka.common.InconsistentBrokerIdException");
        let e = check_zk_meta(&dirs, 1, "C2").unwrap_err();
        assert_eq!(e.exception, "kafka.common.InconsistentClusterIdException");
        write_meta(&b, &zk_meta_text(3, "C1")).unwrap();
        let e = check_zk_meta(&dirs, 1, "C1").unwrap_err();
        assert!(e.message.contains("not consistent across log.dirs"), "{e}");

        // KRaft: every directory formatted, with this node.id.
        let e = check_kraft_meta(&[root.join("c")], 1).unwrap_err();
        assert!(
            e.message.starts_with("No `meta.properties` found in "),
            "{e}"
        );
        let e = check_kraft_meta(std::slice::from_ref(&a), 1).unwrap_err();
        assert!(e.message.contains("version 0"), "{e}");
        let c = root.join("c");
        std::fs::create_dir_all(&c).unwrap();
        std::fs::write(
            c.join(META),
            "#\n#x\ncluster.id=K\ndirectory.id=d\nnode.id=4\nversion=1\n",
        )
        .unwrap();
        assert_eq!(
            check_kraft_meta(std::slice::from_ref(&c), 4).unwrap(),
            Some("K".into())
        );
        let e = check_kraft_meta(&[c], 5).unwrap_err();
        assert_eq!(e.exception, "kafka.common.InconsistentNodeIdException");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn cluster_ids_look_like_kafkas() {
        let id = random_cluster_id();
        assert_eq!(id.len(), 22, "{id}");
        assert!(
            id.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_ne!(id, random_cluster_id());
        assert_eq!(base64_url(&[0xfb, 0xff]), "-_8");
        assert_eq!(base64_url(b"Man"), "TWFu");
        assert_eq!(
            parse_cluster_id(cluster_id_json(&id).as_bytes()),
            Some(id.clone())
        );
    }

    #[test]
    fn the_line_protocol() {
        assert_eq!(
            Request::parse("APPEND orders hello world\r\n"),
            Request::Append {
                topic: "orders".into(),
                text: "hello world".into()
            }
        );
        assert_eq!(
            Request::parse("READ orders"),
            Request::Read {
                topic: "orders".into()
            }
        );
        assert_eq!(Request::parse("HANG"), Request::Hang);
        assert!(matches!(Request::parse("APPEND ../x y"), Request::Bad(_)));
        assert!(matches!(Request::parse("APPEND orders"), Request::Bad(_)));
        assert!(matches!(Request::parse("DROP x"), Request::Bad(_)));

        let root = tempdir("log");
        let log = Log { dir: root.clone() };
        let read = Request::Read {
            topic: "orders".into(),
        };
        assert_eq!(
            answer(&log, &read),
            vec!["ERR UNKNOWN_TOPIC_OR_PARTITION orders"]
        );
        for (i, text) in ["one", "two"].iter().enumerate() {
            let append = Request::Append {
                topic: "orders".into(),
                text: text.to_string(),
            };
            assert_eq!(answer(&log, &append), vec![format!("OK {i}")]);
        }
        assert_eq!(answer(&log, &read), vec!["one", "two", "END"]);
        assert!(root.join("orders-0/00000000000000000000.log").is_file());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn timestamps_are_log4j_like() {
        let t = timestamp();
        assert_eq!(t.len(), 23, "{t}");
        assert!(t.starts_with("20"), "{t}");
        assert_eq!(&t[19..20], ",");
    }
}
