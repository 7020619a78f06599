//! Step 5, render: Kafka's server.properties from the operator's template (or built-in
//! defaults) plus the keys the agent owns: the id, the quorum or ZooKeeper, the listeners and
//! their advertised host, `log.dirs` on the mounted volume and `broker.rack` from the AZ.
//!
//! [`render`] is pure: settings, template text and the node's facts in, file text out.
//! [`read_template`] and [`write`] are the only I/O; [`apply`] chains the three. The template's
//! lines are kept as they are, in order; the agent's keys follow in a marked block, escaped as
//! `java.util.Properties` reads them ([`properties`]). Secrets (JAAS configuration, keystore
//! passwords) are referenced by file path through Kafka's `DirectoryConfigProvider`; the agent
//! never reads them, so they cannot reach a log, an error or the journal.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::config::{KafkaMode, ProcessRole, Quorum, Role, Settings};

pub mod properties;
pub mod zoo;

/// The mode of the rendered file: the owner (root) writes, Kafka's group reads, no one else.
pub const FILE_MODE: u32 = 0o640;

/// First line of the agent's block in the rendered file.
pub const BEGIN: &str = "# BEGIN kafka-agent: keys owned by the agent (its [kafka] settings); a template must not set them";
/// Last line of the agent's block.
pub const END: &str = "# END kafka-agent";

/// Keys the agent owns whatever the mode: a template that sets one is refused. (Keys the
/// agent writes beyond these, such as a listener's keystore, are refused too.)
pub const OWNED_KEYS: &[&str] = &[
    "broker.id",
    "node.id",
    "process.roles",
    "controller.listener.names",
    "controller.quorum.voters",
    "controller.quorum.bootstrap.servers",
    "zookeeper.connect",
    "listeners",
    "advertised.listeners",
    "listener.security.protocol.map",
    "inter.broker.listener.name",
    "security.inter.broker.protocol",
    "log.dirs",
    "log.dir",
    "broker.rack",
];

/// What this node is, as the earlier steps found it.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The claimed broker id (`broker.id` / `node.id`).
    pub id: u32,
    /// The instance's availability zone (`broker.rack`).
    pub az: &'a str,
    /// The ENI's private address: the advertised host unless `kafka.advertised_host` is set.
    pub address: IpAddr,
    /// Where the volume is mounted (`storage.data_dir`); `log.dirs` lies below it.
    pub mount: &'a Path,
    pub settings: &'a Settings,
}

/// A template as read from its file.
#[derive(Debug, Clone)]
pub struct Template {
    pub path: PathBuf,
    pub text: String,
}

/// Why a file could not be rendered. Messages name files, lines and keys, never a value.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(
        "{file}:{line}: the template sets `{key}`, which kafka-agent owns; remove it there (the agent renders it from its [kafka] settings)"
    )]
    OwnedKey {
        file: PathBuf,
        line: usize,
        key: String,
    },
    #[error("{file}:{line}: {message}")]
    Template {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error("the configuration has no [kafka] table; rendering server.properties needs one")]
    NoKafka,
    #[error("{0}")]
    Input(String),
}

impl RenderError {
    /// The stable kind for `status --json` and FAILURE reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            RenderError::OwnedKey { .. } | RenderError::Template { .. } => "invalid_template",
            RenderError::NoKafka | RenderError::Input(_) => "invalid_config",
        }
    }
}

/// Reads the template at `path` (UTF-8; values Kafka should see as non-ASCII belong in
/// `\uXXXX` escapes, as `Properties.load` reads ISO-8859-1).
pub fn read_template(path: &Path) -> Result<Template> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading template {}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| RenderError::Template {
        file: path.to_path_buf(),
        line: 1 + e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count(),
        message: "not UTF-8; write non-ASCII characters as \\uXXXX".to_string(),
    })?;
    Ok(Template {
        path: path.to_path_buf(),
        text,
    })
}

