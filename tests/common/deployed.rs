//! A cluster deployed through the testbed's Auto Scaling Group (`kafka_testbed::cluster`),
//! with the agent and the stand-in broker of this build: shared by the self-healing and the
//! watchdog tests.

use std::path::PathBuf;
use std::time::Duration;

use kafka_testbed::cluster::{Deployed, Spec};
use kafka_testbed::{self as testbed, World};

pub fn agent() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kafka-agent"))
}

/// The testbed package's `kafka-standin`, built beside the agent by `cargo test --workspace`.
pub fn standin() -> PathBuf {
    let p = agent().parent().unwrap().join("kafka-standin");
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build -p kafka-testbed --bins` (cargo test --workspace does)",
        p.display()
    );
    p
}

pub async fn deploy(world: &World, backend: &str) -> Deployed {
    deploy_with(world, backend, false).await
}

/// Clusters deployed at once in a test binary: each is three agents and three brokers, and the
/// machine has two cores (shared with the other test binaries' builds in CI). A test holds a
/// permit for its whole run.
pub static CLUSTERS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(3);

/// Deploys a 3-broker cluster over AZs a, b and c and waits until every broker serves.
pub async fn deploy_with(world: &World, backend: &str, launch_before_terminate: bool) -> Deployed {
    deploy_spec(world, backend, |s| {
        s.launch_before_terminate = launch_before_terminate
    })
    .await
}

/// Deploys as [`deploy`] does, with the group's termination hook and `kafka-agent watch` on
/// every broker (kafka-agent-watch.service), which leaves cleanly when the group terminates
/// its instance.
pub async fn deploy_leaving(world: &World, backend: &str) -> Deployed {
    deploy_spec(world, backend, |s| s.termination_hook = true).await
}

/// Deploys as [`deploy`] does, against `services` of the test's own (its own ZooKeeper
/// ensemble, to stop without touching the other tests' clusters).
pub async fn deploy_on(world: &World, services: &testbed::Services, backend: &str) -> Deployed {
    deploy_spec_on(world, services, backend, |_| {}).await
}

async fn deploy_spec(world: &World, backend: &str, tweak: impl FnOnce(&mut Spec)) -> Deployed {
    deploy_spec_on(world, testbed::shared(), backend, tweak).await
}

async fn deploy_spec_on(
    world: &World,
    services: &testbed::Services,
    backend: &str,
    tweak: impl FnOnce(&mut Spec),
) -> Deployed {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut spec = Spec {
        name: format!("{}-{n}", world.id),
        backend: backend.into(),
        azs: vec!["a".into(), "b".into(), "c".into()],
        agent: agent(),
        standin: standin(),
        deadline_seconds: 120,
        launch_before_terminate: false,
        termination_hook: false,
        watch: None,
        zookeeper: None,
    };
    tweak(&mut spec);
    let cluster = Deployed::deploy(world, services, spec).await.unwrap();
    cluster
        .wait_serving(world, Duration::from_secs(120))
        .await
        .unwrap();
    cluster
}

/// `kafka-agent status` on the host: its exit code and output.
pub async fn status(world: &World, inst: &str) -> (i32, String) {
    let config = world.host_dir(inst).join("etc/kafka-agent/agent.toml");
    let mut cmd = world.command(inst, &agent().to_string_lossy()).unwrap();
    cmd.arg("--config").arg(config).arg("status");
    let out = tokio::process::Command::from(cmd).output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The instance serving each broker id, in id order.
pub async fn broker_instances(world: &World, cluster: &Deployed) -> Vec<String> {
    let mut out = Vec::new();
    for b in &cluster.brokers {
        out.push(
            cluster
                .instance_of(world, b.id)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("nothing serves broker {}", b.id)),
        );
    }
    out
}
