//! The agent's configuration: one TOML file plus drop-ins, validated into typed [`Settings`].
//!
//! `agent.toml` is read first, then every `config.d/*.toml` beside it in file-name order; a
//! later file's keys win over an earlier one's (tables merge key by key). The merged document
//! is checked against the schema: an unknown key, a wrong type or a value out of range is an
//! error that names the file that set it, the key and the expected form.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the agent looks when neither `--config` nor `KAFKA_AGENT_CONFIG` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/kafka-agent/agent.toml";

/// A configuration problem, already phrased for an operator: one line, naming file and key.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    pub file: PathBuf,
    pub message: String,
}

impl ConfigError {
    fn new(file: &Path, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            message: message.into(),
        }
    }
}

/// What kind of node this instance becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Kafka,
    Zookeeper,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Kafka => "kafka",
            Role::Zookeeper => "zookeeper",
        })
    }
}

/// The validated, typed configuration the rest of the agent works with.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub cluster: Cluster,
    pub boot: Boot,
    pub paths: Paths,
    pub claim: ClaimSettings,
    pub resources: Resources,
    pub storage: Storage,
    pub tags: Tags,
    pub zookeeper: Option<Zookeeper>,
    /// How the broker's server.properties is rendered (`[kafka]`, role kafka only).
    pub kafka: Option<Kafka>,
    /// How readiness is judged and who is told (`[signal]`).
    pub signal: SignalSettings,
    /// How `kafka-agent watch` judges the broker (`[watch]`).
    pub watch: WatchSettings,
    /// The ZooKeeper server this node runs (`[ensemble]`, role zookeeper only).
    pub ensemble: Option<EnsembleSettings>,
}

/// Where a ZooKeeper node keeps its superuser's password unless `[ensemble]` says otherwise.
pub const DEFAULT_SUPERUSER_PASSWORD_FILE: &str = "/etc/kafka-agent/zookeeper-superuser";

/// `[ensemble]`: the ZooKeeper server a node of role zookeeper runs, and how the agent speaks
/// to the ensemble as its superuser (reconfig).
#[derive(Debug, Clone, Serialize)]
pub struct EnsembleSettings {
    #[serde(flatten)]
    pub server: crate::render::zoo::ServerSettings,
    /// A file holding this member's ZooKeeper superuser password (reconfig needs the
    /// superuser): the agent renders its digest into zoo.cfg and authenticates with it to its
    /// own server (the server a client authenticates with vouches for it to the leader, so
    /// every member may have its own). Made by the boot (random, 0600) if it does not exist.
    pub superuser_password_file: PathBuf,
    /// The myids 1..=initial_size start a fresh ensemble together (each waits for all of
    /// them); myids above it (up to `cluster.size`, the most the group may run) join a
    /// serving ensemble by reconfig.
    pub initial_size: u32,
}

/// `[watch]`: the watchdog's pace, patience and bounds (`kafka-agent watch`).
#[derive(Debug, Clone, Serialize)]
pub struct WatchSettings {
    /// How often the broker is checked.
    #[serde(rename = "interval_seconds", serialize_with = "as_seconds")]
    pub interval: Duration,
    /// How long the broker must fail continuously (while the coordination service answers)
    /// before the instance is marked Unhealthy.
    #[serde(rename = "unhealthy_after_seconds", serialize_with = "as_seconds")]
    pub unhealthy_after: Duration,
    /// How long after a successful boot nothing is marked (a starting broker recovers its logs).
    #[serde(rename = "grace_period_seconds", serialize_with = "as_seconds")]
    pub grace_period: Duration,
    /// How long a replacement lease holds at most when its replacement never registers.
    #[serde(rename = "lease_bound_seconds", serialize_with = "as_seconds")]
    pub lease_bound: Duration,
    /// How long the broker's listener has to answer a check.
    #[serde(rename = "listener_timeout_seconds", serialize_with = "as_seconds")]
    pub listener_timeout: Duration,
    /// The broker's pidfile; `None` = the process is judged by its listener and registration.
    pub pidfile: Option<PathBuf>,
    /// How often IMDS's `autoscaling/target-lifecycle-state` is read: once it says
    /// `Terminated`, the group is terminating this instance and the watchdog leaves cleanly
    /// ([`crate::leave`]). IMDS is local and cheap; a few seconds cost nothing.
    #[serde(rename = "lifecycle_poll_seconds", serialize_with = "as_seconds")]
    pub lifecycle_poll: Duration,
    /// The group's termination lifecycle hook (EC2_INSTANCE_TERMINATING) this instance
    /// heartbeats while it leaves and completes with CONTINUE; its group is `[signal]
    /// auto_scaling_group` or the instance's `aws:autoscaling:groupName` tag. `None` = the
    /// group has none: EC2 takes the instance down at once, and the watchdog only stops
    /// watching.
    pub termination_hook: Option<String>,
    /// How the broker is stopped when the instance leaves (argv, absolute program path; the
    /// broker's controlled shutdown): `systemctl stop kafka.service` by default, which returns
    /// once the unit's processes are gone (or killed at its TimeoutStopSec).
    pub stop_command: Vec<String>,
    /// How long the stop command may run.
    #[serde(rename = "stop_timeout_seconds", serialize_with = "as_seconds")]
    pub stop_timeout: Duration,
    /// The bound of the whole leave, from seeing `Terminated` to completing the lifecycle
    /// action: what is not released by then is left to EC2's release at termination.
    #[serde(rename = "leave_timeout_seconds", serialize_with = "as_seconds")]
    pub leave_timeout: Duration,
    /// How often the termination hook hears a heartbeat while the instance leaves.
    #[serde(rename = "heartbeat_seconds", serialize_with = "as_seconds")]
    pub heartbeat: Duration,
}

/// `[watch] stop_command`'s default: the broker's systemd unit, stopped as an operator would.
pub const DEFAULT_STOP_COMMAND: [&str; 3] = ["/usr/bin/systemctl", "stop", "kafka.service"];

/// `[signal]`: when the node counts as serving, and whom `signal` (and a failed `boot`) tells.
#[derive(Debug, Clone, Serialize)]
pub struct SignalSettings {
    /// The stack to signal; `None` = the instance's `aws:cloudformation:stack-name` tag.
    pub stack: Option<String>,
    /// The resource to signal; `None` = the instance's `aws:cloudformation:logical-id` tag.
    pub logical_id: Option<String>,
    /// The launch lifecycle hook to complete; `None` = no hook.
    pub lifecycle_hook: Option<String>,
    /// The hook's group; `None` = the instance's `aws:autoscaling:groupName` tag.
    pub auto_scaling_group: Option<String>,
    /// On failure, also mark the instance Unhealthy so that the group replaces it.
    pub mark_unhealthy_on_failure: bool,
    /// How long `signal` waits for the broker to serve before it reports `not_ready`.
    #[serde(rename = "ready_timeout_seconds", serialize_with = "as_seconds")]
    pub ready_timeout: Duration,
    /// How often the lifecycle hook hears a heartbeat while `signal` waits.
    #[serde(rename = "heartbeat_seconds", serialize_with = "as_seconds")]
    pub heartbeat: Duration,
    /// A command (argv, absolute program path) that must also exit 0 before the node is ready.
    pub ready_command: Option<Vec<String>>,
    /// The instance tag a failure's kind and message are written to ("" = none).
    pub failure_tag: String,
}

/// Where ids are claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    Zookeeper,
    CloudwatchLogs,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClaimSettings {
    pub backend: Backend,
    /// ZooKeeper backend: the znode under which claim records live (below the chroot).
    pub path: String,
    /// CloudWatch Logs backend: the log group whose streams are the claims.
    pub log_group: String,
}

