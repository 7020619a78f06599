//! Benchmarks on the testbed (they measure; tests assert).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kafka_testbed::{Services, World};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

struct Bed<'a> {
    world: &'a World,
    agent: PathBuf,
}

impl Bed<'_> {
    fn config(&self, inst: &str, cluster: &str, backend: &str, size: usize) -> Result<PathBuf> {
        self.config_with(inst, cluster, backend, size, false)
    }

    fn config_with(
        &self,
        inst: &str,
        cluster: &str,
        backend: &str,
        size: usize,
        resources: bool,
    ) -> Result<PathBuf> {
        let host = self.world.host_dir(inst);
        let zk = self.world.zookeeper_for(inst)?;
        let text = format!(
            "[cluster]\nname = \"{cluster}\"\nrole = \"kafka\"\nsize = {size}\n\
             [boot]\ndeadline_seconds = 120\n[paths]\nstate_dir = \"{state}\"\n\
             [claim]\nbackend = \"{backend}\"\n[resources]\neni = {resources}\nvolume = {resources}\n\
             [zookeeper]\nconnect = \"{zk}/{cluster}\"\n",
            state = host.join("var/lib/kafka-agent").display(),
        );
        let path = host.join("etc/kafka-agent/agent.toml");
        std::fs::create_dir_all(path.parent().unwrap())?;
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Runs one agent's claim; returns (id, step time, process time).
    async fn claim(
        &self,
        inst: &str,
        cluster: &str,
        backend: &str,
        size: usize,
    ) -> Result<(u32, Duration, Duration)> {
        let config = self.config(inst, cluster, backend, size)?;
        let mut cmd = self.world.command(inst, &self.agent.to_string_lossy())?;
        cmd.arg("--config").arg(config).args(["claim", "--json"]);
        let start = Instant::now();
        let out = tokio::process::Command::from(cmd).output().await?;
        let wall = start.elapsed();
        if !out.status.success() {
            bail!("claim failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok((
            v["id"].as_u64().context("no id")? as u32,
            Duration::from_millis(v["elapsed_ms"].as_u64().context("no elapsed_ms")?),
            wall,
        ))
    }
}

fn agent_path(agent: Option<PathBuf>) -> Result<PathBuf> {
    let agent = match agent {
        Some(a) => a,
        None => std::env::current_exe()?.with_file_name("kafka-agent"),
    };
    if !agent.exists() {
        bail!(
            "{} does not exist: build it (cargo build --release)",
            agent.display()
        );
    }
    Ok(agent)
}

