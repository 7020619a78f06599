//! The stand-in broker (`kafka-standin`, NOT Kafka) on the testbed: started inside an
//! instance's namespace as kafka.service would start Kafka, it registers `/brokers/ids/<id>`
//! with Kafka's JSON at the advertised address, keeps and checks `meta.properties`, refuses
//! what Kafka refuses, serves its test line protocol, hangs on request and deregisters on
//! SIGTERM. Needs root; shares one moto and one ZooKeeper per test binary; every test makes
//! its own world and uses its own ZooKeeper chroot.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use kafka_testbed::{self as testbed, World};

const STANDIN: &str = env!("CARGO_BIN_EXE_kafka-standin");

/// One instance of a fresh world, with what a broker there needs.
struct Node {
    world: World,
    inst: String,
    ip: String,
    /// The ZooKeeper chroot of this test's cluster.
    chroot: String,
    logs: PathBuf,
}

impl Node {
    async fn new() -> Node {
        let world = World::create(testbed::shared(), &["a"]).await.unwrap();
        let inst = world.launch("a", &[]).await.unwrap();
        let out = world
            .ec2
            .describe_instances()
            .instance_ids(&inst)
            .send()
            .await
            .unwrap();
        let ip = out.reservations()[0].instances()[0]
            .private_ip_address()
            .unwrap()
            .to_string();
        let chroot = format!("/{}", world.id);
        let logs = world.host_dir(&inst).join("data/kafka-logs");
        Node {
            world,
            inst,
            ip,
            chroot,
            logs,
        }
    }

    /// A ZooKeeper-mode server.properties as the agent renders one, plus `extra` lines
    /// (later keys win).
    fn zk_properties(&self, id: u32, extra: &str) -> String {
        format!(
            "# Rendered for the stand-in test\n\
             broker.id={id}\n\
             zookeeper.connect={zk}{chroot}\n\
             listeners=CLIENT://0.0.0.0:9092,INTERNAL://0.0.0.0:9091\n\
             advertised.listeners=CLIENT://{ip}:9092,INTERNAL://{ip}:9091\n\
             listener.security.protocol.map=CLIENT:SSL,INTERNAL:PLAINTEXT\n\
             inter.broker.listener.name=INTERNAL\n\
             log.dirs={logs}\n\
             broker.rack=us-east-1a\n{extra}",
            zk = self.world.zookeeper_for(&self.inst).unwrap(),
            chroot = self.chroot,
            ip = self.ip,
            logs = self.logs.display(),
        )
    }

    fn write_config(&self, text: &str) -> PathBuf {
        let path = self
            .world
            .host_dir(&self.inst)
            .join("etc/kafka/server.properties");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Starts the stand-in on the host with this server.properties.
    fn start(&self, properties: &str) -> Broker {
        let config = self.write_config(properties);
        let stderr = self
            .world
            .host_dir(&self.inst)
            .join(format!("kafka-standin.{:x}.log", rand::random::<u32>()));
        let mut cmd = self.world.command(&self.inst, STANDIN).unwrap();
        cmd.arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap());
        let child = testbed::process::spawn_tied(cmd).unwrap();
        Broker {
            child,
            stderr,
            started: Instant::now(),
        }
    }

    /// Runs the stand-in until it exits (it must within 30 s): its status and stderr.
    fn refused(&self, properties: &str) -> (ExitStatus, String) {
        let mut broker = self.start(properties);
        let status = broker.wait_exit(Duration::from_secs(30));
        (status, broker.stderr())
    }