/// Which per-id resources the cluster keeps (and so which make an id eligible in an AZ).
#[derive(Debug, Clone, Serialize)]
pub struct Resources {
    pub eni: bool,
    pub volume: bool,
    /// The ENI's device index on this instance (0 is the primary interface).
    pub eni_device_index: u32,
    /// The device name the volume is attached under (Nitro instances ignore it; the NVMe
    /// serial identifies the volume).
    pub volume_device: String,
    /// How long a terminated holder may keep the ENI or volume before EC2's own release is
    /// given up on and it is force-detached.
    #[serde(rename = "release_grace_seconds", serialize_with = "as_seconds")]
    pub release_grace: Duration,
    /// How long a holder EC2 does not list must stay unlisted before it is taken for gone
    /// (EC2 is eventually consistent: a new instance may not be listed yet).
    #[serde(rename = "gone_after_seconds", serialize_with = "as_seconds")]
    pub gone_after: Duration,
}

/// Where and how the volume is mounted.
#[derive(Debug, Clone, Serialize)]
pub struct Storage {
    pub data_dir: PathBuf,
    pub filesystem: String,
    pub fstab: PathBuf,
    /// Roots the block devices are read from (tests point them at a prepared tree).
    pub sysfs_root: PathBuf,
    pub dev_root: PathBuf,
    /// Volume tag saying whether the volume is `new` (may be formatted) or `formatted`.
    pub state_tag: String,
    /// The Kafka cluster.id the data must carry, when known.
    pub cluster_id: Option<String>,
}

/// The tag contract shared by ENIs, volumes, instances and the CloudFormation template.
#[derive(Debug, Clone, Serialize)]
pub struct Tags {
    /// Tag whose value is the cluster name ("" = resources are not tagged with the cluster).
    pub cluster_key: String,
    /// Tag whose value is the role ("" = not tagged with the role).
    pub role_key: String,
    /// Tag that carries the id, and the form of its value ({id} stands for the id).
    pub id_key: String,
    pub id_value: String,
}

