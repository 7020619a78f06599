//! The testbed behaves like AWS where the agent depends on it. Needs root; shares one moto and
//! one ZooKeeper per test binary; every test makes its own world (VPC, namespaces, scope).

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use aws_sdk_ec2::error::ProvideErrorMetadata;
use kafka_testbed::{self as testbed, World, aws::ScopeSettings, netns, zookeeper::Ensemble};

fn ec2(world: &World) -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(&testbed::shared().moto.sdk_config(&world.scope))
}

async fn configure(world: &World, settings: ScopeSettings) {
    testbed::shared()
        .moto
        .configure(&world.scope, &settings)
        .await
        .expect("configure scope");
}

fn code<E: ProvideErrorMetadata>(r: Result<impl std::fmt::Debug, E>) -> String {
    match r {
        Ok(v) => panic!("expected an AWS error, got {v:?}"),
        Err(e) => e.code().unwrap_or("<no code>").to_string(),
    }
}

async fn volume_state(ec2: &aws_sdk_ec2::Client, vol: &str) -> (String, Option<String>) {
    let out = ec2.describe_volumes().volume_ids(vol).send().await.unwrap();
    let v = &out.volumes()[0];
    (
        v.state().unwrap().as_str().to_string(),
        v.attachments()
            .first()
            .and_then(|a| a.state())
            .map(|s| s.as_str().to_string()),
    )
}

#[tokio::test]
async fn in_use_and_cross_az_attachments_are_refused_with_aws_codes() {
    let world = World::create(testbed::shared(), &["a", "b"]).await.unwrap();
    let ec2 = ec2(&world);
    let a1 = world.launch("a", &[]).await.unwrap();
    let a2 = world.launch("a", &[]).await.unwrap();
    let (eni, _) = world.create_eni("a", &[]).await.unwrap();
    let vol = world.create_volume("a", 1, &[]).await.unwrap();
    let vol_b = world.create_volume("b", 1, &[]).await.unwrap();

    ec2.attach_network_interface()
        .network_interface_id(&eni)
        .instance_id(&a1)
        .device_index(1)
        .send()
        .await
        .unwrap();
    let again = ec2
        .attach_network_interface()
        .network_interface_id(&eni)
        .instance_id(&a2)
        .device_index(1)
        .send()
        .await;
    assert_eq!(code(again), "InvalidNetworkInterface.InUse");

    ec2.attach_volume()
        .volume_id(&vol)
        .instance_id(&a1)
        .device("/dev/xvdf")
        .send()
        .await
        .unwrap();
    let again = ec2
        .attach_volume()
        .volume_id(&vol)
        .instance_id(&a2)
        .device("/dev/xvdf")
        .send()
        .await;
    assert_eq!(code(again), "VolumeInUse");

    let cross = ec2
        .attach_volume()
        .volume_id(&vol_b)
        .instance_id(&a2)
        .device("/dev/xvdg")
        .send()
        .await;
    assert_eq!(code(cross), "InvalidVolume.ZoneMismatch");
}

#[tokio::test]
async fn volume_passes_through_attaching_and_a_dead_instance_holds_it() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let ec2 = ec2(&world);
    configure(
        &world,
        ScopeSettings {
            attach_delay: Some(1.0),
            release_delay: Some(2.0),
            ..Default::default()
        },
    )
    .await;
    let inst = world.launch("a", &[]).await.unwrap();
    let vol = world.create_volume("a", 1, &[]).await.unwrap();
    ec2.attach_volume()
        .volume_id(&vol)
        .instance_id(&inst)
        .device("/dev/xvdf")
        .send()
        .await
        .unwrap();
    let mut seen = Vec::new();
    loop {
        let (_, att) = volume_state(&ec2, &vol).await;
        let att = att.unwrap_or_default();
        if seen.last() != Some(&att) {
            seen.push(att.clone());
        }
        if att == "attached" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, ["attaching", "attached"]);

    let terminated_at = Instant::now();
    world.terminate(&inst).await.unwrap();
    let (state, att) = volume_state(&ec2, &vol).await;
    assert_eq!(
        (state.as_str(), att.as_deref()),
        ("in-use", Some("attached"))
    );
    let again = ec2
        .attach_volume()
        .volume_id(&vol)
        .instance_id(world.launch("a", &[]).await.unwrap())
        .device("/dev/xvdf")
        .send()
        .await;
    assert_eq!(code(again), "VolumeInUse");
    loop {
        let (state, _) = volume_state(&ec2, &vol).await;
        if state == "available" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        terminated_at.elapsed() >= Duration::from_secs(2),
        "the volume was released before the configured hold"
    );
}

