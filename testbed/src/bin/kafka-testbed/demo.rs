//! The demo: a 3-broker cluster in three AZs deployed as the project deploys one (tagged ENIs
//! and volumes, a stack, an Auto Scaling Group whose user data configures the agent, an
//! image that boots the agent, the stand-in broker and the signal), then broker 1 dies and
//! the group heals it with zero manual steps, while the demo prints what happens. Then broker
//! 2's process wedges on a healthy instance and its watchdog has the group replace it; then the
//! group scales in and out through its desired capacity, and the leaving instance releases its
//! volume and ENI (the termination hook) before EC2 takes it down. With `--zookeeper-ensemble`
//! the cluster's ZooKeeper is a self-healing ensemble of its own, and one of its members dies
//! too ([`crate::demo_ensemble`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kafka_testbed::cluster::{Deployed, Event, Failure, Spec, ask_broker};
use kafka_testbed::{Services, World};

use crate::demo_ensemble;

/// The agent and the stand-in, built beside this binary (scripts/demo builds them).
fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("this binary's directory")?.join(name);
    if !path.exists() {
        bail!(
            "{} does not exist: build it (scripts/demo does)",
            path.display()
        );
    }
    Ok(path)
}

/// `kafka-agent status` on the host, its first line and exit code.
pub(crate) async fn status(world: &World, agent: &Path, inst: &str) -> Result<(i32, String)> {
    let config = world.host_dir(inst).join("etc/kafka-agent/agent.toml");
    let mut cmd = world.command(inst, &agent.to_string_lossy())?;
    cmd.arg("--config").arg(config).arg("status");
    let out = tokio::process::Command::from(cmd).output().await?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok((
        out.status.code().unwrap_or(-1),
        text.lines().next().unwrap_or("").to_string(),
    ))
}

/// The watchdog's settings on every broker: short, for a demo (the defaults are minutes).
const WATCH: &str = "interval_seconds = 1\nunhealthy_after_seconds = 5\ngrace_period_seconds = 10\n\
                     listener_timeout_seconds = 1";

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn print_events(events: &[Event]) {
    for e in events {
        println!("  +{:>6.2} s  {}", e.at.as_secs_f64(), e.what);
    }
}

/// Writes three records to broker `id` from `from`'s host; returns them.
fn write_records(world: &World, cluster: &Deployed, from: &str, id: u32) -> Result<Vec<String>> {
    let addr = format!("{}:9092", cluster.brokers[id as usize].ip);
    let mut written = Vec::new();
    for n in 0..3 {
        let text = format!("order-{id}-{n}");
        let answer = ask_broker(world, from, &addr, &format!("APPEND orders {text}"))?;
        println!("  wrote {text} to broker {id}: {}", answer.join(" "));
        written.push(text);
    }
    Ok(written)
}

/// Reads broker `id`'s records from `from`'s host and checks they are `written`.
fn check_records(
    world: &World,
    cluster: &Deployed,
    from: &str,
    id: u32,
    written: &[String],
) -> Result<()> {
    let addr = format!("{}:9092", cluster.brokers[id as usize].ip);
    let read = ask_broker(world, from, &addr, "READ orders")?;
    println!("  records on broker {id} now: {}", read.join(", "));
    if read != written {
        bail!("broker {id} came back without its records: {read:?}, wrote {written:?}");
    }
    Ok(())
}

/// `kafka-agent status` on every broker's instance; fails unless all exit 0.
async fn all_healthy(world: &World, cluster: &Deployed, agent: &Path) -> Result<()> {
    let mut all_ok = true;
    for b in &cluster.brokers {
        let inst = cluster.instance_of(world, b.id).await?.unwrap_or_default();
        let (code, line) = status(world, agent, &inst).await?;
        println!("  {inst}: kafka-agent status exit {code}: {line}");
        all_ok &= code == 0;
    }
    if !all_ok {
        bail!("a node's status is not healthy");
    }
    Ok(())
}