impl Tags {
    /// The id a tag value names, if it has the contract's form.
    pub fn parse_id(&self, value: &str) -> Option<u32> {
        let (pre, post) = self.id_value.split_once("{id}")?;
        let digits = value.strip_prefix(pre)?.strip_suffix(post)?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    pub fn format_id(&self, id: u32) -> String {
        self.id_value.replace("{id}", &id.to_string())
    }
}

impl Cluster {
    /// The ids of this cluster, lowest first: brokers 0..size-1, ZooKeeper myids 1..size.
    pub fn ids(&self) -> std::ops::RangeInclusive<u32> {
        match self.role {
            Role::Kafka => 0..=self.size - 1,
            Role::Zookeeper => 1..=self.size,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Cluster {
    /// Names the cluster in tags, ZooKeeper paths and log groups.
    pub name: String,
    pub role: Role,
    /// How many ids the cluster has: brokers 0..size-1, ZooKeeper myids 1..size.
    pub size: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Boot {
    /// The whole boot must be done by then, or it fails with a reason.
    #[serde(serialize_with = "as_seconds")]
    pub deadline: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Paths {
    /// Where the agent journals what it did.
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct Zookeeper {
    /// host:port[,host:port...][/chroot]
    pub connect: String,
    /// `user:password` for digest authentication; never printed.
    #[serde(serialize_with = "redacted")]
    pub digest: Option<String>,
    #[serde(serialize_with = "as_seconds")]
    pub session_timeout: Duration,
}

/// `[kafka]`: what the agent renders into Kafka's server.properties.
#[derive(Debug, Clone, Serialize)]
pub struct Kafka {
    pub mode: KafkaMode,
    /// The operator's server.properties base; `None` = the agent's built-in defaults.
    pub template: Option<PathBuf>,
    /// Where the rendered file goes.
    pub output: PathBuf,
    /// The group the rendered file (mode 0640) belongs to; `None` = its directory's group.
    pub group: Option<String>,
    /// The advertised host's pattern (`{id}` stands for the id); `None` = the ENI's address.
    pub advertised_host: Option<String>,
    /// Listeners by name (upper case), in name order.
    pub listeners: BTreeMap<String, Listener>,
    /// The listener brokers talk to each other on; `None` only on a controller-only node.
    pub inter_broker_listener: Option<String>,
    /// KRaft mode only.
    pub kraft: Option<Kraft>,
}

/// How the broker finds its metadata: ZooKeeper (Kafka 3.x) or a KRaft quorum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KafkaMode {
    Zookeeper,
    Kraft,
}

/// A listener's `listener.security.protocol.map` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    pub fn is_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    pub fn is_ssl(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

/// One listener. Secrets are referenced by file path only; the agent never reads them.
#[derive(Debug, Clone, Serialize)]
pub struct Listener {
    pub port: u16,
    pub protocol: SecurityProtocol,
    /// SASL_*: the mechanism enabled on the listener (PLAIN, SCRAM-SHA-512, ...).
    pub sasl_mechanism: Option<String>,
    /// SASL_*: a file holding the listener's `sasl.jaas.config` value.
    pub jaas_file: Option<PathBuf>,
    /// SSL, SASL_SSL: the keystore and truststore, and files holding their passwords.
    pub keystore: Option<PathBuf>,
    pub keystore_password_file: Option<PathBuf>,
    pub key_password_file: Option<PathBuf>,
    pub truststore: Option<PathBuf>,
    pub truststore_password_file: Option<PathBuf>,
}

impl Listener {
    /// The secret files this listener references, with the Kafka config key each feeds.
    pub fn secret_files(&self) -> Vec<(&'static str, &Path)> {
        [
            ("ssl.keystore.password", &self.keystore_password_file),
            ("ssl.key.password", &self.key_password_file),
            ("ssl.truststore.password", &self.truststore_password_file),
            ("sasl.jaas.config", &self.jaas_file),
        ]
        .into_iter()
        .filter_map(|(k, p)| p.as_deref().map(|p| (k, p)))
        .collect()
    }
}

/// Where the Kafka distribution keeps its storage tool on the project's AMI.
pub const DEFAULT_FORMAT_COMMAND: [&str; 2] = ["/opt/kafka/bin/kafka-storage.sh", "format"];

/// A KRaft node's part in the quorum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessRole {
    Broker,
    Controller,
}

#[derive(Debug, Clone, Serialize)]
pub struct Kraft {
    /// broker, controller or both, in that order.
    pub process_roles: Vec<ProcessRole>,
    /// `kafka-storage format` as argv (the agent appends `--config <rendered file>
    /// --cluster-id <storage.cluster_id>`): run on a new, empty log directory only.
    pub format_command: Vec<String>,
    /// The listener controllers serve on (`controller.listener.names`).
    pub controller_listener: String,
    pub quorum: Quorum,
}

/// How a KRaft node finds the controllers.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Quorum {
    /// `controller.quorum.voters`: `id@host:port` each (a static quorum).
    Voters(Vec<String>),
    /// `controller.quorum.bootstrap.servers`: `host:port` each (Kafka 3.9+, dynamic quorum).
    BootstrapServers(Vec<String>),
}

fn as_seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

fn redacted<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("<redacted>"),
        None => s.serialize_none(),
    }
}

// The file schema. Every table denies unknown keys; ranges are checked in `validate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    cluster: RawCluster,
    #[serde(default)]
    boot: RawBoot,
    #[serde(default)]
    paths: RawPaths,
    #[serde(default)]
    claim: RawClaim,
    #[serde(default)]
    resources: RawResources,
    #[serde(default)]
    tags: RawTags,
    #[serde(default)]
    storage: RawStorage,
    zookeeper: Option<RawZookeeper>,
    kafka: Option<RawKafka>,
    #[serde(default)]
    signal: RawSignal,
    #[serde(default)]
    watch: RawWatch,
    ensemble: Option<RawEnsemble>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnsemble {
    conf_dir: Option<PathBuf>,
    client_port: Option<i64>,
    quorum_port: Option<i64>,
    election_port: Option<i64>,
    tick_time_ms: Option<i64>,
    init_limit: Option<i64>,
    sync_limit: Option<i64>,
    four_letter_words: Option<Vec<String>>,
    snap_retain_count: Option<i64>,
    purge_interval_hours: Option<i64>,
    superuser_password_file: Option<PathBuf>,
    initial_size: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatch {
    interval_seconds: Option<i64>,
    unhealthy_after_seconds: Option<i64>,
    grace_period_seconds: Option<i64>,
    lease_bound_seconds: Option<i64>,
    listener_timeout_seconds: Option<i64>,
    pidfile: Option<PathBuf>,
    lifecycle_poll_seconds: Option<i64>,
    termination_hook: Option<String>,
    stop_command: Option<Vec<String>>,
    stop_timeout_seconds: Option<i64>,
    leave_timeout_seconds: Option<i64>,
    heartbeat_seconds: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignal {
    stack: Option<String>,
    logical_id: Option<String>,
    lifecycle_hook: Option<String>,
    auto_scaling_group: Option<String>,
    mark_unhealthy_on_failure: Option<bool>,
    ready_timeout_seconds: Option<i64>,
    heartbeat_seconds: Option<i64>,
    ready_command: Option<Vec<String>>,
    failure_tag: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKafka {
    mode: KafkaMode,
    template: Option<PathBuf>,
    output: Option<PathBuf>,
    group: Option<String>,
    advertised_host: Option<String>,
    inter_broker_listener: Option<String>,
    listeners: Option<BTreeMap<String, RawListener>>,
    process_roles: Option<Vec<ProcessRole>>,
    controller_listener: Option<String>,
    quorum_voters: Option<Vec<String>>,
    quorum_bootstrap_servers: Option<Vec<String>>,
    format_command: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    port: i64,
    protocol: SecurityProtocol,
    sasl_mechanism: Option<String>,
    jaas_file: Option<PathBuf>,
    keystore: Option<PathBuf>,
    keystore_password_file: Option<PathBuf>,
    key_password_file: Option<PathBuf>,
    truststore: Option<PathBuf>,
    truststore_password_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    data_dir: Option<PathBuf>,
    filesystem: Option<String>,
    fstab: Option<PathBuf>,
    sysfs_root: Option<PathBuf>,
    dev_root: Option<PathBuf>,
    state_tag: Option<String>,
    cluster_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClaim {
    backend: Option<Backend>,
    path: Option<String>,
    log_group: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResources {
    eni: Option<bool>,
    volume: Option<bool>,
    eni_device_index: Option<i64>,
    volume_device: Option<String>,
    release_grace_seconds: Option<i64>,
    gone_after_seconds: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTags {
    cluster_key: Option<String>,
    role_key: Option<String>,
    id_key: Option<String>,
    id_value: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: String,
    role: Role,
    size: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBoot {
    deadline_seconds: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPaths {
    state_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawZookeeper {
    connect: String,
    digest: Option<String>,
    session_timeout_seconds: Option<i64>,
}

/// The files that make up a configuration, in the order they apply.
pub fn files(main: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let mut out = vec![main.to_path_buf()];
    let dir = main
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("config.d");
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            let mut dropins = Vec::new();
            for entry in entries {
                let entry =
                    entry.map_err(|e| ConfigError::new(&dir, format!("cannot list: {e}")))?;
                let path = entry.path();
                if path.extension().is_some_and(|x| x == "toml") {
                    dropins.push(path);
                }
            }
            dropins.sort();
            out.extend(dropins);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ConfigError::new(&dir, format!("cannot list: {e}"))),
    }
    Ok(out)
}

/// Reads, merges and validates the configuration rooted at `main`.
pub fn load(main: &Path) -> Result<Settings, ConfigError> {
    let mut sources = Vec::new();
    for file in files(main)? {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| ConfigError::new(&file, format!("cannot read: {e}")))?;
        sources.push((file, text));
    }
    parse(&sources)
}

/// Merges and validates already-read sources (path, text), later ones winning.
pub fn parse(sources: &[(PathBuf, String)]) -> Result<Settings, ConfigError> {
    let mut merged = toml::Table::new();
    let mut origin = BTreeMap::new();
    for (file, text) in sources {
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| line_col(text, s.start))
                .map(|(l, c)| format!("line {l} column {c}: "))
                .unwrap_or_default();
            ConfigError::new(
                file,
                format!("{at}invalid TOML: {}", e.message().replace('\n', " ")),
            )
        })?;
        merge(&mut merged, table, "", file, &mut origin);
    }
    let main = sources
        .first()
        .map(|(f, _)| f.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH));
    let file_of = |key: &str| -> PathBuf {
        // The file that set the key, or the nearest table above it, or the main file.
        let mut k = key;
        loop {
            if let Some(f) = origin.get(k) {
                return f.clone();
            }
            match k.rfind('.') {
                Some(i) => k = &k[..i],
                None => return main.clone(),
            }
        }
    };
    let raw: Raw = serde_path_to_error::deserialize(toml::Value::Table(merged)).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner().to_string();
        let message = describe_serde_error(&key, &inner);
        ConfigError::new(&file_of(&key), message)
    })?;
    validate(raw, &|key: &str, msg: String| {
        ConfigError::new(&file_of(key), format!("key `{key}`: {msg}"))
    })
}

fn describe_serde_error(key: &str, inner: &str) -> String {
    let inner = inner.lines().next().unwrap_or(inner).trim();
    if let Some(rest) = inner.strip_prefix("unknown field ") {
        // rest: "`x`, expected one of `a`, `b`"
        let (field, expected) = rest.split_once(", ").unwrap_or((rest, ""));
        let field = field.trim_matches('`');
        let full = if key.is_empty() || key == "." {
            field.to_string()
        } else {
            // serde_path_to_error's path already ends with the unknown key
            key.to_string()
        };
        let full = if full.ends_with(field) {
            full
        } else {
            format!("{full}.{field}")
        };
        return format!("unknown key `{full}`; {expected}");
    }
    if let Some(rest) = inner.strip_prefix("missing field ") {
        let field = rest.trim_matches('`');
        let full = if key.is_empty() || key == "." {
            field.to_string()
        } else {
            format!("{key}.{field}")
        };
        return format!("missing key `{full}`");
    }
    format!("key `{key}`: {inner}")
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

fn merge(
    into: &mut toml::Table,
    from: toml::Table,
    prefix: &str,
    file: &Path,
    origin: &mut BTreeMap<String, PathBuf>,
) {
    for (k, v) in from {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(dst)), toml::Value::Table(src)) => {
                merge(dst, src, &key, file, origin);
            }
            (_, v) => {
                if let toml::Value::Table(t) = &v {
                    origin.insert(key.clone(), file.to_path_buf());
                    let mut fresh = toml::Table::new();
                    merge(&mut fresh, t.clone(), &key, file, origin);
                    into.insert(k, toml::Value::Table(fresh));
                } else {
                    origin.insert(key, file.to_path_buf());
                    into.insert(k, v);
                }
            }
        }
    }
}

fn in_range(
    key: &str,
    v: i64,
    lo: i64,
    hi: i64,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<i64, ConfigError> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(err(
            key,
            format!("{v} is out of range; expected an integer from {lo} to {hi}"),
        ))
    }
}

