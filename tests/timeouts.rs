//! One boot deadline, kept: every AWS client and IMDS read has timeouts, transient IMDS
//! answers are waited out, a black-holed endpoint (it accepts and never answers) ends a step
//! with kind `timeout` by the deadline; and the agent works in its instance's own region.
//! Needs root.
//!
//! The bound "within the deadline plus one second" is the contract these tests check (a hang
//! is the bug), so they compare elapsed time against it, with the whole second as slack.

mod common;

use std::time::{Duration, Instant};

use common::{Backend, Cluster};
use kafka_testbed::{self as testbed, World, zookeeper::Ensemble};

/// What a finished (or abandoned) agent run came to.
#[derive(Debug)]
struct Outcome {
    /// None: still running at the cap, killed.
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Runs the agent, killing it if it is still running `cap` after its start.
async fn run(mut cmd: tokio::process::Command, cap: Duration) -> Outcome {
    cmd.kill_on_drop(true);
    let started = Instant::now();
    match tokio::time::timeout(cap, cmd.output()).await {
        Ok(out) => {
            let out = out.unwrap();
            Outcome {
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                elapsed: started.elapsed(),
            }
        }
        Err(_) => Outcome {
            code: None,
            stdout: String::new(),
            stderr: String::new(),
            elapsed: started.elapsed(),
        },
    }
}

/// Asserts the run failed with kind `timeout` (exit 9) within the deadline plus one second.
fn timed_out(what: &str, o: &Outcome, deadline: u32) {
    let bound = Duration::from_secs(u64::from(deadline) + 1);
    assert!(
        o.code.is_some(),
        "{what}: still running {:?} after its start (deadline {deadline} s)",
        o.elapsed
    );
    assert_eq!(o.code, Some(9), "{what}: {}", o.stderr);
    assert!(o.stderr.contains("[timeout]"), "{what}: {}", o.stderr);
    assert!(
        o.elapsed <= bound,
        "{what}: took {:?}, deadline {deadline} s: {}",
        o.elapsed,
        o.stderr
    );
    eprintln!(
        "{what}: timeout after {:?} (deadline {deadline} s): {}",
        o.elapsed,
        o.stderr.trim().lines().last().unwrap_or("")
    );
}

/// A world with one instance that has claimed id 0 and attached its ENI and volume.
async fn attached_node(backend: Backend) -> (World, Cluster, String) {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let mut cluster = Cluster::new(&world, backend, 1, true);
    cluster.deadline = 10;
    cluster.resources_for(&world, 0, "a").await;
    let inst = world.launch("a", &[]).await.unwrap();
    cluster.claim(&world, &inst).await.unwrap();
    cluster.attach(&world, &inst).await.unwrap();
    (world, cluster, inst)
}

#[tokio::test]
async fn attach_gives_up_on_a_black_holed_ec2_endpoint_by_the_deadline() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let mut cluster = Cluster::new(&world, Backend::Zk, 1, true);
    cluster.deadline = 10;
    cluster.resources_for(&world, 0, "a").await;
    let inst = world.launch("a", &[]).await.unwrap();
    cluster.claim(&world, &inst).await.unwrap();

    let hole = world.black_hole().unwrap();
    let mut cmd = cluster.command(&world, &inst, &["attach"]);
    cmd.env(
        "AWS_ENDPOINT_URL",
        format!("http://{}", world.address_for(&inst, hole).unwrap()),
    );
    let o = run(cmd, Duration::from_secs(30)).await;
    timed_out("attach", &o, cluster.deadline);
    assert!(o.stderr.contains("attach"), "names the step: {}", o.stderr);
}

#[tokio::test]
async fn every_step_times_out_when_every_endpoint_is_black_holed() {
    let (world, mut cluster, inst) = attached_node(Backend::Zk).await;
    let hole = world.black_hole().unwrap();
    let addr = world.address_for(&inst, hole).unwrap();
    cluster.zk_ports = vec![hole];
    let steps = ["claim", "attach", "mount", "route", "boot"];
    let runs = steps.iter().map(|step| {
        let mut cmd = cluster.command(&world, &inst, &[step]);
        cmd.env("AWS_ENDPOINT_URL", format!("http://{addr}")).env(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            format!("http://{addr}"),
        );
        run(cmd, Duration::from_secs(30))
    });
    let outcomes = futures::future::join_all(runs).await;
    for (step, o) in steps.iter().zip(&outcomes) {
        timed_out(step, o, cluster.deadline);
    }
}

