//! Safety under partial failure (issue 10): names that cannot collide, a protected and
//! durable ledger, calls applied and then failed. On the testbed; needs root.

mod common;

use common::{Backend, Cluster, persistent};
use kafka_agent::claim::cloudwatch::stream_name;
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
    let logs = cluster.make_log_group().await;
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

/// The owner record a stream's first event holds, read as anyone would.
async fn first_record(cluster: &Cluster, stream: &str) -> Option<kafka_agent::claim::Record> {
    let logs = aws_sdk_cloudwatchlogs::Client::new(&testbed::shared().moto.sdk_config("seed"));
    let events = logs
        .get_log_events()
        .log_group_name(cluster.log_group())
        .log_stream_name(stream)
        .start_from_head(true)
        .send()
        .await
        .unwrap();
    events
        .events()
        .first()
        .and_then(|e| serde_json::from_str(e.message()?).ok())
}

async fn seed_empty_stream(cluster: &Cluster, id: u32, age_seconds: u64) {
    let logs = aws_sdk_cloudwatchlogs::Client::new(&testbed::shared().moto.sdk_config("seed"));
    let _ = logs
        .create_log_group()
        .log_group_name(cluster.log_group())
        .send()
        .await;
    logs.create_log_stream()
        .log_group_name(cluster.log_group())
        .log_stream_name(stream_name(id, 0))
        .send()
        .await
        .unwrap();
    if age_seconds > 0 {
        testbed::shared()
            .moto
            .age_streams(&cluster.log_group(), age_seconds)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_claim_is_won_only_once_its_record_is_readable_even_with_a_skewed_clock() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let cluster = Cluster::new(&world, Backend::Cwl, 2, false);
    // Three hours ahead: CloudWatch Logs answers PutLogEvents with 200 and rejects the event
    // as too new (rejectedLogEventsInfo.tooNewLogEventStartIndex: events more than 2 hours in
    // the future are not accepted, PutLogEvents API reference).
    let inst = world.launch("a", &[]).await.unwrap();
    assert_eq!(
        cluster.claim_skewed(&world, &inst, "+3h").await.unwrap(),
        (0, "created".to_string())
    );
    let record = first_record(&cluster, &stream_name(0, 0)).await;
    assert_eq!(
        record.map(|r| r.owner),
        Some(inst.clone()),
        "the claim was reported won but its stream holds no record"
    );
}

#[tokio::test]
async fn a_fast_clock_never_takes_a_claim_being_written_for_abandoned() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let mut cluster = Cluster::new(&world, Backend::Cwl, 1, false);
    cluster.deadline = 10;
    // A contender created id 0's stream a moment ago and is writing its record.
    seed_empty_stream(&cluster, 0, 0).await;
    let inst = world.launch("a", &[]).await.unwrap();
    let (code, stderr) = cluster
        .claim_skewed(&world, &inst, "+10m")
        .await
        .unwrap_err();
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("a claim is being written"), "{stderr}");
}

#[tokio::test]
async fn a_slow_clock_still_sees_an_abandoned_claim_as_abandoned() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let cluster = Cluster::new(&world, Backend::Cwl, 1, false);
    // Id 0's stream was created ten minutes ago by a writer that died before its record.
    seed_empty_stream(&cluster, 0, 600).await;
    let inst = world.launch("a", &[]).await.unwrap();
    assert_eq!(
        cluster.claim_skewed(&world, &inst, "-10m").await.unwrap(),
        (0, "took_over".to_string())
    );
}

