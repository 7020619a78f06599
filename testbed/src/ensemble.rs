//! A ZooKeeper ensemble deployed on the testbed as the project deploys one on AWS, with the real
//! server (Debian's ZooKeeper 3.8) in every instance: per myid a tagged ENI and EBS volume in
//! its AZ (role `zookeeper`; myids beyond the ensemble's size, up to `max_members`, are ready
//! for scaling out); a stack whose resource waits for one signal per member; an Auto Scaling
//! Group over the AZs' subnets with the launch lifecycle hook; the project's user data (a
//! `#cloud-config` writing the ensemble's agent settings); an image of its own AMI
//! ([`ZOOKEEPER_IMAGE`]) whose boot runs the agent, then ZooKeeper on the files the agent
//! rendered (`java … QuorumPeerMain <conf_dir>/zoo.cfg`), then the signal.
//!
//! The members' addresses are their ENIs' and live in the VPC: the hosts reach them, so the
//! helpers ask from inside a host ([`World::command`]): four-letter words over bash's
//! `/dev/tcp`, znodes with ZooKeeper's own `ZooKeeperMain`. A Kafka cluster on the ensemble
//! ([`DeployedEnsemble::zookeeper_at`]) is read from this machine through proxies into the VPC.
//!
//! Nothing outlives the world: ZooKeeper is a unit of its host, whose process group is killed
//! when the host halts (SIGTERM when its instance starts shutting down, SIGKILL when it is
//! gone), and its command line names the host's directory, which the testbed's sweep and
//! `kafka-testbed check` look for.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::World;
use crate::cloudinit::{BootSpec, Unit};
use crate::cluster::{HOOK, ZookeeperAt};
use crate::zookeeper::{CLASSPATH, JAVA_FLAGS};

/// The stack's resource the members signal.
pub const LOGICAL_ID: &str = "Ensemble";
/// The members' AMI: the world boots [`image`] for it, whatever image other instances of the
/// world boot (a Kafka cluster's, beside the ensemble).
pub const ZOOKEEPER_IMAGE: &str = "ami-03cf127a";
/// The members' ports, on their ENI addresses (the agent's defaults).
pub const CLIENT_PORT: u16 = 2181;
pub const QUORUM_PORT: u16 = 2888;
pub const ELECTION_PORT: u16 = 3888;
/// Where the image keeps things, in a host's view (`{host}` is its directory): the agent
/// renders `zoo.cfg` (on which ZooKeeper is started) and its dynamic file into `CONF_DIR`,
/// and mounts the member's volume on `DATA_DIR`.
pub const CONF_DIR: &str = "{host}/etc/zookeeper/conf";
pub const DATA_DIR: &str = "{host}/var/lib/zookeeper";
/// Each member's ZooKeeper superuser password file: not baked, the agent makes one per
/// member at its first boot (as the project's image does), so the joins and removals by
/// reconfig run with a different password on every member.
pub const SUPERUSER_PASSWORD_FILE: &str = "{host}/etc/kafka-agent/zk-super";
const AGENT_CONFIG: &str = "{host}/etc/kafka-agent/agent.toml";

/// What to deploy.
#[derive(Debug, Clone)]
pub struct EnsembleSpec {
    pub name: String,
    /// One member per entry, myid = position + 1: the AZ suffix it lives in.
    pub azs: Vec<String>,
    /// The agent, as the image installs it.
    pub agent: PathBuf,
    /// The agent's boot deadline.
    pub deadline_seconds: u32,
    /// Myids with an ENI and a volume: at least `azs.len()`; myid k beyond it lives in
    /// `azs[(k - 1) % azs.len()]`. The group launches into any of the least loaded AZs, so a
    /// scale-out where every new instance finds a myid in its AZ needs as many spare myids
    /// per AZ as it adds instances per AZ (3 AZs to 5 members: 6).
    pub max_members: u32,
    /// `kafka-agent watch` runs on every member (kafka-agent-watch.service) with these
    /// `[watch]` settings: it removes members whose instances are gone and marks a failed
    /// member only while the others keep a quorum.
    pub watch: Option<String>,
}

impl EnsembleSpec {
    /// An ensemble of one member per AZ, a 120 s boot deadline, no myids to scale out to.
    pub fn new(name: impl Into<String>, azs: &[&str], agent: impl Into<PathBuf>) -> Self {
        EnsembleSpec {
            name: name.into(),
            azs: azs.iter().map(|a| a.to_string()).collect(),
            agent: agent.into(),
            deadline_seconds: 120,
            max_members: azs.len() as u32,
            watch: None,
        }
    }

