//! ZooKeeper servers from the Debian package: standalone or an ensemble of N on free loopback
//! ports, reconfig enabled, superuser digest auth; members can be stopped, killed, restarted,
//! the whole ensemble too.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::process;

/// The superuser's password in every testbed ensemble (`super:kafka-testbed`).
pub const SUPER_PASSWORD: &str = "kafka-testbed";
/// base64(sha1("super:kafka-testbed")), as ZooKeeper's superDigest wants it.
pub const SUPER_DIGEST: &str = "super:CGTPitvsvKIEYBk3UBo6tRBYsEM=";

/// The Debian package's jars a server or `ZooKeeperMain` runs with.
pub(crate) const CLASSPATH: &str = "/usr/share/java/zookeeper.jar:/usr/share/java/zookeeper-jute.jar:\
/usr/share/java/slf4j-api.jar:/usr/share/java/slf4j-simple.jar:/usr/share/java/netty-all.jar";

/// The JVM's flags for a testbed server: a small heap, a quick start, warnings only.
pub(crate) const JAVA_FLAGS: [&str; 4] = [
    "-Xmx256m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
];

/// One member of an ensemble.
pub struct Member {
    pub id: u32,
    pub client_port: u16,
    pub quorum_port: u16,
    pub election_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// An ensemble of N servers (N = 1 is a one-member ensemble, reconfig still possible).
pub struct Ensemble {
    members: BTreeMap<u32, Member>,
}

impl Ensemble {
    pub fn start(dir: &Path, n: u32) -> Result<Self> {
        if !Path::new("/usr/share/java/zookeeper.jar").exists() {
            bail!(
                "ZooKeeper is not installed (/usr/share/java/zookeeper.jar): run `scripts/setup`"
            );
        }
        let mut members = BTreeMap::new();
        for id in 1..=n {
            members.insert(
                id,
                Member {
                    id,
                    client_port: process::free_port()?,
                    quorum_port: process::free_port()?,
                    election_port: process::free_port()?,
                    dir: dir.join(format!("zk{id}")),
                    child: None,
                },
            );
        }
        let dynamic: String = members
            .values()
            .map(|m| {
                format!(
                    "server.{}=127.0.0.1:{}:{}:participant;127.0.0.1:{}\n",
                    m.id, m.quorum_port, m.election_port, m.client_port
                )
            })
            .collect();
        for m in members.values() {
            std::fs::create_dir_all(m.dir.join("data"))?;
            std::fs::write(m.dir.join("data/myid"), format!("{}\n", m.id))?;
            std::fs::write(m.dir.join("zoo.cfg.dynamic"), &dynamic)?;
            std::fs::write(
                m.dir.join("zoo.cfg"),
                format!(
                    "tickTime=500\ninitLimit=20\nsyncLimit=10\ndataDir={data}\n\
                     4lw.commands.whitelist=*\nadmin.enableServer=false\nreconfigEnabled=true\n\
                     standaloneEnabled=false\nextendedTypesEnabled=true\n\
                     dynamicConfigFile={dynamic}\n",
                    data = m.dir.join("data").display(),
                    dynamic = m.dir.join("zoo.cfg.dynamic").display()
                ),
            )?;
        }
        let mut ensemble = Self { members };
        let ids: Vec<u32> = ensemble.members.keys().copied().collect();
        for id in ids {
            ensemble.launch(id)?;
        }
        ensemble.wait_quorum(Duration::from_secs(60))?;
        Ok(ensemble)
    }

    fn launch(&mut self, id: u32) -> Result<()> {
        let m = self.members.get_mut(&id).context("no such member")?;
        let (out, err) = process::log_file(&m.dir.join("server.log"))?;
        let mut cmd = Command::new("java");
        cmd.args(JAVA_FLAGS)
            .arg(format!(
                "-Dzookeeper.DigestAuthenticationProvider.superDigest={SUPER_DIGEST}"
            ))
            .args([
                "-cp",
                CLASSPATH,
                "org.apache.zookeeper.server.quorum.QuorumPeerMain",
            ])
            .arg(m.dir.join("zoo.cfg"))
            .stdout(out)
            .stderr(err);
        m.child = Some(process::spawn_tied(cmd)?);
        Ok(())
    }

