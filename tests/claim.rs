//! Step 1, claim: on the testbed, with both ledgers. Needs root.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Backend, Cluster, persistent};
use kafka_testbed::{self as testbed, World, zookeeper::Ensemble};

async fn replacement_and_reboot(backend: Backend) {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let cluster = Cluster::new(&world, backend, 3, true);
    for id in 0..3 {
        cluster.resources_for(&world, id, "a").await;
    }
    let mut holders = Vec::new();
    for expected in 0..3 {
        let inst = world.launch("a", &[]).await.unwrap();
        assert_eq!(
            cluster.claim(&world, &inst).await.unwrap(),
            (expected, "created".to_string())
        );
        holders.push(inst);
    }
    // The instance carries its id as a tag.
    let tags = world
        .ec2
        .describe_tags()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("resource-id")
                .values(&holders[1])
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(
        tags.tags()
            .iter()
            .any(|t| t.key() == Some("kafka-agent:id") && t.value() == Some("1")),
        "{tags:?}"
    );

    world.terminate(&holders[1]).await.unwrap();
    let fresh = world.launch("a", &[]).await.unwrap();
    assert_eq!(
        cluster.claim(&world, &fresh).await.unwrap(),
        (1, "took_over".to_string())
    );

    world.reboot(&holders[2]).await.unwrap();
    let _lingering = if backend == Backend::Zk {
        // The broker's registration from before the reboot is still there (its session has
        // not expired yet): it must not lock the broker out of its own id.
        let zk = cluster.zk().await;
        zk.mkdir("/brokers/ids", &persistent()).await.unwrap();
        zk.create(
            "/brokers/ids/2",
            b"{}",
            &zookeeper_client::CreateMode::Ephemeral
                .with_acls(zookeeper_client::Acls::anyone_all()),
        )
        .await
        .unwrap();
        Some(zk)
    } else {
        None
    };
    assert_eq!(
        cluster.claim(&world, &holders[2]).await.unwrap(),
        (2, "kept".to_string())
    );
    // The journal says what was done.
    let journal = std::fs::read_to_string(
        world
            .host_dir(&holders[2])
            .join("var/lib/kafka-agent/claim.json"),
    )
    .unwrap();
    assert!(journal.contains("\"id\": 2"), "{journal}");
}

#[tokio::test]
async fn replacement_takes_over_and_reboot_keeps_id_zookeeper() {
    replacement_and_reboot(Backend::Zk).await;
}

#[tokio::test]
async fn replacement_takes_over_and_reboot_keeps_id_cloudwatch_logs() {
    replacement_and_reboot(Backend::Cwl).await;
}

async fn many_at_once(backend: Backend, agents: usize, rounds: usize) {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let mut instances = Vec::new();
    for _ in 0..agents {
        instances.push(world.launch("a", &[]).await.unwrap());
    }
    for round in 0..rounds {
        let cluster = Cluster::new(&world, backend, agents as u32, false);
        let runs = instances.iter().map(|i| cluster.claim(&world, i));
        let results = futures::future::join_all(runs).await;
        let ids: Vec<u32> = results
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| panic!("round {round}: {e:?}")).0)
            .collect();
        let distinct: BTreeSet<u32> = ids.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            agents,
            "round {round}: duplicate ids {ids:?}"
        );
        assert_eq!(distinct, (0..agents as u32).collect(), "round {round}");
    }
}

#[tokio::test]
async fn thirty_two_agents_at_once_hold_distinct_ids_zookeeper() {
    many_at_once(Backend::Zk, 32, 20).await;
}

#[tokio::test]
async fn thirty_two_agents_at_once_hold_distinct_ids_cloudwatch_logs() {
    many_at_once(Backend::Cwl, 32, 20).await;
}

async fn two_contenders(backend: Backend, rounds: usize) {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let dead = world.launch("a", &[]).await.unwrap();
    world.terminate(&dead).await.unwrap();
    let a = world.launch("a", &[]).await.unwrap();
    let b = world.launch("a", &[]).await.unwrap();
    for round in 0..rounds {
        let cluster = Cluster::new(&world, backend, 1, false);
        cluster.seed(0, &dead).await;
        let (ra, rb) = tokio::join!(cluster.claim(&world, &a), cluster.claim(&world, &b));
        let won = [&ra, &rb].into_iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {ra:?} / {rb:?}");
        let (ok, lost) = if ra.is_ok() { (&ra, &rb) } else { (&rb, &ra) };
        assert_eq!(ok.as_ref().unwrap(), &(0, "took_over".to_string()));
        let (code, stderr) = lost.as_ref().unwrap_err();
        assert_eq!(*code, 4, "{stderr}");
        assert!(stderr.contains("no_eligible_id"), "{stderr}");
    }
}