#[tokio::test]
async fn signals_are_recorded_and_refused_once_the_stack_completed() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let conf = testbed::shared().moto.sdk_config(&world.scope);
    let cfn = aws_sdk_cloudformation::Client::new(&conf);
    let stack = format!("{}-stack", world.id);
    let template = r#"{"Resources":{"Brokers":{"Type":"AWS::SQS::Queue",
        "CreationPolicy":{"ResourceSignal":{"Count":1,"Timeout":"PT10M"}}}}}"#;
    cfn.create_stack()
        .stack_name(&stack)
        .template_body(template)
        .send()
        .await
        .unwrap();
    let status = |cfn: aws_sdk_cloudformation::Client, stack: String| async move {
        let out = cfn
            .describe_stacks()
            .stack_name(stack)
            .send()
            .await
            .unwrap();
        out.stacks()[0].stack_status().unwrap().as_str().to_string()
    };
    assert_eq!(
        status(cfn.clone(), stack.clone()).await,
        "CREATE_IN_PROGRESS"
    );
    cfn.signal_resource()
        .stack_name(&stack)
        .logical_resource_id("Brokers")
        .unique_id("i-0123")
        .status(aws_sdk_cloudformation::types::ResourceSignalStatus::Success)
        .send()
        .await
        .unwrap();
    assert_eq!(status(cfn.clone(), stack.clone()).await, "CREATE_COMPLETE");
    let signals = testbed::shared().moto.signals().await.unwrap();
    let mine: Vec<_> = signals.iter().filter(|s| s.stack_name == stack).collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(
        (mine[0].unique_id.as_str(), mine[0].status.as_str()),
        ("i-0123", "SUCCESS")
    );

    let late = cfn
        .signal_resource()
        .stack_name(&stack)
        .logical_resource_id("Brokers")
        .unique_id("i-0456")
        .status(aws_sdk_cloudformation::types::ResourceSignalStatus::Success)
        .send()
        .await;
    let err = late.expect_err("a completed stack cannot be signaled");
    assert_eq!(err.code(), Some("ValidationError"));
    assert!(
        err.message().unwrap_or("").contains("cannot be signaled"),
        "{err:?}"
    );
}

#[tokio::test]
async fn injected_throttling_surfaces_as_the_sdks_throttling_error() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    configure(
        &world,
        ScopeSettings {
            throttle_rate: Some(1.0),
            ..Default::default()
        },
    )
    .await;
    let conf = testbed::shared().moto.sdk_config(&world.scope);
    let err = aws_sdk_ec2::Client::new(&conf)
        .describe_network_interfaces()
        .send()
        .await
        .expect_err("every call is throttled");
    assert_eq!(err.code(), Some("RequestLimitExceeded"));
    let logs = aws_sdk_cloudwatchlogs::Client::new(&conf);
    let err = logs
        .create_log_group()
        .log_group_name("x")
        .send()
        .await
        .expect_err("every call is throttled");
    assert_eq!(err.code(), Some("ThrottlingException"));
    // The admin scope of the same world is unaffected.
    world.create_eni("a", &[]).await.unwrap();
}

#[tokio::test]
async fn imds_serves_the_instance_and_an_attached_eni_becomes_an_interface() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let inst = world.launch("a", &[]).await.unwrap();
    let read = |paths: Vec<String>| {
        world
            .on_host(&inst, async move {
                let client = aws_config::imds::Client::builder().build();
                let mut out = Vec::new();
                for p in paths {
                    out.push(client.get(p).await.map(|v| v.as_ref().to_string()));
                }
                out
            })
            .unwrap()
    };
    let got = read(vec![
        "/latest/meta-data/instance-id".into(),
        "/latest/meta-data/placement/availability-zone".into(),
        "/latest/meta-data/network/interfaces/macs/".into(),
    ]);
    let got: Vec<String> = got.into_iter().map(Result::unwrap).collect();
    assert_eq!(got[0], inst);
    assert_eq!(got[1], "us-east-1a");
    assert_eq!(got[2].lines().count(), 1, "only the primary MAC: {got:?}");

    let (eni, _) = world.create_eni("a", &[]).await.unwrap();
    ec2(&world)
        .attach_network_interface()
        .network_interface_id(&eni)
        .instance_id(&inst)
        .device_index(1)
        .send()
        .await
        .unwrap();
    let mac = world.mac_of(&eni).await.unwrap();
    world
        .wait_until(Duration::from_secs(10), "the ENI's interface", || {
            world
                .host_links(&inst)
                .is_ok_and(|l| l.values().any(|m| *m == mac))
        })
        .await
        .unwrap();
    let got = read(vec![
        "/latest/meta-data/network/interfaces/macs/".into(),
        format!("/latest/meta-data/network/interfaces/macs/{mac}/device-number"),
        format!("/latest/meta-data/network/interfaces/macs/{mac}/interface-id"),
    ]);
    let got: Vec<String> = got.into_iter().map(Result::unwrap).collect();
    assert!(got[0].lines().any(|l| l == format!("{mac}/")), "{got:?}");
    assert_eq!(got[1], "1");
    assert_eq!(got[2], eni);
}

#[tokio::test]
async fn a_volume_keeps_its_bytes_from_one_instance_to_the_next() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let ec2 = ec2(&world);
    let a = world.launch("a", &[]).await.unwrap();
    let b = world.launch("a", &[]).await.unwrap();
    let vol = world.create_volume("a", 1, &[]).await.unwrap();
    let serial = vol.replace('-', "");
    let attach = |inst: String| {
        let ec2 = ec2.clone();
        let vol = vol.clone();
        async move {
            ec2.attach_volume()
                .volume_id(vol)
                .instance_id(inst)
                .device("/dev/xvdf")
                .send()
                .await
                .unwrap();
        }
    };
    let node_of = |inst: &str| -> Option<String> {
        world
            .host_devices(inst)
            .into_iter()
            .find(|(_, s)| *s == serial)
            .map(|(n, _)| n)
    };
    attach(a.clone()).await;
    world
        .wait_until(Duration::from_secs(10), "the device on A", || {
            node_of(&a).is_some()
        })
        .await
        .unwrap();
    let dev_a = world.host_dir(&a).join("dev").join(node_of(&a).unwrap());
    let payload = format!("broker data of {vol}");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&dev_a)
            .unwrap();
        f.seek(SeekFrom::Start(4096)).unwrap();
        f.write_all(payload.as_bytes()).unwrap();
        f.sync_all().unwrap();
    }
    ec2.detach_volume().volume_id(&vol).send().await.unwrap();
    world
        .wait_until(Duration::from_secs(10), "the device to leave A", || {
            node_of(&a).is_none()
        })
        .await
        .unwrap();
    attach(b.clone()).await;
    world
        .wait_until(Duration::from_secs(10), "the device on B", || {
            node_of(&b).is_some()
        })
        .await
        .unwrap();
    let dev_b = world.host_dir(&b).join("dev").join(node_of(&b).unwrap());
    let mut f = std::fs::File::open(&dev_b).unwrap();
    f.seek(SeekFrom::Start(4096)).unwrap();
    let mut buf = vec![0u8; payload.len()];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(String::from_utf8_lossy(&buf), payload);
}