/// The rendered server.properties for `inputs`, from `template` (`None`: built-in defaults).
pub fn render(inputs: &Inputs, template: Option<&Template>) -> Result<String, RenderError> {
    let kafka = inputs.settings.kafka.as_ref().ok_or(RenderError::NoKafka)?;
    let owned = owned_entries(inputs)?;
    let mut out = String::new();
    match template {
        Some(t) => {
            let keys = properties::keys(&t.text).map_err(|m| RenderError::Template {
                file: t.path.clone(),
                line: m.line,
                message: m.message,
            })?;
            let ours: BTreeSet<&str> = owned
                .iter()
                .map(|(k, _)| k.as_str())
                .chain(OWNED_KEYS.iter().copied())
                .collect();
            if let Some(e) = keys.iter().find(|e| ours.contains(e.key.as_str())) {
                return Err(RenderError::OwnedKey {
                    file: t.path.clone(),
                    line: e.line,
                    key: e.key.clone(),
                });
            }
            out.push_str(&properties::comment(&format!(
                "Rendered by kafka-agent from {}; edit that file or the agent's [kafka] settings, not this one.",
                t.path.display()
            )));
            out.push_str(&t.text);
            if !t.text.is_empty() && !t.text.ends_with(['\n', '\r']) {
                out.push('\n');
            }
        }
        None => {
            out.push_str(&properties::comment(
                "Rendered by kafka-agent from its built-in defaults; set [kafka] template to start from a file of your own.",
            ));
            out.push_str(&defaults(inputs.settings.cluster.size, kafka.mode));
        }
    }
    // A blank line also ends a continuation the template may leave open at its end.
    out.push('\n');
    out.push_str(BEGIN);
    out.push('\n');
    for (k, v) in &owned {
        out.push_str(&properties::line(k, v));
    }
    out.push_str(END);
    out.push('\n');
    Ok(out)
}