#[tokio::main]
pub async fn attach(agent: Option<PathBuf>, delay: f64, samples: usize) -> Result<()> {
    let agent = agent_path(agent)?;
    let services = Services::start(1)?;
    let world = World::create(&services, &["a"]).await?;
    let settings = kafka_testbed::aws::ScopeSettings {
        attach_delay: Some(delay),
        detach_delay: Some(delay),
        ..Default::default()
    };
    services.moto.configure(&world.scope, &settings).await?;
    let bed = Bed {
        world: &world,
        agent: agent.clone(),
    };
    println!(
        "attach benchmark: agent {}, attach/detach delay {delay} s, {samples} fresh nodes",
        agent.display()
    );
    let mut phase = Vec::new();
    let mut calls_before = 0u64;
    let mut per_run = Vec::new();
    for i in 0..samples {
        let cluster = format!("{}-attach-{i}", world.id);
        let id = "0".to_string();
        let tags = [
            ("kafka-agent:cluster", cluster.as_str()),
            ("kafka-agent:role", "kafka"),
            ("kafka-agent:id", id.as_str()),
        ];
        world.create_eni("a", &tags).await?;
        world.create_volume("a", 1, &tags).await?;
        let inst = world.launch("a", &[]).await?;
        let config = bed.config_with(&inst, &cluster, "cloudwatch-logs", 1, true)?;
        let run = |step: &'static str| {
            let mut cmd = world.command(&inst, &agent.to_string_lossy()).unwrap();
            cmd.arg("--config").arg(&config).arg(step);
            tokio::process::Command::from(cmd).output()
        };
        let out = run("claim").await?;
        if !out.status.success() {
            bail!("claim failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let stats = services.moto.stats().await?;
        let count = |stats: &std::collections::BTreeMap<
            String,
            std::collections::BTreeMap<String, (u64, f64)>,
        >| {
            stats
                .get(&world.scope)
                .map(|m| m.values().map(|(n, _)| n).sum::<u64>())
                .unwrap_or(0)
        };
        calls_before = calls_before.max(count(&stats));
        let out = run("attach").await?;
        if !out.status.success() {
            bail!("attach failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        phase.push(Duration::from_millis(
            v["elapsed_ms"].as_u64().context("no elapsed_ms")?,
        ));
        let after = count(&services.moto.stats().await?);
        per_run.push(after - calls_before);
        calls_before = after;
    }
    phase.sort();
    let mut stats: Vec<String> = services
        .moto
        .stats()
        .await?
        .get(&world.scope)
        .map(|m| m.iter().map(|(a, (n, _))| format!("{a} {n}")).collect())
        .unwrap_or_default();
    stats.sort();
    println!(
        "attach phase (ENI + volume concurrently): p50 {} max {}; API calls per attach: min {} max {}",
        ms(percentile(&phase, 0.5)),
        ms(*phase.last().unwrap()),
        per_run.iter().min().unwrap(),
        per_run.iter().max().unwrap(),
    );
    println!(
        "all calls of the world's agents (claim + attach): {}",
        stats.join(", ")
    );
    Ok(())
}

/// AWS's published rates for the calls a claim makes, as token buckets (rate/s, burst):
/// EC2's non-mutating actions refill at 20/s with a burst of 100 (EC2 API throttling; here a
/// bucket per action rather than one shared by them all, so kinder than EC2), CreateTags 10/s
/// burst 100 (mutating actions); CloudWatch Logs CreateLogStream 50 TPS, DescribeLogStreams
/// 5 TPS (CloudWatch Logs quotas), CreateLogGroup 10, GetLogEvents 25, PutLogEvents 5000.
fn aws_quotas_table() -> std::collections::BTreeMap<String, (f64, f64)> {
    [
        ("DescribeInstances", 20.0, 100.0),
        ("DescribeNetworkInterfaces", 20.0, 100.0),
        ("DescribeVolumes", 20.0, 100.0),
        ("CreateTags", 10.0, 100.0),
        ("CreateLogStream", 50.0, 50.0),
        ("DescribeLogStreams", 5.0, 5.0),
        ("CreateLogGroup", 10.0, 10.0),
        ("GetLogEvents", 25.0, 25.0),
        ("PutLogEvents", 5000.0, 5000.0),
    ]
    .into_iter()
    .map(|(a, rate, burst)| (a.to_string(), (rate, burst)))
    .collect()
}

#[tokio::main]
pub async fn claim(
    agent: Option<PathBuf>,
    agents: usize,
    samples: usize,
    herds: usize,
    aws_quotas: bool,
) -> Result<()> {
    let agent = agent_path(agent)?;
    eprintln!("starting the testbed and {agents} instances...");
    let services = Services::start(1)?;
    let world = World::create(&services, &["a"]).await?;
    if aws_quotas {
        services
            .moto
            .configure(
                &world.scope,
                &kafka_testbed::aws::ScopeSettings {
                    rate_limits: Some(aws_quotas_table()),
                    ..Default::default()
                },
            )
            .await?;
    }
    let mut instances = Vec::new();
    for _ in 0..agents {
        instances.push(world.launch("a", &[]).await?);
    }
    let services_ref = &services;
    let bed = Bed {
        world: &world,
        agent: agent.clone(),
    };
    println!(
        "claim benchmark: agent {}, {agents} instances, 2 cores, no added latency{}",
        agent.display(),
        if aws_quotas {
            ", AWS's API rate limits"
        } else {
            ""
        }
    );
    for backend in ["zookeeper", "cloudwatch-logs"] {
        let mut step = Vec::new();
        let mut wall = Vec::new();
        for i in 0..samples {
            let cluster = format!("{}-lat-{backend}-{i}", world.id);
            let (_, s, w) = bed
                .claim(&instances[i % agents], &cluster, backend, agents)
                .await?;
            step.push(s);
            wall.push(w);
        }
        step.sort();
        wall.sort();
        println!(
            "{backend:16} one claim ({samples} samples): step p50 {} p99 {}; whole agent process p50 {} p99 {}",
            ms(percentile(&step, 0.5)),
            ms(percentile(&step, 0.99)),
            ms(percentile(&wall, 0.5)),
            ms(percentile(&wall, 0.99)),
        );
        let mut times = Vec::new();
        for h in 0..herds {
            let cluster = format!("{}-herd-{backend}-{h}", world.id);
            let start = Instant::now();
            let runs = instances
                .iter()
                .map(|i| bed.claim(i, &cluster, backend, agents));
            let results = futures::future::join_all(runs).await;
            let elapsed = start.elapsed();
            let results: Vec<(u32, Duration, Duration)> =
                results.into_iter().collect::<Result<_>>()?;
            let mut steps: Vec<Duration> = results.iter().map(|r| r.1).collect();
            steps.sort();
            eprintln!(
                "  herd {h}: {} in all; agents' claim step p50 {} max {}",
                ms(elapsed),
                ms(percentile(&steps, 0.5)),
                ms(*steps.last().unwrap())
            );
            let ids: BTreeSet<u32> = results.iter().map(|r| r.0).collect();
            if ids.len() != agents {
                bail!("herd {h}: {} distinct ids for {agents} agents", ids.len());
            }
            times.push(elapsed);
        }
        times.sort();
        let stats = services_ref.moto.stats().await?;
        if let Some(mine) = stats.get(&world.scope) {
            let mut line: Vec<String> = mine
                .iter()
                .map(|(a, (n, secs))| format!("{a} {n} calls {:.0} ms", secs * 1000.0))
                .collect();
            line.sort();
            eprintln!("  AWS calls so far: {}", line.join(", "));
        }
        println!(
            "{backend:16} {agents} agents at once, all holding distinct ids ({herds} herds): median {} worst {}",
            ms(percentile(&times, 0.5)),
            ms(*times.last().unwrap()),
        );
    }
    Ok(())
}

/// Runs `agent --config <config> boot` on `inst` and waits for it with wait4(2): (wall time,
/// peak RSS in KiB of the agent process, its stdout). nsenter execs the agent in place, so
/// the child's rusage is the agent's.
fn boot_once(
    world: &World,
    inst: &str,
    agent: &std::path::Path,
    config: &std::path::Path,
) -> Result<(Duration, i64, String)> {
    use std::os::unix::process::ExitStatusExt;
    let out_path = world.host_dir(inst).join("boot.out");
    let out = std::fs::File::create(&out_path)?;
    let err_path = world.host_dir(inst).join("boot.err");
    let err = std::fs::File::create(&err_path)?;
    let mut cmd = world.command(inst, &agent.to_string_lossy())?;
    cmd.arg("--config")
        .arg(config)
        .arg("boot")
        .env(
            "KAFKA_AGENT_LOG",
            std::env::var("KAFKA_TESTBED_AGENT_LOG").unwrap_or_else(|_| "kafka_agent=debug".into()),
        )
        .env("KAFKA_AGENT_LOG_UPTIME", "1")
        .stdout(out)
        .stderr(err);
    let start = Instant::now();
    let child = cmd.spawn()?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child, status and usage are valid for writes.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    if r != pid {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    let status = std::process::ExitStatus::from_raw(status);
    let stdout = std::fs::read_to_string(&out_path)?;
    let stderr = std::fs::read_to_string(&err_path)?;
    if !status.success() {
        bail!("boot failed ({status}): {stderr}");
    }
    if wall > Duration::from_secs(5) {
        eprintln!("a slow boot ({}): its log:\n{stderr}", ms(wall));
    }
    drop(child);
    Ok((wall, usage.ru_maxrss, stdout))
}

/// A replacement boot: the id's ENI and volume (formatted by the broker before) come back to
/// a new instance after the old one is terminated; no added delays. Wall time of the whole
/// `kafka-agent boot` process, AWS API calls it makes, its peak RSS.
#[tokio::main]
pub async fn boot(agent: Option<PathBuf>, against: Option<PathBuf>, samples: usize) -> Result<()> {
    let agent = agent_path(agent)?;
    let against = against.map(|a| agent_path(Some(a))).transpose()?;
    let services = Services::start(1)?;
    let world = World::create(&services, &["a"]).await?;
    let settings = kafka_testbed::aws::ScopeSettings {
        attach_delay: Some(0.0),
        detach_delay: Some(0.0),
        release_delay: Some(0.0),
        pending_delay: Some(0.0),
        shutdown_delay: Some(0.0),
        visibility_delay: Some(0.0),
        ..Default::default()
    };
    services.moto.configure(&world.scope, &settings).await?;
    println!(
        "boot benchmark: agent {}, {samples} replacement boots (ZooKeeper ledger, ENI + volume, render), no added delays",
        agent.display()
    );
    if let Some(b) = &against {
        println!(
            "against {}: it runs every other replacement boot (odd samples); the lines after \
             the first two are for both agents",
            b.display()
        );
    }
    let mut walls_b = Vec::new();
    let count = |stats: &std::collections::BTreeMap<
        String,
        std::collections::BTreeMap<String, (u64, f64)>,
    >| {
        stats
            .get(&world.scope)
            .map(|m| m.values().map(|(n, _)| n).sum::<u64>())
            .unwrap_or(0)
    };
    let (mut walls, mut calls, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    let mut by_action: std::collections::BTreeMap<String, u64> = Default::default();
    let mut served: std::collections::BTreeMap<String, f64> = Default::default();
    let keep_logs = std::env::var_os("KAFKA_TESTBED_BOOT_LOGS").map(PathBuf::from);
    let mut steps: std::collections::BTreeMap<String, Vec<Duration>> = Default::default();
    for i in 0..samples {
        let cluster = format!("{}-boot-{i}", world.id);
        let tags = [
            ("kafka-agent:cluster", cluster.as_str()),
            ("kafka-agent:role", "kafka"),
            ("kafka-agent:id", "0"),
        ];
        world.create_eni("a", &tags).await?;
        let mut vol_tags = tags.to_vec();
        vol_tags.push(("kafka-agent:volume", "new"));
        world.create_volume("a", 1, &vol_tags).await?;
        let first = world.launch("a", &[]).await?;
        let config = boot_config(&world, &first, &cluster)?;
        // wait4 blocks: hand this worker's queue to another thread meanwhile (the world's
        // proxies and hypervisor run on this runtime).
        tokio::task::block_in_place(|| boot_once(&world, &first, &agent, &config))
            .context("the first broker's boot")?;
        world.terminate(&first).await?;
        let second = world.launch("a", &[]).await?;
        let config = boot_config(&world, &second, &cluster)?;
        let before = services.moto.stats().await?;
        let runs = match &against {
            Some(b) if i % 2 == 1 => b,
            _ => &agent,
        };
        let (wall, peak, out) =
            tokio::task::block_in_place(|| boot_once(&world, &second, runs, &config))?;
        let after = services.moto.stats().await?;
        if let Some(dir) = &keep_logs {
            std::fs::create_dir_all(dir)?;
            std::fs::copy(
                world.host_dir(&second).join("boot.err"),
                dir.join(format!("boot-{i}.err")),
            )?;
        }
        let v: serde_json::Value = serde_json::from_str(&out)?;
        if v["claim"]["how"] != "took_over" || v["attach"]["volume"]["id"].is_null() {
            bail!("not a replacement boot: {v}");
        }
        let journal: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
            world
                .host_dir(&second)
                .join("var/lib/kafka-agent/boot.json"),
        )?)?;
        for step in journal["steps"].as_array().into_iter().flatten() {
            steps
                .entry(step["step"].as_str().unwrap_or("?").to_string())
                .or_default()
                .push(Duration::from_millis(step["ms"].as_u64().unwrap_or(0)));
        }
        if against.is_some() && i % 2 == 1 {
            walls_b.push(wall);
        } else {
            walls.push(wall);
        }
        calls.push(count(&after) - count(&before));
        rss.push(peak);
        if let Some(m) = after.get(&world.scope) {
            for (a, (n, secs)) in m {
                let (was, was_secs) = before
                    .get(&world.scope)
                    .and_then(|b| b.get(a))
                    .map_or((0, 0.0), |(n, s)| (*n, *s));
                *by_action.entry(a.clone()).or_default() += n - was;
                *served.entry(a.clone()).or_default() += secs - was_secs;
            }
        }
    }
    walls.sort();
    println!(
        "replacement boot (process wall): p50 {} p99 {} max {}; AWS API calls per boot: min {} max {}; peak RSS max {} KiB",
        ms(percentile(&walls, 0.5)),
        ms(percentile(&walls, 0.99)),
        ms(*walls.last().unwrap()),
        calls.iter().min().unwrap(),
        calls.iter().max().unwrap(),
        rss.iter().max().unwrap(),
    );
    if !walls_b.is_empty() {
        walls_b.sort();
        println!(
            "against (process wall): p50 {} p99 {} max {} over {} boots",
            ms(percentile(&walls_b, 0.5)),
            ms(percentile(&walls_b, 0.99)),
            ms(*walls_b.last().unwrap()),
            walls_b.len(),
        );
    }
    let per: Vec<String> = by_action
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(a, n)| format!("{a} {:.1}", *n as f64 / samples as f64))
        .collect();
    println!("calls per boot by action: {}", per.join(", "));
    let per: Vec<String> = served
        .iter()
        .filter(|(a, _)| by_action.get(*a).is_some_and(|n| *n > 0))
        .map(|(a, secs)| format!("{a} {:.1} ms", secs * 1000.0 / samples as f64))
        .collect();
    println!(
        "moto's time serving them, per boot (under its lock, not counting HTTP): {} ({:.1} ms in all)",
        per.join(", "),
        served.values().sum::<f64>() * 1000.0 / samples as f64
    );
    let per_step: Vec<String> = steps
        .iter_mut()
        .map(|(step, d)| {
            d.sort();
            format!(
                "{step} {} (max {})",
                ms(percentile(d, 0.5)),
                ms(*d.last().unwrap())
            )
        })
        .collect();
    println!(
        "steps, p50 (max), from boot.json; mount and route run side by side: {}",
        per_step.join(", ")
    );
    Ok(())
}