fn validate(raw: Raw, err: &dyn Fn(&str, String) -> ConfigError) -> Result<Settings, ConfigError> {
    let name = raw.cluster.name;
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !name_ok {
        return Err(err(
            "cluster.name",
            format!("{name:?} is not a cluster name; expected 1 to 64 of A-Z a-z 0-9 - _"),
        ));
    }
    let size = in_range("cluster.size", raw.cluster.size, 1, 1024, err)? as u32;
    let deadline = in_range(
        "boot.deadline_seconds",
        raw.boot.deadline_seconds.unwrap_or(600),
        10,
        86_400,
        err,
    )?;
    let state_dir = raw
        .paths
        .state_dir
        .unwrap_or_else(|| PathBuf::from("/var/lib/kafka-agent"));
    if !state_dir.is_absolute() {
        return Err(err(
            "paths.state_dir",
            format!(
                "{} is relative; expected an absolute path",
                state_dir.display()
            ),
        ));
    }
    let zookeeper = match raw.zookeeper {
        None => None,
        Some(z) => {
            check_connect(&z.connect).map_err(|m| err("zookeeper.connect", m))?;
            if let Some(d) = &z.digest
                && !d.contains(':')
            {
                return Err(err(
                    "zookeeper.digest",
                    "expected the form user:password".to_string(),
                ));
            }
            let timeout = in_range(
                "zookeeper.session_timeout_seconds",
                z.session_timeout_seconds.unwrap_or(10),
                2,
                120,
                err,
            )?;
            Some(Zookeeper {
                connect: z.connect,
                digest: z.digest,
                session_timeout: Duration::from_secs(timeout as u64),
            })
        }
    };
    let backend = raw.claim.backend.unwrap_or(Backend::Zookeeper);
    if backend == Backend::Zookeeper && zookeeper.is_none() {
        return Err(err(
            "claim.backend",
            "\"zookeeper\" needs a [zookeeper] table with `connect`".to_string(),
        ));
    }
    let claim_path = raw
        .claim
        .path
        // Keyed by role as well: a Kafka cluster and a ZooKeeper ensemble named alike must not
        // share a ledger (both would hold id 1).
        .unwrap_or_else(|| format!("/kafka-agent/{}/{name}/claims", raw.cluster.role));
    if !claim_path.starts_with('/') || claim_path.ends_with('/') || claim_path.contains("//") {
        return Err(err(
            "claim.path",
            format!("{claim_path:?} is not a ZooKeeper path; expected /a/b"),
        ));
    }
    let log_group = raw
        .claim
        .log_group
        .unwrap_or_else(|| format!("/kafka-agent/{}/{name}", raw.cluster.role));
    let group_ok = !log_group.is_empty()
        && log_group.len() <= 512
        && log_group
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-/.#".contains(c));
    if !group_ok {
        return Err(err(
            "claim.log_group",
            format!(
                "{log_group:?} is not a log group name; expected 1 to 512 of A-Z a-z 0-9 _ - / . #"
            ),
        ));
    }
    let tags = Tags {
        cluster_key: raw
            .tags
            .cluster_key
            .unwrap_or_else(|| "kafka-agent:cluster".into()),
        role_key: raw
            .tags
            .role_key
            .unwrap_or_else(|| "kafka-agent:role".into()),
        id_key: raw.tags.id_key.unwrap_or_else(|| "kafka-agent:id".into()),
        id_value: raw.tags.id_value.unwrap_or_else(|| "{id}".into()),
    };
    if tags.id_key.is_empty() {
        return Err(err(
            "tags.id_key",
            "is empty; expected a tag key".to_string(),
        ));
    }
    if tags.id_value.matches("{id}").count() != 1 {
        return Err(err(
            "tags.id_value",
            format!(
                "{:?} must contain {{id}} exactly once, e.g. \"KAFKA-{{id}}\"",
                tags.id_value
            ),
        ));
    }
    let eni_device_index = in_range(
        "resources.eni_device_index",
        raw.resources.eni_device_index.unwrap_or(1),
        1,
        15,
        err,
    )?;
    let volume_device = raw
        .resources
        .volume_device
        .unwrap_or_else(|| "/dev/xvdf".into());
    let device_ok = ["/dev/sd", "/dev/xvd"].iter().any(|p| {
        volume_device.strip_prefix(p).is_some_and(|rest| {
            matches!(rest.as_bytes(), [b'f'..=b'z'] | [b'b'..=b'z', b'a'..=b'z'])
        })
    });
    if !device_ok {
        return Err(err(
            "resources.volume_device",
            format!(
                "{volume_device:?} is not an EBS device name; expected /dev/sd[f-z] or /dev/xvd[f-z]"
            ),
        ));
    }
    let release_grace = in_range(
        "resources.release_grace_seconds",
        raw.resources.release_grace_seconds.unwrap_or(60),
        0,
        86_400,
        err,
    )?;
    let gone_after = in_range(
        "resources.gone_after_seconds",
        raw.resources.gone_after_seconds.unwrap_or(300),
        10,
        86_400,
        err,
    )?;
    let st = raw.storage;
    let filesystem = st.filesystem.unwrap_or_else(|| "xfs".into());
    if filesystem != "xfs" && filesystem != "ext4" {
        return Err(err(
            "storage.filesystem",
            format!("{filesystem:?} is not supported; expected \"xfs\" or \"ext4\""),
        ));
    }
    let storage = Storage {
        data_dir: st
            .data_dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/kafka")),
        filesystem,
        fstab: st.fstab.unwrap_or_else(|| PathBuf::from("/etc/fstab")),
        sysfs_root: st.sysfs_root.unwrap_or_else(|| PathBuf::from("/sys")),
        dev_root: st.dev_root.unwrap_or_else(|| PathBuf::from("/dev")),
        state_tag: st.state_tag.unwrap_or_else(|| "kafka-agent:volume".into()),
        cluster_id: st.cluster_id,
    };
    for (key, path) in [
        ("storage.data_dir", &storage.data_dir),
        ("storage.fstab", &storage.fstab),
        ("storage.sysfs_root", &storage.sysfs_root),
        ("storage.dev_root", &storage.dev_root),
    ] {
        if !path.is_absolute() {
            return Err(err(
                key,
                format!("{} is relative; expected an absolute path", path.display()),
            ));
        }
    }
    let kafka = match raw.kafka {
        None => None,
        Some(k) => Some(validate_kafka(
            k,
            raw.cluster.role,
            zookeeper.is_some(),
            err,
        )?),
    };
    // KRaft: a new log directory is formatted with the cluster id, and the identity gate
    // checks data against it; without it neither can be done.
    if kafka.as_ref().is_some_and(|k| k.kraft.is_some()) && storage.cluster_id.is_none() {
        return Err(err(
            "storage.cluster_id",
            "is required with kafka.mode = \"kraft\" (kafka-storage format needs it, and the data on the volume is checked against it)"
                .to_string(),
        ));
    }
    let signal = validate_signal(raw.signal, err)?;
    let watch = validate_watch(raw.watch, err)?;
    let ensemble = validate_ensemble(raw.ensemble, raw.cluster.role, size, err)?;
    Ok(Settings {
        ensemble,
        signal,
        watch,
        kafka,
        storage,
        claim: ClaimSettings {
            backend,
            path: claim_path,
            log_group,
        },
        resources: Resources {
            eni: raw.resources.eni.unwrap_or(true),
            volume: raw.resources.volume.unwrap_or(true),
            eni_device_index: eni_device_index as u32,
            volume_device,
            release_grace: Duration::from_secs(release_grace as u64),
            gone_after: Duration::from_secs(gone_after as u64),
        },
        tags,
        cluster: Cluster {
            name,
            role: raw.cluster.role,
            size,
        },
        boot: Boot {
            deadline: Duration::from_secs(deadline as u64),
        },
        paths: Paths { state_dir },
        zookeeper,
    })
}

