//! A Kafka cluster deployed on the testbed as the project deploys one on AWS: per broker id a
//! tagged ENI and EBS volume in its AZ; a stack whose `Brokers` resource waits for one signal
//! per broker (a CreationPolicy); an Auto Scaling Group over the AZs' subnets with a launch
//! lifecycle hook (and, when asked, a termination hook), the stack's tags propagated to its
//! instances, and the project's user data (a `#cloud-config` writing the cluster's agent
//! settings); an image whose boot runs the agent, the stand-in broker and the signal (and the
//! watchdog, with the termination hook) as the project's systemd units do. Its ZooKeeper is
//! the services' shared ensemble, or one deployed in the VPC ([`Spec::zookeeper`]).
//!
//! Shared by the demo (`kafka-testbed demo`) and the self-healing tests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::World;
use crate::cloudinit::{BootSpec, Unit};

/// The stack's resource the brokers signal, and the launch hook's name.
pub const LOGICAL_ID: &str = "Brokers";
pub const HOOK: &str = "launch";
/// The termination hook's name (`Spec::termination_hook`).
pub const LEAVE_HOOK: &str = "leave";

/// The testbed's stand-in for `systemctl stop kafka.service` (its hosts have no systemd): the
/// image's `[watch] stop_command`.
pub fn stop_script() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/standin/kafka-stop.sh"
    ))
}

/// What to deploy.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    /// The claim backend: `zookeeper` or `cloudwatch-logs`.
    pub backend: String,
    /// One broker per entry, id = position: the AZ suffix it lives in.
    pub azs: Vec<String>,
    /// The agent and the stand-in broker, as the image installs them.
    pub agent: PathBuf,
    pub standin: PathBuf,
    /// The agent's boot deadline.
    pub deadline_seconds: u32,
    /// The group's instance maintenance policy launches a replacement before terminating an
    /// unhealthy instance (MinHealthyPercentage 100, MaxHealthyPercentage 200) instead of the
    /// default, terminate first. The project's deployments use the default: see README.
    pub launch_before_terminate: bool,
    /// The group has a termination lifecycle hook ([`LEAVE_HOOK`], 300 s, DefaultResult
    /// CONTINUE) and the image runs `kafka-agent watch` (kafka-agent-watch.service), which
    /// leaves cleanly when the group terminates its instance.
    pub termination_hook: bool,
    /// `kafka-agent watch` runs on every broker (kafka-agent-watch.service) with these lines
    /// added to the user data's `[watch]` (beside the termination hook's, when it is set):
    /// e.g. a short `unhealthy_after_seconds` for a benchmark or the demo.
    pub watch: Option<String>,
    /// The ZooKeeper ensemble the brokers (and, with backend `zookeeper`, their claims) use;
    /// `None`: the services' shared one, exposed at each subnet's gateway.
    pub zookeeper: Option<ZookeeperAt>,
}

/// A ZooKeeper ensemble in the VPC (e.g. [`crate::ensemble::DeployedEnsemble::zookeeper_at`]),
/// without a chroot: the cluster adds its own.
#[derive(Debug, Clone)]
pub struct ZookeeperAt {
    /// As the hosts reach it: `ip:2181,…`.
    pub connect: String,
    /// As this machine reaches it: `127.0.0.1:<port>,…` ([`World::reach`]).
    pub local: String,
}

impl Spec {
    /// Whether the image runs `kafka-agent watch`.
    fn watching(&self) -> bool {
        self.termination_hook || self.watch.is_some()
    }
}

/// One broker id's resources.
#[derive(Debug, Clone)]
pub struct Broker {
    pub id: u32,
    pub az: String,
    pub eni: String,
    pub ip: String,
    pub volume: String,
    /// The host its broker registers under (`/brokers/ids/<id>`): the ENI's address, or the
    /// name the user data's `[kafka] advertised_host` gives the id.
    pub host: String,
}