/// A world in AZ `a` whose instances start and terminate without EC2's pending and
/// shutting-down delays.
async fn world_without_delays() -> World {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    configure(
        &world,
        ScopeSettings {
            shutdown_delay: Some(0.0),
            pending_delay: Some(0.0),
            ..Default::default()
        },
    )
    .await;
    world
}

/// A new instance in AZ `a` with a new ENI attached at device index 1, once its host shows
/// the interface (`ens6`): the instance and the ENI's address.
async fn launch_with_eni(world: &World) -> (String, String) {
    let inst = world.launch("a", &[]).await.unwrap();
    let (eni, ip) = world.create_eni("a", &[]).await.unwrap();
    ec2(world)
        .attach_network_interface()
        .network_interface_id(&eni)
        .instance_id(&inst)
        .device_index(1)
        .send()
        .await
        .unwrap();
    world
        .wait_until(Duration::from_secs(10), "ens6", || {
            world
                .host_links(&inst)
                .is_ok_and(|l| l.contains_key("ens6"))
        })
        .await
        .unwrap();
    (inst, ip)
}

#[tokio::test]
async fn two_instances_in_a_subnet_reach_each_other_over_their_enis() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let mut ends = Vec::new();
    for _ in 0..2 {
        let (inst, ip) = launch_with_eni(&world).await;
        let ns = world.netns(&inst);
        netns::ip_in(&ns, &["addr", "add", &format!("{ip}/24"), "dev", "ens6"]).unwrap();
        netns::ip_in(&ns, &["link", "set", "ens6", "up"]).unwrap();
        ends.push((inst, ip));
    }
    let (b_inst, b_ip) = ends[1].clone();
    let (a_inst, a_ip) = ends[0].clone();
    let bind = format!("{b_ip}:7001");
    let listener = netns::in_netns(&world.netns(&b_inst), move || {
        std::net::TcpListener::bind(bind)
    })
    .unwrap()
    .unwrap();
    let connect = |src: String, dst: String| {
        world
            .on_host(&a_inst, async move {
                let s = tokio::net::TcpSocket::new_v4().unwrap();
                s.bind(format!("{src}:0").parse().unwrap()).unwrap();
                let attempt = s.connect(format!("{dst}:7001").parse().unwrap());
                match tokio::time::timeout(Duration::from_secs(2), attempt).await {
                    Ok(Ok(mut c)) => {
                        tokio::io::AsyncWriteExt::write_all(&mut c, b"hello")
                            .await
                            .unwrap();
                        true
                    }
                    _ => false,
                }
            })
            .unwrap()
    };
    // The VPC's source/destination check: without policy routing, packets from the ENI's
    // address leave through the primary interface (the main table's first route for the
    // subnet) and the VPC drops them.
    assert!(
        !connect(a_ip.clone(), b_ip.clone()),
        "a packet from {a_ip} left through ens5 and was not dropped"
    );
    // With the ENI's address routed out of the ENI (as the agent's route step does), on both
    // ends, the connection goes through.
    for (inst, ip) in &ends {
        let ns = world.netns(inst);
        netns::ip_in(
            &ns,
            &[
                "route",
                "add",
                "10.0.1.0/24",
                "dev",
                "ens6",
                "table",
                "10001",
            ],
        )
        .unwrap();
        netns::ip_in(
            &ns,
            &[
                "rule", "add", "from", ip, "lookup", "10001", "priority", "10001",
            ],
        )
        .unwrap();
    }
    assert!(connect(a_ip.clone(), b_ip.clone()));
    let (mut conn, peer) = listener.accept().unwrap();
    assert_eq!(peer.ip().to_string(), a_ip);
    let mut buf = [0u8; 5];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
}

/// Terminating an instance ends every process on its host (one started there by hand too)
/// and takes its interfaces off the subnet at once, as EC2's termination does. A process left
/// running held the host's namespace, and with it the ENI's interface: after the ENI moved,
/// two ports on the bridge had its MAC and address, and the dead host refused connections
/// meant for the new one (tests/watch.rs, CI of stop 20).
#[tokio::test]
async fn a_terminated_instance_leaves_nothing_running_and_nothing_on_the_subnet() {
    let world = world_without_delays().await;
    let before = world.vpc_links().unwrap();
    let (inst, _) = launch_with_eni(&world).await;
    let plugged = world.vpc_links().unwrap();
    assert_eq!(plugged.len(), before.len() + 2, "{before:?} -> {plugged:?}");
    let mut by_hand = world
        .command(&inst, "sleep")
        .unwrap()
        .arg("600")
        .spawn()
        .unwrap();
    world.terminate(&inst).await.unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while by_hand.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = by_hand.kill();
            panic!("a process on the terminated host still runs");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(world.vpc_links().unwrap(), before);
}

