//! Step 2, attach: the id's ENI and volume follow the id to the replacement instance, never
//! leave a live one, never cross AZs, and a rerun changes nothing. Needs root.

mod common;

use std::time::{Duration, Instant};

use common::{Backend, Cluster};
use kafka_testbed::{self as testbed, World, aws::ScopeSettings};

async fn delays(world: &World, attach: f64, detach: f64, release: f64) {
    common::configure(
        world,
        ScopeSettings {
            attach_delay: Some(attach),
            detach_delay: Some(detach),
            release_delay: Some(release),
            ..Default::default()
        },
    )
    .await;
}

/// Mutating EC2 calls made with the world's scope so far.
async fn mutations(world: &World) -> u64 {
    let stats = testbed::shared().moto.stats().await.unwrap();
    stats
        .get(&world.scope)
        .map(|m| {
            m.iter()
                .filter(|(a, _)| a.starts_with("Attach") || a.starts_with("Detach"))
                .map(|(_, (n, _))| *n)
                .sum()
        })
        .unwrap_or(0)
}

/// Writes a configuration drop-in on the host.
fn dropin(world: &World, inst: &str, name: &str, text: &str) {
    let dir = world.host_dir(inst).join("etc/kafka-agent/config.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), text).unwrap();
}

async fn wait_plugged(world: &World, inst: &str, eni_mac: &str, vol: &str) {
    let serial = vol.replace('-', "");
    world
        .wait_until(
            Duration::from_secs(10),
            "ENI and volume on the host",
            || {
                world
                    .host_links(inst)
                    .is_ok_and(|l| l.values().any(|m| m == eni_mac))
                    && world.host_devices(inst).values().any(|s| *s == serial)
            },
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn the_replacement_gets_the_dead_brokers_eni_and_volume() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    // As on EC2: attaching and detaching take time, and a terminated instance keeps its
    // volumes and extra ENIs for a while: here longer than the replacement's grace (2 s), so
    // it takes them over by force.
    delays(&world, 0.5, 0.5, 30.0).await;
    let cluster = Cluster::new(&world, Backend::Zk, 1, true);
    let (eni, ip, vol) = cluster.resources_for(&world, 0, "a").await;
    let mac = world.mac_of(&eni).await.unwrap();

    let first = world.launch("a", &[]).await.unwrap();
    cluster.claim(&world, &first).await.unwrap();
    let done = cluster.attach(&world, &first).await.unwrap();
    assert_eq!(done["eni"]["id"], eni.as_str());
    assert_eq!(done["eni"]["how"], "attached");
    assert_eq!(done["eni"]["ips"][0], ip.as_str());
    assert_eq!(done["volume"]["id"], vol.as_str());
    assert_eq!(done["volume"]["how"], "attached");
    wait_plugged(&world, &first, &mac, &vol).await;

    world.terminate(&first).await.unwrap();
    let second = world.launch("a", &[]).await.unwrap();
    dropin(
        &world,
        &second,
        "50-grace.toml",
        "[resources]\nrelease_grace_seconds = 2\n",
    );
    assert_eq!(
        cluster.claim(&world, &second).await.unwrap(),
        (0, "took_over".into())
    );
    let done = cluster.attach(&world, &second).await.unwrap();
    assert_eq!(done["eni"]["id"], eni.as_str());
    assert_eq!(done["eni"]["how"], "took_over");
    assert_eq!(
        done["eni"]["ips"][0],
        ip.as_str(),
        "the broker keeps its IP"
    );
    assert_eq!(done["volume"]["id"], vol.as_str());
    assert_eq!(done["volume"]["how"], "took_over");
    wait_plugged(&world, &second, &mac, &vol).await;
}

#[tokio::test]
async fn a_rerun_on_a_finished_node_makes_no_mutating_call() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let cluster = Cluster::new(&world, Backend::Cwl, 1, true);
    cluster.resources_for(&world, 0, "a").await;
    let inst = world.launch("a", &[]).await.unwrap();
    cluster.claim(&world, &inst).await.unwrap();
    cluster.attach(&world, &inst).await.unwrap();
    let before = mutations(&world).await;
    assert_eq!(before, 2, "one ENI attach and one volume attach");
    let again = cluster.attach(&world, &inst).await.unwrap();
    assert_eq!(again["eni"]["how"], "already");
    assert_eq!(again["volume"]["how"], "already");
    assert_eq!(mutations(&world).await, before);
}

#[tokio::test]
async fn an_eni_held_by_a_live_instance_is_never_taken() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let mut cluster = Cluster::new(&world, Backend::Cwl, 1, true);
    cluster.deadline = 10;
    let (eni, _, _) = cluster.resources_for(&world, 0, "a").await;
    let squatter = common::squat_eni(&world, &eni).await;
    let inst = world.launch("a", &[]).await.unwrap();
    cluster.claim(&world, &inst).await.unwrap();
    let (code, stderr) = cluster.attach(&world, &inst).await.unwrap_err();
    assert_eq!(code, 6, "{stderr}");
    assert!(stderr.contains("resource_in_use"), "{stderr}");
    assert!(stderr.contains(&squatter), "names the holder: {stderr}");
    let holder = world
        .ec2
        .describe_network_interfaces()
        .network_interface_ids(&eni)
        .send()
        .await
        .unwrap()
        .network_interfaces()[0]
        .attachment()
        .and_then(|a| a.instance_id())
        .map(str::to_string);
    assert_eq!(holder.as_deref(), Some(squatter.as_str()));
}