/// A deployed cluster.
pub struct Deployed {
    pub spec: Spec,
    pub group: String,
    pub stack: String,
    pub brokers: Vec<Broker>,
    /// ZooKeeper as the hosts reach it (with the cluster's chroot), and as this machine does.
    pub zk_connect: String,
    pub zk_local: String,
    pub chroot: String,
    pub(crate) autoscaling: aws_sdk_autoscaling::Client,
    pub(crate) cfn: aws_sdk_cloudformation::Client,
}

/// The image's own configuration (what the AMI bakes): the host's paths, and how its broker
/// is stopped.
fn baked_config() -> String {
    format!(
        "# Baked into the image: where this host keeps things.\n\
         [paths]\nstate_dir = \"{{host}}/var/lib/kafka-agent\"\n\n\
         [storage]\ndata_dir = \"{{host}}/var/lib/kafka\"\nfstab = \"{{host}}/etc/fstab\"\n\
         sysfs_root = \"{{host}}/sys\"\ndev_root = \"{{host}}/dev\"\n\n\
         [kafka]\noutput = \"{{host}}/etc/kafka/server.properties\"\n\n\
         [watch]\nstop_command = [\"{}\", \"{{host}}/run/kafka.pid\"]\n",
        stop_script().display()
    )
}

/// The project's user data: the cluster's settings, as a drop-in beside the image's.
pub fn user_data(spec: &Spec, zk_connect: &str) -> String {
    let settings = format!(
        "[cluster]\nname = \"{name}\"\nrole = \"kafka\"\nsize = {size}\n\n\
         [boot]\ndeadline_seconds = {deadline}\n\n\
         [claim]\nbackend = \"{backend}\"\n\n\
         [zookeeper]\nconnect = \"{zk_connect}\"\n\n\
         [kafka]\nmode = \"zookeeper\"\n\n\
         [signal]\nlifecycle_hook = \"{HOOK}\"\nready_timeout_seconds = 120\n{watch}",
        name = spec.name,
        size = spec.azs.len(),
        deadline = spec.deadline_seconds,
        backend = spec.backend,
        watch = if spec.watching() {
            let hook = if spec.termination_hook {
                format!(
                    "termination_hook = \"{LEAVE_HOOK}\"\nlifecycle_poll_seconds = 1\n\
                     heartbeat_seconds = 2\n"
                )
            } else {
                String::new()
            };
            let extra = spec.watch.as_deref().unwrap_or_default().trim_end();
            format!("\n[watch]\n{hook}{extra}\n")
        } else {
            String::new()
        },
    );
    let indented: String = settings.lines().map(|l| format!("      {l}\n")).collect();
    format!(
        "#cloud-config\n\
         write_files:\n  \
           - path: /etc/kafka-agent/config.d/10-cluster.toml\n    \
             permissions: '0644'\n    \
             content: |\n{indented}"
    )
}

/// The image's boot: its baked files and the project's units, in their systemd order.
fn image(spec: &Spec) -> BootSpec {
    BootSpec {
        baked: vec![("/etc/kafka-agent/agent.toml".into(), baked_config())],
        units: units(&spec.agent, &spec.standin, spec.watching()),
    }
}

/// The project's units as the image runs them, in their systemd order: kafka-agent.service
/// (oneshot, before kafka.service, which requires it), kafka.service (the stand-in broker,
/// started as Kafka would be), kafka-agent-signal.service (after kafka.service) and, with
/// `watch`, kafka-agent-watch.service (long-running, after kafka.service).
pub(crate) fn units(agent: &std::path::Path, standin: &std::path::Path, watch: bool) -> Vec<Unit> {
    let agent_unit = |name: &str, command: &str, oneshot| Unit {
        name: name.into(),
        argv: vec![
            agent.to_string_lossy().into_owned(),
            "--config".into(),
            "{host}/etc/kafka-agent/agent.toml".into(),
            command.into(),
        ],
        oneshot,
    };
    let mut units = vec![
        agent_unit("kafka-agent", "boot", true),
        Unit {
            name: "kafka".into(),
            argv: vec![
                standin.to_string_lossy().into_owned(),
                "--config".into(),
                "{host}/etc/kafka/server.properties".into(),
            ],
            oneshot: false,
        },
        agent_unit("kafka-agent-signal", "signal", true),
    ];
    if watch {
        units.push(agent_unit("kafka-agent-watch", "watch", false));
    }
    units
}