/// Scales the group in by one and out again, printing the leaving instance's clean leave (its
/// journal against EC2's shutdown) and how its successor attached.
async fn scale_in_and_out(world: &World, services: &Services, cluster: &Deployed) -> Result<()> {
    let asg = aws_sdk_autoscaling::Client::new(&services.moto.sdk_config(&world.scope));
    let t0 = unix_ms();
    let at = |ms: u128| ms.saturating_sub(t0) as f64 / 1000.0;
    println!(
        "
scale in: desired capacity 3 -> 2; the group picks an instance, which leaves:"
    );
    asg.set_desired_capacity()
        .auto_scaling_group_name(&cluster.group)
        .desired_capacity(2)
        .send()
        .await
        .context("SetDesiredCapacity 2")?;
    let leaver = cluster
        .instances()
        .await?
        .into_iter()
        .find(|(_, (_, state, _))| state == "Terminating:Wait")
        .map(|(i, _)| i)
        .context("no instance waits in Terminating:Wait")?;
    let before = cluster.instances().await?.into_keys().collect::<Vec<_>>();
    let id = world.agent_journal(&leaver, "claim")["id"]
        .as_u64()
        .context("the leaving instance's claim")? as u32;
    let until = Instant::now() + Duration::from_secs(120);
    let shutdown = loop {
        if let Some((t, _)) = world
            .boot_events(&leaver)
            .into_iter()
            .find(|(_, e)| e == "shutdown")
        {
            break t;
        }
        if Instant::now() > until {
            bail!(
                "{leaver} never shut down: {}",
                world.agent_journal(&leaver, "leave")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let leave = world.agent_journal(&leaver, "leave");
    println!(
        "  +{:>6.2} s  {leaver} (broker {id}) waits in Terminating:Wait",
        0.0
    );
    if let Some(n) = leave["noticed_unix_ms"].as_u64() {
        println!(
            "  +{:>6.2} s  its watchdog sees target-lifecycle-state Terminated",
            at(n as u128)
        );
    }
    let mut steps: Vec<&serde_json::Value> =
        leave["steps"].as_array().into_iter().flatten().collect();
    steps.sort_by_key(|s| s["finished_unix_ms"].as_u64().unwrap_or(0));
    for step in steps {
        let done = step["finished_unix_ms"].as_u64().unwrap_or(0) as u128;
        let what = match step["step"].as_str().unwrap_or("") {
            "stop" => "the broker stopped through its unit (controlled shutdown)".to_string(),
            "unmount" => "the volume unmounted".to_string(),
            "volume" => format!("volume {} detached", step["detail"].as_str().unwrap_or("")),
            "eni" => format!("ENI {} detached", step["detail"].as_str().unwrap_or("")),
            "complete" => format!(
                "lifecycle action completed: {}",
                leave["completed"].as_str().unwrap_or("?")
            ),
            other => other.to_string(),
        };
        println!(
            "  +{:>6.2} s  {what} ({})",
            at(done),
            step["outcome"].as_str().unwrap_or("?")
        );
    }
    println!("  +{:>6.2} s  EC2 shuts {leaver} down", at(shutdown));
    let released = leave["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["step"] == "volume" || s["step"] == "eni")
        .all(|s| {
            s["outcome"] == "ok"
                && (s["finished_unix_ms"].as_u64().unwrap_or(u64::MAX) as u128) < shutdown
        });
    if !released {
        bail!("{leaver} did not release its volume and ENI before EC2 took it down: {leave}");
    }
    println!(
        "
scale out: desired capacity 2 -> 3; the new instance takes broker {id}:"
    );
    asg.set_desired_capacity()
        .auto_scaling_group_name(&cluster.group)
        .desired_capacity(3)
        .send()
        .await
        .context("SetDesiredCapacity 3")?;
    let until = Instant::now() + Duration::from_secs(120);
    let successor = loop {
        if let Some(i) = cluster.instance_of(world, id).await?
            && !before.contains(&i)
            && cluster.serving().await?.contains_key(&id)
        {
            break i;
        }
        if Instant::now() > until {
            bail!("broker {id} not served again after the scale-out");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let attach = world.agent_journal(&successor, "attach");
    println!(
        "  +{:>6.2} s  {successor} serves broker {id}: ENI {} {}, volume {} {} (nothing to wait for)",
        at(unix_ms()),
        attach["eni"]["id"].as_str().unwrap_or(""),
        attach["eni"]["how"].as_str().unwrap_or("?"),
        attach["volume"]["id"].as_str().unwrap_or(""),
        attach["volume"]["how"].as_str().unwrap_or("?"),
    );
    Ok(())
}

/// Runs the demo; with `zookeeper_ensemble`, the cluster's ZooKeeper is an ensemble deployed
/// in the VPC through its own group, and a last act heals one of its members
/// ([`crate::demo_ensemble`]).
#[tokio::main]
pub async fn run(name: &str, backend: &str, hold: bool, zookeeper_ensemble: bool) -> Result<()> {
    let agent = sibling("kafka-agent")?;
    let standin = sibling("kafka-standin")?;
    let services = if zookeeper_ensemble {
        eprintln!("starting moto (ZooKeeper will be an ensemble of its own, in the VPC)...");
        Services::start(1)?
    } else {
        eprintln!("starting moto and a 3-member ZooKeeper ensemble...");
        Services::start(3)?
    };
    let world = World::create(&services, &["a", "b", "c"]).await?;
    let ensemble = if zookeeper_ensemble {
        let zk = format!("{name}-zk");
        Some(demo_ensemble::deploy(&world, &services, &zk, &agent).await?)
    } else {
        None
    };
    let zookeeper = match &ensemble {
        Some(ens) => Some(ens.zookeeper_at(&world)?),
        None => None,
    };
    let spec = Spec {
        name: name.to_string(),
        backend: backend.to_string(),
        azs: vec!["a".into(), "b".into(), "c".into()],
        agent: agent.clone(),
        standin,
        deadline_seconds: 300,
        launch_before_terminate: false,
        termination_hook: true,
        watch: Some(WATCH.into()),
        zookeeper,
    };
    let started = Instant::now();
    let cluster = Deployed::deploy(&world, &services, spec).await?;
    println!(
        "cluster {name}: stack {}, group {} over 3 AZs, claims in {backend}, ZooKeeper {}",
        cluster.stack, cluster.group, cluster.zk_connect
    );
    for b in &cluster.brokers {
        println!(
            "  broker {}: us-east-1{}, ENI {} ({}), volume {}",
            b.id, b.az, b.eni, b.ip, b.volume
        );
    }
    cluster
        .wait_serving(&world, Duration::from_secs(180))
        .await?;
    println!(
        "\nall 3 brokers serve, {:.1} s after the group was created; stack {}",
        started.elapsed().as_secs_f64(),
        cluster.stack_status().await?
    );
    let mut nodes = Vec::new();
    for b in &cluster.brokers {
        let inst = cluster
            .instance_of(&world, b.id)
            .await?
            .with_context(|| format!("no instance serves broker {}", b.id))?;
        let (code, line) = status(&world, &agent, &inst).await?;
        println!("  {inst}: kafka-agent status exit {code}: {line}");
        nodes.push(inst);
    }

    // Records on every broker, written from broker 0's host.
    let victim = &cluster.brokers[1];
    let mut written = Vec::new();
    for b in &cluster.brokers {
        written.push(write_records(&world, &cluster, &nodes[0], b.id)?);
    }

    println!("\nbroker 1 dies (its instance is terminated); the group heals it:");
    let heal = cluster
        .terminate_and_follow(&world, &services.moto, 1, Duration::from_secs(180))
        .await?;
    print_events(&heal.events);
    let replacement = heal
        .replacement
        .clone()
        .context("the group launched no replacement")?;
    let registered = heal
        .registered_after
        .context("the replacement's broker never registered")?;
    println!(
        "\nhealed: broker 1 serves again at {} on {replacement}, {:.1} s after the terminate \
         (the agent's boot: {:.2} s)",
        victim.ip,
        registered.as_secs_f64(),
        heal.agent_boot.unwrap_or_default().as_secs_f64()
    );
    check_records(&world, &cluster, &nodes[0], 1, &written[1])?;
    all_healthy(&world, &cluster, &agent).await?;
    println!("same id, same address, same records; zero manual steps");

    // Broker 2's process wedges: EC2 sees a healthy instance, its watchdog does not.
    let from = cluster
        .instance_of(&world, 0)
        .await?
        .context("no instance serves broker 0")?;
    println!(
        "\nbroker 2's process wedges (its socket accepts, nothing answers; EC2 sees nothing \
         wrong); its watchdog (unhealthy after 5 s) has the group replace it:"
    );
    let heal = cluster
        .fail_and_follow(
            &world,
            &services.moto,
            2,
            Failure::Wedged,
            Duration::from_secs(180),
        )
        .await?;
    print_events(&heal.events);
    let registered = heal
        .registered_after
        .context("the wedged broker's replacement never registered")?;
    println!(
        "\nhealed: broker 2 serves again at {} on {}, {:.1} s after the wedge",
        cluster.brokers[2].ip,
        heal.replacement.as_deref().unwrap_or("?"),
        registered.as_secs_f64()
    );
    check_records(&world, &cluster, &from, 2, &written[2])?;

    scale_in_and_out(&world, &services, &cluster).await?;
    cluster
        .wait_serving(&world, Duration::from_secs(120))
        .await?;
    let from = cluster
        .instance_of(&world, 1)
        .await?
        .context("no instance serves broker 1")?;
    for b in &cluster.brokers {
        check_records(&world, &cluster, &from, b.id, &written[b.id as usize])?;
    }
    all_healthy(&world, &cluster, &agent).await?;
    println!("every broker serves with its id, address and records; zero manual steps");
    if let Some(ens) = &ensemble {
        demo_ensemble::heal_a_member(&world, ens, &cluster, &agent).await?;
    }
    if hold {
        println!("holding; Ctrl-C tears the world down");
        tokio::signal::ctrl_c().await?;
    }
    drop(world);
    drop(services);
    Ok(())
}
