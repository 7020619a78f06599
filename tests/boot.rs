//! `kafka-agent boot`: one process makes the node whole (claim, attach, mount and route,
//! render) and journals how it went. On the testbed; needs root.

mod common;

use std::time::Duration;

use common::{Backend, Cluster};
use kafka_testbed::{self as testbed, World};

fn boot_journal(world: &World, inst: &str) -> serde_json::Value {
    let path = world.host_dir(inst).join("var/lib/kafka-agent/boot.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn rendered(world: &World, inst: &str) -> String {
    std::fs::read_to_string(world.host_dir(inst).join("etc/kafka/server.properties")).unwrap()
}

async fn fresh_then_replacement(backend: Backend) {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let mut cluster = Cluster::new(&world, backend, 1, true);
    cluster.render = true;
    let (eni, ip, vol) = cluster.resources_for(&world, 0, "a").await;
    let first = world.launch("a", &[]).await.unwrap();
    let done = cluster.boot(&world, &first).await.unwrap();
    assert_eq!(done["claim"]["id"], 0, "{done}");
    assert_eq!(done["attach"]["eni"]["id"], eni.as_str());
    assert_eq!(done["attach"]["volume"]["id"], vol.as_str());
    assert_eq!(done["render"]["changed"], true, "{done}");
    let props = rendered(&world, &first);
    let data = world.host_dir(&first).join("var/lib/kafka");
    for line in [
        "broker.id=0".to_string(),
        format!("advertised.listeners=PLAINTEXT://{ip}:9092"),
        format!("log.dirs={}", data.join("kafka-logs").display()),
        "broker.rack=us-east-1a".to_string(),
    ] {
        assert!(props.lines().any(|l| l == line), "no `{line}` in:\n{props}");
    }
    let journal = boot_journal(&world, &first);
    assert_eq!(journal["outcome"], "success", "{journal}");
    let steps: Vec<&str> = journal["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    for step in ["start", "claim", "attach", "mount", "route", "render"] {
        assert!(steps.contains(&step), "{step} not journalled: {journal}");
    }
    // Data the broker wrote (Kafka makes its log directory), to find again on the replacement.
    std::fs::create_dir_all(data.join("kafka-logs")).unwrap();
    std::fs::write(
        data.join("kafka-logs/marker"),
        "written by the first broker",
    )
    .unwrap();

    // A rerun on the same node changes nothing.
    let again = cluster.boot(&world, &first).await.unwrap();
    assert_eq!(again["claim"]["how"], "kept", "{again}");
    assert_eq!(again["render"]["changed"], false, "{again}");

    // The broker dies; its replacement comes back with its id, address, data and config.
    world.terminate(&first).await.unwrap();
    let second = world.launch("a", &[]).await.unwrap();
    let back = cluster.boot(&world, &second).await.unwrap();
    assert_eq!(back["claim"]["id"], 0, "{back}");
    assert_eq!(back["attach"]["eni"]["ips"][0], ip.as_str(), "{back}");
    let data2 = world.host_dir(&second).join("var/lib/kafka");
    assert_eq!(
        std::fs::read_to_string(data2.join("kafka-logs/marker")).unwrap(),
        "written by the first broker"
    );
    // The same file but for the data directory's place on this host.
    assert_eq!(
        rendered(&world, &second).replace(&data2.display().to_string(), "DATA"),
        props.replace(&data.display().to_string(), "DATA")
    );
}

#[tokio::test]
async fn a_node_boots_whole_and_its_replacement_comes_back_the_same_zookeeper() {
    fresh_then_replacement(Backend::Zk).await;
}

#[tokio::test]
async fn a_node_boots_whole_and_its_replacement_comes_back_the_same_cloudwatch_logs() {
    fresh_then_replacement(Backend::Cwl).await;
}

#[tokio::test]
async fn a_boot_killed_at_any_point_converges_on_the_rerun() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    common::configure(
        &world,
        kafka_testbed::aws::ScopeSettings {
            attach_delay: Some(0.5),
            ..Default::default()
        },
    )
    .await;
    let mut cluster = Cluster::new(&world, Backend::Zk, 1, true);
    cluster.render = true;
    cluster.resources_for(&world, 0, "a").await;
    let inst = world.launch("a", &[]).await.unwrap();
    for ms in [100, 300, 600, 900, 1300, 1800] {
        let mut child = cluster.command(&world, &inst, &["boot"]).spawn().unwrap();
        tokio::time::sleep(Duration::from_millis(ms)).await;
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    let done = cluster.boot(&world, &inst).await.unwrap();
    assert_eq!(done["claim"]["id"], 0, "{done}");
    // One claim, one fstab line, one rendered file. A boot killed between reading the
    // ensemble's clock (an ephemeral `clock-` node) and removing it leaves that node until its
    // session expires (10 s): ephemeral, never a claim, and gone by itself.
    let zk = cluster.zk().await;
    let mut claims = Vec::new();
    for child in zk.list_children(&cluster.claim_path()).await.unwrap() {
        let path = format!("{}/{child}", cluster.claim_path());
        let Some(stat) = zk.check_stat(&path).await.unwrap() else {
            continue; // an expiring clock node went while we looked
        };
        if stat.ephemeral_owner == 0 {
            claims.push(child);
        } else {
            assert!(child.starts_with("clock-"), "ephemeral {path}");
        }
    }
    assert_eq!(claims, vec!["0".to_string()]);
    let fstab = std::fs::read_to_string(world.host_dir(&inst).join("etc/fstab")).unwrap();
    assert_eq!(
        fstab
            .lines()
            .filter(|l| l.contains("var/lib/kafka"))
            .count(),
        1,
        "{fstab}"
    );
    assert!(rendered(&world, &inst).contains("broker.id=0"));
    let leftovers: Vec<_> = std::fs::read_dir(world.host_dir(&inst).join("etc/kafka"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers, vec!["server.properties".to_string()]);
    assert_eq!(boot_journal(&world, &inst)["outcome"], "success");
}

#[tokio::test]
async fn a_failed_boot_journals_its_kind_and_message() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let mut cluster = Cluster::new(&world, Backend::Zk, 1, true);
    cluster.deadline = 10;
    let (eni, _, _) = cluster.resources_for(&world, 0, "a").await;
    // A live instance holds the id's ENI: attach waits for it until the deadline.
    let squatter = common::squat_eni(&world, &eni).await;
    let inst = world.launch("a", &[]).await.unwrap();
    let (code, stderr) = cluster.boot(&world, &inst).await.unwrap_err();
    assert_eq!(code, 6, "{stderr}");
    let journal = boot_journal(&world, &inst);
    assert_eq!(journal["outcome"], "failure", "{journal}");
    assert_eq!(journal["error"]["kind"], "resource_in_use", "{journal}");
    assert!(
        journal["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&squatter),
        "{journal}"
    );
    // Logs at the default level are the agent's own: no ZooKeeper session chatter.
    assert!(!stderr.contains("zookeeper_client"), "{stderr}");
}

/// The stand-in kafka-storage's calls on a host (one line each).
fn format_calls(world: &World, inst: &str) -> Vec<String> {
    std::fs::read_to_string(world.host_dir(inst).join("etc/kafka/kafka-storage.calls"))
        .map(|t| t.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn kraft_formats_a_new_log_directory_once_and_never_one_that_holds_data() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let mut cluster = Cluster::new(&world, Backend::Zk, 1, true);
    cluster.render = true;
    cluster.kraft = Some("q1w2e3r4t5y6u7i8o9p0aa".into());
    cluster.resources_for(&world, 0, "a").await;
    let first = world.launch("a", &[]).await.unwrap();
    let done = cluster.boot(&world, &first).await.unwrap();
    assert_eq!(done["claim"]["id"], 0, "{done}");
    let calls = format_calls(&world, &first);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(
        calls[0].contains("--cluster-id q1w2e3r4t5y6u7i8o9p0aa")
            && calls[0].contains("server.properties"),
        "{calls:?}"
    );
    let logs = world.host_dir(&first).join("var/lib/kafka/kafka-logs");
    let meta = std::fs::read_to_string(logs.join("meta.properties")).unwrap();
    assert!(
        meta.lines().any(|l| l == "node.id=0")
            && meta
                .lines()
                .any(|l| l == "cluster.id=q1w2e3r4t5y6u7i8o9p0aa"),
        "{meta}"
    );
    let journal = boot_journal(&world, &first);
    assert!(
        journal["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["step"] == "format" && s["outcome"] == "ok"),
        "{journal}"
    );

    // A rerun does not format again.
    cluster.boot(&world, &first).await.unwrap();
    assert_eq!(format_calls(&world, &first).len(), 1);

    // The replacement finds the formatted directory: its meta.properties is kept as it is.
    world.terminate(&first).await.unwrap();
    let second = world.launch("a", &[]).await.unwrap();
    cluster.boot(&world, &second).await.unwrap();
    assert!(format_calls(&world, &second).is_empty());
    let logs2 = world.host_dir(&second).join("var/lib/kafka/kafka-logs");
    assert_eq!(
        std::fs::read_to_string(logs2.join("meta.properties")).unwrap(),
        meta
    );

    // A log directory that holds data but lost its meta.properties is not new: refused, and
    // nothing is run or written.
    std::fs::remove_file(logs2.join("meta.properties")).unwrap();
    std::fs::write(logs2.join("orders-0.log"), "records").unwrap();
    world.terminate(&second).await.unwrap();
    let third = world.launch("a", &[]).await.unwrap();
    let (code, stderr) = cluster.boot(&world, &third).await.unwrap_err();
    assert_eq!(code, 8, "{stderr}");
    assert!(
        stderr.contains("[unrecognised_data]") && stderr.contains("no meta.properties"),
        "{stderr}"
    );
    assert!(format_calls(&world, &third).is_empty());
    let logs3 = world.host_dir(&third).join("var/lib/kafka/kafka-logs");
    assert!(!logs3.join("meta.properties").exists());
    assert_eq!(
        std::fs::read_to_string(logs3.join("orders-0.log")).unwrap(),
        "records"
    );
}