/// An Auto Scaling Group as the project's stacks make one (the testbed's stand-in for the
/// stack's group resource): a launch configuration of `image_id` and `user_data`, the group
/// over the AZs' subnets with the stack's and the cluster's tags (propagated at launch), no
/// instances yet, and the launch hook [`HOOK`] (600 s, DefaultResult ABANDON).
pub(crate) struct GroupSpec<'a> {
    pub name: &'a str,
    pub image_id: &'a str,
    pub user_data: &'a str,
    pub azs: &'a [String],
    pub max_size: i32,
    pub stack: &'a str,
    pub logical_id: &'a str,
    pub cluster: &'a str,
    pub maintenance: Option<aws_sdk_autoscaling::types::InstanceMaintenancePolicy>,
}

pub(crate) async fn create_group(
    world: &World,
    autoscaling: &aws_sdk_autoscaling::Client,
    g: GroupSpec<'_>,
) -> Result<()> {
    autoscaling
        .create_launch_configuration()
        .launch_configuration_name(g.name)
        .image_id(g.image_id)
        .instance_type("m5.large")
        .user_data(crate::cloudinit::base64_encode(g.user_data.as_bytes()))
        .send()
        .await
        .context("CreateLaunchConfiguration")?;
    let mut subnets: Vec<String> = Vec::new();
    for az in g.azs {
        let s = world.subnet(az)?.id.clone();
        if !subnets.contains(&s) {
            subnets.push(s);
        }
    }
    let tag = |k: &str, v: &str| {
        aws_sdk_autoscaling::types::Tag::builder()
            .resource_id(g.name)
            .resource_type("auto-scaling-group")
            .key(k)
            .value(v)
            .propagate_at_launch(true)
            .build()
    };
    autoscaling
        .create_auto_scaling_group()
        .auto_scaling_group_name(g.name)
        .launch_configuration_name(g.name)
        .min_size(0)
        .max_size(g.max_size)
        .desired_capacity(0)
        .vpc_zone_identifier(subnets.join(","))
        .health_check_grace_period(0)
        .tags(tag("aws:cloudformation:stack-name", g.stack))
        .tags(tag("aws:cloudformation:logical-id", g.logical_id))
        .tags(tag("kafka-agent:cluster", g.cluster))
        .set_instance_maintenance_policy(g.maintenance)
        .send()
        .await
        .context("CreateAutoScalingGroup")?;
    autoscaling
        .put_lifecycle_hook()
        .auto_scaling_group_name(g.name)
        .lifecycle_hook_name(HOOK)
        .lifecycle_transition("autoscaling:EC2_INSTANCE_LAUNCHING")
        .heartbeat_timeout(600)
        .default_result("ABANDON")
        .send()
        .await
        .context("PutLifecycleHook")?;
    Ok(())
}

/// Gives `group` the termination hook [`LEAVE_HOOK`] (300 s, DefaultResult CONTINUE).
pub async fn put_leave_hook(autoscaling: &aws_sdk_autoscaling::Client, group: &str) -> Result<()> {
    autoscaling
        .put_lifecycle_hook()
        .auto_scaling_group_name(group)
        .lifecycle_hook_name(LEAVE_HOOK)
        .lifecycle_transition("autoscaling:EC2_INSTANCE_TERMINATING")
        .heartbeat_timeout(300)
        .default_result("CONTINUE")
        .send()
        .await
        .context("PutLifecycleHook (termination)")?;
    Ok(())
}

