//! `kafka-standin`: a STAND-IN for a Kafka broker, for the testbed only. It is NOT Kafka: no
//! Kafka build can be installed on the testbed's machines, so this plays the parts of a
//! broker's life that kafka-agent can see, started as kafka.service would start Kafka:
//! `kafka-standin --config /etc/kafka/server.properties`.
//!
//! * Reads server.properties as `java.util.Properties` does and refuses what KafkaConfig
//!   refuses (see [`kafka_testbed::standin`]), with Kafka's exception and message, exit 1.
//! * ZooKeeper mode (no `process.roles`): connects to `zookeeper.connect` (its chroot made
//!   when missing), reads or creates `/cluster/id`, checks `meta.properties` in each log dir
//!   against the cluster id and `broker.id` and writes it where missing (version 0), binds
//!   every listener, then registers the ephemeral `/brokers/ids/<id>` (Kafka's JSON) on its
//!   own session. A session that expires is replaced and the registration made again.
//! * KRaft (`process.roles` set): every log dir must already hold `meta.properties` from
//!   `kafka-storage format` with this `node.id`; no ZooKeeper.
//! * Serves a line protocol of its own for tests on each listener (not Kafka's protocol):
//!   `APPEND <topic> <text>` -> `OK <offset>` (one line per record in
//!   `<first log dir>/<topic>-0/00000000000000000000.log`), `READ <topic>` -> the records, one
//!   per line, then `END` (`ERR UNKNOWN_TOPIC_OR_PARTITION <topic>` without a log), `HANG` ->
//!   `OK HANG`, then it answers and accepts nothing more while its ZooKeeper session stays
//!   alive, like a wedged JVM.
//! * SIGTERM or SIGINT: closes its ZooKeeper session (the registration goes with it) and
//!   exits 0. SIGKILL leaves the registration until the session expires, as with Kafka.
//! * Logs one line per event to stderr.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use kafka_testbed::standin::{self, Config, Listener, Log, Mode, Refused, Request, properties};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use zookeeper_client::{Acls, Client, CreateMode, SessionState};

/// STAND-IN for a Kafka broker (testbed only; this is NOT Kafka). Reads server.properties,
/// refuses what Kafka refuses, checks and writes meta.properties, registers
/// /brokers/ids/<id> in ZooKeeper (or, in KRaft mode, needs formatted log dirs), listens on
/// its listeners and serves a test line protocol: APPEND <topic> <text>, READ <topic>, HANG.
#[derive(Parser)]
#[command(name = "kafka-standin", version)]
struct Args {
    /// The broker's server.properties, as kafka-server-start.sh takes it.
    #[arg(long, short)]
    config: PathBuf,
}

fn log(level: &str, message: impl AsRef<str>) {
    use std::io::Write;
    let line = format!("{}\n", standin::log_line(level, message.as_ref()));
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Why the stand-in stops: Kafka refusing to start (exit 1).
struct Fatal(String);

impl From<Refused> for Fatal {
    fn from(r: Refused) -> Self {
        Fatal(r.to_string())
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log("ERROR", format!("building a runtime: {e}"));
            return ExitCode::from(1);
        }
    };
    let out = rt.block_on(run(&args.config));
    rt.shutdown_timeout(Duration::from_secs(1));
    match out {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fatal(why)) => {
            log(
                "ERROR",
                format!("Exiting Kafka due to fatal exception: {why}"),
            );
            ExitCode::from(1)
        }
    }
}

