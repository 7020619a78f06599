//! Helpers shared by the step tests: a cluster's agent configuration on a testbed world.
#![allow(dead_code)]

pub mod deployed;
pub mod schema;

use std::path::{Path, PathBuf};

use kafka_agent::claim::{Record, cloudwatch::stream_name};
use kafka_testbed::{self as testbed, World};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Backend {
    Zk,
    Cwl,
}

/// One cluster's agent configuration on a world.
#[derive(Clone)]
pub struct Cluster {
    pub name: String,
    pub backend: Backend,
    pub size: u32,
    pub resources: bool,
    pub deadline: u32,
    /// `kafka` or `zookeeper`.
    pub role: &'static str,
    /// ZooKeeper client ports on this machine (the world exposes them).
    pub zk_ports: Vec<u16>,
    /// `user:password` for the claim ledger's digest authentication.
    pub digest: Option<String>,
    /// Render server.properties (a `[kafka]` table, zookeeper mode) to the host's
    /// `etc/kafka/server.properties`.
    pub render: bool,
    /// KRaft instead of zookeeper mode when rendering: a broker-only node of a static quorum,
    /// its log directory formatted by the testbed's stand-in `kafka-storage.sh`, with this
    /// cluster id (`storage.cluster_id`).
    pub kraft: Option<String>,
}

/// The testbed's stand-in for Kafka's `bin/kafka-storage.sh`.
pub fn standin_kafka_storage() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testbed/standin/kafka-storage.sh")
}