/// The gateway keeps its MAC while hosts and their ports come and go, as the VPC router
/// does: a host that resolved it before keeps reaching the services behind it at once. (A
/// Linux bridge left to itself wears its lowest port MAC; when that port went, hosts kept
/// sending to a MAC nobody had until their neighbour entry failed, 20-50 s later.)
#[tokio::test]
async fn the_gateway_keeps_its_mac_while_other_hosts_come_and_go() {
    let world = world_without_delays().await;
    let mut others = Vec::new();
    for _ in 0..6 {
        others.push(world.launch("a", &[]).await.unwrap());
    }
    let me = world.launch("a", &[]).await.unwrap();
    let endpoint = world.aws_endpoint_for(&me).unwrap();
    let addr = endpoint.trim_start_matches("http://").to_string();
    let reach = || {
        let addr = addr.clone();
        world
            .on_host(&me, async move {
                let attempt = tokio::net::TcpStream::connect(addr);
                matches!(
                    tokio::time::timeout(Duration::from_secs(2), attempt).await,
                    Ok(Ok(_))
                )
            })
            .unwrap()
    };
    let gateway_mac = || {
        netns::ip_in(&world.netns(&me), &["neigh", "show", "10.0.1.1"])
            .unwrap()
            .split_whitespace()
            .skip_while(|w| *w != "lladdr")
            .nth(1)
            .map(str::to_string)
    };
    assert!(reach(), "the host cannot reach {endpoint}");
    let before = gateway_mac().expect("the host resolved the gateway");
    for other in &others {
        world.terminate(other).await.unwrap();
    }
    assert!(
        reach(),
        "the host lost {endpoint} once the other hosts were gone (gateway MAC was {before})"
    );
    assert_eq!(gateway_mac().as_deref(), Some(before.as_str()));
}