#[tokio::test]
async fn resources_in_another_az_are_never_touched() {
    let world = World::create(testbed::shared(), &["a", "b"]).await.unwrap();
    let mut cluster = Cluster::new(&world, Backend::Cwl, 1, false);
    let (eni, _, vol) = cluster.resources_for(&world, 0, "a").await;
    // An instance in AZ b holds id 0 (claimed without per-id resources, say, before the
    // cluster started keeping them): attaching must not reach across to AZ a.
    let inst = world.launch("b", &[]).await.unwrap();
    cluster.claim(&world, &inst).await.unwrap();
    cluster.resources = true;
    let (code, stderr) = cluster.attach(&world, &inst).await.unwrap_err();
    assert_eq!(code, 7, "{stderr}");
    assert!(stderr.contains("resource_not_found"), "{stderr}");
    assert!(
        stderr.contains(&format!("{eni} in us-east-1a"))
            || stderr.contains(&format!("{vol} in us-east-1a")),
        "{stderr}"
    );
    let volume = world
        .ec2
        .describe_volumes()
        .volume_ids(&vol)
        .send()
        .await
        .unwrap();
    assert!(
        volume.volumes()[0].attachments().is_empty(),
        "the volume in AZ a was touched"
    );
    let e = world
        .ec2
        .describe_network_interfaces()
        .network_interface_ids(&eni)
        .send()
        .await
        .unwrap();
    assert!(
        e.network_interfaces()[0].attachment().is_none(),
        "the ENI in AZ a was touched"
    );
}

