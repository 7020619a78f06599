//! The demo: a 3-broker cluster in three AZs deployed as the project deploys one (tagged ENIs
//! and volumes, a stack, an Auto Scaling Group whose user data configures the agent, an
//! image that boots the agent, the stand-in broker and the signal), then broker 1 dies and
//! the group heals it with zero manual steps, while the demo prints what happens.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kafka_testbed::cluster::{Deployed, Spec, ask_broker};
use kafka_testbed::{Services, World};

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
async fn status(world: &World, agent: &Path, inst: &str) -> Result<(i32, String)> {
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

#[tokio::main]
pub async fn run(name: &str, backend: &str, hold: bool) -> Result<()> {
    let agent = sibling("kafka-agent")?;
    let standin = sibling("kafka-standin")?;
    eprintln!("starting moto and a 3-member ZooKeeper ensemble...");
    let services = Services::start(3)?;
    let world = World::create(&services, &["a", "b", "c"]).await?;
    let spec = Spec {
        name: name.to_string(),
        backend: backend.to_string(),
        azs: vec!["a".into(), "b".into(), "c".into()],
        agent: agent.clone(),
        standin,
        deadline_seconds: 300,
        launch_before_terminate: false,
        termination_hook: false,
    };
    let started = Instant::now();
    let cluster = Deployed::deploy(&world, &services, spec).await?;
    println!(
        "cluster {name}: stack {}, group {} over 3 AZs, claims in {backend}",
        cluster.stack, cluster.group
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

    // Records on broker 1, written from broker 0's host.
    let victim = &cluster.brokers[1];
    let addr = format!("{}:9092", victim.ip);
    let mut written = Vec::new();
    for n in 0..3 {
        let text = format!("order-{n}");
        let answer = ask_broker(&world, &nodes[0], &addr, &format!("APPEND orders {text}"))?;
        println!("  wrote {text} to broker 1: {}", answer.join(" "));
        written.push(text);
    }

    println!("\nbroker 1 dies (its instance is terminated); the group heals it:");
    let heal = cluster
        .terminate_and_follow(&world, &services.moto, 1, Duration::from_secs(180))
        .await?;
    for e in &heal.events {
        println!("  +{:>6.2} s  {}", e.at.as_secs_f64(), e.what);
    }
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
    let read = ask_broker(&world, &nodes[0], &addr, "READ orders")?;
    println!("  records on broker 1 now: {}", read.join(", "));
    if read != written {
        bail!("broker 1 came back without its records: {read:?}, wrote {written:?}");
    }
    let mut all_ok = true;
    for b in &cluster.brokers {
        let inst = cluster.instance_of(&world, b.id).await?.unwrap_or_default();
        let (code, line) = status(&world, &agent, &inst).await?;
        println!("  {inst}: kafka-agent status exit {code}: {line}");
        all_ok &= code == 0;
    }
    if !all_ok {
        bail!("a node's status is not healthy");
    }
    println!("same id, same address, same records; zero manual steps");
    if hold {
        println!("holding; Ctrl-C tears the world down");
        tokio::signal::ctrl_c().await?;
    }
    drop(world);
    drop(services);
    Ok(())
}