#[tokio::test]
async fn two_contenders_for_a_dead_owners_id_exactly_one_wins_zookeeper() {
    two_contenders(Backend::Zk, 50).await;
}

#[tokio::test]
async fn two_contenders_for_a_dead_owners_id_exactly_one_wins_cloudwatch_logs() {
    two_contenders(Backend::Cwl, 50).await;
}

async fn az_aware(backend: Backend) {
    let world = World::create(testbed::shared(), &["a", "b"]).await.unwrap();
    let cluster = Cluster::new(&world, backend, 3, true);
    cluster.resources_for(&world, 0, "a").await;
    cluster.resources_for(&world, 1, "a").await;
    cluster.resources_for(&world, 2, "b").await;
    let b1 = world.launch("b", &[]).await.unwrap();
    assert_eq!(
        cluster.claim(&world, &b1).await.unwrap(),
        (2, "created".to_string())
    );
    let b2 = world.launch("b", &[]).await.unwrap();
    let dry = cluster
        .command(&world, &b2, &["claim", "--dry-run"])
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&dry.stdout);
    assert!(said.starts_with("no eligible id"), "{said}");
    let (code, stderr) = cluster.claim(&world, &b2).await.unwrap_err();
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("0: ENI in us-east-1a"), "{stderr}");
    assert!(
        stderr.contains(&format!("2: held by {b1} (alive)")),
        "{stderr}"
    );
    // And an instance in AZ a gets an id of AZ a.
    let a1 = world.launch("a", &[]).await.unwrap();
    assert_eq!(cluster.claim(&world, &a1).await.unwrap().0, 0);
}

#[tokio::test]
async fn ids_are_claimed_only_in_their_resources_az_zookeeper() {
    az_aware(Backend::Zk).await;
}

#[tokio::test]
async fn ids_are_claimed_only_in_their_resources_az_cloudwatch_logs() {
    az_aware(Backend::Cwl).await;
}

#[tokio::test]
async fn dry_run_says_what_it_would_claim_and_writes_nothing() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let cluster = Cluster::new(&world, Backend::Cwl, 2, false);
    let inst = world.launch("a", &[]).await.unwrap();
    let out = cluster
        .command(&world, &inst, &["claim", "--dry-run"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "claim id 0: the lowest eligible free id"
    );
    assert!(
        !world
            .host_dir(&inst)
            .join("var/lib/kafka-agent/claim.json")
            .exists()
    );
    // Nothing was claimed: a real run still gets id 0 by creating it.
    assert_eq!(
        cluster.claim(&world, &inst).await.unwrap(),
        (0, "created".to_string())
    );
}

#[tokio::test]
async fn zookeeper_down_at_boot_then_back_and_down_past_the_deadline() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let (_, dir) = testbed::new_dir("kz").unwrap();
    let mut zk = Ensemble::start(&dir, 1).unwrap();
    for p in zk.client_ports() {
        world.expose(p).unwrap();
    }
    let mut cluster = Cluster::new(&world, Backend::Zk, 3, false);
    cluster.zk_ports = zk.client_ports();
    let inst = world.launch("a", &[]).await.unwrap();

    zk.stop(1).unwrap();
    let run = {
        let mut cmd = cluster.command(&world, &inst, &["claim", "--json"]);
        cmd.kill_on_drop(true);
        cmd.output()
    };
    let restart = async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        zk.restart(1).unwrap();
    };
    let (out, ()) = tokio::join!(run, restart);
    let out = out.unwrap();
    assert!(
        out.status.success(),
        "claim did not complete once ZooKeeper was back: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    zk.stop(1).unwrap();
    cluster.deadline = 10;
    let other = world.launch("a", &[]).await.unwrap();
    let (code, stderr) = cluster.claim(&world, &other).await.unwrap_err();
    assert_eq!(code, 5, "{stderr}");
    assert!(stderr.contains("coordination_unreachable"), "{stderr}");
    assert_eq!(
        stderr
            .trim()
            .lines()
            .last()
            .unwrap()
            .matches("kafka-agent:")
            .count(),
        1
    );
    drop(zk);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn throttled_cloudwatch_logs_is_retried_until_every_agent_holds_an_id() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    common::configure(
        &world,
        kafka_testbed::aws::ScopeSettings {
            throttle_rate: Some(0.5),
            fault_actions: Some(
                [
                    "CreateLogStream",
                    "DescribeLogStreams",
                    "GetLogEvents",
                    "PutLogEvents",
                ]
                .map(String::from)
                .to_vec(),
            ),
            ..Default::default()
        },
    )
    .await;
    let mut instances = Vec::new();
    for _ in 0..8 {
        instances.push(world.launch("a", &[]).await.unwrap());
    }
    let mut cluster = Cluster::new(&world, Backend::Cwl, 8, false);
    // Half of all calls refused: the point is that every agent gets there, not how fast
    // (CI runs this next to other tests on two cores).
    cluster.deadline = 300;
    let results =
        futures::future::join_all(instances.iter().map(|i| cluster.claim(&world, i))).await;
    let claims: Vec<(u32, String)> = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("{e:?}")))
        .collect();
    let ids: BTreeSet<u32> = claims.iter().map(|c| c.0).collect();
    assert_eq!(ids, (0..8).collect(), "{claims:?}");
}