async fn run(path: &Path) -> Result<(), Fatal> {
    let bytes = std::fs::read(path).map_err(|e| {
        Fatal(format!(
            "java.io.FileNotFoundException: {} ({e})",
            path.display()
        ))
    })?;
    let props = properties::parse(&bytes).map_err(|e| Fatal(e.to_string()))?;
    let config = Config::from_properties(&props)?;
    log(
        "INFO",
        format!(
            "STAND-IN broker (not Kafka) starting: {} {}, listeners {}, advertised {}, log.dirs {}",
            match config.mode {
                Mode::Zookeeper { .. } => "broker.id",
                Mode::Kraft { .. } => "KRaft node.id",
            },
            config.id(),
            names(&config.listeners),
            names(&config.advertised),
            config
                .log_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
    );
    let server = match &config.mode {
        Mode::Zookeeper { .. } => format!("[KafkaServer id={}]", config.id()),
        Mode::Kraft { .. } => format!("[KafkaRaftServer nodeId={}]", config.id()),
    };
    let failed = |f: Fatal| {
        log(
            "ERROR",
            format!("{server} Fatal error during startup. Prepare to shutdown"),
        );
        f
    };
    match &config.mode {
        Mode::Zookeeper {
            broker_id,
            connect,
            session_timeout,
            connection_timeout,
        } => {
            let zk = connect_zk(connect, *session_timeout, *connection_timeout).await?;
            let started = async {
                let cluster_id = cluster_id(&zk).await?;
                log("INFO", format!("Cluster ID = {cluster_id}"));
                let missing = standin::check_zk_meta(&config.log_dirs, *broker_id, &cluster_id)?;
                let locks = lock_dirs(&config.log_dirs)?;
                for dir in missing {
                    standin::write_meta(&dir, &standin::zk_meta_text(*broker_id, &cluster_id))
                        .map_err(|e| {
                            Fatal(format!(
                                "java.io.IOException: writing {}/meta.properties: {e}",
                                dir.display()
                            ))
                        })?;
                    log("INFO", format!("Wrote {}/meta.properties", dir.display()));
                }
                let bound = bind(&config.listeners).await?;
                register(&zk, &config).await?;
                Ok::<_, Fatal>((locks, bound))
            }
            .await;
            let (locks, bound) = match started {
                Ok(s) => s,
                Err(f) => {
                    close(zk).await;
                    return Err(failed(f));
                }
            };
            log("INFO", format!("{server} started (STAND-IN)"));
            let zk = serve(&config, bound, Some(zk)).await;
            if let Some(zk) = zk {
                close(zk).await;
            }
            drop(locks);
        }
        Mode::Kraft { node_id, .. } => {
            let started = async {
                let cluster_id = standin::check_kraft_meta(&config.log_dirs, *node_id)?;
                log(
                    "INFO",
                    format!("Cluster ID = {}", cluster_id.as_deref().unwrap_or("(none)")),
                );
                let locks = lock_dirs(&config.log_dirs)?;
                let bound = bind(&config.listeners).await?;
                Ok::<_, Fatal>((locks, bound))
            }
            .await;
            let (locks, bound) = started.map_err(failed)?;
            log("INFO", format!("{server} Kafka Server started (STAND-IN)"));
            serve(&config, bound, None).await;
            drop(locks);
        }
    }
    log("INFO", format!("{server} shut down completed"));
    Ok(())
}

fn names(listeners: &[Listener]) -> String {
    listeners
        .iter()
        .map(Listener::connection_string)
        .collect::<Vec<_>>()
        .join(",")
}

// --- ZooKeeper ---------------------------------------------------------------------------

/// A session to `connect` (`hosts[/chroot]`), the chroot made when missing, as
/// KafkaZkClient does.
async fn connect_zk(
    connect: &str,
    session_timeout: Duration,
    connection_timeout: Duration,
) -> Result<Client, Fatal> {
    let (hosts, chroot) = match connect.find('/') {
        Some(i) => (&connect[..i], Some(&connect[i..])),
        None => (connect, None),
    };
    log("INFO", format!("Connecting to zookeeper on {connect}"));
    let connecting = Client::connector()
        .with_session_timeout(session_timeout)
        .with_connection_timeout(Duration::from_secs(2))
        .connect(hosts);
    let client = match tokio::time::timeout(connection_timeout, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return Err(Fatal(format!(
                "kafka.zookeeper.ZooKeeperClientException: connecting to {hosts}: {e}"
            )));
        }
        Err(_) => {
            return Err(Fatal(
                "kafka.zookeeper.ZooKeeperClientTimeoutException: Timed out waiting for \
                 connection while in state: CONNECTING"
                    .into(),
            ));
        }
    };
    let Some(chroot) = chroot.filter(|c| *c != "/") else {
        return Ok(client);
    };
    client
        .mkdir(chroot, &persistent())
        .await
        .map_err(|e| Fatal(format!("creating the chroot {chroot}: {e}")))?;
    log("INFO", format!("Using chroot {chroot}"));
    client.chroot(chroot).map_err(|_| {
        Fatal(format!(
            "java.lang.IllegalArgumentException: Invalid path string \"{chroot}\""
        ))
    })
}

fn persistent() -> zookeeper_client::CreateOptions<'static> {
    CreateMode::Persistent.with_acls(Acls::anyone_all())
}

/// Reads `/cluster/id`, or makes it (a new random id) as Kafka does on the cluster's first
/// start; makes the other top-level paths too.
async fn cluster_id(zk: &Client) -> Result<String, Fatal> {
    for path in [
        "/brokers/ids",
        "/brokers/topics",
        "/brokers/seqid",
        "/config/changes",
        "/admin/delete_topics",
        "/cluster",
    ] {
        zk.mkdir(path, &persistent())
            .await
            .map_err(|e| Fatal(format!("creating {path}: {e}")))?;
    }
    loop {
        match zk.get_data("/cluster/id").await {
            Ok((data, _)) => {
                return standin::parse_cluster_id(&data).ok_or_else(|| {
                    Fatal(format!(
                        "kafka.common.KafkaException: /cluster/id holds no cluster id: {}",
                        String::from_utf8_lossy(&data)
                    ))
                });
            }
            Err(zookeeper_client::Error::NoNode) => {
                let id = standin::random_cluster_id();
                match zk
                    .create(
                        "/cluster/id",
                        standin::cluster_id_json(&id).as_bytes(),
                        &persistent(),
                    )
                    .await
                {
                    Ok(_) => {
                        log("INFO", format!("Created /cluster/id: a new cluster, {id}"));
                        return Ok(id);
                    }
                    Err(zookeeper_client::Error::NodeExists) => continue,
                    Err(e) => return Err(Fatal(format!("creating /cluster/id: {e}"))),
                }
            }
            Err(e) => return Err(Fatal(format!("reading /cluster/id: {e}"))),
        }
    }
}