/// The agent's keys and values for this node, in the order they are written.
pub fn owned_entries(inputs: &Inputs) -> Result<Vec<(String, String)>, RenderError> {
    let settings = inputs.settings;
    let kafka = settings.kafka.as_ref().ok_or(RenderError::NoKafka)?;
    let mut out: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, v: String| out.push((k.to_string(), v));

    let controller = kafka.kraft.as_ref().map(|k| k.controller_listener.as_str());
    let roles = kafka.kraft.as_ref().map(|k| k.process_roles.as_slice());
    let is_broker = roles.is_none_or(|r| r.contains(&ProcessRole::Broker));
    let is_controller = roles.is_some_and(|r| r.contains(&ProcessRole::Controller));

    match &kafka.kraft {
        None => put("broker.id", inputs.id.to_string()),
        Some(kraft) => {
            put("node.id", inputs.id.to_string());
            let roles: Vec<&str> = kraft
                .process_roles
                .iter()
                .map(|r| match r {
                    ProcessRole::Broker => "broker",
                    ProcessRole::Controller => "controller",
                })
                .collect();
            put("process.roles", roles.join(","));
            match &kraft.quorum {
                Quorum::Voters(v) => put("controller.quorum.voters", v.join(",")),
                Quorum::BootstrapServers(b) => {
                    put("controller.quorum.bootstrap.servers", b.join(","))
                }
            }
            put(
                "controller.listener.names",
                kraft.controller_listener.clone(),
            );
        }
    }
    if kafka.mode == KafkaMode::Zookeeper {
        let zk = settings.zookeeper.as_ref().ok_or_else(|| {
            RenderError::Input("kafka.mode \"zookeeper\" needs [zookeeper] connect".to_string())
        })?;
        put("zookeeper.connect", zk.connect.clone());
    }

    let advertised_host = match &kafka.advertised_host {
        Some(pattern) => pattern.replace("{id}", &inputs.id.to_string()),
        None => match inputs.address {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        },
    };
    let bind = match inputs.address {
        IpAddr::V4(_) => "0.0.0.0",
        IpAddr::V6(_) => "[::]",
    };
    // A broker binds its broker listeners, a controller the controller's; only broker
    // listeners are advertised (Kafka 3.x refuses advertised controller listeners, and
    // advertised.listeners on a controller-only node).
    let bound: Vec<(&String, &crate::config::Listener)> = kafka
        .listeners
        .iter()
        .filter(|(name, _)| {
            if Some(name.as_str()) == controller {
                is_controller
            } else {
                is_broker
            }
        })
        .collect();
    put(
        "listeners",
        bound
            .iter()
            .map(|(n, l)| format!("{n}://{bind}:{}", l.port))
            .collect::<Vec<_>>()
            .join(","),
    );
    if is_broker {
        put(
            "advertised.listeners",
            bound
                .iter()
                .filter(|(n, _)| Some(n.as_str()) != controller)
                .map(|(n, l)| format!("{n}://{advertised_host}:{}", l.port))
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    put(
        "listener.security.protocol.map",
        kafka
            .listeners
            .iter()
            .map(|(n, l)| format!("{n}:{}", l.protocol.as_str()))
            .collect::<Vec<_>>()
            .join(","),
    );
    if is_broker && let Some(ib) = &kafka.inter_broker_listener {
        put("inter.broker.listener.name", ib.clone());
        if let Some(m) = &kafka.listeners[ib].sasl_mechanism {
            put("sasl.mechanism.inter.broker.protocol", m.clone());
        }
    }
    if let Some(c) = controller
        && let Some(m) = &kafka.listeners[c].sasl_mechanism
    {
        put("sasl.mechanism.controller.protocol", m.clone());
    }
    let mut secrets = false;
    for (name, l) in &kafka.listeners {
        let prefix = format!("listener.name.{}", name.to_ascii_lowercase());
        if let Some(m) = &l.sasl_mechanism {
            put(&format!("{prefix}.sasl.enabled.mechanisms"), m.clone());
            if let Some(jaas) = &l.jaas_file {
                put(
                    &format!("{prefix}.{}.sasl.jaas.config", m.to_ascii_lowercase()),
                    secret_ref(jaas)?,
                );
                secrets = true;
            }
        }
        for (key, path, secret) in [
            ("ssl.keystore.location", &l.keystore, false),
            ("ssl.keystore.password", &l.keystore_password_file, true),
            ("ssl.key.password", &l.key_password_file, true),
            ("ssl.truststore.location", &l.truststore, false),
            ("ssl.truststore.password", &l.truststore_password_file, true),
        ] {
            let Some(path) = path else { continue };
            let value = if secret {
                secrets = true;
                secret_ref(path)?
            } else {
                utf8(path, "a keystore path")?.to_string()
            };
            put(&format!("{prefix}.{key}"), value);
        }
    }
    if secrets {
        put("config.providers", "dir".to_string());
        put(
            "config.providers.dir.class",
            "org.apache.kafka.common.config.provider.DirectoryConfigProvider".to_string(),
        );
    }
    let log_dir = crate::storage::data_dir(Role::Kafka, inputs.mount);
    let log_dir = utf8(&log_dir, "log.dirs")?;
    // Kafka splits log.dirs at commas and trims blanks around each entry.
    if log_dir.contains(',') || log_dir.trim() != log_dir {
        return Err(RenderError::Input(format!(
            "{log_dir:?} cannot be log.dirs: a comma or surrounding blanks would split it"
        )));
    }
    put("log.dirs", log_dir.to_string());
    put("broker.rack", inputs.az.to_string());
    Ok(out)
}

/// `${dir:<directory>:<file>}`: Kafka's DirectoryConfigProvider reads the file's content.
fn secret_ref(path: &Path) -> Result<String, RenderError> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(RenderError::Input(format!(
            "{} is not a file path",
            path.display()
        )));
    };
    let dir = utf8(dir, "a secret's directory")?;
    let name = name
        .to_str()
        .ok_or_else(|| RenderError::Input(format!("{} is not UTF-8", path.display())))?;
    Ok(format!("${{dir:{dir}:{name}}}"))
}

fn utf8<'p>(path: &'p Path, what: &str) -> Result<&'p str, RenderError> {
    path.to_str()
        .ok_or_else(|| RenderError::Input(format!("{} ({what}) is not UTF-8", path.display())))
}