    /// One connection to the broker at `port` of the advertised address (from inside the
    /// host's namespace): sends each request, gathers the answer lines until `END`, `OK ...`
    /// or `ERR ...`; stops at the first request that gets no answer within `wait`.
    fn talk(
        &self,
        port: u16,
        requests: &[&str],
        wait: Duration,
    ) -> Vec<Result<Vec<String>, String>> {
        let addr = format!("{}:{port}", self.ip);
        let requests: Vec<String> = requests.iter().map(|r| r.to_string()).collect();
        self.world
            .on_host(&self.inst, async move {
                let mut out = Vec::new();
                let stream = match TcpStream::connect(&addr) {
                    Ok(s) => s,
                    Err(e) => return vec![Err(format!("connecting to {addr}: {e}"))],
                };
                stream.set_read_timeout(Some(wait)).unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                for r in requests {
                    writer.write_all(format!("{r}\n").as_bytes()).unwrap();
                    let mut lines = Vec::new();
                    loop {
                        let mut line = String::new();
                        match reader.read_line(&mut line) {
                            Ok(0) => {
                                out.push(Err("connection closed".to_string()));
                                return out;
                            }
                            Ok(_) => {}
                            Err(e) => {
                                out.push(Err(format!("no answer to {r}: {e}")));
                                return out;
                            }
                        }
                        let line = line.trim_end().to_string();
                        let last =
                            line == "END" || line.starts_with("OK") || line.starts_with("ERR");
                        lines.push(line);
                        if last {
                            break;
                        }
                    }
                    out.push(Ok(lines));
                }
                out
            })
            .unwrap()
    }

    /// A ZooKeeper session from the test (the machine's loopback), at the root.
    async fn zk(&self) -> zookeeper_client::Client {
        zookeeper_client::Client::connect(&testbed::shared().zookeeper.connect_string())
            .await
            .unwrap()
    }

    fn path(&self, p: &str) -> String {
        format!("{}{p}", self.chroot)
    }

    fn meta(&self) -> Option<String> {
        std::fs::read_to_string(self.logs.join("meta.properties")).ok()
    }
}

/// A running stand-in; killed when dropped.
struct Broker {
    child: Child,
    stderr: PathBuf,
    started: Instant,
}