/// `[ensemble]`: for role zookeeper (defaults when absent), refused for kafka. A ZooKeeper
/// node claims its myid through CloudWatch Logs, or through another ensemble's ZooKeeper:
/// never through its own, which cannot coordinate its own bootstrap (the agent cannot tell
/// a connect string naming the ensemble itself, so that is the operator's to keep).
fn validate_ensemble(
    raw: Option<RawEnsemble>,
    role: Role,
    size: u32,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Option<EnsembleSettings>, ConfigError> {
    let raw = match (role, raw) {
        (Role::Kafka, None) => return Ok(None),
        (Role::Kafka, Some(_)) => {
            return Err(err(
                "ensemble",
                "is for role \"zookeeper\" only; this node's role is kafka".to_string(),
            ));
        }
        (Role::Zookeeper, r) => r.unwrap_or_default(),
    };
    let d = crate::render::zoo::ServerSettings::default();
    let port = |key: &str, v: Option<i64>, default: u16| -> Result<u16, ConfigError> {
        Ok(in_range(
            &format!("ensemble.{key}"),
            v.unwrap_or(default as i64),
            1,
            65_535,
            err,
        )? as u16)
    };
    let client_port = port("client_port", raw.client_port, d.client_port)?;
    let quorum_port = port("quorum_port", raw.quorum_port, d.quorum_port)?;
    let election_port = port("election_port", raw.election_port, d.election_port)?;
    if client_port == quorum_port || client_port == election_port || quorum_port == election_port {
        return Err(err(
            "ensemble",
            format!(
                "client_port {client_port}, quorum_port {quorum_port} and election_port {election_port} must differ"
            ),
        ));
    }
    let absolute = |key: &str, p: PathBuf| -> Result<PathBuf, ConfigError> {
        if p.is_absolute() {
            Ok(p)
        } else {
            Err(err(
                &format!("ensemble.{key}"),
                format!("{} is relative; expected an absolute path", p.display()),
            ))
        }
    };
    let conf_dir = absolute("conf_dir", raw.conf_dir.unwrap_or(d.conf_dir))?;
    let superuser_password_file = absolute(
        "superuser_password_file",
        raw.superuser_password_file
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SUPERUSER_PASSWORD_FILE)),
    )?;
    for word in raw.four_letter_words.iter().flatten() {
        let ok = word == "*" || (word.len() == 4 && word.chars().all(|c| c.is_ascii_lowercase()));
        if !ok {
            return Err(err(
                "ensemble.four_letter_words",
                format!("{word:?} is not a four-letter word (or `*`)"),
            ));
        }
    }
    Ok(Some(EnsembleSettings {
        server: crate::render::zoo::ServerSettings {
            conf_dir,
            client_port,
            quorum_port,
            election_port,
            tick_time_ms: in_range(
                "ensemble.tick_time_ms",
                raw.tick_time_ms.unwrap_or(d.tick_time_ms as i64),
                100,
                60_000,
                err,
            )? as u32,
            init_limit: in_range(
                "ensemble.init_limit",
                raw.init_limit.unwrap_or(d.init_limit as i64),
                1,
                1000,
                err,
            )? as u32,
            sync_limit: in_range(
                "ensemble.sync_limit",
                raw.sync_limit.unwrap_or(d.sync_limit as i64),
                1,
                1000,
                err,
            )? as u32,
            four_letter_words: raw.four_letter_words.unwrap_or_default(),
            snap_retain_count: in_range(
                "ensemble.snap_retain_count",
                raw.snap_retain_count.unwrap_or(d.snap_retain_count as i64),
                3,
                1000,
                err,
            )? as u32,
            purge_interval_hours: in_range(
                "ensemble.purge_interval_hours",
                raw.purge_interval_hours
                    .unwrap_or(d.purge_interval_hours as i64),
                0,
                8760,
                err,
            )? as u32,
        },
        superuser_password_file,
        initial_size: in_range(
            "ensemble.initial_size",
            raw.initial_size.unwrap_or(size as i64),
            1,
            size as i64,
            err,
        )? as u32,
    }))
}