#[tokio::test]
async fn each_step_times_out_on_its_own_black_holed_service() {
    let (world, cluster, inst) = attached_node(Backend::Zk).await;
    let hole = world.black_hole().unwrap();
    let addr = world.address_for(&inst, hole).unwrap();

    // Mount: the device is there, EC2 (the volume's state tag) never answers.
    let mut mount = cluster.command(&world, &inst, &["mount"]);
    mount.env("AWS_ENDPOINT_URL", format!("http://{addr}"));
    // Route: IMDS never answers (route asks nothing else).
    let mut route = cluster.command(&world, &inst, &["route"]);
    route.env(
        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
        format!("http://{addr}"),
    );
    let (m, r) = tokio::join!(
        run(mount, Duration::from_secs(30)),
        run(route, Duration::from_secs(30)),
    );
    timed_out("mount, EC2 black-holed", &m, cluster.deadline);
    timed_out("route, IMDS black-holed", &r, cluster.deadline);
}

/// Claim ends by the deadline when EC2 or its ledger never answers. Its kind is the claim
/// step's own conclusion: the Claimer cuts its last attempt at the deadline and reports the
/// ledger `coordination_unreachable` (claim/mod.rs keeps the last error as text, so a
/// silent endpoint cannot yet be told from a refusing one there).
#[tokio::test]
async fn claim_ends_by_the_deadline_when_ec2_or_its_ledger_never_answers() {
    let (world, mut cluster, inst) = attached_node(Backend::Zk).await;
    let hole = world.black_hole().unwrap();
    let addr = world.address_for(&inst, hole).unwrap();
    let mut ec2 = cluster.command(&world, &inst, &["claim"]);
    ec2.env("AWS_ENDPOINT_URL", format!("http://{addr}"));
    cluster.zk_ports = vec![hole];
    let zk = cluster.command(&world, &inst, &["claim"]);
    let (e, z) = tokio::join!(
        run(ec2, Duration::from_secs(30)),
        run(zk, Duration::from_secs(30)),
    );
    for (what, o) in [("EC2 black-holed", e), ("ZooKeeper black-holed", z)] {
        let bound = Duration::from_secs(u64::from(cluster.deadline) + 1);
        assert!(matches!(o.code, Some(5) | Some(9)), "claim, {what}: {o:?}");
        assert!(o.elapsed <= bound, "claim, {what}: took {:?}", o.elapsed);
        eprintln!("claim, {what}: exit {:?} after {:?}", o.code, o.elapsed);
    }
}

#[tokio::test]
async fn boot_runs_every_step_under_one_deadline() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let mut cluster = Cluster::new(&world, Backend::Zk, 1, true);
    cluster.deadline = 30;
    let (eni, ip, vol) = cluster.resources_for(&world, 0, "a").await;
    let inst = world.launch("a", &[]).await.unwrap();
    let o = run(
        cluster.command(&world, &inst, &["boot"]),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let done: serde_json::Value = serde_json::from_str(&o.stdout)
        .unwrap_or_else(|e| panic!("boot printed no JSON ({e}): {}", o.stderr));
    assert_eq!(done["claim"]["id"], 0);
    assert_eq!(done["attach"]["eni"]["id"], eni.as_str());
    assert_eq!(done["attach"]["volume"]["id"], vol.as_str());
    assert_eq!(done["mount"]["volume"], vol.as_str());
    assert_eq!(done["route"]["routing"]["ips"][0], ip.as_str());
}