#[tokio::test]
async fn a_create_applied_and_then_failed_is_completed_not_abandoned() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let mut cluster = Cluster::new(&world, Backend::Cwl, 1, false);
    cluster.deadline = 20;
    // The first CreateLogStream is applied and its reply lost (a 5xx): the SDK's retry meets
    // ResourceAlreadyExists for the stream this very agent made.
    common::configure(
        &world,
        kafka_testbed::aws::ScopeSettings {
            fault_after_rate: Some(1.0),
            fault_after_actions: Some(vec!["CreateLogStream".into()]),
            fault_after_limit: Some(1),
            ..Default::default()
        },
    )
    .await;
    let inst = world.launch("a", &[]).await.unwrap();
    assert_eq!(
        cluster.claim(&world, &inst).await.unwrap(),
        (0, "created".to_string())
    );
    let record = first_record(&cluster, &stream_name(0, 0)).await;
    assert_eq!(record.map(|r| r.owner), Some(inst));
}

#[tokio::test]
async fn attaches_applied_and_then_failed_converge_without_a_second_attach() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let cluster = Cluster::new(&world, Backend::Zk, 1, true);
    cluster.resources_for(&world, 0, "a").await;
    common::configure(
        &world,
        kafka_testbed::aws::ScopeSettings {
            fault_after_rate: Some(1.0),
            fault_after_actions: Some(vec!["AttachVolume".into(), "AttachNetworkInterface".into()]),
            fault_after_limit: Some(2),
            ..Default::default()
        },
    )
    .await;
    let inst = world.launch("a", &[]).await.unwrap();
    assert_eq!(cluster.claim(&world, &inst).await.unwrap().0, 0);
    let done = cluster.attach(&world, &inst).await.unwrap();
    let text = done.to_string();
    assert!(text.contains("attached"), "{text}");
    // The instance's root volume and the id's volume, attached once.
    let v = world
        .ec2
        .describe_volumes()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("attachment.instance-id")
                .values(&inst)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(v.volumes().len(), 2, "{v:?}");
    // And a rerun changes nothing.
    assert!(
        cluster
            .attach(&world, &inst)
            .await
            .unwrap()
            .to_string()
            .contains("already")
    );
}

#[tokio::test]
async fn a_stopped_owner_keeps_its_id_and_the_claim_waits_for_it() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let mut cluster = Cluster::new(&world, Backend::Zk, 1, false);
    cluster.deadline = 10;
    common::configure(
        &world,
        kafka_testbed::aws::ScopeSettings {
            visibility_delay: Some(0.0),
            ..Default::default()
        },
    )
    .await;
    let owner = world.launch("a", &[]).await.unwrap();
    assert_eq!(cluster.claim(&world, &owner).await.unwrap().0, 0);
    world
        .ec2
        .stop_instances()
        .instance_ids(&owner)
        .send()
        .await
        .unwrap();
    // A stopped instance may be started again and keeps its id: the claim waits (as attach
    // waits for a stopped holder) until the deadline, then says why.
    let other = world.launch("a", &[]).await.unwrap();
    let started = std::time::Instant::now();
    let (code, stderr) = cluster.claim(&world, &other).await.unwrap_err();
    assert_eq!(code, 4, "{stderr}");
    assert!(
        stderr.contains(&format!("{owner} is stopped")),
        "names the stopped owner: {stderr}"
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(8),
        "gave up at once ({:?}) instead of waiting within the deadline",
        started.elapsed()
    );
}