/// A step's journal on a host, as JSON.
fn journal(world: &World, inst: &str, step: &str) -> serde_json::Value {
    let path = world
        .host_dir(inst)
        .join(format!("var/lib/kafka-agent/{step}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn data(world: &World, inst: &str) -> std::path::PathBuf {
    world.host_dir(inst).join("var/lib/kafka")
}

#[tokio::test]
async fn the_replacement_mounts_the_same_data_and_a_rerun_changes_nothing() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    delays(&world, 0.3, 0.3, 5.0).await;
    let cluster = Cluster::new(&world, Backend::Zk, 1, true);
    let (_, _, vol) = cluster.resources_for(&world, 0, "a").await;
    let first = world.launch("a", &[]).await.unwrap();
    cluster.claim(&world, &first).await.unwrap();
    cluster.attach(&world, &first).await.unwrap();
    let m = cluster.mount(&world, &first).await.unwrap();
    assert_eq!(m["how"], "formatted_and_mounted");
    std::fs::write(
        data(&world, &first).join("meta.properties"),
        "broker.id=0\n",
    )
    .unwrap();
    std::fs::write(data(&world, &first).join("segment.log"), "precious").unwrap();
    let again = cluster.mount(&world, &first).await.unwrap();
    assert_eq!(again["how"], "already");

    world.terminate(&first).await.unwrap();
    let second = world.launch("a", &[]).await.unwrap();
    cluster.claim(&world, &second).await.unwrap();
    cluster.attach(&world, &second).await.unwrap();
    let m = cluster.mount(&world, &second).await.unwrap();
    assert_eq!(m["volume"], vol.as_str());
    assert_eq!(
        m["how"], "mounted",
        "an existing filesystem is never formatted"
    );
    assert_eq!(
        std::fs::read_to_string(data(&world, &second).join("segment.log")).unwrap(),
        "precious"
    );
    cluster.mount(&world, &second).await.unwrap();
    let fstab = std::fs::read_to_string(world.host_dir(&second).join("etc/fstab")).unwrap();
    assert_eq!(fstab.lines().count(), 1, "{fstab}");
    assert!(fstab.contains("nofail"), "{fstab}");
}

#[tokio::test]
async fn a_blank_volume_tagged_formatted_is_refused_and_left_blank() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let cluster = Cluster::new(&world, Backend::Cwl, 1, true);
    let (_, _, vol) = cluster.resources_for(&world, 0, "a").await;
    world
        .ec2
        .create_tags()
        .resources(&vol)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("kafka-agent:volume")
                .value("formatted")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let inst = world.launch("a", &[]).await.unwrap();
    cluster.claim(&world, &inst).await.unwrap();
    cluster.attach(&world, &inst).await.unwrap();
    let (code, stderr) = cluster.mount(&world, &inst).await.unwrap_err();
    assert_eq!(code, 8, "{stderr}");
    assert!(stderr.contains("blank_volume_not_new"), "{stderr}");
    let dev = world.host_dir(&inst).join("dev/nvme1n1");
    let probe = kafka_agent::storage::mount::probe(&dev).unwrap();
    assert_eq!(probe, None, "the volume was written to");
}

#[tokio::test]
async fn another_nodes_data_is_refused_and_left_untouched() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let cluster = Cluster::new(&world, Backend::Cwl, 1, true);
    cluster.resources_for(&world, 0, "a").await;
    let inst = world.launch("a", &[]).await.unwrap();
    cluster.claim(&world, &inst).await.unwrap();
    cluster.attach(&world, &inst).await.unwrap();
    cluster.mount(&world, &inst).await.unwrap();
    let meta = "node.id=2\ncluster.id=other\n";
    std::fs::write(data(&world, &inst).join("meta.properties"), meta).unwrap();
    nix::mount::umount(&data(&world, &inst)).unwrap();
    std::fs::remove_file(world.host_dir(&inst).join("etc/fstab")).unwrap();

    let (code, stderr) = cluster.mount(&world, &inst).await.unwrap_err();
    assert_eq!(code, 8, "{stderr}");
    assert!(stderr.contains("identity_mismatch"), "{stderr}");
    assert!(
        stderr.contains("holds node 2 of cluster other, expected node 0"),
        "{stderr}"
    );
    assert!(
        !world.host_dir(&inst).join("etc/fstab").exists(),
        "fstab was written"
    );
    assert!(
        !data(&world, &inst).join("meta.properties").exists(),
        "left mounted"
    );
}