/// A boot's configuration on the world's host: ZooKeeper ledger, ENI and volume, the host's
/// own device and mount tree, server.properties rendered in the host's /etc/kafka.
fn boot_config(world: &World, inst: &str, cluster: &str) -> Result<PathBuf> {
    let host = world.host_dir(inst);
    let zk = world.zookeeper_for(inst)?;
    let text = format!(
        "[cluster]\nname = \"{cluster}\"\nrole = \"kafka\"\nsize = 1\n\
         [boot]\ndeadline_seconds = 120\n[paths]\nstate_dir = \"{h}/var/lib/kafka-agent\"\n\
         [claim]\nbackend = \"zookeeper\"\n[resources]\neni = true\nvolume = true\n\
         [storage]\ndata_dir = \"{h}/var/lib/kafka\"\nfstab = \"{h}/etc/fstab\"\n\
         sysfs_root = \"{h}/sys\"\ndev_root = \"{h}/dev\"\n\
         [zookeeper]\nconnect = \"{zk}/{cluster}\"\n\
         [kafka]\nmode = \"zookeeper\"\noutput = \"{h}/etc/kafka/server.properties\"\n",
        h = host.display(),
    );
    let path = host.join("etc/kafka-agent/agent.toml");
    std::fs::create_dir_all(path.parent().unwrap())?;
    std::fs::write(&path, text)?;
    Ok(path)
}