#[tokio::test]
async fn a_zookeeper_ensemble_of_three_survives_losing_a_member() {
    testbed::require_root().unwrap();
    let (_, dir) = testbed::new_dir("kz").unwrap();
    let mut zk = Ensemble::start(&dir, 3).unwrap();
    let modes: Vec<String> = (1..=3).map(|i| zk.mode(i).unwrap()).collect();
    assert_eq!(
        modes.iter().filter(|m| *m == "leader").count(),
        1,
        "{modes:?}"
    );
    assert_eq!(
        modes.iter().filter(|m| *m == "follower").count(),
        2,
        "{modes:?}"
    );

    let leader = (1..=3)
        .find(|i| zk.mode(*i).as_deref() == Some("leader"))
        .unwrap();
    zk.kill(leader).unwrap();
    let client = zookeeper_client::Client::connector()
        .with_session_timeout(Duration::from_secs(10))
        .connect(&zk.connect_string())
        .await
        .unwrap();
    let opts =
        zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all());
    // The two survivors elect a new leader and keep serving writes.
    let start = Instant::now();
    loop {
        match client.create("/survived", b"yes", &opts).await {
            Ok(_) => break,
            Err(e) if start.elapsed() < Duration::from_secs(30) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the ensemble stopped serving after losing member {leader}: {e}"),
        }
    }
    let (data, _) = client.get_data("/survived").await.unwrap();
    assert_eq!(data, b"yes");
    drop(zk);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn eni_refusals_and_detaching_state() {
    let world = World::create(testbed::shared(), &["a", "b"]).await.unwrap();
    let ec2 = ec2(&world);
    configure(
        &world,
        ScopeSettings {
            detach_delay: Some(1.0),
            ..Default::default()
        },
    )
    .await;
    let a = world.launch("a", &[]).await.unwrap();
    let (eni_b, _) = world.create_eni("b", &[]).await.unwrap();
    let cross = ec2
        .attach_network_interface()
        .network_interface_id(&eni_b)
        .instance_id(&a)
        .device_index(1)
        .send()
        .await;
    assert_eq!(code(cross), "InvalidParameterCombination");

    let (eni, _) = world.create_eni("a", &[]).await.unwrap();
    let (other, _) = world.create_eni("a", &[]).await.unwrap();
    let attachment = ec2
        .attach_network_interface()
        .network_interface_id(&eni)
        .instance_id(&a)
        .device_index(1)
        .send()
        .await
        .unwrap()
        .attachment_id
        .unwrap();
    let taken = ec2
        .attach_network_interface()
        .network_interface_id(&other)
        .instance_id(&a)
        .device_index(1)
        .send()
        .await;
    assert_eq!(code(taken), "InvalidParameterValue");

    ec2.detach_network_interface()
        .attachment_id(&attachment)
        .send()
        .await
        .unwrap();
    let status = |ec2: aws_sdk_ec2::Client, eni: String| async move {
        let out = ec2
            .describe_network_interfaces()
            .network_interface_ids(eni)
            .send()
            .await
            .unwrap();
        let i = &out.network_interfaces()[0];
        (
            i.status().unwrap().as_str().to_string(),
            i.attachment()
                .and_then(|a| a.status())
                .map(|s| s.as_str().to_string()),
        )
    };
    assert_eq!(
        status(ec2.clone(), eni.clone()).await,
        ("in-use".to_string(), Some("detaching".to_string()))
    );
    let start = Instant::now();
    while status(ec2.clone(), eni.clone()).await.0 != "available" {
        assert!(start.elapsed() < Duration::from_secs(10), "never detached");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn lifecycle_actions_are_recorded_once_per_instance() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let conf = testbed::shared().moto.sdk_config(&world.scope);
    let asg = aws_sdk_autoscaling::Client::new(&conf);
    let name = format!("{}-brokers", world.id);
    let template = ec2(&world)
        .create_launch_template()
        .launch_template_name(&name)
        .launch_template_data(
            aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                .image_id("ami-12c6146b")
                .instance_type(aws_sdk_ec2::types::InstanceType::M5Large)
                .build(),
        )
        .send()
        .await
        .unwrap()
        .launch_template
        .unwrap()
        .launch_template_id
        .unwrap();
    asg.create_auto_scaling_group()
        .auto_scaling_group_name(&name)
        .launch_template(
            aws_sdk_autoscaling::types::LaunchTemplateSpecification::builder()
                .launch_template_id(template)
                .build(),
        )
        .min_size(1)
        .max_size(1)
        .desired_capacity(1)
        .vpc_zone_identifier(&world.subnet("a").unwrap().id)
        .send()
        .await
        .unwrap();
    asg.put_lifecycle_hook()
        .auto_scaling_group_name(&name)
        .lifecycle_hook_name("boot")
        .lifecycle_transition("autoscaling:EC2_INSTANCE_LAUNCHING")
        .send()
        .await
        .unwrap();
    let groups = asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(&name)
        .send()
        .await
        .unwrap();
    let instance = groups.auto_scaling_groups()[0].instances()[0]
        .instance_id()
        .unwrap()
        .to_string();
    // The ASG's instance is a host like any other.
    world
        .wait_until(Duration::from_secs(10), "the ASG instance's host", || {
            world.host_links(&instance).is_ok()
        })
        .await
        .unwrap();

    asg.record_lifecycle_action_heartbeat()
        .auto_scaling_group_name(&name)
        .lifecycle_hook_name("boot")
        .instance_id(&instance)
        .send()
        .await
        .unwrap();
    let complete = || {
        asg.complete_lifecycle_action()
            .auto_scaling_group_name(&name)
            .lifecycle_hook_name("boot")
            .instance_id(&instance)
            .lifecycle_action_result("CONTINUE")
            .send()
    };
    complete().await.unwrap();
    let again = complete()
        .await
        .expect_err("the action is no longer active");
    assert_eq!(again.code(), Some("ValidationError"));
    let unknown_hook = asg
        .complete_lifecycle_action()
        .auto_scaling_group_name(&name)
        .lifecycle_hook_name("nope")
        .instance_id(&instance)
        .lifecycle_action_result("CONTINUE")
        .send()
        .await
        .expect_err("no such hook");
    assert_eq!(unknown_hook.code(), Some("ValidationError"));

    let recorded: Vec<_> = testbed::shared()
        .moto
        .lifecycle_actions()
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.auto_scaling_group == name)
        .collect();
    let kinds: Vec<(&str, Option<&str>)> = recorded
        .iter()
        .map(|a| (a.kind.as_str(), a.result.as_deref()))
        .collect();
    assert_eq!(kinds, [("heartbeat", None), ("complete", Some("CONTINUE"))]);
    assert!(
        recorded
            .iter()
            .all(|a| a.instance_id.as_deref() == Some(instance.as_str()))
    );
}

#[test]
fn a_failing_test_leaves_nothing_behind() {
    let dir = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen = dir.clone();
    let outcome = std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async move {
                let world = World::create(testbed::shared(), &["a"]).await.unwrap();
                *seen.lock().unwrap() = Some(world.dir.clone());
                let inst = world.launch("a", &[]).await.unwrap();
                let vol = world.create_volume("a", 1, &[]).await.unwrap();
                ec2(&world)
                    .attach_volume()
                    .volume_id(&vol)
                    .instance_id(&inst)
                    .device("/dev/xvdf")
                    .send()
                    .await
                    .unwrap();
                let dev = world.host_dir(&inst).join("dev/nvme1n1");
                world
                    .wait_until(Duration::from_secs(10), "the device", || dev.exists())
                    .await
                    .unwrap();
                let mnt = world.host_dir(&inst).join("data");
                std::fs::create_dir_all(&mnt).unwrap();
                testbed::process::run("mkfs.xfs", &["-q", &dev.to_string_lossy()]).unwrap();
                testbed::process::run("mount", &[&dev.to_string_lossy(), &mnt.to_string_lossy()])
                    .unwrap();
                panic!("deliberate failure while a world is up with a volume mounted");
            })
    })
    .join();
    assert!(outcome.is_err(), "the inner test was meant to fail");
    let dir = dir.lock().unwrap().clone().expect("the world was created");
    let left = testbed::cleanup::leftovers(&dir);
    assert!(left.is_empty(), "left behind:\n{left}");
}