/// The ephemeral `/brokers/ids/<id>` on this session; one owned by another session is
/// refused, as KafkaZkClient.checkedEphemeralCreate refuses it.
async fn register(zk: &Client, config: &Config) -> Result<(), Fatal> {
    let path = format!("/brokers/ids/{}", config.id());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let data = standin::registration(config, now).to_string();
    zk.mkdir("/brokers/ids", &persistent())
        .await
        .map_err(|e| Fatal(format!("creating /brokers/ids: {e}")))?;
    let ephemeral = CreateMode::Ephemeral.with_acls(Acls::anyone_all());
    match zk.create(&path, data.as_bytes(), &ephemeral).await {
        Ok(_) => {}
        Err(zookeeper_client::Error::NodeExists) => {
            let owner = match zk.get_data(&path).await {
                Ok((_, stat)) => stat.ephemeral_owner,
                Err(e) => return Err(Fatal(format!("reading {path}: {e}"))),
            };
            let me = zk.session_id().0;
            if owner != me {
                return Err(Fatal(format!(
                    "org.apache.zookeeper.KeeperException$NodeExistsException: KeeperErrorCode = \
                     NodeExists: Error while creating ephemeral at {path}, node already exists \
                     and owner '{owner:#x}' does not match current session '{me:#x}'"
                )));
            }
        }
        Err(e) => return Err(Fatal(format!("creating {path}: {e}"))),
    }
    log(
        "INFO",
        format!(
            "Registered broker {} at path {path} with addresses: {} (session {:#x})",
            config.id(),
            names(&config.advertised),
            zk.session_id().0
        ),
    );
    Ok(())
}

/// Closes the session (its ephemeral nodes go with it) and waits until it is closed.
async fn close(zk: Client) {
    let mut watcher = zk.state_watcher();
    let id = zk.session_id().0;
    drop(zk);
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while !watcher.state().is_terminated() {
            watcher.changed().await;
        }
    })
    .await;
    match closed {
        Ok(()) => log("INFO", format!("Session {id:#x} closed")),
        Err(_) => log("WARN", format!("Session {id:#x} not closed after 5 s")),
    }
}

// --- log directories and listeners ------------------------------------------------------

