//! `bench-leave`: a replacement with the termination hook against one without. A 3-broker
//! cluster is deployed through the Auto Scaling Group twice, in worlds of their own: once with
//! the termination hook and `kafka-agent watch` on every broker, which leaves cleanly, once
//! without. Broker 1's instance is terminated through the group
//! (TerminateInstanceInAutoScalingGroup, replaced) `samples` times in each, each time measured
//! from the call until the replacement's broker is registered at the id's address, with how
//! the replacement attached the ENI and the volume (`attached`: free at once; `released`:
//! after waiting for EC2 to release them from the dead instance) and, with the hook, how long
//! the leave took (target lifecycle state seen to the hook completed). EC2 keeps a terminated
//! instance's volumes and ENIs attached `release_delay` seconds (`--release-delay`), as EC2
//! takes its time to let them go.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kafka_testbed::aws::ScopeSettings;
use kafka_testbed::cluster::{Deployed, Spec};
use kafka_testbed::{Services, World};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn s(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn journal(world: &World, inst: &str, name: &str) -> serde_json::Value {
    world.agent_journal(inst, name)
}

/// One replacement, as seen from outside.
struct Sample {
    victim: String,
    replacement: String,
    /// The call until the replacement's broker registered at the id's address.
    registered_after: Duration,
    /// How the replacement attached the ENI and the volume.
    how: (String, String),
    /// The victim's leave: target state seen until the hook was completed.
    leave: Option<Duration>,
}

/// Waits until every broker serves and every instance of the group is in service (and, with
/// the hook, runs its watchdog), so that the next victim can leave.
async fn settled(world: &World, cluster: &Deployed, watching: bool) -> Result<()> {
    cluster
        .wait_serving(world, Duration::from_secs(180))
        .await?;
    let until = Instant::now() + Duration::from_secs(180);
    loop {
        let group = cluster.instances().await?;
        let ready = group.len() == cluster.brokers.len()
            && group.iter().all(|(inst, (_, state, _))| {
                state == "InService" && (!watching || !journal(world, inst, "watch").is_null())
            });
        if ready {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("the group did not settle: {group:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn replace_and_follow(
    world: &World,
    services: &Services,
    cluster: &Deployed,
    id: u32,
) -> Result<Sample> {
    let asg = aws_sdk_autoscaling::Client::new(&services.moto.sdk_config(&world.scope));
    let victim = cluster
        .instance_of(world, id)
        .await?
        .with_context(|| format!("no instance serves broker {id}"))?;
    let ip = cluster.brokers[id as usize].ip.clone();
    let zk = zookeeper_client::Client::connect(&format!("{}{}", cluster.zk_local, cluster.chroot))
        .await
        .context("connecting to ZooKeeper")?;
    let path = format!("/brokers/ids/{id}");
    let t0_ms = unix_ms();
    asg.terminate_instance_in_auto_scaling_group()
        .instance_id(&victim)
        .should_decrement_desired_capacity(false)
        .send()
        .await
        .context("TerminateInstanceInAutoScalingGroup")?;
    let until = Instant::now() + Duration::from_secs(180);
    let registered_after = loop {
        if let Ok((data, stat)) = zk.get_data(&path).await {
            let v: serde_json::Value = serde_json::from_slice(&data).unwrap_or_default();
            if stat.ctime as u128 > t0_ms && v["host"] == ip.as_str() {
                break Duration::from_millis((stat.ctime as u128 - t0_ms) as u64);
            }
        }
        if Instant::now() > until {
            bail!("broker {id} did not come back within 180 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let replacement = cluster
        .instance_of(world, id)
        .await?
        .filter(|i| *i != victim)
        .context("the replacement's claim")?;
    let attach = journal(world, &replacement, "attach");
    let how = |r: &str| attach[r]["how"].as_str().unwrap_or("?").to_string();
    let left = journal(world, &victim, "leave");
    let leave = left["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["step"] == "complete")
        .and_then(|s| s["finished_unix_ms"].as_u64())
        .zip(left["noticed_unix_ms"].as_u64())
        .map(|(done, noticed)| Duration::from_millis(done.saturating_sub(noticed)));
    Ok(Sample {
        victim,
        replacement,
        registered_after,
        how: (how("eni"), how("volume")),
        leave,
    })
}

/// Deploys a cluster (with the hook or without) in a world of its own and replaces broker 1
/// `samples` times.
async fn series(
    services: &Services,
    dir: &std::path::Path,
    backend: &str,
    hook: bool,
    samples: usize,
    release_delay: f64,
) -> Result<Vec<Sample>> {
    let world = World::create(services, &["a", "b", "c"]).await?;
    services
        .moto
        .configure(
            &world.scope,
            &ScopeSettings {
                release_delay: Some(release_delay),
                ..Default::default()
            },
        )
        .await?;
    let spec = Spec {
        name: if hook { "leave-hook" } else { "leave-plain" }.into(),
        backend: backend.into(),
        azs: vec!["a".into(), "b".into(), "c".into()],
        agent: dir.join("kafka-agent"),
        standin: dir.join("kafka-standin"),
        deadline_seconds: 300,
        launch_before_terminate: false,
        termination_hook: hook,
        watch: None,
        zookeeper: None,
    };
    let cluster = Deployed::deploy(&world, services, spec).await?;
    settled(&world, &cluster, hook).await?;
    let label = if hook {
        "with the termination hook"
    } else {
        "without"
    };
    println!("{label}:");
    let mut out = Vec::new();
    for i in 0..samples {
        let sample = replace_and_follow(&world, services, &cluster, 1).await?;
        println!(
            "  {i:>2}: {} -> {}: registered after {}; attach: ENI {}, volume {}{}",
            sample.victim,
            sample.replacement,
            s(sample.registered_after),
            sample.how.0,
            sample.how.1,
            sample
                .leave
                .map(|l| format!("; the leave {}", s(l)))
                .unwrap_or_default()
        );
        out.push(sample);
        settled(&world, &cluster, hook).await?;
    }
    Ok(out)
}

fn summary(label: &str, samples: &[Sample]) -> String {
    let mut heal: Vec<Duration> = samples.iter().map(|s| s.registered_after).collect();
    heal.sort();
    let at_once = samples
        .iter()
        .filter(|s| s.how == ("attached".into(), "attached".into()))
        .count();
    let mut leave: Vec<Duration> = samples.iter().filter_map(|s| s.leave).collect();
    leave.sort();
    format!(
        "{label}: time to heal p50 {} p99 {}; attached at once {at_once} of {}{}",
        s(percentile(&heal, 0.5)),
        s(percentile(&heal, 0.99)),
        samples.len(),
        if leave.is_empty() {
            String::new()
        } else {
            format!(
                "; the leave p50 {} p99 {}",
                s(percentile(&leave, 0.5)),
                s(percentile(&leave, 0.99))
            )
        }
    )
}

#[tokio::main]
pub async fn run(backend: &str, samples: usize, release_delay: f64) -> Result<()> {
    let dir: PathBuf = std::env::current_exe()?
        .parent()
        .context("this binary's directory")?
        .to_path_buf();
    let services = Services::start(3)?;
    println!(
        "leave benchmark: {samples} replacements of broker 1 through the group \
         (TerminateInstanceInAutoScalingGroup) with the termination hook and without, {backend} \
         claims; EC2 releases a terminated instance's volumes and ENIs {release_delay} s after \
         its termination"
    );
    let with = series(&services, &dir, backend, true, samples, release_delay).await?;
    let without = series(&services, &dir, backend, false, samples, release_delay).await?;
    println!("{}", summary("with the termination hook", &with));
    println!("{}", summary("without", &without));
    Ok(())
}