#[tokio::test]
async fn every_address_in_a_subnet_is_handed_out_once_and_never_a_reserved_one() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let mut addresses = Vec::new();
    for k in 0..60 {
        let (_, ip) = world.create_eni("a", &[]).await.unwrap();
        addresses.push(ip);
        if k % 20 == 0 {
            let inst = world.launch("a", &[]).await.unwrap();
            let out = world
                .ec2
                .describe_instances()
                .instance_ids(&inst)
                .send()
                .await
                .unwrap();
            let i = &out.reservations()[0].instances()[0];
            addresses.push(i.private_ip_address().unwrap().to_string());
        }
    }
    let unique: std::collections::BTreeSet<&String> = addresses.iter().collect();
    assert_eq!(unique.len(), addresses.len(), "{addresses:?}");
    for ip in &addresses {
        let last: u8 = ip.rsplit('.').next().unwrap().parse().unwrap();
        assert!((4..255).contains(&last), "reserved address {ip} handed out");
    }
}

async fn instance_state(ec2: &aws_sdk_ec2::Client, inst: &str) -> Option<String> {
    let out = ec2
        .describe_instances()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("instance-id")
                .values(inst)
                .build(),
        )
        .send()
        .await
        .unwrap();
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find(|i| i.instance_id() == Some(inst))
        .and_then(|i| i.state().and_then(|s| s.name()))
        .map(|s| s.as_str().to_string())
}

async fn wait_for_state(ec2: &aws_sdk_ec2::Client, inst: &str, want: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if instance_state(ec2, inst).await.as_deref() == want {
            return;
        }
        assert!(Instant::now() < deadline, "{inst} never became {want:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_terminated_instance_shuts_down_first_and_keeps_its_volume_meanwhile() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let ec2 = ec2(&world);
    configure(
        &world,
        ScopeSettings {
            shutdown_delay: Some(3.0),
            release_delay: Some(1.0),
            ..Default::default()
        },
    )
    .await;
    let inst = world.launch("a", &[]).await.unwrap();
    let (eni, _) = world.create_eni("a", &[]).await.unwrap();
    let vol = world.create_volume("a", 1, &[]).await.unwrap();
    ec2.attach_volume()
        .volume_id(&vol)
        .instance_id(&inst)
        .device("/dev/xvdf")
        .send()
        .await
        .unwrap();
    let att = ec2
        .attach_network_interface()
        .network_interface_id(&eni)
        .instance_id(&inst)
        .device_index(1)
        .send()
        .await
        .unwrap();
    let attachment_id = att.attachment_id().unwrap().to_string();
    wait_for_state(&ec2, &inst, Some("running")).await;

    let out = ec2
        .terminate_instances()
        .instance_ids(&inst)
        .send()
        .await
        .unwrap();
    let now = out.terminating_instances()[0].current_state().unwrap();
    assert_eq!(now.name().unwrap().as_str(), "shutting-down");
    assert_eq!(
        instance_state(&ec2, &inst).await.as_deref(),
        Some("shutting-down")
    );
    let detach = ec2
        .detach_volume()
        .volume_id(&vol)
        .instance_id(&inst)
        .force(true)
        .send()
        .await;
    assert_eq!(code(detach), "IncorrectInstanceState");
    let detach = ec2
        .detach_network_interface()
        .attachment_id(&attachment_id)
        .force(true)
        .send()
        .await;
    assert_eq!(code(detach), "IncorrectInstanceState");
    assert_eq!(volume_state(&ec2, &vol).await.0, "in-use");

    // Then terminated, and EC2 itself releases what it held.
    wait_for_state(&ec2, &inst, Some("terminated")).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while volume_state(&ec2, &vol).await.0 != "available" {
        assert!(Instant::now() < deadline, "EC2 never released {vol}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_new_instance_is_invisible_for_a_while_and_a_terminated_one_vanishes() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let ec2 = ec2(&world);
    configure(
        &world,
        ScopeSettings {
            visibility_delay: Some(3.0),
            pending_delay: Some(1.0),
            shutdown_delay: Some(0.5),
            vanish_delay: Some(1.0),
            ..Default::default()
        },
    )
    .await;
    let before = std::time::Instant::now();
    let inst = world.launch("a", &[]).await.unwrap();
    assert!(
        before.elapsed() >= Duration::from_secs(1),
        "the host booted before its instance left pending"
    );
    // Running (its host booted), and still unknown to DescribeInstances.
    assert_eq!(instance_state(&ec2, &inst).await, None);
    let by_id = ec2.describe_instances().instance_ids(&inst).send().await;
    assert_eq!(code(by_id), "InvalidInstanceID.NotFound");
    wait_for_state(&ec2, &inst, Some("running")).await;

    ec2.terminate_instances()
        .instance_ids(&inst)
        .send()
        .await
        .unwrap();
    wait_for_state(&ec2, &inst, Some("terminated")).await;
    wait_for_state(&ec2, &inst, None).await;
}

#[tokio::test]
async fn get_log_events_may_answer_empty_pages_before_the_events() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    configure(
        &world,
        ScopeSettings {
            logs_empty_pages: Some(2),
            ..Default::default()
        },
    )
    .await;
    let logs =
        aws_sdk_cloudwatchlogs::Client::new(&testbed::shared().moto.sdk_config(&world.scope));
    let group = format!("/{}", world.id);
    logs.create_log_group()
        .log_group_name(&group)
        .send()
        .await
        .unwrap();
    logs.create_log_stream()
        .log_group_name(&group)
        .log_stream_name("s")
        .send()
        .await
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    logs.put_log_events()
        .log_group_name(&group)
        .log_stream_name("s")
        .log_events(
            aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
                .timestamp(now)
                .message("hello")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let mut token: Option<String> = None;
    let mut pages = Vec::new();
    for _ in 0..5 {
        let out = logs
            .get_log_events()
            .log_group_name(&group)
            .log_stream_name("s")
            .start_from_head(true)
            .set_next_token(token.clone())
            .limit(1)
            .send()
            .await
            .unwrap();
        let messages: Vec<String> = out
            .events()
            .iter()
            .filter_map(|e| e.message().map(str::to_string))
            .collect();
        pages.push(messages.join(","));
        let next = out.next_forward_token().map(str::to_string);
        assert_ne!(next, token, "the token repeated before the event was read");
        token = next;
        if pages.last().unwrap() == "hello" {
            break;
        }
    }
    assert_eq!(pages, ["", "", "hello"]);
}

#[tokio::test]
async fn invalid_device_names_and_too_many_interfaces_are_refused_as_aws_does() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let ec2 = ec2(&world);
    let inst = world.launch_as("a", "t3.micro", &[]).await.unwrap();
    let vol = world.create_volume("a", 1, &[]).await.unwrap();
    let bad = ec2
        .attach_volume()
        .volume_id(&vol)
        .instance_id(&inst)
        .device("/dev/sdi1")
        .send()
        .await;
    assert_eq!(code(bad), "InvalidParameterValue");
    // t3.micro takes two interfaces: the primary and one more.
    let (eni1, _) = world.create_eni("a", &[]).await.unwrap();
    let (eni2, _) = world.create_eni("a", &[]).await.unwrap();
    ec2.attach_network_interface()
        .network_interface_id(&eni1)
        .instance_id(&inst)
        .device_index(1)
        .send()
        .await
        .unwrap();
    let over = ec2
        .attach_network_interface()
        .network_interface_id(&eni2)
        .instance_id(&inst)
        .device_index(2)
        .send()
        .await;
    assert_eq!(code(over), "AttachmentLimitExceeded");
}

#[tokio::test]
async fn injected_ec2_server_errors_can_be_503_unavailable() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    configure(
        &world,
        ScopeSettings {
            error_rate: Some(1.0),
            ec2_error_code: Some("Unavailable".into()),
            fault_actions: Some(vec!["DescribeVolumes".into()]),
            ..Default::default()
        },
    )
    .await;
    let out = ec2(&world).describe_volumes().send().await;
    assert_eq!(code(out), "Unavailable");
}

#[tokio::test]
async fn a_call_can_be_applied_and_still_answer_a_server_error() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    configure(
        &world,
        ScopeSettings {
            fault_after_rate: Some(1.0),
            fault_after_actions: Some(vec!["CreateLogStream".into()]),
            ..Default::default()
        },
    )
    .await;
    let scoped = testbed::shared().moto.sdk_config(&world.scope);
    // One attempt only, so the lost reply is what the caller sees.
    let conf = aws_sdk_cloudwatchlogs::config::Builder::from(&scoped)
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .build();
    let logs = aws_sdk_cloudwatchlogs::Client::from_conf(conf);
    let group = format!("/{}", world.id);
    logs.create_log_group()
        .log_group_name(&group)
        .send()
        .await
        .unwrap();
    let lost = logs
        .create_log_stream()
        .log_group_name(&group)
        .log_stream_name("s")
        .send()
        .await;
    assert_eq!(code(lost), "ServiceUnavailableException");
    // It was applied all the same: a retry meets the stream it made.
    let admin = aws_sdk_cloudwatchlogs::Client::new(
        &testbed::shared()
            .moto
            .sdk_config(&format!("{}-admin", world.scope)),
    );
    let again = admin
        .create_log_stream()
        .log_group_name(&group)
        .log_stream_name("s")
        .send()
        .await;
    assert_eq!(code(again), "ResourceAlreadyExistsException");
}