#[tokio::test]
async fn a_role_that_may_not_create_the_log_group_claims_in_the_one_made_beforehand() {
    // A least-privilege role without logs:CreateLogGroup: the agent asks to create the group
    // first and is refused with AccessDeniedException, as IAM refuses.
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    common::configure(
        &world,
        kafka_testbed::aws::ScopeSettings {
            denied_actions: Some(vec!["CreateLogGroup".into()]),
            ..Default::default()
        },
    )
    .await;
    let cluster = Cluster::new(&world, Backend::Cwl, 2, false);
    let first = world.launch("a", &[]).await.unwrap();
    // No group yet: the claim fails at once, naming the group and the refusal.
    let (code, stderr) = cluster.claim(&world, &first).await.unwrap_err();
    assert_ne!(code, 0);
    assert!(
        stderr.contains(&cluster.log_group())
            && stderr.contains("does not exist")
            && stderr.contains("AccessDeniedException"),
        "{stderr}"
    );
    // The operator made it beforehand: the refusal is no obstacle.
    cluster.make_log_group().await;
    assert_eq!(
        cluster.claim(&world, &first).await.unwrap(),
        (0, "created".to_string())
    );
}

#[tokio::test]
async fn an_empty_first_page_never_lets_a_live_brokers_id_be_taken() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let cluster = Cluster::new(&world, Backend::Cwl, 2, false);
    let first = world.launch("a", &[]).await.unwrap();
    assert_eq!(
        cluster.claim(&world, &first).await.unwrap(),
        (0, "created".to_string())
    );
    // Ten minutes later, GetLogEvents answers a few empty pages before the owner record, as
    // AWS documents it may.
    let moto = &testbed::shared().moto;
    moto.age_streams(&cluster.log_group(), 600).await.unwrap();
    moto.configure(
        &world.scope,
        &testbed::aws::ScopeSettings {
            logs_empty_pages: Some(3),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let second = world.launch("a", &[]).await.unwrap();
    assert_eq!(
        cluster.claim(&world, &second).await.unwrap(),
        (1, "created".to_string()),
        "{first} is alive and holds 0"
    );
}

#[tokio::test]
async fn a_claim_without_record_is_not_taken_while_a_live_instance_carries_the_id() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    // EC2 lists new instances at once here: the point is the tag, not eventual consistency.
    common::configure(
        &world,
        kafka_testbed::aws::ScopeSettings {
            visibility_delay: Some(0.0),
            ..Default::default()
        },
    )
    .await;
    let mut cluster = Cluster::new(&world, Backend::Cwl, 1, false);
    cluster.deadline = 10;
    // An instance of the cluster carries id 0's tag, and id 0's stream holds no readable
    // record (its first event not readable yet, say): long past the abandonment window, it is
    // still not free.
    let holder = world
        .launch(
            "a",
            &[
                ("kafka-agent:id", "0"),
                ("kafka-agent:cluster", cluster.name.as_str()),
            ],
        )
        .await
        .unwrap();
    let logs = aws_sdk_cloudwatchlogs::Client::new(&testbed::shared().moto.sdk_config("seed"));
    let group = cluster.log_group();
    logs.create_log_group()
        .log_group_name(&group)
        .send()
        .await
        .unwrap();
    logs.create_log_stream()
        .log_group_name(&group)
        .log_stream_name(kafka_agent::claim::cloudwatch::stream_name(0, 0))
        .send()
        .await
        .unwrap();
    testbed::shared()
        .moto
        .age_streams(&group, 600)
        .await
        .unwrap();
    let other = world.launch("a", &[]).await.unwrap();
    let (code, stderr) = cluster.claim(&world, &other).await.unwrap_err();
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains(&holder), "names the live holder: {stderr}");

    // Once that instance is gone for good, the unfinished claim is taken over.
    world.terminate(&holder).await.unwrap();
    cluster.deadline = 60;
    assert_eq!(
        cluster.claim(&world, &other).await.unwrap(),
        (0, "took_over".to_string())
    );
}