impl Cluster {
    pub fn new(world: &World, backend: Backend, size: u32, resources: bool) -> Cluster {
        // Unique within the test binary (which shares one moto and one ZooKeeper): a random
        // suffix collided now and then over a test's 50 clusters.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Cluster {
            name: format!("{}-{n}", world.id),
            backend,
            size,
            resources,
            deadline: 60,
            role: "kafka",
            zk_ports: testbed::shared().zookeeper.client_ports(),
            digest: None,
            render: false,
            kraft: None,
        }
    }

    /// The default claim path (below the chroot): keyed by role and cluster name.
    pub fn claim_path(&self) -> String {
        format!("/kafka-agent/{}/{}/claims", self.role, self.name)
    }

    /// The default claim log group: keyed by role and cluster name.
    pub fn log_group(&self) -> String {
        format!("/kafka-agent/{}/{}", self.role, self.name)
    }

    pub fn chroot(&self) -> String {
        format!("/{}", self.name)
    }

    /// Writes the agent's config on the host and returns its path.
    pub fn config_for(&self, world: &World, inst: &str) -> PathBuf {
        let host = world.host_dir(inst);
        let gw = world
            .aws_endpoint_for(inst)
            .unwrap()
            .trim_start_matches("http://")
            .split(':')
            .next()
            .unwrap()
            .to_string();
        let connect: Vec<String> = self.zk_ports.iter().map(|p| format!("{gw}:{p}")).collect();
        let text = format!(
            "[cluster]\nname = \"{name}\"\nrole = \"{role}\"\nsize = {size}\n\n\
             [boot]\ndeadline_seconds = {deadline}\n\n\
             [paths]\nstate_dir = \"{state}\"\n\n\
             [claim]\nbackend = \"{backend}\"\n\n\
             [resources]\neni = {r}\nvolume = {r}\n\n\
             [storage]\ndata_dir = \"{host}/var/lib/kafka\"\nfstab = \"{host}/etc/fstab\"\n\
             sysfs_root = \"{host}/sys\"\ndev_root = \"{host}/dev\"\n{cluster_id}\n\
             [zookeeper]\nconnect = \"{connect}{chroot}\"\n{digest}{kafka}",
            host = host.display(),
            name = self.name,
            role = self.role,
            size = self.size,
            deadline = self.deadline,
            state = host.join("var/lib/kafka-agent").display(),
            backend = match self.backend {
                Backend::Zk => "zookeeper",
                Backend::Cwl => "cloudwatch-logs",
            },
            r = self.resources,
            connect = connect.join(","),
            chroot = self.chroot(),
            cluster_id = self
                .kraft
                .as_ref()
                .map(|c| format!("cluster_id = \"{c}\"\n"))
                .unwrap_or_default(),
            kafka = if self.render && self.kraft.is_some() {
                format!(
                    "\n[kafka]\nmode = \"kraft\"\noutput = \"{}\"\n\
                     process_roles = [\"broker\"]\nquorum_voters = [\"9@10.9.9.9:9093\"]\n\
                     format_command = [\"{}\", \"format\"]\n\
                     [kafka.listeners.PLAINTEXT]\nport = 9092\nprotocol = \"PLAINTEXT\"\n\
                     [kafka.listeners.CONTROLLER]\nport = 9093\nprotocol = \"PLAINTEXT\"\n",
                    host.join("etc/kafka/server.properties").display(),
                    standin_kafka_storage().display()
                )
            } else if self.render {
                format!(
                    "\n[kafka]\nmode = \"zookeeper\"\noutput = \"{}\"\n",
                    host.join("etc/kafka/server.properties").display()
                )
            } else {
                String::new()
            },
            digest = self
                .digest
                .as_ref()
                .map(|d| format!("digest = \"{d}\"\n"))
                .unwrap_or_default(),
        );
        let path = host.join("etc/kafka-agent/agent.toml");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn command(&self, world: &World, inst: &str, args: &[&str]) -> tokio::process::Command {
        let config = self.config_for(world, inst);
        let mut cmd = world
            .command(inst, env!("CARGO_BIN_EXE_kafka-agent"))
            .unwrap();
        cmd.arg("--config").arg(config).args(args);
        tokio::process::Command::from(cmd)
    }

    /// Runs `kafka-agent claim --json`; Ok(id, how) or Err(exit code, stderr).
    pub async fn claim(&self, world: &World, inst: &str) -> Result<(u32, String), (i32, String)> {
        self.claim_with(world, inst, &[]).await
    }

    /// Like [`Cluster::claim`], with the agent's clock shifted (libfaketime's offsets: `+10m`,
    /// `-3h`); monotonic time is left alone.
    pub async fn claim_skewed(
        &self,
        world: &World,
        inst: &str,
        offset: &str,
    ) -> Result<(u32, String), (i32, String)> {
        self.claim_with(
            world,
            inst,
            &[
                ("LD_PRELOAD", FAKETIME_LIB),
                ("FAKETIME", offset),
                ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
            ],
        )
        .await
    }

    async fn claim_with(
        &self,
        world: &World,
        inst: &str,
        env: &[(&str, &str)],
    ) -> Result<(u32, String), (i32, String)> {
        let out = self
            .command(world, inst, &["claim", "--json"])
            .envs(env.iter().copied())
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            return Err((out.status.code().unwrap_or(-1), stderr));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("claim printed no JSON ({e}): {stderr}"));
        Ok((
            v["id"].as_u64().unwrap() as u32,
            v["how"].as_str().unwrap().to_string(),
        ))
    }

    /// Tags an ENI and a volume for `id` in the AZ.
    /// Returns (ENI id, its IP, volume id).
    pub async fn resources_for(
        &self,
        world: &World,
        id: u32,
        az: &str,
    ) -> (String, String, String) {
        let id = id.to_string();
        let tags = [
            ("kafka-agent:cluster", self.name.as_str()),
            ("kafka-agent:role", self.role),
            ("kafka-agent:id", id.as_str()),
        ];
        let (eni, ip) = world.create_eni(az, &tags).await.unwrap();
        let mut vol_tags = tags.to_vec();
        vol_tags.push(("kafka-agent:volume", "new"));
        let vol = world.create_volume(az, 1, &vol_tags).await.unwrap();
        (eni, ip, vol)
    }

    /// Runs `kafka-agent attach`; Ok(its JSON) or Err(exit code, stderr).
    pub async fn attach(
        &self,
        world: &World,
        inst: &str,
    ) -> Result<serde_json::Value, (i32, String)> {
        self.step(world, inst, "attach").await
    }

    /// Runs `kafka-agent route`; Ok(its JSON) or Err(exit code, stderr).
    pub async fn route(
        &self,
        world: &World,
        inst: &str,
    ) -> Result<serde_json::Value, (i32, String)> {
        self.step(world, inst, "route").await
    }

    /// Runs `kafka-agent boot`; Ok(its JSON) or Err(exit code, stderr).
    pub async fn boot(
        &self,
        world: &World,
        inst: &str,
    ) -> Result<serde_json::Value, (i32, String)> {
        self.step(world, inst, "boot").await
    }

    /// Runs `kafka-agent mount`; Ok(its JSON) or Err(exit code, stderr).
    pub async fn mount(
        &self,
        world: &World,
        inst: &str,
    ) -> Result<serde_json::Value, (i32, String)> {
        self.step(world, inst, "mount").await
    }

    async fn step(
        &self,
        world: &World,
        inst: &str,
        step: &str,
    ) -> Result<serde_json::Value, (i32, String)> {
        let out = self.command(world, inst, &[step]).output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            return Err((out.status.code().unwrap_or(-1), stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{step} printed no JSON ({e}): {stderr}")))
    }

    /// A ZooKeeper session on this machine, chrooted to the cluster.
    pub async fn zk(&self) -> zookeeper_client::Client {
        let hosts: Vec<String> = self
            .zk_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let root = zookeeper_client::Client::connect(&hosts.join(","))
            .await
            .unwrap();
        root.mkdir(&self.chroot(), &persistent()).await.unwrap();
        zookeeper_client::Client::connect(&format!("{}{}", hosts.join(","), self.chroot()))
            .await
            .unwrap()
    }

    /// Makes the claim log group, as an operator would beforehand; returns the client that did.
    pub async fn make_log_group(&self) -> aws_sdk_cloudwatchlogs::Client {
        let logs = aws_sdk_cloudwatchlogs::Client::new(&testbed::shared().moto.sdk_config("seed"));
        logs.create_log_group()
            .log_group_name(self.log_group())
            .send()
            .await
            .unwrap();
        logs
    }

    /// Writes a claim record for `id` owned by `owner`, as an earlier agent would have.
    pub async fn seed(&self, id: u32, owner: &str) {
        let record = Record {
            owner: owner.into(),
            az: "us-east-1a".into(),
            cluster: self.name.clone(),
            epoch: 0,
            time: 0,
        };
        let body = serde_json::to_string(&record).unwrap();
        match self.backend {
            Backend::Zk => {
                let zk = self.zk().await;
                let path = self.claim_path();
                zk.mkdir(&path, &persistent()).await.unwrap();
                zk.create(&format!("{path}/{id}"), body.as_bytes(), &persistent())
                    .await
                    .unwrap();
            }
            Backend::Cwl => {
                let logs =
                    aws_sdk_cloudwatchlogs::Client::new(&testbed::shared().moto.sdk_config("seed"));
                let group = self.log_group();
                let _ = logs.create_log_group().log_group_name(&group).send().await;
                let stream = stream_name(id, 0);
                logs.create_log_stream()
                    .log_group_name(&group)
                    .log_stream_name(&stream)
                    .send()
                    .await
                    .unwrap();
                logs.put_log_events()
                    .log_group_name(&group)
                    .log_stream_name(&stream)
                    .log_events(
                        aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
                            .timestamp(now_ms())
                            .message(body)
                            .build()
                            .unwrap(),
                    )
                    .send()
                    .await
                    .unwrap();
            }
        }
    }
}

/// A live instance in AZ `a` that holds `eni` (device index 1); returns its id.
pub async fn squat_eni(world: &World, eni: &str) -> String {
    let squatter = world.launch("a", &[]).await.unwrap();
    world
        .ec2
        .attach_network_interface()
        .network_interface_id(eni)
        .instance_id(&squatter)
        .device_index(1)
        .send()
        .await
        .unwrap();
    squatter
}

/// Sets the testbed's delays and faults for the world's agents (its scope).
pub async fn configure(world: &World, settings: kafka_testbed::aws::ScopeSettings) {
    testbed::shared()
        .moto
        .configure(&world.scope, &settings)
        .await
        .unwrap();
}

/// Debian's libfaketime (package faketime, installed by scripts/setup).
pub const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub fn persistent() -> zookeeper_client::CreateOptions<'static> {
    zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all())
}
