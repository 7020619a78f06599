//! Step 5, render: server.properties against golden files under tests/golden/, each read
//! back with `java.util.Properties` (the JDK installed with ZooKeeper) and compared key by key
//! with the map the test expects, so escaping and continuation lines are Kafka's reading, not
//! ours. Also: a template setting an agent-owned key is refused naming key, file and line; an
//! unchanged render does not rewrite the file; the file is 0640.
//!
//! `UPDATE_GOLDEN=1 cargo test -p kafka-agent --test render` rewrites the goldens (review the
//! diff).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use kafka_agent::config::{self, Settings};
use kafka_agent::render::{self, Inputs, RenderError, Template, properties};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn settings(extra: &str) -> Settings {
    let text = format!(
        "[cluster]\nname = \"orders\"\nrole = \"kafka\"\nsize = 3\n\
         [claim]\nbackend = \"cloudwatch-logs\"\n{extra}"
    );
    config::parse(&[(PathBuf::from("/etc/kafka-agent/agent.toml"), text)])
        .unwrap_or_else(|e| panic!("test configuration: {e}"))
}

/// A golden's template: read from tests/golden/, shown in the output under the path an
/// operator would use (the checkout's path must not leak into the golden).
fn template(name: &str) -> Template {
    let mut t = render::read_template(&golden_dir().join(name)).unwrap();
    t.path = PathBuf::from("/etc/kafka-agent/server.properties");
    t
}

const ZK: &str = "[zookeeper]\nconnect = \"zk1:2181,zk2:2181,zk3:2181/kafka\"\n";

/// The built-in defaults for a 3-node cluster.
fn builtin(zookeeper: bool) -> Vec<(&'static str, &'static str)> {
    let mut v = vec![
        ("num.network.threads", "3"),
        ("num.io.threads", "8"),
        ("socket.send.buffer.bytes", "102400"),
        ("socket.receive.buffer.bytes", "102400"),
        ("socket.request.max.bytes", "104857600"),
        ("num.partitions", "1"),
        ("num.recovery.threads.per.data.dir", "1"),
        ("offsets.topic.replication.factor", "3"),
        ("transaction.state.log.replication.factor", "3"),
        ("transaction.state.log.min.isr", "2"),
        ("log.retention.hours", "168"),
        ("log.segment.bytes", "1073741824"),
        ("log.retention.check.interval.ms", "300000"),
        ("group.initial.rebalance.delay.ms", "3000"),
    ];
    if zookeeper {
        v.push(("zookeeper.connection.timeout.ms", "18000"));
    }
    v
}

struct Case {
    golden: &'static str,
    settings: Settings,
    template: Option<Template>,
    id: u32,
    az: &'static str,
    address: Ipv4Addr,
    mount: &'static str,
    expected: Vec<(&'static str, &'static str)>,
}