#[tokio::test]
async fn a_zookeeper_volume_of_another_myid_is_refused_and_its_own_is_mounted() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let mut cluster = Cluster::new(&world, Backend::Cwl, 1, true);
    cluster.role = "zookeeper";
    cluster.resources_for(&world, 1, "a").await;
    let inst = world.launch("a", &[]).await.unwrap();
    assert_eq!(
        cluster.claim(&world, &inst).await.unwrap().0,
        1,
        "myids start at 1"
    );
    cluster.attach(&world, &inst).await.unwrap();
    cluster.mount(&world, &inst).await.unwrap();
    std::fs::write(data(&world, &inst).join("myid"), "3\n").unwrap();
    nix::mount::umount(&data(&world, &inst)).unwrap();
    std::fs::remove_file(world.host_dir(&inst).join("etc/fstab")).unwrap();

    let (code, stderr) = cluster.mount(&world, &inst).await.unwrap_err();
    assert_eq!(code, 8, "{stderr}");
    assert!(stderr.contains("holds node 3, expected node 1"), "{stderr}");
    assert!(!world.host_dir(&inst).join("etc/fstab").exists());
    assert!(!data(&world, &inst).join("myid").exists(), "left mounted");

    // The same volume holding this node's myid is mounted as it is.
    let dev = world.host_dir(&inst).join("dev/nvme1n1");
    let scratch = world.dir.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    nix::mount::mount(
        Some(&dev),
        &scratch,
        Some("xfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    std::fs::write(scratch.join("myid"), "1\n").unwrap();
    nix::mount::umount(&scratch).unwrap();
    let m = cluster.mount(&world, &inst).await.unwrap();
    assert_eq!(m["how"], "mounted", "{m}");
    assert_eq!(
        std::fs::read_to_string(data(&world, &inst).join("myid")).unwrap(),
        "1\n"
    );
}

#[tokio::test]
async fn routed_enis_reach_each_other_and_rerouting_adds_nothing() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let cluster = Cluster::new(&world, Backend::Cwl, 2, true);
    let mut nodes = Vec::new();
    for id in 0..2 {
        let (_, ip, _) = cluster.resources_for(&world, id, "a").await;
        let inst = world.launch("a", &[]).await.unwrap();
        assert_eq!(cluster.claim(&world, &inst).await.unwrap().0, id);
        cluster.attach(&world, &inst).await.unwrap();
        let r = cluster.route(&world, &inst).await.unwrap();
        assert_eq!(r["routing"]["table"], 10001);
        assert_eq!(r["rules_added"], 1);
        nodes.push((inst, ip));
    }
    let (a, a_ip) = nodes[0].clone();
    let (b, b_ip) = nodes[1].clone();
    let ns = world.netns(&a);
    let rules = testbed::netns::ip_in(&ns, &["rule", "show"]).unwrap();
    assert_eq!(
        rules.matches(&format!("from {a_ip} lookup 10001")).count(),
        1,
        "{rules}"
    );
    let table = testbed::netns::ip_in(&ns, &["route", "show", "table", "10001"]).unwrap();
    assert!(table.contains("default via 10.0.1.1 dev ens6"), "{table}");
    // The primary interface is untouched: its address and the main default route remain.
    let main = testbed::netns::ip_in(&ns, &["route", "show", "default"]).unwrap();
    assert!(main.contains("dev ens5"), "{main}");

    let again = cluster.route(&world, &a).await.unwrap();
    assert_eq!(
        (
            again["rules_added"].as_u64(),
            again["rules_removed"].as_u64()
        ),
        (Some(0), Some(0))
    );
    let rules = testbed::netns::ip_in(&ns, &["rule", "show"]).unwrap();
    assert_eq!(
        rules.matches(&format!("from {a_ip} lookup 10001")).count(),
        1,
        "{rules}"
    );

    assert!(
        reaches(&world, &a, &a_ip, &b, &b_ip, 7002),
        "{a_ip} cannot reach {b_ip}"
    );
}

/// Starts a step and SIGKILLs it after `after`.
async fn killed(cluster: &Cluster, world: &World, inst: &str, step: &str, after: Duration) {
    let mut child = cluster.command(world, inst, &[step]).spawn().unwrap();
    tokio::time::sleep(after).await;
    let _ = child.start_kill();
    let _ = child.wait().await;
}

