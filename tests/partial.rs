//! Safety under partial failure (issue 10): names that cannot collide, a protected and
//! durable ledger, calls applied and then failed. On the testbed; needs root.

mod common;

use common::{Backend, Cluster, persistent};
use kafka_testbed::{self as testbed, World};

#[tokio::test]
async fn a_kafka_cluster_and_a_zookeeper_ensemble_named_alike_keep_separate_ledgers() {
    for backend in [Backend::Zk, Backend::Cwl] {
        let world = World::create(testbed::shared(), &["a"]).await.unwrap();
        let kafka = Cluster::new(&world, backend, 2, false);
        let mut ensemble = kafka.clone();
        ensemble.role = "zookeeper";
        ensemble.size = 3;
        for expected in 0..2 {
            let broker = world.launch("a", &[]).await.unwrap();
            assert_eq!(kafka.claim(&world, &broker).await.unwrap().0, expected);
        }
        // Myids are 1..=3: the brokers' ids 0 and 1 are theirs, not the ensemble's.
        let node = world.launch("a", &[]).await.unwrap();
        assert_eq!(
            ensemble.claim(&world, &node).await.unwrap(),
            (1, "created".to_string()),
            "{backend:?}"
        );
    }
}

#[tokio::test]
async fn claim_znodes_are_writable_only_by_the_digest_identity() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let mut cluster = Cluster::new(&world, Backend::Zk, 2, false);
    cluster.digest = Some("agent:s3cret".into());
    let first = world.launch("a", &[]).await.unwrap();
    assert_eq!(cluster.claim(&world, &first).await.unwrap().0, 0);
    let zk = cluster.zk().await; // no credentials
    let node = format!("{}/0", cluster.claim_path());
    let (acls, _) = zk.get_acl(&node).await.unwrap();
    let world_perm = acls
        .iter()
        .find(|a| a.scheme() == "world")
        .map(|a| a.permission());
    assert_eq!(
        world_perm,
        Some(zookeeper_client::Permission::READ),
        "{acls:?}"
    );
    assert!(
        acls.iter()
            .any(|a| a.scheme() == "digest" && a.id().starts_with("agent:")),
        "{acls:?}"
    );
    // Anyone may read the record; nobody without the digest may rewrite it.
    assert!(zk.get_data(&node).await.is_ok());
    assert!(
        matches!(
            zk.set_data(&node, b"{}", None).await,
            Err(zookeeper_client::Error::NoAuth)
        ),
        "an anonymous session rewrote a claim"
    );
    // The claim path itself: nobody without the digest may add a claim.
    assert!(matches!(
        zk.create(&format!("{}/1", cluster.claim_path()), b"{}", &persistent())
            .await,
        Err(zookeeper_client::Error::NoAuth)
    ));
    // A reboot with the digest keeps its id.
    assert_eq!(
        cluster.claim(&world, &first).await.unwrap(),
        (0, "kept".to_string())
    );

    // Without a digest the agent says at start that the ledger is open to anyone.
    let open = Cluster::new(&world, Backend::Zk, 1, false);
    let other = world.launch("a", &[]).await.unwrap();
    let out = open
        .command(&world, &other, &["claim", "--json"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("open to anyone"), "{stderr}");
}

#[tokio::test]
async fn a_live_registration_blocks_its_id_whatever_the_backend() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let cluster = Cluster::new(&world, Backend::Cwl, 2, false);
    // A broker of this cluster is registered under id 0 (its claim lost, say): ZooKeeper
    // knows it is alive.
    let zk = cluster.zk().await;
    zk.mkdir("/brokers/ids", &persistent()).await.unwrap();
    zk.create(
        "/brokers/ids/0",
        b"{}",
        &zookeeper_client::CreateMode::Ephemeral.with_acls(zookeeper_client::Acls::anyone_all()),
    )
    .await
    .unwrap();
    let inst = world.launch("a", &[]).await.unwrap();
    assert_eq!(
        cluster.claim(&world, &inst).await.unwrap(),
        (1, "created".to_string())
    );
}

#[tokio::test]
async fn a_claim_log_group_with_a_retention_policy_is_refused() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let cluster = Cluster::new(&world, Backend::Cwl, 2, false);
    let logs = aws_sdk_cloudwatchlogs::Client::new(&testbed::shared().moto.sdk_config("seed"));
    logs.create_log_group()
        .log_group_name(cluster.log_group())
        .send()
        .await
        .unwrap();
    logs.put_retention_policy()
        .log_group_name(cluster.log_group())
        .retention_in_days(7)
        .send()
        .await
        .unwrap();
    let inst = world.launch("a", &[]).await.unwrap();
    let (code, stderr) = cluster.claim(&world, &inst).await.unwrap_err();
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("[unsafe_ledger]"), "{stderr}");
    assert!(
        stderr.contains(&cluster.log_group()) && stderr.contains("7 days"),
        "names the group and its retention: {stderr}"
    );
    let streams = logs
        .describe_log_streams()
        .log_group_name(cluster.log_group())
        .send()
        .await
        .unwrap();
    assert!(streams.log_streams().is_empty(), "nothing was claimed");
}