fn zookeeper_with_template() -> Case {
    let settings = settings(&format!(
        "{ZK}[kafka]\nmode = \"zookeeper\"\ntemplate = \"/etc/kafka-agent/server.properties\"\n\
         inter_broker_listener = \"INTERNAL\"\n\
         [kafka.listeners.INTERNAL]\nport = 9091\nprotocol = \"PLAINTEXT\"\n\
         [kafka.listeners.CLIENT]\nport = 9092\nprotocol = \"SSL\"\n\
         keystore = \"/etc/kafka/ssl/broker.p12\"\n\
         keystore_password_file = \"/etc/kafka/secrets/keystore.password\"\n"
    ));
    Case {
        golden: "zookeeper-template.properties",
        settings,
        template: Some(template("zookeeper.template.properties")),
        id: 1,
        az: "us-east-1b",
        address: Ipv4Addr::new(10, 0, 2, 15),
        mount: "/var/lib/kafka",
        expected: vec![
            // The template's keys, as Kafka reads them.
            ("num.network.threads", "8"),
            ("num.io.threads", "16"),
            ("socket.request.max.bytes", "104857600"),
            ("default.replication.factor", "3"),
            ("min.insync.replicas", "2"),
            ("auto.create.topics.enable", "false"),
            ("log.cleanup.policy", "delete,compact"),
            ("ssl.keystore.type", "PKCS12"),
            (
                "ssl.cipher.suites",
                "TLS_AES_256_GCM_SHA384,TLS_AES_128_GCM_SHA256",
            ),
            ("custom.key:with=separators", "café"),
            ("group.initial.rebalance.delay.ms", "3000"),
            // The agent's.
            ("broker.id", "1"),
            ("zookeeper.connect", "zk1:2181,zk2:2181,zk3:2181/kafka"),
            ("listeners", "CLIENT://0.0.0.0:9092,INTERNAL://0.0.0.0:9091"),
            (
                "advertised.listeners",
                "CLIENT://10.0.2.15:9092,INTERNAL://10.0.2.15:9091",
            ),
            (
                "listener.security.protocol.map",
                "CLIENT:SSL,INTERNAL:PLAINTEXT",
            ),
            ("inter.broker.listener.name", "INTERNAL"),
            (
                "listener.name.client.ssl.keystore.location",
                "/etc/kafka/ssl/broker.p12",
            ),
            (
                "listener.name.client.ssl.keystore.password",
                "${dir:/etc/kafka/secrets:keystore.password}",
            ),
            ("config.providers", "dir"),
            (
                "config.providers.dir.class",
                "org.apache.kafka.common.config.provider.DirectoryConfigProvider",
            ),
            ("log.dirs", "/var/lib/kafka/kafka-logs"),
            ("broker.rack", "us-east-1b"),
        ],
    }
}