    /// The ensemble's size (the members a fresh ensemble starts with).
    pub fn size(&self) -> u32 {
        self.azs.len() as u32
    }

    /// The AZ suffix of myid `myid` (1-based).
    pub fn az_of(&self, myid: u32) -> &str {
        &self.azs[(myid as usize - 1) % self.azs.len()]
    }
}

/// One myid's resources.
#[derive(Debug, Clone)]
pub struct ZkMember {
    pub myid: u32,
    pub az: String,
    pub eni: String,
    pub ip: String,
    pub volume: String,
}

/// A deployed ensemble.
pub struct DeployedEnsemble {
    pub spec: EnsembleSpec,
    pub group: String,
    pub stack: String,
    /// Every myid with resources (1..=max_members), in order.
    pub members: Vec<ZkMember>,
    pub(crate) autoscaling: aws_sdk_autoscaling::Client,
    pub(crate) cfn: aws_sdk_cloudformation::Client,
    pub(crate) ec2: aws_sdk_ec2::Client,
}

/// The ensemble's settings, as the user data's drop-in carries them: the one place their
/// keys are spelled.
pub fn settings(spec: &EnsembleSpec) -> String {
    format!(
        "[cluster]\nname = \"{name}\"\nrole = \"zookeeper\"\nsize = {size}\n\n\
         [boot]\ndeadline_seconds = {deadline}\n\n\
         [claim]\nbackend = \"cloudwatch-logs\"\n\n\
         [signal]\nlifecycle_hook = \"{HOOK}\"\nready_timeout_seconds = 120\n\n\
         [ensemble]\nclient_port = {CLIENT_PORT}\ninitial_size = {initial}\n{watch}",
        name = spec.name,
        size = spec.max_members,
        initial = spec.size(),
        deadline = spec.deadline_seconds,
        watch = spec
            .watch
            .as_deref()
            .map(|w| format!("\n[watch]\n{}\n", w.trim_end()))
            .unwrap_or_default(),
    )
}

/// The project's user data: the ensemble's [`settings`], as a drop-in beside the image's.
pub fn user_data(spec: &EnsembleSpec) -> String {
    let indented: String = settings(spec)
        .lines()
        .map(|l| format!("      {l}\n"))
        .collect();
    format!(
        "#cloud-config\n\
         write_files:\n  \
           - path: /etc/kafka-agent/config.d/10-cluster.toml\n    \
             permissions: '0644'\n    \
             content: |\n{indented}"
    )
}

/// The image's own configuration (what the AMI bakes): the host's paths.
pub fn baked_config() -> String {
    format!(
        "# Baked into the image: where this host keeps things.\n\
         [paths]\nstate_dir = \"{{host}}/var/lib/kafka-agent\"\n\n\
         [storage]\ndata_dir = \"{DATA_DIR}\"\nfstab = \"{{host}}/etc/fstab\"\n\
         sysfs_root = \"{{host}}/sys\"\ndev_root = \"{{host}}/dev\"\n\n\
         [ensemble]\nconf_dir = \"{CONF_DIR}\"\n\
         superuser_password_file = \"{SUPERUSER_PASSWORD_FILE}\"\n"
    )
}

/// The image's boot: its baked files and the units, in their systemd order.
pub fn image(spec: &EnsembleSpec) -> BootSpec {
    let host_path = |p: &str| p.replace("{host}", "");
    BootSpec {
        baked: vec![(host_path(AGENT_CONFIG), baked_config())],
        units: units(&spec.agent, spec.watch.is_some()),
    }
}

