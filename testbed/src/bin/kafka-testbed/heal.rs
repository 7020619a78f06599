//! `bench-heal`: time to heal. A 3-broker cluster deployed through the Auto Scaling Group (as
//! the demo does); broker 1's instance is terminated `samples` times, each time measured from
//! the terminate call until the replacement's broker is registered at the id's address, with
//! the agent's own share (its boot process on the replacement) beside it, and the testbed's
//! health-check interval and AWS delays that make up most of the rest. With `--wedge` the
//! broker's process is wedged instead (`HANG`: its socket accepts, nothing answers, EC2 sees a
//! healthy instance) and `kafka-agent watch` runs on every broker, so each sample is the
//! wedge until the replacement's broker registers: the watchdog's `unhealthy_after`, the
//! group's replacement, the agent's boot.

use std::time::Duration;

use anyhow::{Context, Result};
use kafka_testbed::cluster::{Deployed, Failure, Spec};
use kafka_testbed::{Services, World};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn s(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

async fn settings(services: &Services, scope: &str) -> Result<serde_json::Value> {
    let body = kafka_testbed::http::ok(
        services.moto.port(),
        "POST",
        &format!("/_testbed/scope/{scope}"),
        "{}",
    )
    .await?;
    Ok(serde_json::from_str(&body)?)
}

/// The watchdog's settings with `--wedge`: checked every second, marked after 5 s of
/// continuous failure, not within 10 s of its start.
const WATCH: &str = "interval_seconds = 1\nunhealthy_after_seconds = 5\ngrace_period_seconds = 10\n\
                     listener_timeout_seconds = 1";
const GRACE: Duration = Duration::from_secs(10);

#[tokio::main]
pub async fn run(backend: &str, samples: usize, wedge: bool) -> Result<()> {
    let dir = std::env::current_exe()?
        .parent()
        .context("this binary's directory")?
        .to_path_buf();
    let services = Services::start(3)?;
    let world = World::create(&services, &["a", "b", "c"]).await?;
    let spec = Spec {
        name: "heal".into(),
        backend: backend.into(),
        azs: vec!["a".into(), "b".into(), "c".into()],
        agent: dir.join("kafka-agent"),
        standin: dir.join("kafka-standin"),
        deadline_seconds: 300,
        launch_before_terminate: false,
        termination_hook: false,
        watch: wedge.then(|| WATCH.to_string()),
        zookeeper: None,
    };
    let cluster = Deployed::deploy(&world, &services, spec).await?;
    cluster
        .wait_serving(&world, Duration::from_secs(180))
        .await?;
    let group = settings(&services, &format!("{}-admin", world.id)).await?;
    let agents = settings(&services, &world.scope).await?;
    let (failure, what) = if wedge {
        (
            Failure::Wedged,
            "wedged brokers (HANG; the watchdog: every 1 s, unhealthy after 5 s, grace 10 s)",
        )
    } else {
        (Failure::Terminated, "terminations")
    };
    println!(
        "heal benchmark: {samples} {what} of broker 1 ({backend} claims); testbed: health-check \
         interval {} s, pending {} s, visible after {} s, shutting-down {} s, volumes released {} s \
         after termination, attach {} s",
        group["asg_health_check_interval"],
        agents["pending_delay"],
        agents["visibility_delay"],
        agents["shutdown_delay"],
        agents["release_delay"],
        agents["attach_delay"],
    );
    let (mut heal, mut agent) = (Vec::new(), Vec::new());
    for i in 0..samples {
        if wedge {
            // The replacement's watchdog past its grace period: the next wedge is seen.
            tokio::time::sleep(GRACE + Duration::from_secs(2)).await;
        }
        let h = cluster
            .fail_and_follow(&world, &services.moto, 1, failure, Duration::from_secs(180))
            .await?;
        let took = h
            .registered_after
            .with_context(|| format!("sample {i}: broker 1 did not come back: {:?}", h.events))?;
        let own = h.agent_boot.unwrap_or_default();
        let marked = h
            .events
            .iter()
            .find(|e| e.what.contains("marked it Unhealthy"))
            .map(|e| format!(", marked Unhealthy after {} (to the second)", s(e.at)))
            .unwrap_or_default();
        println!(
            "  {i:>2}: {} -> {}: registered after {}, the agent's boot {}{marked}",
            h.victim,
            h.replacement.as_deref().unwrap_or("?"),
            s(took),
            s(own)
        );
        heal.push(took);
        agent.push(own);
    }
    heal.sort();
    agent.sort();
    println!(
        "time to heal p50 {} p99 {}; the agent's boot p50 {} p99 {}",
        s(percentile(&heal, 0.5)),
        s(percentile(&heal, 0.99)),
        s(percentile(&agent, 0.5)),
        s(percentile(&agent, 0.99)),
    );
    Ok(())
}