#[tokio::test]
async fn killed_at_any_point_a_rerun_converges() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    delays(&world, 0.5, 0.5, 0.0).await;
    let cluster = Cluster::new(&world, Backend::Cwl, 1, true);
    let (_, ip, _) = cluster.resources_for(&world, 0, "a").await;
    let inst = world.launch("a", &[]).await.unwrap();
    cluster.claim(&world, &inst).await.unwrap();
    // Killed while the attachments are in flight, then again closer to their end.
    for ms in [150, 400, 700] {
        killed(&cluster, &world, &inst, "attach", Duration::from_millis(ms)).await;
    }
    cluster.attach(&world, &inst).await.unwrap();
    for ms in [20, 60, 120] {
        killed(&cluster, &world, &inst, "mount", Duration::from_millis(ms)).await;
    }
    cluster.mount(&world, &inst).await.unwrap();
    for ms in [2, 10, 30] {
        killed(&cluster, &world, &inst, "route", Duration::from_millis(ms)).await;
    }
    cluster.route(&world, &inst).await.unwrap();
    // And a full rerun on the finished node.
    cluster.attach(&world, &inst).await.unwrap();
    let m = cluster.mount(&world, &inst).await.unwrap();
    assert_eq!(m["how"], "already");
    cluster.route(&world, &inst).await.unwrap();

    let target = data(&world, &inst).to_string_lossy().into_owned();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mounts = mountinfo
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(target.as_str()))
        .count();
    assert_eq!(mounts, 1, "one mount of the data dir");
    let fstab = std::fs::read_to_string(world.host_dir(&inst).join("etc/fstab")).unwrap();
    assert_eq!(fstab.lines().count(), 1, "{fstab}");
    let rules = testbed::netns::ip_in(&world.netns(&inst), &["rule", "show"]).unwrap();
    assert_eq!(
        rules.matches(&format!("from {ip} lookup 10001")).count(),
        1,
        "{rules}"
    );
}

#[tokio::test]
async fn a_grown_volume_gets_a_grown_filesystem() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let cluster = Cluster::new(&world, Backend::Cwl, 1, true);
    let (_, _, vol) = cluster.resources_for(&world, 0, "a").await;
    let inst = world.launch("a", &[]).await.unwrap();
    cluster.claim(&world, &inst).await.unwrap();
    cluster.attach(&world, &inst).await.unwrap();
    cluster.mount(&world, &inst).await.unwrap();
    let size = |p: &std::path::Path| {
        let s = nix::sys::statvfs::statvfs(p).unwrap();
        s.blocks() as u64 * s.fragment_size() as u64
    };
    let before = size(&data(&world, &inst));
    world
        .ec2
        .modify_volume()
        .volume_id(&vol)
        .size(2)
        .send()
        .await
        .unwrap();
    let sys = world.host_dir(&inst).join("sys/block/nvme1n1/size");
    world
        .wait_until(Duration::from_secs(10), "the device to grow", || {
            std::fs::read_to_string(&sys).is_ok_and(|s| s.trim() == (2u64 << 30 >> 9).to_string())
        })
        .await
        .unwrap();
    cluster.mount(&world, &inst).await.unwrap();
    let after = size(&data(&world, &inst));
    assert!(after > before + (800 << 20), "{before} -> {after}");
}

#[tokio::test]
async fn without_nvme_the_volume_is_found_under_its_requested_name() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let cluster = Cluster::new(&world, Backend::Cwl, 1, true);
    let (_, _, vol) = cluster.resources_for(&world, 0, "a").await;
    // Xen instance types show an EBS volume attached as /dev/sdg as xvdg, without a serial.
    let dropin = |inst: &str| {
        dropin(
            &world,
            inst,
            "50-device.toml",
            "[resources]\nvolume_device = \"/dev/sdg\"\n",
        )
    };
    let first = world.launch_as("a", "t2.large", &[]).await.unwrap();
    dropin(&first);
    assert_eq!(boot(&cluster, &world, &first).await, 0);
    let m = journal(&world, &first, "storage");
    assert!(m["device"].as_str().unwrap().ends_with("/xvdg"), "{m}");
    assert!(
        !world
            .host_dir(&first)
            .join("sys/block/xvdg/device/serial")
            .exists()
    );
    std::fs::write(data(&world, &first).join("00000.log"), "kept").unwrap();

    world.terminate(&first).await.unwrap();
    let second = world.launch_as("a", "t2.large", &[]).await.unwrap();
    dropin(&second);
    assert_eq!(boot(&cluster, &world, &second).await, 0);
    assert_eq!(
        std::fs::read_to_string(data(&world, &second).join("00000.log")).unwrap(),
        "kept",
        "{vol}'s data"
    );
}