/// The units as the image runs them, in their systemd order: kafka-agent.service (oneshot:
/// claim, attach, mount, route, render), zookeeper.service (the real server on the rendered
/// zoo.cfg, long-running), kafka-agent-signal.service (oneshot) and, with `watch`,
/// kafka-agent-watch.service (long-running).
pub fn units(agent: &std::path::Path, watch: bool) -> Vec<Unit> {
    let agent_unit = |name: &str, command: &str| Unit {
        name: name.into(),
        argv: vec![
            agent.to_string_lossy().into_owned(),
            "--config".into(),
            AGENT_CONFIG.into(),
            command.into(),
        ],
        oneshot: true,
    };
    // The testbed's server flags, but not its superDigest flag: zoo.cfg carries the digest
    // the agent rendered, so a wrong or missing one shows.
    let mut java: Vec<String> = vec!["java".into()];
    java.extend(JAVA_FLAGS.iter().map(|f| f.to_string()));
    java.extend([
        "-cp".into(),
        CLASSPATH.into(),
        "org.apache.zookeeper.server.quorum.QuorumPeerMain".into(),
        format!("{CONF_DIR}/zoo.cfg"),
    ]);
    let mut units = vec![
        agent_unit("kafka-agent", "boot"),
        Unit {
            name: "zookeeper".into(),
            argv: java,
            oneshot: false,
        },
        agent_unit("kafka-agent-signal", "signal"),
    ];
    if watch {
        units.push(Unit {
            oneshot: false,
            ..agent_unit("kafka-agent-watch", "watch")
        });
    }
    units
}

impl DeployedEnsemble {
    /// Creates the resources, the stack, the group (which launches the members) and registers
    /// the members' image for their AMI ([`ZOOKEEPER_IMAGE`]). Returns once the group exists;
    /// see [`DeployedEnsemble::wait_quorum`].
    pub async fn deploy(
        world: &World,
        services: &crate::Services,
        spec: EnsembleSpec,
    ) -> Result<Self> {
        ensure!(!spec.azs.is_empty(), "an ensemble needs at least one AZ");
        ensure!(
            spec.max_members >= spec.size(),
            "max_members {} is below the ensemble's size {}",
            spec.max_members,
            spec.size()
        );
        let sdk = services.moto.sdk_config(&format!("{}-admin", world.id));
        let autoscaling = aws_sdk_autoscaling::Client::new(&sdk);
        let cfn = aws_sdk_cloudformation::Client::new(&sdk);
        let ec2 = aws_sdk_ec2::Client::new(&sdk);
        let mut members = Vec::new();
        for myid in 1..=spec.max_members {
            let az = spec.az_of(myid).to_string();
            let id_s = myid.to_string();
            let tags = [
                ("kafka-agent:cluster", spec.name.as_str()),
                ("kafka-agent:role", "zookeeper"),
                ("kafka-agent:id", id_s.as_str()),
            ];
            let (eni, ip) = world
                .create_eni(&az, &tags)
                .await
                .with_context(|| format!("the ENI of myid {myid}"))?;
            let mut vol_tags = tags.to_vec();
            vol_tags.push(("kafka-agent:volume", "new"));
            let volume = world
                .create_volume(&az, 1, &vol_tags)
                .await
                .with_context(|| format!("the volume of myid {myid}"))?;
            members.push(ZkMember {
                myid,
                az,
                eni,
                ip,
                volume,
            });
        }

        let stack = format!("{}-stack", spec.name);
        let template = serde_json::json!({
            "Resources": { LOGICAL_ID: {
                "Type": "AWS::CloudFormation::WaitCondition",
                "CreationPolicy": { "ResourceSignal": {
                    "Count": spec.size(), "Timeout": "PT30M" } }
            }}
        });
        cfn.create_stack()
            .stack_name(&stack)
            .template_body(template.to_string())
            .send()
            .await
            .context("CreateStack")?;

        world.boot_image(ZOOKEEPER_IMAGE, image(&spec));
        let group = format!("{}-ensemble", spec.name);
        crate::cluster::create_group(
            world,
            &autoscaling,
            crate::cluster::GroupSpec {
                name: &group,
                image_id: ZOOKEEPER_IMAGE,
                user_data: &user_data(&spec),
                azs: &spec.azs,
                max_size: spec.max_members.max(spec.size() * 2) as i32,
                stack: &stack,
                logical_id: LOGICAL_ID,
                cluster: &spec.name,
                maintenance: None,
            },
        )
        .await?;
        let deployed = DeployedEnsemble {
            spec,
            group,
            stack,
            members,
            autoscaling,
            cfn,
            ec2,
        };
        deployed.set_desired(deployed.spec.size()).await?;
        Ok(deployed)
    }

    /// Myid `myid`'s resources.
    pub fn member(&self, myid: u32) -> Result<&ZkMember> {
        self.members
            .iter()
            .find(|m| m.myid == myid)
            .with_context(|| format!("the ensemble has no myid {myid}"))
    }