/// The base used without a template: Kafka's sample server.properties, sized for the cluster.
fn defaults(size: u32, mode: KafkaMode) -> String {
    let rf = size.min(3);
    let min_isr = size.min(2);
    let mut s = format!(
        "num.network.threads=3
num.io.threads=8
socket.send.buffer.bytes=102400
socket.receive.buffer.bytes=102400
socket.request.max.bytes=104857600
num.partitions=1
num.recovery.threads.per.data.dir=1
offsets.topic.replication.factor={rf}
transaction.state.log.replication.factor={rf}
transaction.state.log.min.isr={min_isr}
log.retention.hours=168
log.segment.bytes=1073741824
log.retention.check.interval.ms=300000
group.initial.rebalance.delay.ms=3000
"
    );
    if mode == KafkaMode::Zookeeper {
        s.push_str("zookeeper.connection.timeout.ms=18000\n");
    }
    s
}

/// Writes `text` to `path` atomically (temp file in the same directory, fsync, rename, fsync
/// of the directory) with mode 0640 and group `group` (by name; `None` = the directory's
/// group). A file that already holds `text` is not rewritten (only its mode and group are
/// set right). Returns whether the content changed.
pub fn write(path: &Path, text: &str, group: Option<&str>) -> Result<bool> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .with_context(|| format!("{} has no directory", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let gid = match group {
        Some(name) => {
            let groups = std::fs::read_to_string("/etc/group").context("reading /etc/group")?;
            gid_of(&groups, name)
                .with_context(|| format!("group {name:?} (kafka.group) is not in /etc/group"))?
        }
        None => std::fs::metadata(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .gid(),
    };
    match std::fs::read(path) {
        Ok(old) if old == text.as_bytes() => {
            let meta = std::fs::metadata(path)?;
            if meta.gid() != gid {
                std::os::unix::fs::chown(path, None, Some(gid))
                    .with_context(|| format!("setting the group of {}", path.display()))?;
            }
            if meta.mode() & 0o7777 != FILE_MODE {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(FILE_MODE))
                    .with_context(|| format!("setting the mode of {}", path.display()))?;
            }
            return Ok(false);
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.kafka-agent.tmp"));
    // A temp file left by a crash is ours to replace.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", tmp.display()));
        }
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    std::os::unix::fs::fchown(&f, None, Some(gid))
        .with_context(|| format!("setting the group of {}", tmp.display()))?;
    // The umask may have taken bits off the mode asked for.
    f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
        .with_context(|| format!("setting the mode of {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(true)
}

/// The gid of group `name` in /etc/group's text.
fn gid_of(groups: &str, name: &str) -> Option<u32> {
    groups.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.next()?;
        f.next()?.parse().ok()
    })
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub path: PathBuf,
    /// Whether the file's content changed (Kafka needs a restart to see it).
    pub changed: bool,
}

/// Reads the configured template, renders and writes `kafka.output`.
pub fn apply(inputs: &Inputs) -> Result<Rendered> {
    let kafka = inputs.settings.kafka.as_ref().ok_or(RenderError::NoKafka)?;
    let template = kafka.template.as_deref().map(read_template).transpose()?;
    let text = render(inputs, template.as_ref())?;
    let changed = write(&kafka.output, &text, kafka.group.as_deref())
        .with_context(|| format!("writing {}", kafka.output.display()))?;
    Ok(Rendered {
        path: kafka.output.clone(),
        changed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn settings(kafka: &str) -> Settings {
        let text = format!(
            "[cluster]\nname = \"orders\"\nrole = \"kafka\"\nsize = 3\n\
             [zookeeper]\nconnect = \"zk1:2181,zk2:2181/kafka\"\n\
             [storage]\ncluster_id = \"c1\"\n[kafka]\n{kafka}"
        );
        crate::config::parse(&[(PathBuf::from("/etc/a.toml"), text)]).unwrap()
    }

    fn entries(s: &Settings, id: u32) -> Vec<(String, String)> {
        owned_entries(&Inputs {
            id,
            az: "us-east-1b",
            address: IpAddr::V4(Ipv4Addr::new(10, 0, 1, 7)),
            mount: Path::new("/var/lib/kafka"),
            settings: s,
        })
        .unwrap()
    }

    fn get<'a>(e: &'a [(String, String)], k: &str) -> Option<&'a str> {
        e.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn zookeeper_mode_defaults() {
        let s = settings("mode = \"zookeeper\"\n");
        let e = entries(&s, 2);
        assert_eq!(get(&e, "broker.id"), Some("2"));
        assert_eq!(
            get(&e, "zookeeper.connect"),
            Some("zk1:2181,zk2:2181/kafka")
        );
        assert_eq!(get(&e, "listeners"), Some("PLAINTEXT://0.0.0.0:9092"));
        assert_eq!(
            get(&e, "advertised.listeners"),
            Some("PLAINTEXT://10.0.1.7:9092")
        );
        assert_eq!(get(&e, "inter.broker.listener.name"), Some("PLAINTEXT"));
        assert_eq!(get(&e, "log.dirs"), Some("/var/lib/kafka/kafka-logs"));
        assert_eq!(get(&e, "broker.rack"), Some("us-east-1b"));
        assert_eq!(get(&e, "node.id"), None);
        assert_eq!(get(&e, "config.providers"), None);
    }

    #[test]
    fn kraft_broker_only_binds_no_controller_listener() {
        let s = settings(
            "mode = \"kraft\"\nprocess_roles = [\"broker\"]\n\
             quorum_bootstrap_servers = [\"c1:9093\"]\n",
        );
        let e = entries(&s, 0);
        assert_eq!(get(&e, "process.roles"), Some("broker"));
        assert_eq!(get(&e, "listeners"), Some("PLAINTEXT://0.0.0.0:9092"));
        assert_eq!(
            get(&e, "listener.security.protocol.map"),
            Some("CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT")
        );
        assert_eq!(get(&e, "controller.listener.names"), Some("CONTROLLER"));
        assert_eq!(get(&e, "zookeeper.connect"), None);
    }

    #[test]
    fn kraft_controller_only_advertises_nothing() {
        let s = settings(
            "mode = \"kraft\"\nprocess_roles = [\"controller\"]\n\
             quorum_voters = [\"0@c0:9093\"]\n",
        );
        let e = entries(&s, 0);
        assert_eq!(get(&e, "listeners"), Some("CONTROLLER://0.0.0.0:9093"));
        assert_eq!(get(&e, "advertised.listeners"), None);
        assert_eq!(get(&e, "inter.broker.listener.name"), None);
    }

    #[test]
    fn secrets_are_referenced_by_path() {
        let s = settings(
            "mode = \"zookeeper\"\n[kafka.listeners.INTERNAL]\nport = 9094\n\
             protocol = \"SASL_SSL\"\nsasl_mechanism = \"SCRAM-SHA-512\"\n\
             jaas_file = \"/etc/kafka/secrets/jaas\"\nkeystore = \"/etc/kafka/ks.p12\"\n\
             keystore_password_file = \"/etc/kafka/secrets/ks.pw\"\n",
        );
        let e = entries(&s, 1);
        assert_eq!(
            get(&e, "listener.name.internal.scram-sha-512.sasl.jaas.config"),
            Some("${dir:/etc/kafka/secrets:jaas}")
        );
        assert_eq!(
            get(&e, "listener.name.internal.ssl.keystore.password"),
            Some("${dir:/etc/kafka/secrets:ks.pw}")
        );
        assert_eq!(
            get(&e, "sasl.mechanism.inter.broker.protocol"),
            Some("SCRAM-SHA-512")
        );
        assert_eq!(get(&e, "config.providers"), Some("dir"));
    }

    #[test]
    fn template_setting_an_emitted_key_is_refused() {
        let s = settings(
            "mode = \"zookeeper\"\n[kafka.listeners.INTERNAL]\nport = 9094\n\
             protocol = \"SSL\"\nkeystore_password_file = \"/s/pw\"\n",
        );
        let t = Template {
            path: PathBuf::from("/etc/t.properties"),
            text: "a=1\n# c\nconfig.providers = file\n".into(),
        };
        let inputs = Inputs {
            id: 0,
            az: "us-east-1a",
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            mount: Path::new("/d"),
            settings: &s,
        };
        let e = render(&inputs, Some(&t)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/t.properties:3: the template sets `config.providers`, which kafka-agent owns; remove it there (the agent renders it from its [kafka] settings)"
        );
        assert_eq!(e.kind(), "invalid_template");
    }

    #[test]
    fn an_open_continuation_ends_before_the_block() {
        let s = settings("mode = \"zookeeper\"\n");
        let t = Template {
            path: PathBuf::from("/t"),
            text: "a=b\\".into(),
        };
        let inputs = Inputs {
            id: 0,
            az: "z",
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            mount: Path::new("/d"),
            settings: &s,
        };
        let text = render(&inputs, Some(&t)).unwrap();
        let keys: Vec<String> = properties::keys(&text)
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys[0], "a");
        assert_eq!(keys[1], "broker.id");
    }

    #[test]
    fn log_dirs_with_a_comma_is_refused() {
        let s = settings("mode = \"zookeeper\"\n");
        let e = owned_entries(&Inputs {
            id: 0,
            az: "z",
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            mount: Path::new("/a,b"),
            settings: &s,
        })
        .unwrap_err();
        assert!(e.to_string().contains("log.dirs"), "{e}");
    }

    fn config_err(kafka: &str) -> String {
        let text = format!(
            "[cluster]\nname = \"orders\"\nrole = \"kafka\"\nsize = 3\n\
             [claim]\nbackend = \"cloudwatch-logs\"\n{kafka}"
        );
        crate::config::parse(&[(PathBuf::from("/etc/a.toml"), text)])
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn config_kafka_table_is_validated() {
        for (kafka, want) in [
            (
                "[kafka]\nmode = \"zookeeper\"\n",
                "key `kafka.mode`: \"zookeeper\" needs a [zookeeper] table",
            ),
            ("[kafka]\n", "missing key `kafka.mode`"),
            (
                "[kafka]\nmode = \"kraft\"\nquorum_voters = [\"0@c:9093\"]\nlisteners.A = { port = 1, protocol = \"PLAINTEXT\", bogus = 1 }\n",
                "unknown key `kafka.listeners.A.bogus`",
            ),
            (
                "[kafka]\nmode = \"kraft\"\nquorum_voters = [\"c:9093\"]\n",
                "key `kafka.quorum_voters`: \"c:9093\" is not a voter; expected id@host:port",
            ),
            (
                "[kafka]\nmode = \"kraft\"\n",
                "needs exactly one of `quorum_voters` and `quorum_bootstrap_servers`",
            ),
            (
                "[kafka]\nmode = \"kraft\"\nquorum_voters = [\"0@c:9093\"]\nadvertised_host = \"kafka.example\"\n",
                "key `kafka.advertised_host`",
            ),
            (
                "[kafka]\nmode = \"kraft\"\nquorum_voters = [\"0@c:9093\"]\n[kafka.listeners.A]\nport = 1\nprotocol = \"PLAINTEXT\"\n[kafka.listeners.B]\nport = 2\nprotocol = \"SSL\"\n[kafka.listeners.CONTROLLER]\nport = 3\nprotocol = \"SSL\"\n",
                "key `kafka.inter_broker_listener`: is required with several listeners",
            ),
            (
                "[kafka]\nmode = \"kraft\"\nquorum_voters = [\"0@c:9093\"]\ncontroller_listener = \"CTL\"\n",
                "key `kafka.controller_listener`: \"CTL\" is not one of the listeners (CONTROLLER, PLAINTEXT)",
            ),
            (
                "[kafka]\nmode = \"kraft\"\nquorum_voters = [\"0@c:9093\"]\n[kafka.listeners.PLAINTEXT]\nport = 9092\nprotocol = \"PLAINTEXT\"\nkeystore = \"/k\"\n[kafka.listeners.CONTROLLER]\nport = 9092\nprotocol = \"PLAINTEXT\"\n",
                "key `kafka.listeners.PLAINTEXT.port`: 9092 is already listener CONTROLLER's port",
            ),
            (
                "[kafka]\nmode = \"kraft\"\nquorum_voters = [\"0@c:9093\"]\n[kafka.listeners.PLAINTEXT]\nport = 9092\nprotocol = \"PLAINTEXT\"\nkeystore = \"/k\"\n[kafka.listeners.CONTROLLER]\nport = 9093\nprotocol = \"PLAINTEXT\"\n",
                "key `kafka.listeners.PLAINTEXT.keystore`: needs protocol SSL or SASL_SSL, not PLAINTEXT",
            ),
            (
                "[kafka]\nmode = \"kraft\"\nquorum_voters = [\"0@c:9093\"]\n[kafka.listeners.PLAINTEXT]\nport = 9092\nprotocol = \"SSL\"\nkeystore_password_file = \"/a:b/pw\"\n[kafka.listeners.CONTROLLER]\nport = 9093\nprotocol = \"PLAINTEXT\"\n",
                "key `kafka.listeners.PLAINTEXT.keystore_password_file`: /a:b/pw cannot be referenced",
            ),
            (
                "[kafka]\nmode = \"kraft\"\nquorum_voters = [\"0@c:9093\"]\n[kafka.listeners.PLAINTEXT]\nport = 9092\nprotocol = \"SASL_SSL\"\njaas_file = \"/s/jaas\"\n[kafka.listeners.CONTROLLER]\nport = 9093\nprotocol = \"PLAINTEXT\"\n",
                "key `kafka.listeners.PLAINTEXT.jaas_file`: needs `sasl_mechanism`",
            ),
            (
                "[kafka]\nmode = \"kraft\"\nquorum_voters = [\"0@c:9093\"]\n[kafka.listeners.plain]\nport = 9092\nprotocol = \"PLAINTEXT\"\n",
                "key `kafka.listeners.plain`: \"plain\" is not a listener name",
            ),
            (
                "[kafka]\nmode = \"kraft\"\nquorum_voters = [\"0@c:9093\"]\ntemplate = \"base.properties\"\n",
                "key `kafka.template`: base.properties is relative",
            ),
        ] {
            let e = config_err(kafka);
            assert!(e.starts_with("/etc/a.toml: "), "{e}");
            assert!(e.contains(want), "{kafka}\n  got: {e}\n  want: {want}");
        }
    }

    #[test]
    fn config_kafka_for_a_zookeeper_node_or_kraft_keys_in_zookeeper_mode_are_refused() {
        let text = "[cluster]\nname = \"o\"\nrole = \"zookeeper\"\nsize = 3\n\
                    [claim]\nbackend = \"cloudwatch-logs\"\n[kafka]\nmode = \"kraft\"\n";
        let e = crate::config::parse(&[(PathBuf::from("/etc/a.toml"), text.into())]).unwrap_err();
        assert!(
            e.message
                .contains("key `kafka`: is for role \"kafka\" only"),
            "{e}"
        );
        let s = "[zookeeper]\nconnect = \"zk:2181\"\n[kafka]\nmode = \"zookeeper\"\nprocess_roles = [\"broker\"]\n"
            .to_string();
        let e = config_err(&s);
        assert!(
            e.contains("key `kafka.process_roles`: is for mode \"kraft\" only"),
            "{e}"
        );
    }

    #[test]
    fn config_with_kafka_prints_as_toml() {
        let s = settings(
            "mode = \"zookeeper\"\n[kafka.listeners.INTERNAL]\nport = 9094\n\
             protocol = \"SASL_SSL\"\nsasl_mechanism = \"PLAIN\"\n\
             jaas_file = \"/etc/kafka/secrets/jaas\"\n",
        );
        let shown = s.to_toml();
        assert!(shown.contains("[kafka.listeners.INTERNAL]"), "{shown}");
        assert!(
            shown.contains("jaas_file = \"/etc/kafka/secrets/jaas\""),
            "{shown}"
        );
        let k = settings("mode = \"kraft\"\nquorum_voters = [\"0@c:9093\"]\n");
        assert!(k.to_toml().contains("voters"), "{}", k.to_toml());
    }

    #[test]
    fn gid_lookup() {
        let g = "root:x:0:\nkafka:x:998:alice\n";
        assert_eq!(gid_of(g, "kafka"), Some(998));
        assert_eq!(gid_of(g, "kaf"), None);
    }
}