#[tokio::test]
async fn a_fresh_eni_briefly_at_device_number_zero_is_routed_in_its_own_table() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    world.imds_stale_device_number(Duration::from_millis(1500));
    let cluster = Cluster::new(&world, Backend::Cwl, 1, true);
    let (_, ip, _) = cluster.resources_for(&world, 0, "a").await;
    let inst = world.launch("a", &[]).await.unwrap();
    cluster.claim(&world, &inst).await.unwrap();
    cluster.attach(&world, &inst).await.unwrap();
    let started = Instant::now();
    let routed = cluster.route(&world, &inst).await.unwrap();
    assert_eq!(routed["routing"]["table"], 10001, "{routed}");
    assert!(
        started.elapsed() > Duration::from_millis(1000),
        "routed before IMDS told the device number: {routed}"
    );
    let rules = testbed::netns::ip_in(&world.netns(&inst), &["rule", "show"]).unwrap();
    assert!(!rules.contains("lookup 10000"), "{rules}");
    assert!(
        rules.contains(&format!("from {ip} lookup 10001")),
        "{rules}"
    );
}

/// Runs every step of the boot path so far on a host.
#[tokio::test]
async fn route_waits_until_imds_lists_the_addresses_ec2_reported() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    // IMDS answers 404 for the fresh ENI's local-ipv4s, then an empty list, for 3 s.
    world.imds_lagging_addresses(Duration::from_secs(3));
    let cluster = Cluster::new(&world, Backend::Cwl, 1, true);
    let (_, ip, _) = cluster.resources_for(&world, 0, "a").await;
    let inst = world.launch("a", &[]).await.unwrap();
    cluster.claim(&world, &inst).await.unwrap();
    cluster.attach(&world, &inst).await.unwrap();
    let routed = cluster.route(&world, &inst).await.unwrap();
    assert_eq!(
        routed["routing"]["ips"],
        serde_json::json!([ip]),
        "{routed}"
    );
    let rules = testbed::netns::ip_in(&world.netns(&inst), &["rule", "show"]).unwrap();
    assert!(
        rules.contains(&format!("from {ip} lookup 10001")),
        "{rules}"
    );
}

async fn boot(cluster: &Cluster, world: &World, inst: &str) -> u32 {
    let (id, _) = cluster.claim(world, inst).await.unwrap();
    cluster.attach(world, inst).await.unwrap();
    cluster.mount(world, inst).await.unwrap();
    cluster.route(world, inst).await.unwrap();
    id
}