/// Creates missing log dirs and locks each (`.lock`), as LogManager does.
fn lock_dirs(dirs: &[PathBuf]) -> Result<Vec<File>, Fatal> {
    let mut locks = Vec::new();
    for dir in dirs {
        if !dir.is_dir() {
            log(
                "INFO",
                format!("Log directory {} not found, creating it.", dir.display()),
            );
            std::fs::create_dir_all(dir).map_err(|e| {
                Fatal(format!(
                    "java.io.IOException: Failed to create data directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
        let path = dir.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Fatal(format!("java.io.IOException: {}: {e}", path.display())))?;
        if file.try_lock().is_err() {
            return Err(Fatal(format!(
                "org.apache.kafka.common.KafkaException: Failed to acquire lock on file .lock in \
                 {}. A Kafka instance in another process or thread is using this directory.",
                dir.display()
            )));
        }
        locks.push(file);
    }
    Ok(locks)
}

async fn bind(listeners: &[Listener]) -> Result<Vec<(Listener, TcpListener)>, Fatal> {
    let mut out = Vec::new();
    for l in listeners {
        let at = l.bind_address();
        let socket = TcpListener::bind(&at).await.map_err(|e| {
            Fatal(format!(
                "org.apache.kafka.common.KafkaException: Socket server failed to bind to {at}: {e}."
            ))
        })?;
        log(
            "INFO",
            format!("Listening on {at} for {} ({})", l.name, l.protocol),
        );
        out.push((l.clone(), socket));
    }
    Ok(out)
}

// --- serving -----------------------------------------------------------------------------

struct Shared {
    log: Log,
    /// True once HANG was asked: nothing is answered or accepted any more.
    hung: watch::Sender<bool>,
}

/// Serves until SIGTERM or SIGINT; in ZooKeeper mode keeps the registration (a new session
/// and registration when the session expires). Gives back the session to close.
async fn serve(
    config: &Config,
    bound: Vec<(Listener, TcpListener)>,
    mut zk: Option<Client>,
) -> Option<Client> {
    use tokio::signal::unix::{SignalKind, signal};
    let shared = Arc::new(Shared {
        log: Log {
            dir: config.log_dirs[0].clone(),
        },
        hung: watch::channel(false).0,
    });
    for (listener, socket) in bound {
        tokio::spawn(accept(listener, socket, shared.clone()));
    }
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        log("ERROR", "cannot handle SIGTERM/SIGINT");
        return zk;
    };
    let mut state = zk.as_ref().map(Client::state_watcher);
    loop {
        let changed = async {
            match state.as_mut() {
                Some(w) => w.changed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term.recv() => { log("INFO", "SIGTERM: shutting down"); break; }
            _ = int.recv() => { log("INFO", "SIGINT: shutting down"); break; }
            s = changed => {
                log("INFO", format!("ZooKeeper session state: {s:?}"));
                if s.is_terminated() {
                    // Kafka makes a new session and registers again.
                    zk = None;
                    match reregister(config).await {
                        Some(c) => {
                            state = Some(c.state_watcher());
                            zk = Some(c);
                        }
                        None => break,
                    }
                } else if s == SessionState::Disconnected {
                    log("WARN", "Disconnected from ZooKeeper; the session lives until it expires");
                }
            }
        }
    }
    zk
}

/// A new session and registration after the old session ended; retried until it works or a
/// signal asks to stop (None).
async fn reregister(config: &Config) -> Option<Client> {
    let Mode::Zookeeper {
        connect,
        session_timeout,
        connection_timeout,
        ..
    } = &config.mode
    else {
        return None;
    };
    let mut pause = Duration::from_millis(200);
    let started = Instant::now();
    loop {
        match connect_zk(connect, *session_timeout, *connection_timeout).await {
            Ok(c) => match register(&c, config).await {
                Ok(()) => return Some(c),
                Err(Fatal(why)) => log("WARN", format!("registering again: {why}")),
            },
            Err(Fatal(why)) => log("WARN", format!("a new ZooKeeper session: {why}")),
        }
        log(
            "INFO",
            format!(
                "retrying in {pause:?} ({:?} since the session ended)",
                started.elapsed()
            ),
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Returns once HANG was asked.
async fn hung_up(hung: &mut watch::Receiver<bool>) {
    let _ = hung.wait_for(|h| *h).await.map(|_| ());
}

async fn accept(listener: Listener, socket: TcpListener, shared: Arc<Shared>) {
    let mut hung = shared.hung.subscribe();
    loop {
        tokio::select! {
            r = socket.accept() => match r {
                Ok((stream, peer)) => {
                    log("INFO", format!("{}: connection from {peer}", listener.name));
                    tokio::spawn(connection(stream, peer, shared.clone()));
                }
                Err(e) => log("WARN", format!("{}: accepting: {e}", listener.name)),
            },
            _ = hung_up(&mut hung) => {
                // Wedged: the socket stays open (connections queue in its backlog), nobody
                // accepts them.
                std::future::pending::<()>().await;
            }
        }
    }
}

async fn connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut hung = shared.hung.subscribe();
    loop {
        let line = tokio::select! {
            l = lines.next_line() => l,
            _ = hung_up(&mut hung) => {
                std::future::pending::<()>().await;
                return;
            }
        };
        let line = match line {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(e) => {
                log("WARN", format!("{peer}: reading: {e}"));
                return;
            }
        };
        if *shared.hung.borrow() {
            std::future::pending::<()>().await;
        }
        let request = Request::parse(&line);
        let answer = standin::answer(&shared.log, &request);
        log(
            "INFO",
            format!("{peer}: {} -> {}", summary(&request), summary_of(&answer)),
        );
        let mut text = answer.join("\n");
        text.push('\n');
        if let Err(e) = write.write_all(text.as_bytes()).await {
            log("WARN", format!("{peer}: writing: {e}"));
            return;
        }
        if request == Request::Hang {
            log(
                "WARN",
                "HANG: no longer answering or accepting; the ZooKeeper session stays alive",
            );
            shared.hung.send_replace(true);
            std::future::pending::<()>().await;
        }
    }
}

fn summary(r: &Request) -> String {
    match r {
        Request::Append { topic, text } => format!("APPEND {topic} ({} bytes)", text.len()),
        Request::Read { topic } => format!("READ {topic}"),
        Request::Hang => "HANG".into(),
        Request::Bad(_) => "a bad request".into(),
    }
}

fn summary_of(answer: &[String]) -> String {
    match answer.last().map(String::as_str) {
        Some("END") => format!("{} records", answer.len() - 1),
        Some(last) => last.to_string(),
        None => String::new(),
    }
}