fn validate_kafka(
    raw: RawKafka,
    role: Role,
    have_zookeeper: bool,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Kafka, ConfigError> {
    if role != Role::Kafka {
        return Err(err(
            "kafka",
            "is for role \"kafka\" only; this node's role is zookeeper".to_string(),
        ));
    }
    if raw.mode == KafkaMode::Zookeeper && !have_zookeeper {
        return Err(err(
            "kafka.mode",
            "\"zookeeper\" needs a [zookeeper] table with `connect` (Kafka's zookeeper.connect)"
                .to_string(),
        ));
    }
    let kraft_mode = raw.mode == KafkaMode::Kraft;
    if !kraft_mode {
        for (key, set) in [
            ("kafka.process_roles", raw.process_roles.is_some()),
            (
                "kafka.controller_listener",
                raw.controller_listener.is_some(),
            ),
            ("kafka.quorum_voters", raw.quorum_voters.is_some()),
            (
                "kafka.quorum_bootstrap_servers",
                raw.quorum_bootstrap_servers.is_some(),
            ),
            ("kafka.format_command", raw.format_command.is_some()),
        ] {
            if set {
                return Err(err(key, "is for mode \"kraft\" only".to_string()));
            }
        }
    }
    let absolute = |key: &str, p: &Path| -> Result<(), ConfigError> {
        if p.is_absolute() {
            Ok(())
        } else {
            Err(err(
                key,
                format!("{} is relative; expected an absolute path", p.display()),
            ))
        }
    };
    if let Some(t) = &raw.template {
        absolute("kafka.template", t)?;
    }
    let output = raw
        .output
        .unwrap_or_else(|| PathBuf::from("/etc/kafka/server.properties"));
    absolute("kafka.output", &output)?;
    if output.file_name().is_none() {
        return Err(err(
            "kafka.output",
            format!("{} names no file", output.display()),
        ));
    }
    if let Some(g) = &raw.group
        && (g.is_empty() || g.contains([':', '\n']))
    {
        return Err(err("kafka.group", format!("{g:?} is not a group name")));
    }
    if let Some(pattern) = &raw.advertised_host {
        let probe = pattern.replace("{id}", "0");
        if !pattern.contains("{id}") || !is_dns_name(&probe) {
            return Err(err(
                "kafka.advertised_host",
                format!(
                    "{pattern:?} is not a host name pattern; expected a DNS name with {{id}}, e.g. \"kafka-{{id}}.internal.example\" (omit the key for the ENI's address)"
                ),
            ));
        }
    }
    let raw_listeners = raw.listeners.unwrap_or_else(|| {
        let plain = |port| RawListener {
            port,
            protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: None,
            jaas_file: None,
            keystore: None,
            keystore_password_file: None,
            key_password_file: None,
            truststore: None,
            truststore_password_file: None,
        };
        let mut d = BTreeMap::from([("PLAINTEXT".to_string(), plain(9092))]);
        if kraft_mode {
            d.insert("CONTROLLER".to_string(), plain(9093));
        }
        d
    });
    if raw_listeners.is_empty() {
        return Err(err(
            "kafka.listeners",
            "is empty; expected at least one listener".to_string(),
        ));
    }
    let mut listeners = BTreeMap::new();
    let mut ports = BTreeMap::new();
    for (name, l) in raw_listeners {
        let key = format!("kafka.listeners.{name}");
        let name_ok = name.starts_with(|c: char| c.is_ascii_uppercase())
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if !name_ok {
            return Err(err(
                &key,
                format!(
                    "{name:?} is not a listener name; expected A-Z 0-9 _, starting with a letter"
                ),
            ));
        }
        let port = in_range(&format!("{key}.port"), l.port, 1, 65_535, err)? as u16;
        if let Some(other) = ports.insert(port, name.clone()) {
            return Err(err(
                &format!("{key}.port"),
                format!("{port} is already listener {other}'s port"),
            ));
        }
        if let Some(m) = &l.sasl_mechanism {
            let ok = !m.is_empty()
                && m.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-' || c == '_');
            if !l.protocol.is_sasl() {
                return Err(err(
                    &format!("{key}.sasl_mechanism"),
                    format!(
                        "needs protocol SASL_PLAINTEXT or SASL_SSL, not {}",
                        l.protocol.as_str()
                    ),
                ));
            }
            if !ok {
                return Err(err(
                    &format!("{key}.sasl_mechanism"),
                    format!("{m:?} is not a SASL mechanism; expected e.g. PLAIN, SCRAM-SHA-512"),
                ));
            }
        }
        if l.jaas_file.is_some() && l.sasl_mechanism.is_none() {
            return Err(err(
                &format!("{key}.jaas_file"),
                "needs `sasl_mechanism` (the JAAS configuration is per mechanism)".to_string(),
            ));
        }
        for (field, path, secret) in [
            ("keystore", &l.keystore, false),
            ("keystore_password_file", &l.keystore_password_file, true),
            ("key_password_file", &l.key_password_file, true),
            ("truststore", &l.truststore, false),
            (
                "truststore_password_file",
                &l.truststore_password_file,
                true,
            ),
            ("jaas_file", &l.jaas_file, true),
        ] {
            let Some(path) = path else { continue };
            let k = format!("{key}.{field}");
            if field != "jaas_file" && !l.protocol.is_ssl() {
                return Err(err(
                    &k,
                    format!(
                        "needs protocol SSL or SASL_SSL, not {}",
                        l.protocol.as_str()
                    ),
                ));
            }
            absolute(&k, path)?;
            let text = path.to_string_lossy();
            // Secrets reach Kafka as ${dir:<directory>:<file>} (DirectoryConfigProvider).
            if secret && (path.file_name().is_none() || text.contains([':', '{', '}', ','])) {
                return Err(err(
                    &k,
                    format!(
                        "{} cannot be referenced; expected a file path without : {{ }} ,",
                        path.display()
                    ),
                ));
            }
        }
        listeners.insert(
            name,
            Listener {
                port,
                protocol: l.protocol,
                sasl_mechanism: l.sasl_mechanism,
                jaas_file: l.jaas_file,
                keystore: l.keystore,
                keystore_password_file: l.keystore_password_file,
                key_password_file: l.key_password_file,
                truststore: l.truststore,
                truststore_password_file: l.truststore_password_file,
            },
        );
    }
    let kraft = if kraft_mode {
        let mut roles = raw
            .process_roles
            .unwrap_or_else(|| vec![ProcessRole::Broker, ProcessRole::Controller]);
        roles.sort();
        roles.dedup();
        if roles.is_empty() {
            return Err(err(
                "kafka.process_roles",
                "is empty; expected [\"broker\"], [\"controller\"] or both".to_string(),
            ));
        }
        let controller = raw
            .controller_listener
            .unwrap_or_else(|| "CONTROLLER".to_string());
        if !listeners.contains_key(&controller) {
            return Err(err(
                "kafka.controller_listener",
                format!(
                    "{controller:?} is not one of the listeners ({})",
                    names(&listeners)
                ),
            ));
        }
        let quorum = match (raw.quorum_voters, raw.quorum_bootstrap_servers) {
            (Some(v), None) => {
                for voter in &v {
                    let ok = voter
                        .split_once('@')
                        .is_some_and(|(id, hp)| id.parse::<u32>().is_ok() && is_host_port(hp));
                    if !ok {
                        return Err(err(
                            "kafka.quorum_voters",
                            format!("{voter:?} is not a voter; expected id@host:port"),
                        ));
                    }
                }
                Quorum::Voters(v)
            }
            (None, Some(b)) => {
                for server in &b {
                    if !is_host_port(server) {
                        return Err(err(
                            "kafka.quorum_bootstrap_servers",
                            format!("{server:?} is not host:port"),
                        ));
                    }
                }
                Quorum::BootstrapServers(b)
            }
            _ => {
                return Err(err(
                    "kafka.quorum_voters",
                    "mode \"kraft\" needs exactly one of `quorum_voters` and `quorum_bootstrap_servers`"
                        .to_string(),
                ));
            }
        };
        if matches!(&quorum, Quorum::Voters(v) | Quorum::BootstrapServers(v) if v.is_empty()) {
            return Err(err(
                "kafka.quorum_voters",
                "the quorum is empty; expected at least one controller".to_string(),
            ));
        }
        let format_command = raw.format_command.unwrap_or_else(|| {
            DEFAULT_FORMAT_COMMAND
                .iter()
                .map(|a| a.to_string())
                .collect()
        });
        if format_command
            .first()
            .is_none_or(|p| !Path::new(p).is_absolute())
        {
            return Err(err(
                "kafka.format_command",
                format!(
                    "{format_command:?} does not start with an absolute path to kafka-storage.sh"
                ),
            ));
        }
        Some(Kraft {
            format_command,
            process_roles: roles,
            controller_listener: controller,
            quorum,
        })
    } else {
        None
    };
    let controller = kraft.as_ref().map(|k| k.controller_listener.as_str());
    let broker_listeners: Vec<&String> = listeners
        .keys()
        .filter(|n| Some(n.as_str()) != controller)
        .collect();
    let is_broker = kraft
        .as_ref()
        .is_none_or(|k| k.process_roles.contains(&ProcessRole::Broker));
    let inter_broker_listener = match raw.inter_broker_listener {
        Some(name) => {
            if !broker_listeners.contains(&&name) {
                return Err(err(
                    "kafka.inter_broker_listener",
                    format!(
                        "{name:?} is not a broker listener; expected one of {}",
                        broker_listeners
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            Some(name)
        }
        None if !is_broker => None,
        None => match broker_listeners.as_slice() {
            [only] => Some((*only).clone()),
            [] => {
                return Err(err(
                    "kafka.listeners",
                    "has no broker listener (only the controller's)".to_string(),
                ));
            }
            _ => {
                return Err(err(
                    "kafka.inter_broker_listener",
                    format!(
                        "is required with several listeners; expected one of {}",
                        names(&listeners)
                    ),
                ));
            }
        },
    };
    if is_broker && broker_listeners.is_empty() {
        return Err(err(
            "kafka.listeners",
            "has no broker listener (only the controller's)".to_string(),
        ));
    }
    Ok(Kafka {
        mode: raw.mode,
        template: raw.template,
        output,
        group: raw.group,
        advertised_host: raw.advertised_host,
        listeners,
        inter_broker_listener,
        kraft,
    })
}

/// `[signal]`: names as CloudFormation and Auto Scaling accept them, a bounded readiness wait.
fn validate_signal(
    raw: RawSignal,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<SignalSettings, ConfigError> {
    // Stack names: a letter, then letters, digits and hyphens (or the stack's ARN); logical
    // ids: alphanumeric; hook and group names: 1 to 255 characters (CloudFormation and
    // Auto Scaling API references).
    let named = |key: &str, v: &Option<String>, ok: &dyn Fn(&str) -> bool, form: &str| match v {
        Some(s) if !ok(s) => Err(err(key, format!("{s:?} is not {form}"))),
        _ => Ok(()),
    };
    named(
        "signal.stack",
        &raw.stack,
        &|s| {
            s.starts_with("arn:")
                || (s.starts_with(|c: char| c.is_ascii_alphabetic())
                    && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        },
        "a stack name; expected a letter, then A-Z a-z 0-9 -, or the stack's ARN",
    )?;
    named(
        "signal.logical_id",
        &raw.logical_id,
        &|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()),
        "a logical resource id; expected A-Z a-z 0-9",
    )?;
    for (key, v) in [
        ("signal.lifecycle_hook", &raw.lifecycle_hook),
        ("signal.auto_scaling_group", &raw.auto_scaling_group),
    ] {
        named(
            key,
            v,
            &|s| (1..=255).contains(&s.len()) && !s.contains(char::is_control),
            "a name; expected 1 to 255 characters",
        )?;
    }
    let ready_timeout = in_range(
        "signal.ready_timeout_seconds",
        raw.ready_timeout_seconds.unwrap_or(300),
        1,
        86_400,
        err,
    )?;
    let heartbeat = in_range(
        "signal.heartbeat_seconds",
        raw.heartbeat_seconds.unwrap_or(60),
        1,
        7_200,
        err,
    )?;
    if let Some(argv) = &raw.ready_command
        && !argv.first().is_some_and(|p| p.starts_with('/'))
    {
        return Err(err(
            "signal.ready_command",
            "expected an argv array whose first element is an absolute program path".to_string(),
        ));
    }
    let failure_tag = raw
        .failure_tag
        .unwrap_or_else(|| "kafka-agent:failure".into());
    if failure_tag.len() > 128 || failure_tag.starts_with("aws:") {
        return Err(err(
            "signal.failure_tag",
            format!("{failure_tag:?} is not a tag key; expected at most 128 characters, not aws:"),
        ));
    }
    Ok(SignalSettings {
        stack: raw.stack,
        logical_id: raw.logical_id,
        lifecycle_hook: raw.lifecycle_hook,
        auto_scaling_group: raw.auto_scaling_group,
        mark_unhealthy_on_failure: raw.mark_unhealthy_on_failure.unwrap_or(false),
        ready_timeout: Duration::from_secs(ready_timeout as u64),
        heartbeat: Duration::from_secs(heartbeat as u64),
        ready_command: raw.ready_command,
        failure_tag,
    })
}

/// `[watch]`: bounded durations, an absolute pidfile, a hook name as Auto Scaling takes it, a
/// stop command starting with an absolute path. A check that takes longer than the interval
/// delays the next one (never two at once). The leave's bound holds the stop's.
fn validate_watch(
    raw: RawWatch,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<WatchSettings, ConfigError> {
    let secs = |key: &str, v: Option<i64>, default: i64, lo: i64, hi: i64| {
        in_range(key, v.unwrap_or(default), lo, hi, err).map(|s| Duration::from_secs(s as u64))
    };
    let interval = secs("watch.interval_seconds", raw.interval_seconds, 10, 1, 3_600)?;
    let unhealthy_after = secs(
        "watch.unhealthy_after_seconds",
        raw.unhealthy_after_seconds,
        60,
        1,
        86_400,
    )?;
    let grace_period = secs(
        "watch.grace_period_seconds",
        raw.grace_period_seconds,
        600,
        0,
        86_400,
    )?;
    let lease_bound = secs(
        "watch.lease_bound_seconds",
        raw.lease_bound_seconds,
        900,
        10,
        86_400,
    )?;
    let listener_timeout = secs(
        "watch.listener_timeout_seconds",
        raw.listener_timeout_seconds,
        5,
        1,
        60,
    )?;
    if let Some(p) = &raw.pidfile
        && !p.is_absolute()
    {
        return Err(err(
            "watch.pidfile",
            format!("{} is relative; expected an absolute path", p.display()),
        ));
    }
    let lifecycle_poll = secs(
        "watch.lifecycle_poll_seconds",
        raw.lifecycle_poll_seconds,
        5,
        1,
        3_600,
    )?;
    if let Some(h) = &raw.termination_hook
        && (!(1..=255).contains(&h.len()) || h.contains(char::is_control))
    {
        return Err(err(
            "watch.termination_hook",
            format!("{h:?} is not a name; expected 1 to 255 characters"),
        ));
    }
    let stop_command = raw
        .stop_command
        .unwrap_or_else(|| DEFAULT_STOP_COMMAND.map(String::from).to_vec());
    if !stop_command.first().is_some_and(|p| p.starts_with('/')) {
        return Err(err(
            "watch.stop_command",
            "expected an argv array whose first element is an absolute program path".to_string(),
        ));
    }
    let stop_timeout = secs(
        "watch.stop_timeout_seconds",
        raw.stop_timeout_seconds,
        300,
        1,
        7_200,
    )?;
    // The lifecycle hook's global timeout is at most 48 hours (Auto Scaling User Guide,
    // "Amazon EC2 Auto Scaling lifecycle hooks").
    let leave_timeout = secs(
        "watch.leave_timeout_seconds",
        raw.leave_timeout_seconds,
        900,
        30,
        172_800,
    )?;
    if stop_timeout >= leave_timeout {
        return Err(err(
            "watch.stop_timeout_seconds",
            format!(
                "{} is not below watch.leave_timeout_seconds ({}); expected the stop to fit in the leave",
                stop_timeout.as_secs(),
                leave_timeout.as_secs()
            ),
        ));
    }
    let heartbeat = secs(
        "watch.heartbeat_seconds",
        raw.heartbeat_seconds,
        60,
        1,
        7_200,
    )?;
    Ok(WatchSettings {
        interval,
        unhealthy_after,
        grace_period,
        lease_bound,
        listener_timeout,
        pidfile: raw.pidfile,
        lifecycle_poll,
        termination_hook: raw.termination_hook,
        stop_command,
        stop_timeout,
        leave_timeout,
        heartbeat,
    })
}

fn names<V>(map: &BTreeMap<String, V>) -> String {
    map.keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A DNS name: dot-separated labels of A-Z a-z 0-9 -, not starting or ending with -.
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// host:port with a DNS name or an IPv4 address (or [IPv6]) and a port 1..65535.
fn is_host_port(s: &str) -> bool {
    s.rsplit_once(':').is_some_and(|(h, p)| {
        let host_ok = match h.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => is_dns_name(h),
        };
        host_ok && p.parse::<u16>().is_ok_and(|p| p > 0)
    })
}

fn check_connect(connect: &str) -> Result<(), String> {
    let expected = "expected host:port[,host:port...][/chroot]";
    let (hosts, chroot) = match connect.find('/') {
        Some(i) => (&connect[..i], Some(&connect[i..])),
        None => (connect, None),
    };
    if hosts.is_empty() {
        return Err(format!("{connect:?} names no server; {expected}"));
    }
    for hp in hosts.split(',') {
        let ok = hp
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !ok {
            return Err(format!("{hp:?} is not host:port; {expected}"));
        }
    }
    if let Some(c) = chroot
        && (c.len() < 2 || c.ends_with('/') || c.contains("//"))
    {
        return Err(format!("chroot {c:?} is not a ZooKeeper path; {expected}"));
    }
    Ok(())
}

impl Settings {
    /// The effective configuration as TOML, secrets redacted.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("settings serialize to TOML")
    }

    /// The tags (key, value) a claim sets on its instance: the id's tag, and the cluster's
    /// (so that another cluster's instance with the same id tag is never taken for ours).
    pub fn instance_tags(&self, id: u32) -> Vec<(String, String)> {
        let tags = &self.tags;
        let mut out = vec![(tags.id_key.clone(), tags.format_id(id))];
        if !tags.cluster_key.is_empty() {
            out.push((tags.cluster_key.clone(), self.cluster.name.clone()));
        }
        out
    }

    /// The tags (key, value) every resource of this cluster and role carries, plus the id tag
    /// of `id` when given: the tag contract, as the EC2 seam asks for it.
    pub fn resource_tags(&self, id: Option<u32>) -> Vec<(String, String)> {
        let tags = &self.tags;
        let mut out = Vec::new();
        if let Some(id) = id {
            out.push((tags.id_key.clone(), tags.format_id(id)));
        }
        if !tags.cluster_key.is_empty() {
            out.push((tags.cluster_key.clone(), self.cluster.name.clone()));
        }
        if !tags.role_key.is_empty() {
            out.push((tags.role_key.clone(), self.cluster.role.to_string()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(name: &str, text: &str) -> (PathBuf, String) {
        (PathBuf::from(name), text.to_string())
    }

    const BASE: &str = "[cluster]\nname = \"orders\"\nrole = \"kafka\"\nsize = 3\n\
                        [claim]\nbackend = \"cloudwatch-logs\"\n";

    #[test]
    fn tag_contract_parses_the_seed_form() {
        let mut s = parse(&[src("/etc/a.toml", BASE)]).unwrap();
        assert_eq!(s.tags.parse_id("7"), Some(7));
        s.tags.id_key = "Name".into();
        s.tags.id_value = "KAFKA-{id}".into();
        assert_eq!(s.tags.parse_id("KAFKA-12"), Some(12));
        assert_eq!(s.tags.parse_id("KAFKA-"), None);
        assert_eq!(s.tags.parse_id("KAFKA-1x"), None);
        assert_eq!(s.tags.format_id(3), "KAFKA-3");
        assert_eq!(s.cluster.ids(), 0..=2);
    }

    #[test]
    fn a_zookeeper_nodes_ensemble_settings_are_checked() {
        let zk = BASE.replace("role = \"kafka\"", "role = \"zookeeper\"");
        let ens = "[ensemble]\nsuperuser_password_file = \"/etc/kafka-agent/zk-super\"\n";
        // Defaults only: the ZooKeeper conventions and a password file of its own.
        let s = parse(&[src("/etc/a.toml", &zk)]).unwrap();
        let got = s.ensemble.unwrap();
        assert_eq!(
            got.superuser_password_file,
            PathBuf::from(DEFAULT_SUPERUSER_PASSWORD_FILE)
        );
        assert_eq!(got.initial_size, 3);
        let s = parse(&[src("/etc/a.toml", &format!("{zk}{ens}"))]).unwrap();
        let got = s.ensemble.unwrap();
        assert_eq!(got.server.client_port, 2181);
        assert_eq!(got.server.quorum_port, 2888);
        assert_eq!(
            got.superuser_password_file,
            PathBuf::from("/etc/kafka-agent/zk-super")
        );
        // Claims through another ensemble's ZooKeeper are the operator's choice.
        let on_zk = format!(
            "{}[zookeeper]\nconnect = \"zk:2181\"\n{ens}",
            zk.replace("cloudwatch-logs", "zookeeper")
        );
        assert!(parse(&[src("/etc/a.toml", &on_zk)]).is_ok());
        // Bad values are named.
        for (bad, key) in [
            ("client_port = 2888\n", "ensemble"),
            ("quorum_port = 70000\n", "ensemble.quorum_port"),
            ("conf_dir = \"conf\"\n", "ensemble.conf_dir"),
            (
                "four_letter_words = [\"stat\", \"dump!\"]\n",
                "ensemble.four_letter_words",
            ),
            ("snap_retain_count = 2\n", "ensemble.snap_retain_count"),
            ("initial_size = 4\n", "ensemble.initial_size"),
        ] {
            let e = parse(&[src("/etc/a.toml", &format!("{zk}{ens}{bad}"))]).unwrap_err();
            assert!(e.message.contains(&format!("`{key}`")), "{bad}: {e}");
        }
        let e = parse(&[src(
            "/etc/a.toml",
            &format!("{zk}[ensemble]\nsuperuser_password_file = \"pw\"\n"),
        )])
        .unwrap_err();
        assert!(
            e.message
                .contains(&format!("`{}`", "ensemble.superuser_password_file")),
            "{e}"
        );
        // A broker has no [ensemble].
        let e = parse(&[src("/etc/a.toml", &format!("{BASE}{ens}"))]).unwrap_err();
        assert!(e.message.contains(&format!("`{}`", "ensemble")), "{e}");
    }

    #[test]
    fn zookeeper_backend_needs_a_connect_string() {
        let e = parse(&[src(
            "/etc/a.toml",
            &BASE.replace("cloudwatch-logs", "zookeeper"),
        )])
        .unwrap_err();
        assert!(e.message.contains("claim.backend"), "{e}");
    }

    #[test]
    fn kraft_needs_a_cluster_id_and_an_absolute_format_command() {
        let kraft = "[kafka]\nmode = \"kraft\"\nquorum_voters = [\"1@c1:9093\"]\n\
                     [kafka.listeners.PLAINTEXT]\nport = 9092\nprotocol = \"PLAINTEXT\"\n\
                     [kafka.listeners.CONTROLLER]\nport = 9093\nprotocol = \"PLAINTEXT\"\n";
        let e = parse(&[src("/etc/a.toml", &format!("{BASE}{kraft}"))]).unwrap_err();
        assert!(e.message.contains("storage.cluster_id"), "{e}");
        let with_id = format!("{BASE}[storage]\ncluster_id = \"c1\"\n{kraft}");
        let s = parse(&[src("/etc/a.toml", &with_id)]).unwrap();
        assert_eq!(
            s.kafka.unwrap().kraft.unwrap().format_command,
            DEFAULT_FORMAT_COMMAND
        );
        let relative = with_id.replace(
            "[kafka.listeners.PLAINTEXT]",
            "format_command = [\"kafka-storage.sh\", \"format\"]\n[kafka.listeners.PLAINTEXT]",
        );
        let e = parse(&[src("/etc/a.toml", &relative)]).unwrap_err();
        assert!(e.message.contains("kafka.format_command"), "{e}");
        let zk_mode = format!(
            "{BASE}[zookeeper]\nconnect = \"zk:2181\"\n\
             [kafka]\nmode = \"zookeeper\"\nformat_command = [\"/bin/true\"]\n"
        );
        let e = parse(&[src("/etc/a.toml", &zk_mode)]).unwrap_err();
        assert!(e.message.contains("kafka.format_command"), "{e}");
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let s = parse(&[src("/etc/a.toml", BASE)]).unwrap();
        assert_eq!(s.cluster.name, "orders");
        assert_eq!(s.cluster.role, Role::Kafka);
        assert_eq!(s.boot.deadline, Duration::from_secs(600));
        assert_eq!(s.paths.state_dir, PathBuf::from("/var/lib/kafka-agent"));
    }

    #[test]
    fn later_dropin_wins_key_by_key() {
        let s = parse(&[
            src("/etc/a.toml", BASE),
            src("/etc/config.d/10.toml", "[cluster]\nsize = 5\n"),
        ])
        .unwrap();
        assert_eq!(s.cluster.size, 5);
        assert_eq!(s.cluster.name, "orders");
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let e = parse(&[
            src("/etc/a.toml", BASE),
            src("/etc/config.d/10.toml", "[cluster]\nsizes = 5\n"),
        ])
        .unwrap_err();
        assert_eq!(e.file, PathBuf::from("/etc/config.d/10.toml"));
        assert!(e.message.contains("unknown key `cluster.sizes`"), "{e}");
    }

    #[test]
    fn wrong_type_names_key_and_expected_form() {
        let e = parse(&[src(
            "/etc/a.toml",
            &BASE.replace("size = 3", "size = \"3\""),
        )])
        .unwrap_err();
        assert!(e.message.contains("cluster.size"), "{e}");
        assert!(e.message.contains("expected i64"), "{e}");
    }

    #[test]
    fn out_of_range_is_rejected() {
        let e = parse(&[src("/etc/a.toml", &BASE.replace("size = 3", "size = 0"))]).unwrap_err();
        assert!(
            e.to_string()
                .contains("key `cluster.size`: 0 is out of range"),
            "{e}"
        );
    }

    #[test]
    fn malformed_toml_gives_line() {
        let e = parse(&[src("/etc/a.toml", "[cluster\nname=1")]).unwrap_err();
        assert!(e.message.starts_with("line 1 column"), "{e}");
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn zookeeper_connect_is_checked_and_digest_redacted() {
        let bad = format!("{BASE}[zookeeper]\nconnect = \"zk1,zk2:2181\"\n");
        let e = parse(&[src("/etc/a.toml", &bad)]).unwrap_err();
        assert!(e.message.contains("zookeeper.connect"), "{e}");
        let good = format!(
            "{BASE}[zookeeper]\nconnect = \"zk1:2181,zk2:2181/kafka\"\ndigest = \"u:secret\"\n"
        );
        let s = parse(&[src("/etc/a.toml", &good)]).unwrap();
        let shown = s.to_toml();
        assert!(
            shown.contains("<redacted>") && !shown.contains("secret"),
            "{shown}"
        );
    }
}