/// Connects from `src` (an address on host `from`) to a listener on `dst` on host `to`.
fn reaches(world: &World, from: &str, src: &str, to: &str, dst: &str, port: u16) -> bool {
    let bind = format!("{dst}:{port}");
    let listener =
        testbed::netns::in_netns(&world.netns(to), move || std::net::TcpListener::bind(bind))
            .unwrap()
            .unwrap();
    let (s, d) = (src.to_string(), dst.to_string());
    let connected = world
        .on_host(from, async move {
            for _ in 0..6 {
                let sock = tokio::net::TcpSocket::new_v4().unwrap();
                sock.bind(format!("{s}:0").parse().unwrap()).unwrap();
                if sock
                    .connect(format!("{d}:{port}").parse().unwrap())
                    .await
                    .is_ok()
                {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            false
        })
        .unwrap();
    connected
        && listener
            .accept()
            .is_ok_and(|(_, peer)| peer.ip().to_string() == src)
}

#[tokio::test]
async fn a_replaced_broker_comes_back_with_its_ip_data_and_routes() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    delays(&world, 0.3, 0.3, 3.0).await;
    let cluster = Cluster::new(&world, Backend::Zk, 2, true);
    let (_, ip0, _) = cluster.resources_for(&world, 0, "a").await;
    let (_, ip1, vol1) = cluster.resources_for(&world, 1, "a").await;
    let b0 = world.launch("a", &[]).await.unwrap();
    assert_eq!(boot(&cluster, &world, &b0).await, 0);
    let b1 = world.launch("a", &[]).await.unwrap();
    assert_eq!(boot(&cluster, &world, &b1).await, 1);
    std::fs::write(data(&world, &b1).join("meta.properties"), "broker.id=1\n").unwrap();
    std::fs::write(data(&world, &b1).join("00000.log"), "broker 1's data").unwrap();

    // Broker 1's instance dies; its ENI and volume stay attached to it for a few seconds.
    world.terminate(&b1).await.unwrap();
    let replacement = world.launch("a", &[]).await.unwrap();
    assert_eq!(boot(&cluster, &world, &replacement).await, 1);
    let attach = journal(&world, &replacement, "attach");
    assert_eq!(attach["eni"]["ips"][0], ip1.as_str(), "same IP");
    assert_eq!(attach["volume"]["id"], vol1.as_str(), "same volume");
    assert_eq!(
        std::fs::read_to_string(data(&world, &replacement).join("00000.log")).unwrap(),
        "broker 1's data"
    );
    assert!(
        reaches(&world, &replacement, &ip1, &b0, &ip0, 7003),
        "{ip1} cannot reach {ip0}"
    );
}

#[tokio::test]
async fn a_shutting_down_holder_keeps_its_resources_until_ec2_releases_them() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    common::configure(
        &world,
        ScopeSettings {
            attach_delay: Some(0.3),
            detach_delay: Some(0.3),
            shutdown_delay: Some(6.0),
            release_delay: Some(1.0),
            ..Default::default()
        },
    )
    .await;
    let cluster = Cluster::new(&world, Backend::Cwl, 1, true);
    let (eni, _, vol) = cluster.resources_for(&world, 0, "a").await;
    let first = world.launch("a", &[]).await.unwrap();
    cluster.claim(&world, &first).await.unwrap();
    cluster.attach(&world, &first).await.unwrap();

    // Terminate without waiting: the holder is shutting down while the replacement boots.
    world
        .ec2
        .terminate_instances()
        .instance_ids(&first)
        .send()
        .await
        .unwrap();
    let second = world.launch("a", &[]).await.unwrap();
    assert_eq!(
        cluster.claim(&world, &second).await.unwrap(),
        (0, "took_over".into()),
        "the id of a shutting-down owner is free to claim"
    );
    let done = cluster.attach(&world, &second).await.unwrap();
    assert_eq!(done["eni"]["id"], eni.as_str());
    assert_eq!(done["eni"]["how"], "released", "{done}");
    assert_eq!(done["volume"]["id"], vol.as_str());
    assert_eq!(done["volume"]["how"], "released", "{done}");
    let stats = testbed::shared().moto.stats().await.unwrap();
    let calls = &stats[&world.scope];
    assert!(
        !calls.contains_key("DetachVolume") && !calls.contains_key("DetachNetworkInterface"),
        "nothing was detached by force from a dying host: {calls:?}"
    );
    let journal = journal(&world, &second, "attach");
    assert_eq!(journal["volume"]["how"], "released");
}

#[tokio::test]
async fn a_holder_ec2_does_not_list_yet_is_never_taken_for_gone() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    // A just-launched instance stays invisible to the agents' DescribeInstances for a minute.
    common::configure(
        &world,
        ScopeSettings {
            visibility_delay: Some(60.0),
            ..Default::default()
        },
    )
    .await;
    let mut cluster = Cluster::new(&world, Backend::Cwl, 1, true);
    cluster.deadline = 10;
    let (eni, _, vol) = cluster.resources_for(&world, 0, "a").await;
    let inst = world.launch("a", &[]).await.unwrap();
    let newcomer = world.launch("a", &[]).await.unwrap();
    world
        .ec2
        .attach_network_interface()
        .network_interface_id(&eni)
        .instance_id(&newcomer)
        .device_index(1)
        .send()
        .await
        .unwrap();
    world
        .ec2
        .attach_volume()
        .volume_id(&vol)
        .instance_id(&newcomer)
        .device("/dev/xvdf")
        .send()
        .await
        .unwrap();
    cluster.claim(&world, &inst).await.unwrap();
    let (code, stderr) = cluster.attach(&world, &inst).await.unwrap_err();
    assert_ne!(code, 0);
    assert!(stderr.contains("not taken for gone"), "{stderr}");
    let state = testbed::shared().moto.state(&world.vpc_id).await.unwrap();
    let eni_holder = state
        .enis
        .iter()
        .find(|e| e.id == eni)
        .and_then(|e| e.attachment.as_ref())
        .map(|a| a.instance_id.clone());
    assert_eq!(eni_holder.as_deref(), Some(newcomer.as_str()));
    let vol_holder = state
        .volumes
        .iter()
        .find(|v| v.id == vol)
        .and_then(|v| v.attachment.as_ref())
        .map(|a| a.instance_id.clone());
    assert_eq!(vol_holder.as_deref(), Some(newcomer.as_str()));
}