#[tokio::test]
async fn each_api_has_a_token_bucket_per_account() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let mut limits = std::collections::BTreeMap::new();
    limits.insert("DescribeVolumes".to_string(), (1.0, 5.0));
    configure(
        &world,
        ScopeSettings {
            rate_limits: Some(limits),
            ..Default::default()
        },
    )
    .await;
    let scoped = testbed::shared().moto.sdk_config(&world.scope);
    let conf = aws_sdk_ec2::config::Builder::from(&scoped)
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .build();
    let ec2 = aws_sdk_ec2::Client::from_conf(conf);
    let mut throttled = 0;
    for _ in 0..10 {
        if let Err(e) = ec2.describe_volumes().send().await {
            assert_eq!(e.code(), Some("RequestLimitExceeded"));
            throttled += 1;
        }
    }
    // A burst of 5, refilled at one a second: most of 10 quick calls are refused.
    assert!(throttled >= 4, "{throttled} of 10 throttled");
    // Other APIs have buckets of their own.
    ec2.describe_network_interfaces().send().await.unwrap();
}

#[tokio::test]
async fn describe_volumes_shows_a_just_attached_volume_as_available_for_a_moment() {
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    let ec2 = ec2(&world);
    configure(
        &world,
        ScopeSettings {
            stale_volume_reads: Some(2.0),
            ..Default::default()
        },
    )
    .await;
    let inst = world.launch("a", &[]).await.unwrap();
    let vol = world.create_volume("a", 1, &[]).await.unwrap();
    // Seen before the attach, so the attach is a change.
    assert_eq!(volume_state(&ec2, &vol).await.0, "available");
    ec2.attach_volume()
        .volume_id(&vol)
        .instance_id(&inst)
        .device("/dev/xvdf")
        .send()
        .await
        .unwrap();
    assert_eq!(volume_state(&ec2, &vol).await, ("available".into(), None));
    let deadline = Instant::now() + Duration::from_secs(30);
    while volume_state(&ec2, &vol).await.0 != "in-use" {
        assert!(Instant::now() < deadline, "{vol} never showed attached");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Launches an instance in AZ a with `user_data`, as an Auto Scaling Group's launch template
/// would hand it over (RunInstances' base64).
async fn launch_with_user_data(world: &World, user_data: &str) -> String {
    let mut b64 = std::process::Command::new("base64")
        .arg("-w0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    b64.stdin
        .take()
        .unwrap()
        .write_all(user_data.as_bytes())
        .unwrap();
    let encoded = String::from_utf8(b64.wait_with_output().unwrap().stdout).unwrap();
    let out = world
        .ec2
        .run_instances()
        .image_id("ami-12c6146b")
        .instance_type(aws_sdk_ec2::types::InstanceType::M5Large)
        .min_count(1)
        .max_count(1)
        .subnet_id(&world.subnet("a").unwrap().id)
        .user_data(encoded)
        .send()
        .await
        .unwrap();
    out.instances()[0].instance_id().unwrap().to_string()
}

async fn boot_events_until(world: &World, inst: &str, last: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events: Vec<String> = world.boot_events(inst).into_iter().map(|e| e.1).collect();
        if events.iter().any(|e| e.starts_with(last)) {
            return events;
        }
        assert!(Instant::now() < deadline, "no `{last}` in {events:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sleepers(tag: &str) -> usize {
    let out = std::process::Command::new("pgrep")
        .args(["-f", tag])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[tokio::test]
async fn user_data_runs_as_cloud_init_then_the_units_in_order() {
    use kafka_testbed::cloudinit::{BootSpec, Unit};
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    // A unique argument to find the long-running unit's process by.
    let long = format!("sleep 3{}", rand::random_range(1000..9999u32));
    let unit = |name: &str, script: &str, oneshot| Unit {
        name: name.into(),
        argv: vec!["sh".into(), "-c".into(), script.into()],
        oneshot,
    };
    world.boot_with(BootSpec {
        baked: vec![("/etc/image.conf".into(), "root={host}".into())],
        units: vec![
            unit(
                "agent",
                "cat $HOST_ROOT/etc/from-user-data > $HOST_ROOT/agent-saw; ip -o link show ens5",
                true,
            ),
            unit("broker", &format!("exec {long}"), false),
            unit("signal", "echo signalled", true),
        ],
    });
    let inst = launch_with_user_data(
        &world,
        "#cloud-config\nwrite_files:\n  - path: /etc/from-user-data\n    content: hello\n    permissions: '0600'\nruncmd:\n  - echo ran > $HOST_ROOT/ran\n  - [sh, -c, 'echo $INSTANCE_ID > $HOST_ROOT/id']\n",
    )
    .await;
    let events = boot_events_until(&world, &inst, "boot: done").await;
    let host = world.host_dir(&inst);
    let order: Vec<&str> = [
        "cloud-init: done",
        "agent: start",
        "agent: exited",
        "broker: start",
        "signal: start",
        "boot: done",
    ]
    .to_vec();
    let at = |e: &str| events.iter().position(|x| x.starts_with(e)).unwrap();
    for w in order.windows(2) {
        assert!(at(w[0]) < at(w[1]), "{} before {}: {events:?}", w[0], w[1]);
    }
    assert_eq!(
        std::fs::read_to_string(host.join("etc/image.conf")).unwrap(),
        format!("root={}", host.display())
    );
    assert_eq!(
        std::fs::read_to_string(host.join("agent-saw")).unwrap(),
        "hello"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(host.join("etc/from-user-data"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(host.join("ran")).unwrap(), "ran\n");
    assert_eq!(
        std::fs::read_to_string(host.join("id")).unwrap().trim(),
        inst
    );
    // The units run in the host's namespace: its primary interface is ens5.
    let agent_log = std::fs::read_to_string(host.join("var/log/agent.log")).unwrap();
    assert!(agent_log.contains("ens5"), "{agent_log}");
    assert_eq!(sleepers(&long), 1, "the long-running unit is not running");

    // Terminated: its services are stopped with the host.
    world.terminate(&inst).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while sleepers(&long) > 0 {
        assert!(
            Instant::now() < deadline,
            "the long-running unit outlived its host"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn user_data_beyond_the_modelled_subset_is_refused_loudly() {
    use kafka_testbed::cloudinit::{BootSpec, Unit};
    let world = World::create(testbed::shared(), &["a"]).await.unwrap();
    world.boot_with(BootSpec {
        baked: Vec::new(),
        units: vec![Unit {
            name: "agent".into(),
            argv: vec!["true".into()],
            oneshot: true,
        }],
    });
    let inst = launch_with_user_data(
        &world,
        "#cloud-config\npackages: [kafka]\nruncmd:\n  - echo ran > $HOST_ROOT/ran\n",
    )
    .await;
    let events = boot_events_until(&world, &inst, "boot: done").await;
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("cloud-init: failed") && e.contains("`packages`")),
        "{events:?}"
    );
    let host = world.host_dir(&inst);
    let log = std::fs::read_to_string(host.join("var/log/cloud-init-output.log")).unwrap();
    assert!(log.contains("`packages` is not modelled"), "{log}");
    assert!(!host.join("ran").exists(), "a refused document ran");
}