impl Deployed {
    /// Creates the resources, the stack, the group (which launches the brokers) and sets the
    /// world's image. Returns once the group exists; see [`Deployed::wait_serving`].
    pub async fn deploy(world: &World, services: &crate::Services, spec: Spec) -> Result<Self> {
        let sdk = services.moto.sdk_config(&format!("{}-admin", world.id));
        let autoscaling = aws_sdk_autoscaling::Client::new(&sdk);
        let cfn = aws_sdk_cloudformation::Client::new(&sdk);
        let mut brokers = Vec::new();
        for (id, az) in spec.azs.iter().enumerate() {
            let id_s = id.to_string();
            let tags = [
                ("kafka-agent:cluster", spec.name.as_str()),
                ("kafka-agent:role", "kafka"),
                ("kafka-agent:id", id_s.as_str()),
            ];
            let (eni, ip) = world.create_eni(az, &tags).await?;
            let mut vol_tags = tags.to_vec();
            vol_tags.push(("kafka-agent:volume", "new"));
            let volume = world.create_volume(az, 1, &vol_tags).await?;
            brokers.push(Broker {
                id: id as u32,
                az: az.clone(),
                eni,
                host: ip.clone(),
                ip,
                volume,
            });
        }
        let chroot = format!("/{}", spec.name);
        let (zk_connect, zk_local) = match &spec.zookeeper {
            Some(at) => (format!("{}{chroot}", at.connect), at.local.clone()),
            None => {
                let gateway = &world.subnets[0].gateway;
                let ports = services.zookeeper.client_ports();
                let connect = ports
                    .iter()
                    .map(|p| format!("{gateway}:{p}"))
                    .collect::<Vec<_>>()
                    .join(",");
                (connect + &chroot, services.zookeeper.connect_string())
            }
        };

        let stack = format!("{}-stack", spec.name);
        let template = serde_json::json!({
            "Resources": { LOGICAL_ID: {
                "Type": "AWS::CloudFormation::WaitCondition",
                "CreationPolicy": { "ResourceSignal": {
                    "Count": spec.azs.len(), "Timeout": "PT30M" } }
            }}
        });
        cfn.create_stack()
            .stack_name(&stack)
            .template_body(template.to_string())
            .send()
            .await
            .context("CreateStack")?;

        world.boot_with(image(&spec));
        let group = format!("{}-brokers", spec.name);
        let ud = user_data(&spec, &zk_connect);
        create_group(
            world,
            &autoscaling,
            GroupSpec {
                name: &group,
                image_id: "ami-12c6146b",
                user_data: &ud,
                azs: &spec.azs,
                max_size: spec.azs.len() as i32 * 2,
                stack: &stack,
                logical_id: LOGICAL_ID,
                cluster: &spec.name,
                maintenance: spec.launch_before_terminate.then(|| {
                    aws_sdk_autoscaling::types::InstanceMaintenancePolicy::builder()
                        .min_healthy_percentage(100)
                        .max_healthy_percentage(200)
                        .build()
                }),
            },
        )
        .await?;
        if spec.termination_hook {
            put_leave_hook(&autoscaling, &group).await?;
        }
        autoscaling
            .set_desired_capacity()
            .auto_scaling_group_name(&group)
            .desired_capacity(spec.azs.len() as i32)
            .send()
            .await
            .context("SetDesiredCapacity")?;
        Ok(Deployed {
            spec,
            group,
            stack,
            brokers,
            zk_connect,
            zk_local,
            chroot,
            autoscaling,
            cfn,
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

    /// Which host serves each broker id now (ZooKeeper's `/brokers/ids/<id>` registered under
    /// the id's host), read from this machine.
    pub async fn serving(&self) -> Result<BTreeMap<u32, String>> {
        let zk = zookeeper_client::Client::connect(&format!("{}{}", self.zk_local, self.chroot))
            .await
            .context("connecting to ZooKeeper")?;
        let mut out = BTreeMap::new();
        for b in &self.brokers {
            let path = format!("/brokers/ids/{}", b.id);
            if let Ok((data, _)) = zk.get_data(&path).await {
                let v: serde_json::Value = serde_json::from_slice(&data).unwrap_or_default();
                if v["host"].as_str() == Some(b.host.as_str()) {
                    out.insert(b.id, v["host"].as_str().unwrap_or_default().to_string());
                }
            }
        }
        Ok(out)
    }

    /// Waits until every broker id is served (registered at its ENI's address).
    pub async fn wait_serving(&self, world: &World, timeout: Duration) -> Result<()> {
        let until = Instant::now() + timeout;
        loop {
            let serving = self.serving().await.unwrap_or_default();
            if serving.len() == self.brokers.len() {
                return Ok(());
            }
            if Instant::now() > until {
                // What each instance of the group got to, for the reader of the failure.
                let mut hosts = Vec::new();
                for (inst, (az, state, health)) in self.instances().await.unwrap_or_default() {
                    let last: Vec<String> = world
                        .boot_events(&inst)
                        .into_iter()
                        .rev()
                        .take(3)
                        .map(|e| e.1)
                        .collect();
                    let log = crate::process::tail(
                        &world.host_dir(&inst).join("var/log/kafka-agent.log"),
                        4,
                    );
                    hosts.push(format!("{inst} {az} {state} {health}: {last:?}\n{log}"));
                }
                bail!(
                    "after {timeout:?}, brokers {:?} of {} serve; the group: {hosts:#?}",
                    serving.keys().collect::<Vec<_>>(),
                    self.brokers.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// One event of a heal, `at` after the failure.
#[derive(Debug, Clone)]
pub struct Event {
    pub at: Duration,
    pub what: String,
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// How [`Deployed::fail_and_follow`] fails a broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Its instance is terminated (TerminateInstances, as EC2 loses an instance).
    Terminated,
    /// Its process wedges (`HANG`: its socket accepts, nothing answers, its registration
    /// stays) on a running instance: only the watchdog sees it.
    Wedged,
}

/// What the replacement of a failed broker did, as seen from outside.
pub struct Heal {
    pub victim: String,
    pub replacement: Option<String>,
    pub events: Vec<Event>,
    /// The failure until the replacement's broker registered at the id's address.
    pub registered_after: Option<Duration>,
    /// The agent's own share: its boot process's wall time on the replacement.
    pub agent_boot: Option<Duration>,
}

impl Deployed {
    /// The instance serving broker `id` now: the group's instance whose host journalled a
    /// claim of `id` and whose broker is registered.
    pub async fn instance_of(&self, world: &World, id: u32) -> Result<Option<String>> {
        for inst in self.instances().await?.keys() {
            let claim = world.host_dir(inst).join("var/lib/kafka-agent/claim.json");
            let Ok(text) = std::fs::read_to_string(&claim) else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if v["id"].as_u64() == Some(id as u64) && v["instance_id"].as_str() == Some(inst) {
                return Ok(Some(inst.clone()));
            }
        }
        Ok(None)
    }

    /// Terminates the instance serving broker `id` and follows its replacement until the
    /// replacement's broker is registered and its launch hook completed (or `timeout`).
    pub async fn terminate_and_follow(
        &self,
        world: &World,
        signals: &crate::aws::Moto,
        id: u32,
        timeout: Duration,
    ) -> Result<Heal> {
        self.fail_and_follow(world, signals, id, Failure::Terminated, timeout)
            .await
    }

    /// Fails broker `id` as `failure` says and follows its replacement until the replacement's
    /// broker is registered and its launch hook completed (or `timeout`). A wedged broker is
    /// replaced only if its instance runs the watchdog ([`Spec::watch`]).
    pub async fn fail_and_follow(
        &self,
        world: &World,
        signals: &crate::aws::Moto,
        id: u32,
        failure: Failure,
        timeout: Duration,
    ) -> Result<Heal> {
        let victim = self
            .instance_of(world, id)
            .await?
            .with_context(|| format!("no instance serves broker {id}"))?;
        let before: std::collections::BTreeSet<String> =
            self.instances().await?.into_keys().collect();
        let ip = self.brokers[id as usize].ip.clone();
        let host = self.brokers[id as usize].host.clone();
        let t0 = Instant::now();
        let t0_ms = unix_ms();
        let mut events = Vec::new();
        match failure {
            Failure::Terminated => {
                events.push(Event {
                    at: Duration::ZERO,
                    what: format!("terminate {victim} (broker {id}, {ip})"),
                });
                world
                    .ec2
                    .terminate_instances()
                    .instance_ids(&victim)
                    .send()
                    .await
                    .context("TerminateInstances")?;
            }
            Failure::Wedged => {
                events.push(Event {
                    at: Duration::ZERO,
                    what: format!("wedge broker {id} on {victim} ({ip}): HANG"),
                });
                let from = before
                    .iter()
                    .find(|i| **i != victim)
                    .context("no other instance to reach the broker from")?;
                let answer = ask_broker(world, from, &format!("{ip}:9092"), "HANG")?;
                anyhow::ensure!(answer == ["OK HANG"], "HANG answered {answer:?}");
            }
        }
        let mut marked = false;
        let mut replacement: Option<String> = None;
        let mut registered_after = None;
        let mut signalled = false;
        let mut seen_gone = false;
        let zk = zookeeper_client::Client::connect(&format!("{}{}", self.zk_local, self.chroot))
            .await
            .context("connecting to ZooKeeper")?;
        let path = format!("/brokers/ids/{id}");
        let mut old_znode_gone = false;
        while t0.elapsed() < timeout && !(registered_after.is_some() && signalled) {
            if failure == Failure::Wedged && !marked {
                let watch = world.agent_journal(&victim, "watch");
                // watch.json keeps the mark's time to the second.
                if let Some(at) = watch["marked_unhealthy_unix"].as_u64() {
                    marked = true;
                    let at_ms = at as u128 * 1000;
                    events.push(Event {
                        at: Duration::from_millis(at_ms.saturating_sub(t0_ms) as u64),
                        what: format!(
                            "the watchdog on {victim} marked it Unhealthy (to the second)"
                        ),
                    });
                }
            }
            let now = self.instances().await.unwrap_or_default();
            if !seen_gone && !now.contains_key(&victim) {
                seen_gone = true;
                events.push(Event {
                    at: t0.elapsed(),
                    what: format!("{victim} left the group"),
                });
            }
            if replacement.is_none()
                && let Some((inst, (az, _, _))) = now.iter().find(|(i, _)| !before.contains(*i))
            {
                events.push(Event {
                    at: t0.elapsed(),
                    what: format!("the group launched {inst} in {az}"),
                });
                replacement = Some(inst.clone());
            }
            match zk.get_data(&path).await {
                Ok((data, stat)) => {
                    let v: serde_json::Value = serde_json::from_slice(&data).unwrap_or_default();
                    if old_znode_gone && registered_after.is_none() && v["host"] == host.as_str() {
                        let at = Duration::from_millis(
                            (stat.ctime as u128).saturating_sub(t0_ms) as u64
                        );
                        registered_after = Some(at);
                        events.push(Event {
                            at,
                            what: format!("broker {id} registered at {host}:{}", v["port"]),
                        });
                    }
                }
                Err(_) => {
                    if !old_znode_gone {
                        old_znode_gone = true;
                        events.push(Event {
                            at: t0.elapsed(),
                            what: format!("broker {id}'s registration is gone (its session ended)"),
                        });
                    }
                }
            }
            // The stack completed long ago (a CreationPolicy counts signals during creation
            // only): a replacement's truth goes to the launch hook.
            if let Some(inst) = &replacement
                && !signalled
                && let Some(result) = signals
                    .lifecycle_actions()
                    .await
                    .unwrap_or_default()
                    .iter()
                    .find(|a| a.kind == "complete" && a.instance_id.as_deref() == Some(inst))
                    .and_then(|a| a.result.clone())
            {
                signalled = true;
                events.push(Event {
                    at: t0.elapsed(),
                    what: format!("the launch hook has {result} from {inst}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut agent_boot = None;
        if let Some(inst) = &replacement {
            let rel = |ms: u128| Duration::from_millis(ms.saturating_sub(t0_ms) as u64);
            let boot_events = world.boot_events(inst);
            let agent_start = boot_events
                .iter()
                .find(|(_, e)| e == "kafka-agent: start")
                .map(|(t, _)| *t);
            for (t, e) in &boot_events {
                let what = match e.as_str() {
                    "boot" => "its host is up (instance running)".to_string(),
                    "cloud-init: done" => "cloud-init wrote the cluster's settings".to_string(),
                    "kafka-agent: start" => "kafka-agent boot starts".to_string(),
                    "kafka: start" => "kafka.service (the stand-in broker) starts".to_string(),
                    "kafka-agent-signal: start" => "kafka-agent signal starts".to_string(),
                    e if e.starts_with("kafka-agent: exited") => {
                        format!("kafka-agent boot {}", &e["kafka-agent: ".len()..])
                    }
                    e if e.contains("failed") => e.to_string(),
                    _ => continue,
                };
                events.push(Event { at: rel(*t), what });
            }
            // The agent's steps, from its boot journal and its start.
            let journal = world.host_dir(inst).join("var/lib/kafka-agent/boot.json");
            if let (Some(start), Ok(text)) = (agent_start, std::fs::read_to_string(journal)) {
                let j: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                let ms = |step: &str| {
                    j["steps"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|s| s["step"] == step)
                        .and_then(|s| s["ms"].as_u64())
                };
                let mut t = start + ms("start").unwrap_or(0) as u128;
                let claim = self.read_json(world, inst, "claim");
                let attach = self.read_json(world, inst, "attach");
                if let Some(m) = ms("claim") {
                    t += m as u128;
                    events.push(Event {
                        at: rel(t),
                        what: format!(
                            "id {} claimed ({})",
                            claim["id"],
                            claim["how"].as_str().unwrap_or("")
                        ),
                    });
                }
                if let Some(m) = ms("attach") {
                    t += m as u128;
                    events.push(Event {
                        at: rel(t),
                        what: format!(
                            "ENI {} ({}) and volume {} attached ({}, {})",
                            attach["eni"]["id"].as_str().unwrap_or(""),
                            attach["eni"]["ips"][0].as_str().unwrap_or(""),
                            attach["volume"]["id"].as_str().unwrap_or(""),
                            attach["eni"]["how"].as_str().unwrap_or(""),
                            attach["volume"]["how"].as_str().unwrap_or(""),
                        ),
                    });
                }
                let (mount, route) = (ms("mount"), ms("route"));
                if let Some(m) = mount {
                    events.push(Event {
                        at: rel(t + m as u128),
                        what: "volume mounted, its data checked".into(),
                    });
                }
                if let Some(r) = route {
                    events.push(Event {
                        at: rel(t + r as u128),
                        what: "ENI routed".into(),
                    });
                }
                t += mount.unwrap_or(0).max(route.unwrap_or(0)) as u128;
                if let Some(r) = ms("render") {
                    events.push(Event {
                        at: rel(t + r as u128),
                        what: "server.properties rendered".into(),
                    });
                }
            }
            let exited = boot_events
                .iter()
                .find(|(_, e)| e.starts_with("kafka-agent: exited"))
                .map(|(t, _)| *t);
            if let (Some(a), Some(b)) = (agent_start, exited) {
                agent_boot = Some(Duration::from_millis(b.saturating_sub(a) as u64));
            }
        }
        events.sort_by_key(|e| e.at);
        Ok(Heal {
            victim,
            replacement,
            events,
            registered_after,
            agent_boot,
        })
    }

    fn read_json(&self, world: &World, inst: &str, name: &str) -> serde_json::Value {
        world.agent_journal(inst, name)
    }
}

/// Talks the stand-in broker's line protocol with `addr` from inside `from`'s host: sends
/// `request` and returns the answer's lines (up to `END` for a READ, else one line).
pub fn ask_broker(world: &World, from: &str, addr: &str, request: &str) -> Result<Vec<String>> {
    use std::io::{BufRead, BufReader, Write};
    let (addr, request) = (addr.to_string(), request.to_string());
    crate::netns::in_netns(&world.netns(from), move || -> Result<Vec<String>> {
        let stream = std::net::TcpStream::connect_timeout(
            &addr.parse().with_context(|| format!("address {addr}"))?,
            Duration::from_secs(5),
        )
        .with_context(|| format!("connecting to the broker at {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        (&stream).write_all(format!("{request}\n").as_bytes())?;
        let many = request.starts_with("READ");
        let mut lines = Vec::new();
        for line in BufReader::new(&stream).lines() {
            let line = line?;
            if many && line == "END" {
                break;
            }
            let done = !many;
            lines.push(line);
            if done {
                break;
            }
        }
        Ok(lines)
    })?
}