fn kraft_combined() -> Case {
    let settings = settings(
        "[storage]\ncluster_id = \"MkU3OEVBNTcwNTJENDM2Qk\"\n[kafka]\nmode = \"kraft\"\n\
         quorum_voters = [\"0@10.0.1.10:9093\", \"1@10.0.2.10:9093\", \"2@10.0.3.10:9093\"]\n",
    );
    let mut expected = builtin(false);
    expected.extend([
        ("node.id", "2"),
        ("process.roles", "broker,controller"),
        (
            "controller.quorum.voters",
            "0@10.0.1.10:9093,1@10.0.2.10:9093,2@10.0.3.10:9093",
        ),
        ("controller.listener.names", "CONTROLLER"),
        (
            "listeners",
            "CONTROLLER://0.0.0.0:9093,PLAINTEXT://0.0.0.0:9092",
        ),
        ("advertised.listeners", "PLAINTEXT://10.0.3.10:9092"),
        (
            "listener.security.protocol.map",
            "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        ),
        ("inter.broker.listener.name", "PLAINTEXT"),
        ("log.dirs", "/var/lib/kafka/kafka-logs"),
        ("broker.rack", "us-east-1c"),
    ]);
    Case {
        golden: "kraft.properties",
        settings,
        template: None,
        id: 2,
        az: "us-east-1c",
        address: Ipv4Addr::new(10, 0, 3, 10),
        mount: "/var/lib/kafka",
        expected,
    }
}

fn sasl_ssl() -> Case {
    let settings = settings(&format!(
        "{ZK}[kafka]\nmode = \"zookeeper\"\ninter_broker_listener = \"REPLICATION\"\n\
         [kafka.listeners.REPLICATION]\nport = 9094\nprotocol = \"SASL_SSL\"\n\
         sasl_mechanism = \"SCRAM-SHA-512\"\n\
         jaas_file = \"/etc/kafka/secrets/replication.jaas\"\n\
         keystore = \"/etc/kafka/ssl/broker.jks\"\n\
         keystore_password_file = \"/etc/kafka/secrets/keystore.password\"\n\
         key_password_file = \"/etc/kafka/secrets/key.password\"\n\
         truststore = \"/etc/kafka/ssl/truststore.jks\"\n\
         truststore_password_file = \"/etc/kafka/secrets/truststore.password\"\n\
         [kafka.listeners.CLIENTS]\nport = 9096\nprotocol = \"SASL_SSL\"\n\
         sasl_mechanism = \"PLAIN\"\n\
         jaas_file = \"/etc/kafka/secrets/clients.jaas\"\n\
         keystore = \"/etc/kafka/ssl/broker.jks\"\n\
         keystore_password_file = \"/etc/kafka/secrets/keystore.password\"\n\
         [kafka.listeners.LOCAL]\nport = 9092\nprotocol = \"SASL_PLAINTEXT\"\n"
    ));
    let mut expected = builtin(true);
    expected.extend([
        ("broker.id", "0"),
        ("zookeeper.connect", "zk1:2181,zk2:2181,zk3:2181/kafka"),
        (
            "listeners",
            "CLIENTS://0.0.0.0:9096,LOCAL://0.0.0.0:9092,REPLICATION://0.0.0.0:9094",
        ),
        (
            "advertised.listeners",
            "CLIENTS://10.0.1.5:9096,LOCAL://10.0.1.5:9092,REPLICATION://10.0.1.5:9094",
        ),
        (
            "listener.security.protocol.map",
            "CLIENTS:SASL_SSL,LOCAL:SASL_PLAINTEXT,REPLICATION:SASL_SSL",
        ),
        ("inter.broker.listener.name", "REPLICATION"),
        ("sasl.mechanism.inter.broker.protocol", "SCRAM-SHA-512"),
        ("listener.name.clients.sasl.enabled.mechanisms", "PLAIN"),
        (
            "listener.name.clients.plain.sasl.jaas.config",
            "${dir:/etc/kafka/secrets:clients.jaas}",
        ),
        (
            "listener.name.clients.ssl.keystore.location",
            "/etc/kafka/ssl/broker.jks",
        ),
        (
            "listener.name.clients.ssl.keystore.password",
            "${dir:/etc/kafka/secrets:keystore.password}",
        ),
        (
            "listener.name.replication.sasl.enabled.mechanisms",
            "SCRAM-SHA-512",
        ),
        (
            "listener.name.replication.scram-sha-512.sasl.jaas.config",
            "${dir:/etc/kafka/secrets:replication.jaas}",
        ),
        (
            "listener.name.replication.ssl.keystore.location",
            "/etc/kafka/ssl/broker.jks",
        ),
        (
            "listener.name.replication.ssl.keystore.password",
            "${dir:/etc/kafka/secrets:keystore.password}",
        ),
        (
            "listener.name.replication.ssl.key.password",
            "${dir:/etc/kafka/secrets:key.password}",
        ),
        (
            "listener.name.replication.ssl.truststore.location",
            "/etc/kafka/ssl/truststore.jks",
        ),
        (
            "listener.name.replication.ssl.truststore.password",
            "${dir:/etc/kafka/secrets:truststore.password}",
        ),
        ("config.providers", "dir"),
        (
            "config.providers.dir.class",
            "org.apache.kafka.common.config.provider.DirectoryConfigProvider",
        ),
        ("log.dirs", "/var/lib/kafka/kafka-logs"),
        ("broker.rack", "us-east-1a"),
    ]);
    Case {
        golden: "sasl-ssl.properties",
        settings,
        template: None,
        id: 0,
        az: "us-east-1a",
        address: Ipv4Addr::new(10, 0, 1, 5),
        mount: "/var/lib/kafka",
        expected,
    }
}

/// A broker-only KRaft node advertising a DNS name; its volume is mounted at a path that
/// needs escaping (a blank, `:`, `=` and a non-ASCII letter).
fn dns_pattern() -> Case {
    let settings = settings(
        "[storage]\ncluster_id = \"MkU3OEVBNTcwNTJENDM2Qk\"\n[kafka]\nmode = \"kraft\"\nprocess_roles = [\"broker\"]\n\
         advertised_host = \"kafka-{id}.orders.internal.example\"\n\
         quorum_bootstrap_servers = [\"controller-0.orders.internal.example:9093\", \
         \"controller-1.orders.internal.example:9093\"]\n\
         [kafka.listeners.BROKER]\nport = 9092\nprotocol = \"PLAINTEXT\"\n\
         [kafka.listeners.CONTROLLER]\nport = 9093\nprotocol = \"PLAINTEXT\"\n",
    );
    let mut expected = builtin(false);
    expected.extend([
        ("node.id", "7"),
        ("process.roles", "broker"),
        (
            "controller.quorum.bootstrap.servers",
            "controller-0.orders.internal.example:9093,controller-1.orders.internal.example:9093",
        ),
        ("controller.listener.names", "CONTROLLER"),
        ("listeners", "BROKER://0.0.0.0:9092"),
        (
            "advertised.listeners",
            "BROKER://kafka-7.orders.internal.example:9092",
        ),
        (
            "listener.security.protocol.map",
            "BROKER:PLAINTEXT,CONTROLLER:PLAINTEXT",
        ),
        ("inter.broker.listener.name", "BROKER"),
        ("log.dirs", "/srv/kafka data: données=1/kafka-logs"),
        ("broker.rack", "eu-west-1a"),
    ]);
    Case {
        golden: "dns-pattern.properties",
        settings,
        template: None,
        id: 7,
        az: "eu-west-1a",
        address: Ipv4Addr::new(10, 0, 1, 99),
        mount: "/srv/kafka data: données=1",
        expected,
    }
}

fn render_case(case: &Case) -> String {
    let inputs = Inputs {
        id: case.id,
        az: case.az,
        address: IpAddr::V4(case.address),
        mount: Path::new(case.mount),
        settings: &case.settings,
    };
    render::render(&inputs, case.template.as_ref())
        .unwrap_or_else(|e| panic!("{}: {e}", case.golden))
}

fn check_golden(case: Case) {
    let text = render_case(&case);
    let path = golden_dir().join(case.golden);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let golden = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(
        text,
        golden,
        "render differs from {} (UPDATE_GOLDEN=1 rewrites it; review the diff)",
        path.display()
    );
    assert!(text.is_ascii(), "{}: not ASCII", case.golden);
    let expected: BTreeMap<String, String> = case
        .expected
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(
        expected.len(),
        case.expected.len(),
        "{}: duplicate expected key",
        case.golden
    );
    assert_maps_equal(&java_load(&path), &expected, case.golden);
}

#[test]
fn golden_zookeeper_mode_with_template() {
    check_golden(zookeeper_with_template());
}

#[test]
fn golden_kraft_with_builtin_defaults() {
    check_golden(kraft_combined());
}

#[test]
fn golden_sasl_ssl_listeners() {
    check_golden(sasl_ssl());
}

#[test]
fn golden_dns_pattern_advertised_host() {
    check_golden(dns_pattern());
}

/// Keys and values that need every escape, written by the renderer, read by Java.
#[test]
fn escaping_is_what_java_reads() {
    let pairs: Vec<(String, String)> = vec![
        ("plain".into(), "value".into()),
        ("a:b=c d".into(), "x:y=z".into()),
        ("#hash".into(), "#not a comment".into()),
        ("!bang".into(), "!".into()),
        ("back\\slash".into(), "C:\\path\\".into()),
        ("lead".into(), "  two leading blanks, trailing  ".into()),
        ("tab\tkey".into(), "\ttab\tvalue".into()),
        ("newline".into(), "line1\nline2\r\n".into()),
        ("formfeed".into(), "\u{c}".into()),
        ("empty".into(), String::new()),
        ("unicode.é".into(), "ünïcødé ✓ 😀".into()),
        (" leading.space.key".into(), "=starts with equals".into()),
        ("colon.value".into(), ":starts with colon".into()),
        ("dollar".into(), "${dir:/etc/kafka/secrets:x}".into()),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("escapes.properties");
    let mut text = String::new();
    for (k, v) in &pairs {
        text.push_str(&properties::line(k, v));
    }
    assert!(text.is_ascii());
    std::fs::write(&path, &text).unwrap();
    let expected: BTreeMap<String, String> = pairs.into_iter().collect();
    assert_maps_equal(&java_load(&path), &expected, "escapes");
}

#[test]
fn template_setting_broker_id_is_refused_naming_key_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.properties");
    std::fs::write(
        &path,
        "# base\nnum.io.threads=8\nsasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule \\\n  required password=\"hunter2\";\nbroker.id = 42\n",
    )
    .unwrap();
    let s = settings(&format!("{ZK}[kafka]\nmode = \"zookeeper\"\n"));
    let t = render::read_template(&path).unwrap();
    let err = render::render(
        &Inputs {
            id: 1,
            az: "us-east-1a",
            address: IpAddr::V4(Ipv4Addr::new(10, 0, 1, 5)),
            mount: Path::new("/var/lib/kafka"),
            settings: &s,
        },
        Some(&t),
    )
    .unwrap_err();
    assert!(
        matches!(err, RenderError::OwnedKey { line: 5, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("{}:5: ", path.display())),
        "names file and line: {msg}"
    );
    assert!(msg.contains("`broker.id`"), "names the key: {msg}");
    assert!(
        !msg.contains("hunter2") && !msg.contains("42"),
        "quotes no value: {msg}"
    );
    assert_eq!(err.kind(), "invalid_template");
}

#[test]
fn unchanged_render_is_not_rewritten_and_the_file_is_0640() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("etc/kafka/server.properties");
    let mut s = settings(&format!(
        "{ZK}[kafka]\nmode = \"zookeeper\"\noutput = \"{}\"\n",
        out.display()
    ));
    let apply = |s: &Settings, id| {
        render::apply(&Inputs {
            id,
            az: "us-east-1a",
            address: IpAddr::V4(Ipv4Addr::new(10, 0, 1, 5)),
            mount: Path::new("/var/lib/kafka"),
            settings: s,
        })
        .unwrap()
    };

    let first = apply(&s, 1);
    assert!(first.changed);
    assert_eq!(first.path, out);
    let meta = std::fs::metadata(&out).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o640, "mode");
    assert_eq!(
        meta.gid(),
        std::fs::metadata(out.parent().unwrap()).unwrap().gid(),
        "group: the directory's"
    );

    std::thread::sleep(std::time::Duration::from_millis(20));
    let again = apply(&s, 1);
    assert!(!again.changed, "same content: not rewritten");
    let meta2 = std::fs::metadata(&out).unwrap();
    assert_eq!(
        (meta2.ino(), meta2.mtime(), meta2.mtime_nsec()),
        (meta.ino(), meta.mtime(), meta.mtime_nsec()),
        "an unchanged file keeps its inode and mtime"
    );

    // A wrong mode is put right without a rewrite.
    std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    assert!(!apply(&s, 1).changed);
    let meta3 = std::fs::metadata(&out).unwrap();
    assert_eq!(meta3.mode() & 0o7777, 0o640);
    assert_eq!(meta3.ino(), meta.ino());

    // Another id changes the content: a new file, renamed over the old one, still 0640.
    let changed = apply(&s, 2);
    assert!(changed.changed);
    let meta4 = std::fs::metadata(&out).unwrap();
    assert_ne!(
        meta4.ino(),
        meta.ino(),
        "written through a temp file and rename"
    );
    assert_eq!(meta4.mode() & 0o7777, 0o640);
    assert!(
        std::fs::read_to_string(&out)
            .unwrap()
            .contains("\nbroker.id=2\n")
    );
    let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec!["server.properties"], "no temp file left");

    // A named group (root's, by name) is looked up and set.
    s.kafka.as_mut().unwrap().group = Some("root".into());
    assert!(!apply(&s, 2).changed);
    assert_eq!(std::fs::metadata(&out).unwrap().gid(), 0);
}

// --- Java ---------------------------------------------------------------------------------

/// The whole map java.util.Properties reads from `file`, each entry in the esc form.
fn java_load(file: &Path) -> Vec<String> {
    kafka_testbed::java::load(file).unwrap_or_else(|e| panic!("{e:#}"))
}

fn assert_maps_equal(java: &[String], expected: &BTreeMap<String, String>, what: &str) {
    let mut want: Vec<String> = expected
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                kafka_testbed::java::esc(k),
                kafka_testbed::java::esc(v)
            )
        })
        .collect();
    want.sort();
    let missing: Vec<&String> = want.iter().filter(|l| !java.contains(l)).collect();
    let extra: Vec<&String> = java.iter().filter(|l| !want.contains(l)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: java.util.Properties reads a different map\n  expected but not read: {missing:#?}\n  read but not expected: {extra:#?}"
    );
}