impl Broker {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn wait_exit(&mut self, cap: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < cap,
                "the stand-in still runs after {cap:?}; its log:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// SIGTERM, then the exit status.
    fn terminate(&mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait_exit(Duration::from_secs(15))
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `path` exists, the broker still running; its data and stat.
async fn registered(
    zk: &zookeeper_client::Client,
    path: &str,
    broker: &mut Broker,
) -> (serde_json::Value, zookeeper_client::Stat) {
    loop {
        match zk.get_data(path).await {
            Ok((data, stat)) => return (serde_json::from_slice(&data).unwrap(), stat),
            Err(zookeeper_client::Error::NoNode) => {}
            Err(e) => panic!("reading {path}: {e}"),
        }
        assert!(
            broker.running(),
            "the stand-in exited before registering; its log:\n{}",
            broker.stderr()
        );
        assert!(
            broker.started.elapsed() < Duration::from_secs(30),
            "{path} never appeared; the stand-in's log:\n{}",
            broker.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn exists(zk: &zookeeper_client::Client, path: &str) -> bool {
    zk.check_stat(path).await.unwrap().is_some()
}

fn assert_refused(status: ExitStatus, log: &str, wanted: &str) {
    assert_eq!(status.code(), Some(1), "exit status; log:\n{log}");
    assert!(
        log.contains(wanted),
        "expected {wanted:?} in the log:\n{log}"
    );
    assert!(
        log.contains("ERROR Exiting Kafka due to fatal exception"),
        "{log}"
    );
}

#[tokio::test]
async fn registers_kafkas_json_at_the_advertised_address_on_its_own_session() {
    let node = Node::new().await;
    let zk = node.zk().await;
    let mut broker = node.start(&node.zk_properties(1, ""));
    let (json, stat) = registered(&zk, &node.path("/brokers/ids/1"), &mut broker).await;

    let ip = &node.ip;
    assert_eq!(
        json["endpoints"],
        serde_json::json!([
            format!("CLIENT://{ip}:9092"),
            format!("INTERNAL://{ip}:9091")
        ])
    );
    assert_eq!(
        json["listener_security_protocol_map"],
        serde_json::json!({"CLIENT": "SSL", "INTERNAL": "PLAINTEXT"})
    );
    // host/port are the PLAINTEXT endpoint's, as BrokerIdZNode writes them.
    assert_eq!(json["host"], serde_json::json!(ip));
    assert_eq!(json["port"], 9091);
    assert_eq!(json["rack"], "us-east-1a");
    assert_eq!(json["jmx_port"], -1);
    assert_eq!(json["version"], 5);
    assert_eq!(json["features"], serde_json::json!({}));
    let ts: u128 = json["timestamp"].as_str().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    assert!(ts <= now && now - ts < 60_000, "timestamp {ts}, now {now}");
    // Ephemeral, and not the test's session.
    assert_ne!(stat.ephemeral_owner, 0);
    assert_ne!(stat.ephemeral_owner, zk.session_id().0);

    // The cluster id Kafka makes on first start, and the meta.properties it writes.
    let (data, _) = zk.get_data(&node.path("/cluster/id")).await.unwrap();
    let cluster: serde_json::Value = serde_json::from_slice(&data).unwrap();
    assert_eq!(cluster["version"], "1");
    let cluster_id = cluster["id"].as_str().unwrap();
    assert_eq!(cluster_id.len(), 22, "{cluster_id}");
    let meta = testbed::standin::properties::parse(node.meta().unwrap().as_bytes()).unwrap();
    assert_eq!(meta.get("version"), Some("0"));
    assert_eq!(meta.get("broker.id"), Some("1"));
    assert_eq!(meta.get("cluster.id"), Some(cluster_id));

    // It listens on the advertised address, every listener.
    for port in [9091, 9092] {
        let answers = node.talk(port, &["READ nothing"], Duration::from_secs(5));
        assert_eq!(
            answers,
            vec![Ok(vec![
                "ERR UNKNOWN_TOPIC_OR_PARTITION nothing".to_string()
            ])]
        );
    }
    assert!(broker.running());
    let log = broker.stderr();
    assert!(
        log.contains("Registered broker 1 at path /brokers/ids/1"),
        "{log}"
    );
}

#[tokio::test]
async fn a_second_start_keeps_meta_properties_and_another_nodes_data_is_refused() {
    let node = Node::new().await;
    let zk = node.zk().await;
    let properties = node.zk_properties(1, "");
    let mut first = node.start(&properties);
    registered(&zk, &node.path("/brokers/ids/1"), &mut first).await;
    assert!(first.terminate().success(), "{}", first.stderr());
    let meta = node.meta().unwrap();
    let (cluster, _) = zk.get_data(&node.path("/cluster/id")).await.unwrap();

    let mut second = node.start(&properties);
    registered(&zk, &node.path("/brokers/ids/1"), &mut second).await;
    assert_eq!(
        node.meta().unwrap(),
        meta,
        "meta.properties is kept as it was"
    );
    assert_eq!(
        zk.get_data(&node.path("/cluster/id")).await.unwrap().0,
        cluster
    );
    assert!(!second.stderr().contains("Wrote"), "{}", second.stderr());

    // While it runs, another process cannot take the same log directory.
    let (status, log) = node.refused(&properties.replace("9092", "9192").replace("9091", "9191"));
    assert_refused(status, &log, "Failed to acquire lock on file .lock");
    assert!(second.terminate().success());

    // Another broker id on this data: InconsistentBrokerIdException, nothing registered.
    let (status, log) = node.refused(&node.zk_properties(2, ""));
    assert_refused(
        status,
        &log,
        "kafka.common.InconsistentBrokerIdException: Configured broker.id 2 doesn't match stored broker.id Some(1) in meta.properties",
    );
    assert!(!exists(&zk, &node.path("/brokers/ids/2")).await);
    assert_eq!(node.meta().unwrap(), meta, "a refusal writes nothing");

    // This id, another cluster's data: InconsistentClusterIdException.
    std::fs::write(
        node.logs.join("meta.properties"),
        "version=0\nbroker.id=1\ncluster.id=AnotherClusterId00000A\n",
    )
    .unwrap();
    let (status, log) = node.refused(&properties);
    assert_refused(status, &log, "kafka.common.InconsistentClusterIdException");
    assert!(
        log.contains("doesn't match stored clusterId Some(AnotherClusterId00000A)"),
        "{log}"
    );
    assert!(!exists(&zk, &node.path("/brokers/ids/1")).await);
}

#[tokio::test]
async fn what_kafka_refuses_to_start_with() {
    let node = Node::new().await;
    let zk = node.zk().await;
    let ip = &node.ip;

    // Advertised on 0.0.0.0: refused before anything is touched.
    let (status, log) = node.refused(&node.zk_properties(
        1,
        &format!("advertised.listeners=CLIENT://0.0.0.0:9092,INTERNAL://{ip}:9091\n"),
    ));
    assert_refused(
        status,
        &log,
        "advertised.listeners cannot use the nonroutable meta-address 0.0.0.0",
    );
    assert!(
        !node.logs.exists(),
        "nothing written: {}",
        node.logs.display()
    );
    assert!(!exists(&zk, &node.chroot).await, "ZooKeeper untouched");

    // A listener without a security protocol.
    let (status, log) =
        node.refused(&node.zk_properties(1, "listener.security.protocol.map=INTERNAL:PLAINTEXT\n"));
    assert_refused(
        status,
        &log,
        "No security protocol defined for listener CLIENT",
    );

    // No broker.id (the rendered text without its line).
    let without_id: String = node
        .zk_properties(1, "")
        .lines()
        .filter(|l| !l.starts_with("broker.id="))
        .map(|l| format!("{l}\n"))
        .collect();
    let (status, log) = node.refused(&without_id);
    assert_refused(status, &log, "broker.id");
    assert!(!node.logs.exists());

    // KRaft: a log dir that kafka-storage never formatted.
    let kraft = format!(
        "process.roles=broker\nnode.id=3\ncontroller.quorum.voters=0@10.0.0.99:9093\n\
         controller.listener.names=CONTROLLER\nlisteners=PLAINTEXT://0.0.0.0:9092\n\
         advertised.listeners=PLAINTEXT://{ip}:9092\n\
         listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
         inter.broker.listener.name=PLAINTEXT\nlog.dirs={}\n",
        node.logs.display()
    );
    let (status, log) = node.refused(&kraft);
    assert_refused(
        status,
        &log,
        &format!("No `meta.properties` found in {}", node.logs.display()),
    );
    // Formatted (by the testbed's kafka-storage stand-in), it starts and listens.
    let config = node.write_config(&kraft);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/standin/kafka-storage.sh");
    let format = std::process::Command::new(script)
        .args(["format", "--config"])
        .arg(&config)
        .args(["--cluster-id", "KraftClusterId0000000A"])
        .output()
        .unwrap();
    assert!(format.status.success(), "{format:?}");
    let broker = node.start(&kraft);
    let started = Instant::now();
    loop {
        let answers = node.talk(9092, &["APPEND t kraft"], Duration::from_secs(5));
        if answers == vec![Ok(vec!["OK 0".to_string()])] {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{answers:?}; log:\n{}",
            broker.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        broker
            .stderr()
            .contains("Cluster ID = KraftClusterId0000000A")
    );
    // Another node.id on that data: refused.
    let (status, log) = node.refused(&kraft.replace("node.id=3", "node.id=4"));
    assert_refused(status, &log, "InconsistentNodeIdException");
}

#[tokio::test]
async fn appended_records_read_back_and_survive_a_restart() {
    let node = Node::new().await;
    let zk = node.zk().await;
    let properties = node.zk_properties(1, "");
    let mut broker = node.start(&properties);
    registered(&zk, &node.path("/brokers/ids/1"), &mut broker).await;

    let answers = node.talk(
        9092,
        &[
            "APPEND orders first",
            "APPEND orders second record",
            "READ orders",
            "APPEND ../x y",
        ],
        Duration::from_secs(5),
    );
    let ok = |lines: &[&str]| Ok(lines.iter().map(|l| l.to_string()).collect::<Vec<_>>());
    assert_eq!(answers[0], ok(&["OK 0"]));
    assert_eq!(answers[1], ok(&["OK 1"]));
    assert_eq!(answers[2], ok(&["first", "second record", "END"]));
    assert!(answers[3].as_ref().unwrap()[0].starts_with("ERR invalid topic name"));
    let segment = node.logs.join("orders-0/00000000000000000000.log");
    assert_eq!(
        std::fs::read_to_string(&segment).unwrap(),
        "first\nsecond record\n"
    );

    assert!(broker.terminate().success());
    let mut again = node.start(&properties);
    registered(&zk, &node.path("/brokers/ids/1"), &mut again).await;
    let answers = node.talk(
        9091,
        &["APPEND orders third", "READ orders"],
        Duration::from_secs(5),
    );
    assert_eq!(answers[0], ok(&["OK 2"]));
    assert_eq!(answers[1], ok(&["first", "second record", "third", "END"]));
}

#[tokio::test]
async fn a_hung_broker_keeps_its_registration_but_answers_nothing() {
    let node = Node::new().await;
    let zk = node.zk().await;
    // A short session: a hang that lost its session would lose the registration quickly.
    let mut broker = node.start(&node.zk_properties(1, "zookeeper.session.timeout.ms=2000\n"));
    let path = node.path("/brokers/ids/1");
    let (_, before) = registered(&zk, &path, &mut broker).await;

    let answers = node.talk(
        9092,
        &["APPEND orders a", "HANG", "READ orders"],
        Duration::from_secs(1),
    );
    assert_eq!(answers[0], Ok(vec!["OK 0".to_string()]));
    assert_eq!(answers[1], Ok(vec!["OK HANG".to_string()]));
    assert!(
        matches!(&answers[2], Err(e) if e.starts_with("no answer to READ orders")),
        "{answers:?}"
    );
    // A new connection on either listener gets nothing either.
    for port in [9091, 9092] {
        let answers = node.talk(port, &["READ orders"], Duration::from_secs(1));
        assert_eq!(answers.len(), 1);
        assert!(answers[0].is_err(), "{answers:?}");
    }
    // Well past the session timeout: still registered, on the same session.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, after) = zk.get_data(&path).await.unwrap();
    assert_eq!(after.ephemeral_owner, before.ephemeral_owner);
    assert!(broker.running(), "{}", broker.stderr());

    // Killed, the registration outlives it until the session expires.
    broker.signal(nix::sys::signal::Signal::SIGKILL);
    broker.wait_exit(Duration::from_secs(5));
    assert!(exists(&zk, &path).await, "gone at once after SIGKILL");
    let killed = Instant::now();
    while exists(&zk, &path).await {
        assert!(killed.elapsed() < Duration::from_secs(15), "never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn sigterm_removes_the_registration_at_once() {
    let node = Node::new().await;
    let zk = node.zk().await;
    // The longest session the testbed's ZooKeeper grants (10 s): only a closed session
    // removes the node within the 3 s asserted below.
    let mut broker = node.start(&node.zk_properties(7, "zookeeper.session.timeout.ms=10000\n"));
    let path = node.path("/brokers/ids/7");
    registered(&zk, &path, &mut broker).await;

    let asked = Instant::now();
    let status = broker.terminate();
    assert!(status.success(), "{status}; {}", broker.stderr());
    while exists(&zk, &path).await {
        assert!(
            asked.elapsed() < Duration::from_secs(3),
            "{path} outlived SIGTERM; log:\n{}",
            broker.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = broker.stderr();
    assert!(log.contains("SIGTERM: shutting down"), "{log}");
    assert!(log.contains("shut down completed"), "{log}");
    // One line per event.
    assert!(log.lines().all(|l| l.starts_with('[')), "{log}");
}