#[tokio::test]
async fn a_permanent_refusal_fails_at_once_instead_of_looping() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let cluster = Cluster::new(&world, Backend::Cwl, 1, true);
    cluster.resources_for(&world, 0, "a").await;
    let inst = world.launch("a", &[]).await.unwrap();
    // Another volume already sits at the attachment point the agent is configured to use.
    let other = world.create_volume("a", 1, &[]).await.unwrap();
    world
        .ec2
        .attach_volume()
        .volume_id(&other)
        .instance_id(&inst)
        .device("/dev/xvdf")
        .send()
        .await
        .unwrap();
    cluster.claim(&world, &inst).await.unwrap();
    let (code, stderr) = cluster.attach(&world, &inst).await.unwrap_err();
    assert_ne!(code, 0);
    assert!(stderr.contains("InvalidParameterValue"), "{stderr}");
    assert!(stderr.contains("/dev/xvdf"), "{stderr}");
    let stats = testbed::shared().moto.stats().await.unwrap();
    assert_eq!(
        stats[&world.scope].get("AttachVolume").map(|c| c.0),
        Some(1),
        "one AttachVolume, not a loop until the deadline"
    );
}

#[tokio::test]
async fn ec2s_503_unavailable_is_retried_until_it_passes() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    common::configure(
        &world,
        ScopeSettings {
            // Most calls fail (a call meets three 503s in a row a third of the time), yet the
            // step ends well within its deadline: 0.9 made four describes in a row a matter of
            // luck against a 60 s deadline.
            error_rate: Some(0.7),
            ec2_error_code: Some("Unavailable".into()),
            fault_actions: Some(vec!["DescribeNetworkInterfaces".into()]),
            ..Default::default()
        },
    )
    .await;
    let cluster = Cluster::new(&world, Backend::Cwl, 1, true);
    let (eni, _, _) = cluster.resources_for(&world, 0, "a").await;
    let inst = world.launch("a", &[]).await.unwrap();
    cluster.claim(&world, &inst).await.unwrap();
    let done = cluster.attach(&world, &inst).await.unwrap();
    assert_eq!(done["eni"]["id"], eni.as_str());
}

#[tokio::test]
async fn a_stale_available_after_attaching_is_not_attached_twice() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    // DescribeVolumes shows a just-attached volume as available for 3 s.
    common::configure(
        &world,
        ScopeSettings {
            stale_volume_reads: Some(3.0),
            ..Default::default()
        },
    )
    .await;
    let cluster = Cluster::new(&world, Backend::Cwl, 1, true);
    let (_, _, vol) = cluster.resources_for(&world, 0, "a").await;
    let inst = world.launch("a", &[]).await.unwrap();
    cluster.claim(&world, &inst).await.unwrap();
    let done = cluster.attach(&world, &inst).await.unwrap();
    assert_eq!(done["volume"]["id"], vol.as_str());
    assert_eq!(done["volume"]["how"], "attached");
    let stats = testbed::shared().moto.stats().await.unwrap();
    assert_eq!(
        stats[&world.scope].get("AttachVolume").map(|c| c.0),
        Some(1),
        "one AttachVolume: a stale 'available' is waited out"
    );
}