    /// `ip:2181,…` of the ensemble's first `size` members, as the hosts reach them.
    pub fn connect_string(&self) -> String {
        self.members
            .iter()
            .take(self.spec.size() as usize)
            .map(|m| format!("{}:{CLIENT_PORT}", m.ip))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The ensemble for a Kafka cluster ([`crate::cluster::Spec::zookeeper`]): the first
    /// `size` members' ENI addresses as the hosts reach them
    /// ([`DeployedEnsemble::connect_string`]) and as this machine does, each through a proxy
    /// into the VPC ([`World::reach`]).
    pub fn zookeeper_at(&self, world: &World) -> Result<ZookeeperAt> {
        let mut local = Vec::new();
        for m in self.members.iter().take(self.spec.size() as usize) {
            let port = world
                .reach(&m.ip, CLIENT_PORT)
                .with_context(|| format!("reaching myid {} at {}", m.myid, m.ip))?;
            local.push(format!("127.0.0.1:{port}"));
        }
        Ok(ZookeeperAt {
            connect: self.connect_string(),
            local: local.join(","),
        })
    }

    /// The group's instances as the service lists them: id -> (AZ, lifecycle state, health).
    pub async fn instances(&self) -> Result<BTreeMap<String, (String, String, String)>> {
        let out = self
            .autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(&self.group)
            .send()
            .await
            .context("DescribeAutoScalingGroups")?;
        let mut map = BTreeMap::new();
        for g in out.auto_scaling_groups() {
            for i in g.instances() {
                map.insert(
                    i.instance_id().unwrap_or_default().to_string(),
                    (
                        i.availability_zone().unwrap_or_default().to_string(),
                        i.lifecycle_state()
                            .map(|s| s.as_str().to_string())
                            .unwrap_or_default(),
                        i.health_status().unwrap_or_default().to_string(),
                    ),
                );
            }
        }
        Ok(map)
    }

    /// The group's instances whose host is up (their namespace exists), in id order.
    pub async fn running(&self, world: &World) -> Result<Vec<String>> {
        Ok(self
            .instances()
            .await?
            .into_keys()
            .filter(|i| host_up(world, i))
            .collect())
    }

    /// The stack's status.
    pub async fn stack_status(&self) -> Result<String> {
        let out = self
            .cfn
            .describe_stacks()
            .stack_name(&self.stack)
            .send()
            .await
            .context("DescribeStacks")?;
        Ok(out
            .stacks()
            .first()
            .and_then(|s| s.stack_status())
            .map(|s| s.as_str().to_string())
            .unwrap_or_default())
    }

    /// Sets the group's desired capacity.
    pub async fn set_desired(&self, n: u32) -> Result<()> {
        self.autoscaling
            .set_desired_capacity()
            .auto_scaling_group_name(&self.group)
            .desired_capacity(n as i32)
            .send()
            .await
            .with_context(|| format!("SetDesiredCapacity {n} of {}", self.group))?;
        Ok(())
    }

    /// Which of the group's instances holds each myid: the instance whose host journalled a
    /// claim of it (`var/lib/kafka-agent/claim.json`: `id`, `instance_id`).
    pub async fn claims(&self, world: &World) -> Result<BTreeMap<u32, String>> {
        let mut out = BTreeMap::new();
        for inst in self.instances().await?.keys() {
            let claim = world.agent_journal(inst, "claim");
            if let Some(id) = claim["id"].as_u64()
                && claim["instance_id"].as_str() == Some(inst)
            {
                out.insert(id as u32, inst.clone());
            }
        }
        Ok(out)
    }

    /// The instance holding myid `myid` now (see [`DeployedEnsemble::claims`]).
    pub async fn instance_of(&self, world: &World, myid: u32) -> Result<Option<String>> {
        Ok(self.claims(world).await?.remove(&myid))
    }

    /// Terminates the instance holding myid `myid` (TerminateInstances, as EC2 loses an
    /// instance) and returns its id; its host halts once EC2 has shut it down.
    pub async fn terminate(&self, world: &World, myid: u32) -> Result<String> {
        let victim = self
            .instance_of(world, myid)
            .await?
            .with_context(|| format!("no instance holds myid {myid}"))?;
        world
            .ec2
            .terminate_instances()
            .instance_ids(&victim)
            .send()
            .await
            .with_context(|| format!("terminating {victim} (myid {myid})"))?;
        Ok(victim)
    }

    /// Sends the four-letter word `word` to member `myid`'s ENI address from inside
    /// `from_inst`'s host; `None` if nothing answers within 3 s. Fails only if `from_inst`
    /// has no host.
    pub async fn four_letter(
        &self,
        world: &World,
        from_inst: &str,
        myid: u32,
        word: &str,
    ) -> Result<Option<String>> {
        let ip = self.member(myid)?.ip.clone();
        ask(world, from_inst, &ip, word).await
    }

    /// `srvr` to member `myid` from inside `from_inst` (see [`DeployedEnsemble::four_letter`]).
    pub async fn srvr(&self, world: &World, from_inst: &str, myid: u32) -> Result<Option<String>> {
        self.four_letter(world, from_inst, myid, "srvr").await
    }

    /// Where each myid's ENI is attached now (EC2's view): myid -> instance. A member whose
    /// ENI is attached nowhere has no address to answer on.
    pub async fn attachments(&self) -> Result<BTreeMap<u32, String>> {
        let out = self
            .ec2
            .describe_network_interfaces()
            .set_network_interface_ids(Some(self.members.iter().map(|m| m.eni.clone()).collect()))
            .send()
            .await
            .context("DescribeNetworkInterfaces of the ensemble's ENIs")?;
        let mut map = BTreeMap::new();
        for eni in out.network_interfaces() {
            let member = self
                .members
                .iter()
                .find(|m| eni.network_interface_id() == Some(m.eni.as_str()));
            if let (Some(m), Some(inst)) = (member, eni.attachment().and_then(|a| a.instance_id()))
            {
                map.insert(m.myid, inst.to_string());
            }
        }
        Ok(map)
    }

    /// The `Mode:` each member that answers `srvr` reports (`leader`, `follower`, `observer`,
    /// `standalone`). Members whose ENI is attached are asked, from the instance it is
    /// attached to or else from any running one.
    pub async fn modes(&self, world: &World) -> BTreeMap<u32, String> {
        let attached = self.attachments().await.unwrap_or_default();
        let running = self.running(world).await.unwrap_or_default();
        let Some(any) = running.first() else {
            return BTreeMap::new();
        };
        let asks = self
            .members
            .iter()
            .filter_map(|m| Some((m, attached.get(&m.myid)?)))
            .map(|(m, at)| {
                let from = if running.contains(at) { at } else { any };
                async move {
                    let reply = ask(world, from, &m.ip, "srvr").await.ok().flatten()?;
                    Some((m.myid, mode(&reply)?))
                }
            });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// The membership (`/zookeeper/config`) as member `myid` knows it, from its `conf`:
    /// myid -> the `server.N=` line's value. `None` if it does not answer.
    pub async fn membership(
        &self,
        world: &World,
        from_inst: &str,
        myid: u32,
    ) -> Result<Option<BTreeMap<u32, String>>> {
        Ok(self
            .four_letter(world, from_inst, myid, "conf")
            .await?
            .map(|c| membership(&c)))
    }

    /// Waits until the ensemble has `voters` voting members in quorum: its membership, as its
    /// leader's `conf` tells it, has exactly `voters` participants, one of them is the one
    /// leader and the others are followers. Servers outside the membership are not counted.
    pub async fn wait_quorum(&self, world: &World, voters: usize, timeout: Duration) -> Result<()> {
        let until = Instant::now() + timeout;
        loop {
            let modes = self.modes(world).await;
            let mut seen = format!("modes {modes:?}");
            let leaders: Vec<u32> = modes
                .iter()
                .filter(|(_, m)| *m == "leader")
                .map(|(id, _)| *id)
                .collect();
            if let [leader] = leaders[..]
                && let Some(from) = self.running(world).await?.first()
                && let Some(members) = self.membership(world, from, leader).await?
            {
                let participants: Vec<u32> = members
                    .iter()
                    .filter(|(_, line)| participant(line))
                    .map(|(id, _)| *id)
                    .collect();
                seen.push_str(&format!(", membership {members:?}"));
                let in_quorum = participants.len() == voters
                    && participants.contains(&leader)
                    && participants.iter().all(|id| {
                        matches!(
                            modes.get(id).map(String::as_str),
                            Some("leader" | "follower")
                        )
                    });
                if in_quorum {
                    return Ok(());
                }
            }
            if Instant::now() > until {
                bail!(
                    "after {timeout:?}, no quorum of {voters} voters: {seen}; the group: {:#?}",
                    self.describe_hosts(world).await
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// What each instance of the group got to, for the reader of a failure.
    pub async fn describe_hosts(&self, world: &World) -> Vec<String> {
        let mut hosts = Vec::new();
        for (inst, (az, state, health)) in self.instances().await.unwrap_or_default() {
            let last: Vec<String> = world
                .boot_events(&inst)
                .into_iter()
                .rev()
                .take(3)
                .map(|e| e.1)
                .collect();
            let dir = world.host_dir(&inst);
            let agent = crate::process::tail(&dir.join("var/log/kafka-agent.log"), 4);
            let zk = crate::process::tail(&dir.join("var/log/zookeeper.log"), 4);
            hosts.push(format!(
                "{inst} {az} {state} {health}: {last:?}\nkafka-agent: {agent}\nzookeeper: {zk}"
            ));
        }
        hosts
    }

    /// Runs ZooKeeper's CLI inside `from_inst`'s host against the members that serve (ENI
    /// attached, and `srvr` from there says so): `ZooKeeperMain -server <ip>:2181,… <args…>`, e.g.
    /// `["create", "/a", "x"]` or `["get", "/a"]`. Returns its standard output without the
    /// connection banner and blank lines (`create`'s "Created …" goes to standard error, not
    /// here); fails with both outputs if it exits non-zero or takes over 60 s.
    pub async fn zk_cli(&self, world: &World, from_inst: &str, args: &[&str]) -> Result<String> {
        let attached = self.attachments().await?;
        let candidates = self
            .members
            .iter()
            .filter(|m| attached.contains_key(&m.myid));
        let asks = candidates.map(|m| async move {
            let reply = ask(world, from_inst, &m.ip, "srvr").await.ok().flatten()?;
            matches!(mode(&reply)?.as_str(), "leader" | "follower" | "standalone")
                .then(|| format!("{}:{CLIENT_PORT}", m.ip))
        });
        let servers: Vec<String> = futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect();
        ensure!(
            !servers.is_empty(),
            "no member serves, as {from_inst} sees them"
        );
        let mut cmd = world.command(from_inst, "timeout")?;
        // Without SASL the client asks no reverse DNS of the server's address (the hosts
        // reach no DNS server: every lookup would wait for its timeout).
        cmd.args(["-k", "2", "60", "java"])
            .args(JAVA_FLAGS)
            .args([
                "-Dzookeeper.sasl.client=false",
                "-cp",
                CLASSPATH,
                "org.apache.zookeeper.ZooKeeperMain",
                "-server",
                &servers.join(","),
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .output()
            .await
            .with_context(|| format!("running ZooKeeperMain on {from_inst}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "ZooKeeperMain {args:?} on {from_inst} failed ({}): {}{}",
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(without_banner(&stdout))
    }
}

/// Whether `inst`'s host is up (its network namespace exists).
fn host_up(world: &World, inst: &str) -> bool {
    crate::netns::path(&world.netns(inst)).exists()
}

/// Sends `word` to `ip`:2181 from inside `from`'s host, with bash's `/dev/tcp` (the hosts
/// have no `nc`); `None` if nothing answers within 3 s (or `from` is still booting).
async fn ask(world: &World, from: &str, ip: &str, word: &str) -> Result<Option<String>> {
    ensure!(host_up(world, from), "{from} has no host (not running)");
    ensure!(
        word.len() == 4 && word.bytes().all(|b| b.is_ascii_lowercase()),
        "{word:?} is not a four-letter word"
    );
    let script = format!("exec 3<>/dev/tcp/{ip}/{CLIENT_PORT} && printf {word} >&3 && cat <&3");
    // A host still booting has its namespace but not yet its routes: nothing answers there.
    let Ok(mut cmd) = world.command(from, "timeout") else {
        return Ok(None);
    };
    cmd.args(["-k", "1", "3", "bash", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let out = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("asking {ip} {word} from {from}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok((!text.is_empty()).then_some(text))
}

/// The `Mode:` of a `srvr` reply.
fn mode(srvr: &str) -> Option<String> {
    srvr.lines()
        .find_map(|l| l.strip_prefix("Mode: "))
        .map(|m| m.trim().to_string())
}

/// The `server.N=` lines of a `conf` reply (or of `/zookeeper/config`): N -> value.
fn membership(conf: &str) -> BTreeMap<u32, String> {
    conf.lines()
        .filter_map(|l| {
            let (key, value) = l.trim().split_once('=')?;
            let id = key.strip_prefix("server.")?.parse().ok()?;
            Some((id, value.to_string()))
        })
        .collect()
}

/// Whether a `server.N=` value is a voting member (`participant`, ZooKeeper's default role).
fn participant(value: &str) -> bool {
    let addresses = value.split(';').next().unwrap_or("");
    !addresses.split(':').any(|p| p == "observer")
}

/// ZooKeeperMain's output without its connection banner, first watcher event and blank lines.
fn without_banner(stdout: &str) -> String {
    stdout
        .lines()
        .filter(|l| {
            !(l.starts_with("Connecting to ")
                || *l == "WATCHER::"
                || l.starts_with("WatchedEvent state:SyncConnected type:None")
                || l.is_empty())
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> EnsembleSpec {
        EnsembleSpec::new("zk-test", &["a", "b", "c"], "/opt/kafka-agent")
    }

    #[test]
    fn extra_myids_cycle_through_the_azs() {
        let s = spec();
        let azs: Vec<&str> = (1..=7).map(|k| s.az_of(k)).collect();
        assert_eq!(azs, ["a", "b", "c", "a", "b", "c", "a"]);
    }

    #[test]
    fn the_settings_name_the_role_its_size_and_the_client_port() {
        let mut s = spec();
        s.deadline_seconds = 90;
        assert_eq!(
            settings(&s),
            "[cluster]\nname = \"zk-test\"\nrole = \"zookeeper\"\nsize = 3\n\n\
             [boot]\ndeadline_seconds = 90\n\n\
             [claim]\nbackend = \"cloudwatch-logs\"\n\n\
             [signal]\nlifecycle_hook = \"launch\"\nready_timeout_seconds = 120\n\n\
             [ensemble]\nclient_port = 2181\ninitial_size = 3\n"
        );
        let ud = user_data(&s);
        assert!(ud.starts_with(
            "#cloud-config\nwrite_files:\n  - path: /etc/kafka-agent/config.d/10-cluster.toml\n"
        ));
        assert!(ud.contains("      role = \"zookeeper\"\n"), "{ud}");
    }

    #[test]
    fn the_image_runs_the_agent_then_zookeeper_on_the_rendered_config_then_the_signal() {
        let image = image(&spec());
        let names: Vec<(&str, bool)> = image
            .units
            .iter()
            .map(|u| (u.name.as_str(), u.oneshot))
            .collect();
        assert_eq!(
            names,
            [
                ("kafka-agent", true),
                ("zookeeper", false),
                ("kafka-agent-signal", true)
            ]
        );
        let zk = &image.units[1].argv;
        assert_eq!(zk[0], "java");
        assert_eq!(
            zk[zk.len() - 2..],
            [
                "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                "{host}/etc/zookeeper/conf/zoo.cfg"
            ]
        );
        assert!(!zk.iter().any(|a| a.contains("superDigest")), "{zk:?}");
        assert_eq!(
            image.units[0].argv,
            [
                "/opt/kafka-agent",
                "--config",
                "{host}/etc/kafka-agent/agent.toml",
                "boot"
            ]
        );
        let baked: Vec<&str> = image.baked.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(baked, ["/etc/kafka-agent/agent.toml"]);
    }

    #[test]
    fn replies_are_read_for_mode_and_membership() {
        let srvr = "Zookeeper version: 3.8.0\nZxid: 0x100000000\nMode: follower\nNode count: 5\n";
        assert_eq!(mode(srvr).as_deref(), Some("follower"));
        assert_eq!(
            mode("This ZooKeeper instance is not currently serving requests\n"),
            None
        );
        let conf = "serverId=1\nmembership: \n\
                    server.1=10.0.1.5:2888:3888:participant;0.0.0.0:2181\n\
                    server.2=10.0.2.5:2888:3888:observer;0.0.0.0:2181\n\
                    server.3=10.0.3.5:2888:3888;0.0.0.0:2181\nversion=100000000";
        let m = membership(conf);
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
        let voting: Vec<u32> = m
            .iter()
            .filter(|(_, v)| participant(v))
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(voting, [1, 3]);
    }

    #[test]
    fn the_cli_banner_is_dropped() {
        let out = "Connecting to 10.0.1.5:2181\n\nWATCHER::\n\n\
                   WatchedEvent state:SyncConnected type:None path:null\nhello\n";
        assert_eq!(without_banner(out), "hello\n");
    }
}