    /// host:port,... of every member, for clients on this machine.
    pub fn connect_string(&self) -> String {
        self.members
            .values()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn client_ports(&self) -> Vec<u16> {
        self.members.values().map(|m| m.client_port).collect()
    }

    /// SIGKILL one member.
    pub fn kill(&mut self, id: u32) -> Result<()> {
        self.signal(id, true)
    }

    /// SIGTERM one member and wait for it.
    pub fn stop(&mut self, id: u32) -> Result<()> {
        self.signal(id, false)
    }

    fn signal(&mut self, id: u32, kill: bool) -> Result<()> {
        let m = self.members.get_mut(&id).context("no such member")?;
        if let Some(mut child) = m.child.take() {
            let sig = if kill {
                nix::sys::signal::Signal::SIGKILL
            } else {
                nix::sys::signal::Signal::SIGTERM
            };
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig)?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts a stopped or killed member again, with its data.
    pub fn restart(&mut self, id: u32) -> Result<()> {
        self.stop(id)?;
        self.launch(id)?;
        let port = self.members[&id].client_port;
        wait_until(Duration::from_secs(60), || {
            serving_mode(port).is_some_and(|m| m != "standalone")
        })
        .with_context(|| format!("ZooKeeper member {id} did not rejoin"))
    }

    /// Stops every member (SIGTERM, waited for): the whole ensemble is down, its data kept.
    pub fn stop_all(&mut self) -> Result<()> {
        let ids: Vec<u32> = self.members.keys().copied().collect();
        for id in ids {
            self.stop(id)?;
        }
        Ok(())
    }

    /// Starts every stopped or killed member again, with its data, and waits for a quorum
    /// (members started one at a time by [`Ensemble::restart`] would each wait for one).
    pub fn start_all(&mut self) -> Result<()> {
        let stopped: Vec<u32> = self
            .members
            .values()
            .filter(|m| m.child.is_none())
            .map(|m| m.id)
            .collect();
        for id in stopped {
            self.launch(id)?;
        }
        self.wait_quorum(Duration::from_secs(60))
    }

    /// Waits until every running member serves and one of them leads.
    pub fn wait_quorum(&self, timeout: Duration) -> Result<()> {
        let ports: Vec<(u32, u16)> = self
            .members
            .values()
            .filter(|m| m.child.is_some())
            .map(|m| (m.id, m.client_port))
            .collect();
        wait_until(timeout, || {
            let modes: Vec<Option<String>> = ports.iter().map(|(_, p)| serving_mode(*p)).collect();
            modes.iter().all(Option::is_some)
                && modes.iter().flatten().filter(|m| *m == "leader").count() == 1
        })
        .with_context(|| {
            let logs: Vec<String> = self
                .members
                .values()
                .map(|m| {
                    format!(
                        "zk{}: {}",
                        m.id,
                        process::tail(&m.dir.join("server.log"), 5)
                    )
                })
                .collect();
            format!(
                "ZooKeeper ensemble has no quorum; logs:\n{}",
                logs.join("\n")
            )
        })
    }

    /// The `Mode:` a member reports to `srvr`, if it serves.
    pub fn mode(&self, id: u32) -> Option<String> {
        serving_mode(self.members.get(&id)?.client_port)
    }
}

impl Drop for Ensemble {
    fn drop(&mut self) {
        for m in self.members.values_mut() {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Sends a four-letter word and returns the reply.
pub fn four_letter(port: u16, word: &str) -> Option<String> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(word.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn serving_mode(port: u16) -> Option<String> {
    let reply = four_letter(port, "srvr")?;
    reply
        .lines()
        .find_map(|l| l.strip_prefix("Mode: "))
        .map(|m| m.trim().to_string())
}

fn wait_until(timeout: Duration, mut ok: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(50);
    while !ok() {
        if start.elapsed() > timeout {
            bail!("not ready after {timeout:?}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(500));
    }
    Ok(())
}