#[tokio::test]
async fn one_deadline_spans_the_steps_of_a_boot() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let (_, dir) = testbed::new_dir("kz").unwrap();
    let mut zk = Ensemble::start(&dir, 1).unwrap();
    for p in zk.client_ports() {
        world.expose(p).unwrap();
    }
    let mut cluster = Cluster::new(&world, Backend::Zk, 1, true);
    cluster.zk_ports = zk.client_ports();
    cluster.deadline = 12;
    let (eni, _, _) = cluster.resources_for(&world, 0, "a").await;
    // A live instance holds the id's ENI: attach waits for it until the deadline.
    let squatter = common::squat_eni(&world, &eni).await;
    let inst = world.launch("a", &[]).await.unwrap();

    // ZooKeeper is down for the first 6 s of the boot: the claim spends them.
    zk.stop(1).unwrap();
    let boot = run(
        cluster.command(&world, &inst, &["boot"]),
        Duration::from_secs(60),
    );
    let restart = async {
        tokio::time::sleep(Duration::from_secs(6)).await;
        zk.restart(1).unwrap();
    };
    let (o, ()) = tokio::join!(boot, restart);
    assert_eq!(o.code, Some(6), "{}", o.stderr);
    assert!(o.stderr.contains("resource_in_use"), "{}", o.stderr);
    assert!(o.stderr.contains(&squatter), "{}", o.stderr);
    // Attach had what the claim left, not a deadline of its own.
    let bound = Duration::from_secs(u64::from(cluster.deadline) + 1);
    assert!(
        o.elapsed <= bound,
        "boot took {:?} with a deadline of {} s: {}",
        o.elapsed,
        cluster.deadline,
        o.stderr
    );
    eprintln!(
        "boot: resource_in_use after {:?} (deadline {} s)",
        o.elapsed, cluster.deadline
    );
}

#[tokio::test]
async fn identity_waits_out_an_imds_that_answers_503() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let mut cluster = Cluster::new(&world, Backend::Zk, 1, false);
    cluster.deadline = 30;
    let inst = world.launch("a", &[]).await.unwrap();
    world
        .imds_unavailable(&inst, Duration::from_secs(15))
        .unwrap();
    let started = Instant::now();
    let claimed = cluster.claim(&world, &inst).await;
    assert_eq!(claimed, Ok((0, "created".to_string())));
    assert!(
        started.elapsed() >= Duration::from_secs(15),
        "claimed while IMDS answered 503"
    );
}

#[tokio::test]
async fn a_region_other_than_the_instances_fails_at_start_naming_both() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let cluster = Cluster::new(&world, Backend::Zk, 1, false);
    let inst = world.launch("a", &[]).await.unwrap();
    for step in ["claim", "attach", "mount"] {
        let mut cmd = cluster.command(&world, &inst, &[step]);
        cmd.env("AWS_REGION", "eu-west-1");
        let o = run(cmd, Duration::from_secs(30)).await;
        assert_eq!(o.code, Some(3), "{step}: {}", o.stderr);
        let last = o.stderr.trim().lines().last().unwrap_or("");
        assert!(last.contains("[region_mismatch]"), "{step}: {}", o.stderr);
        assert!(
            last.contains("eu-west-1") && last.contains("AWS_REGION") && last.contains("us-east-1"),
            "{step}: names both regions and where each came from: {last}"
        );
    }
    // The same region as the instance's is fine.
    let mut cmd = cluster.command(&world, &inst, &["claim"]);
    cmd.env("AWS_REGION", "us-east-1");
    let o = run(cmd, Duration::from_secs(30)).await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
}

#[tokio::test]
async fn the_agent_logs_its_region_and_endpoints_at_start() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let cluster = Cluster::new(&world, Backend::Zk, 1, false);
    let inst = world.launch("a", &[]).await.unwrap();
    let o = run(
        cluster.command(&world, &inst, &["claim"]),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let aws = world.aws_endpoint_for(&inst).unwrap();
    let line = |needle: &str| {
        o.stderr
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?}: {}", o.stderr))
            .to_string()
    };
    let region = line("region=us-east-1");
    assert!(region.contains("IMDS"), "{region}");
    for service in ["ec2", "logs"] {
        let l = line(&format!("service={service}"));
        assert!(l.contains(&aws) && l.contains("AWS_ENDPOINT_URL"), "{l}");
    }
    let imds = line("service=imds");
    assert!(
        imds.contains("http://169.254.169.254") && imds.contains("default"),
        "{imds}"
    );
    let zk = line("service=zookeeper");
    assert!(zk.contains("agent.toml"), "{zk}");
}