/// A proxy to ZooKeeper that forwards everything but, the first time a client asks to create
/// a node whose path contains `needle`, passes that request on, gives the server a moment to
/// apply it and then drops the connection before the reply: the client sees ConnectionLoss
/// for a create that was applied. Returns the proxy's port on this machine.
async fn zk_dropping_first_create(zk_port: u16, needle: &'static str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let dropped = dropped.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", zk_port)).await
                else {
                    return;
                };
                let (mut sr, mut sw) = server.into_split();
                let (mut cr, mut cw) = client.into_split();
                // Server -> client, until muted (the connection stays open meanwhile, so the
                // server applies the create before the session moves to a new connection).
                let mute = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let muted = mute.clone();
                let down = tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = sr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if !muted.load(std::sync::atomic::Ordering::SeqCst)
                            && cw.write_all(&buf[..n]).await.is_err()
                        {
                            break;
                        }
                    }
                });
                // Client -> server, frame by frame: [len][body]; the first frame is the
                // ConnectRequest, later ones [xid][opcode][path]... (ZooKeeper's jute wire
                // format; create = 1, create2 = 15, createContainer = 19, createTTL = 21).
                let mut first = true;
                loop {
                    let mut len = [0u8; 4];
                    if cr.read_exact(&mut len).await.is_err() {
                        break;
                    }
                    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
                    if cr.read_exact(&mut body).await.is_err() {
                        break;
                    }
                    let create = !first
                        && body.len() > 12
                        && matches!(
                            i32::from_be_bytes(body[4..8].try_into().unwrap()),
                            1 | 15 | 19 | 21
                        )
                        && String::from_utf8_lossy(&body[12..]).contains(needle);
                    first = false;
                    let drop_reply =
                        create && !dropped.swap(true, std::sync::atomic::Ordering::SeqCst);
                    if drop_reply {
                        // No more replies reach the client from here on.
                        mute.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    if sw.write_all(&len).await.is_err() || sw.write_all(&body).await.is_err() {
                        break;
                    }
                    if drop_reply {
                        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                        down.abort();
                        return; // the connection closes; the reply never reached the client
                    }
                }
                down.abort();
            });
        }
    });
    port
}

#[tokio::test]
async fn a_zookeeper_create_applied_before_the_connection_dropped_keeps_its_one_id() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let mut cluster = Cluster::new(&world, Backend::Zk, 3, false);
    cluster.zk().await; // the chroot, made directly
    let proxy = zk_dropping_first_create(cluster.zk_ports[0], "/claims/0").await;
    world.expose(proxy).unwrap();
    cluster.zk_ports = vec![proxy];
    let inst = world.launch("a", &[]).await.unwrap();
    // The create of id 0 is applied, its reply lost: the agent's next attempt finds its own
    // node and keeps it; it holds no second id.
    assert_eq!(
        cluster.claim(&world, &inst).await.unwrap(),
        (0, "kept".to_string())
    );
    let mut direct = cluster.clone();
    direct.zk_ports = testbed::shared().zookeeper.client_ports();
    let zk = direct.zk().await;
    let claims = zk.list_children(&cluster.claim_path()).await.unwrap();
    assert_eq!(claims, vec!["0".to_string()]);
}

#[tokio::test]
async fn a_gone_owner_is_found_gone_by_the_ledgers_clock_not_its_record_time() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let cluster = Cluster::new(&world, Backend::Cwl, 1, false);
    // Forty minutes ago an instance EC2 no longer lists claimed id 0; its clock ran an hour
    // fast, so the time in its record lies in the future.
    let logs = aws_sdk_cloudwatchlogs::Client::new(&testbed::shared().moto.sdk_config("seed"));
    let _ = logs
        .create_log_group()
        .log_group_name(cluster.log_group())
        .send()
        .await;
    logs.create_log_stream()
        .log_group_name(cluster.log_group())
        .log_stream_name(stream_name(0, 0))
        .send()
        .await
        .unwrap();
    let record = kafka_agent::claim::Record {
        owner: "i-0000000000000dead".into(),
        az: "us-east-1a".into(),
        cluster: cluster.name.clone(),
        epoch: 0,
        time: (common::now_ms() / 1000 + 3600) as u64,
    };
    logs.put_log_events()
        .log_group_name(cluster.log_group())
        .log_stream_name(stream_name(0, 0))
        .log_events(
            aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
                .timestamp(common::now_ms())
                .message(serde_json::to_string(&record).unwrap())
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    testbed::shared()
        .moto
        .age_streams(&cluster.log_group(), 2400)
        .await
        .unwrap();
    let inst = world.launch("a", &[]).await.unwrap();
    assert_eq!(
        cluster.claim(&world, &inst).await.unwrap(),
        (0, "took_over".to_string())
    );
}
