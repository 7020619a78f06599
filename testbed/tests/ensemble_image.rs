//! The testbed's ZooKeeper ensemble (`kafka_testbed::ensemble`): deployed through its Auto
//! Scaling Group, it runs the real ZooKeeper server in every instance on the configuration the
//! agent rendered, and the server dies with its host.
//!
//! The agent here is a stand-in shell script that does the ZooKeeper role's boot by proxy: it
//! checks how the image called it, waits for the test to have attached and routed the
//! member's ENI (the real agent's claim, attach and route steps) and to have said which myid
//! and peers it has, then renders zoo.cfg, the dynamic file and myid as the agent would, and
//! journals the claim. So this tests the testbed's part only: resources, user data, image,
//! units, the helpers and the cleanup. Needs root; shares one moto per test binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kafka_testbed::ensemble::{self, DeployedEnsemble, EnsembleSpec};
use kafka_testbed::{self as testbed, World, cleanup, netns, zookeeper};

/// The stand-in agent: `--config <file> boot|signal`, run by the image's units.
const AGENT: &str = r#"#!/bin/sh
set -eu
log=$HOST_ROOT/var/log/stand-in-agent.calls
echo "$*" >> "$log"
if [ "$#" -ne 3 ] || [ "$1" != --config ] || [ "$2" != "$HOST_ROOT/etc/kafka-agent/agent.toml" ]; then
  echo "stand-in agent: called as $*" >&2
  exit 2
fi
case $3 in
boot)
  go=$HOST_ROOT/run/stand-in-agent.env
  n=0
  while [ ! -f "$go" ]; do
    n=$((n + 1))
    if [ "$n" -gt 1800 ]; then echo "stand-in agent: no $go" >&2; exit 1; fi
    sleep 0.1
  done
  . "$go"
  conf=$HOST_ROOT/etc/zookeeper/conf
  data=$HOST_ROOT/var/lib/zookeeper/zookeeper
  mkdir -p "$conf" "$data" "$HOST_ROOT/var/lib/kafka-agent"
  printf '%s\n' "$MYID" > "$data/myid"
  printf '%s\n' "$SERVERS" > "$conf/zoo.cfg.dynamic"
  cat > "$conf/zoo.cfg" <<EOF
tickTime=500
initLimit=20
syncLimit=10
dataDir=$data
dynamicConfigFile=$conf/zoo.cfg.dynamic
standaloneEnabled=false
reconfigEnabled=true
4lw.commands.whitelist=*
admin.enableServer=false
DigestAuthenticationProvider.superDigest=$SUPER_DIGEST
EOF
  printf '{"id": %s, "instance_id": "%s"}\n' "$MYID" "$INSTANCE_ID" \
    > "$HOST_ROOT/var/lib/kafka-agent/claim.json"
  ;;
signal) ;;
*) echo "stand-in agent: unknown command $3" >&2; exit 2 ;;
esac
"#;

fn write_agent(dir: &Path) -> PathBuf {
    let path = dir.join("stand-in-agent");
    std::fs::write(&path, AGENT).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

/// Waits until `n` of the group's instances are up and their image started the agent; returns
/// them (id -> AZ suffix).
async fn booted(
    world: &World,
    zk: &DeployedEnsemble,
    n: usize,
    except: &[String],
) -> BTreeMap<String, String> {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let mut up = BTreeMap::new();
        for (inst, (az, _, _)) in zk.instances().await.unwrap() {
            let started = world
                .boot_events(&inst)
                .iter()
                .any(|(_, e)| e == "kafka-agent: start");
            if started && !except.contains(&inst) {
                up.insert(
                    inst,
                    az.trim_start_matches(testbed::aws::REGION).to_string(),
                );
            }
        }
        if up.len() == n {
            return up;
        }
        assert!(
            Instant::now() < until,
            "{n} instances did not boot: {up:?}; {:#?}",
            zk.describe_hosts(world).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the agent's claim, attach and route steps do for `myid` on `inst` (the ENI at device
/// index 1, its address with a policy route), then the stand-in agent's go: its myid and the
/// ensemble's `server.N=` lines.
async fn make_member(world: &World, zk: &DeployedEnsemble, inst: &str, myid: u32, servers: &str) {
    let m = zk.member(myid).unwrap().clone();
    let until = Instant::now() + Duration::from_secs(30);
    // The ENI of a terminated predecessor is detached once EC2 has terminated it.
    while let Err(e) = world
        .ec2
        .attach_network_interface()
        .network_interface_id(&m.eni)
        .instance_id(inst)
        .device_index(1)
        .send()
        .await
    {
        assert!(
            Instant::now() < until,
            "attaching {} to {inst}: {e:?}",
            m.eni
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mac = world.mac_of(&m.eni).await.unwrap();
    let name = loop {
        let found = world
            .host_links(inst)
            .unwrap_or_default()
            .into_iter()
            .find(|(_, l)| *l == mac);
        if let Some((name, _)) = found {
            break name;
        }
        assert!(Instant::now() < until, "{inst}: no interface for {}", m.eni);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let subnet = world.subnet(&m.az).unwrap();
    let ns = world.netns(inst);
    let addr = format!("{}/24", m.ip);
    for args in [
        vec!["addr", "add", &addr, "dev", &name, "noprefixroute"],
        vec!["link", "set", &name, "up"],
        vec!["route", "add", &subnet.cidr, "dev", &name, "table", "10001"],
        vec![
            "route",
            "add",
            "default",
            "via",
            &subnet.gateway,
            "dev",
            &name,
            "table",
            "10001",
        ],
        vec![
            "rule", "add", "from", &m.ip, "lookup", "10001", "priority", "10001",
        ],
    ] {
        netns::ip_in(&ns, &args).unwrap();
    }
    let run = world.host_dir(inst).join("run");
    std::fs::create_dir_all(&run).unwrap();
    let tmp = run.join(".stand-in-agent.env");
    std::fs::write(
        &tmp,
        format!(
            "MYID={myid}\nSERVERS='{servers}'\nSUPER_DIGEST='{}'\n",
            zookeeper::SUPER_DIGEST
        ),
    )
    .unwrap();
    std::fs::rename(&tmp, run.join("stand-in-agent.env")).unwrap();
}

/// The pid of the host's zookeeper unit (its `run/zookeeper.pid`).
async fn zookeeper_pid(world: &World, inst: &str) -> i32 {
    let pidfile = world.host_dir(inst).join("run/zookeeper.pid");
    world
        .wait_until(Duration::from_secs(30), "zookeeper.service's pid", || {
            pidfile.exists()
        })
        .await
        .unwrap();
    std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn tag<'a>(tags: &'a [(String, String)], key: &str) -> Option<&'a str> {
    tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn the_group_runs_real_zookeeper_on_the_agents_config_and_it_dies_with_its_host() {
    let mut world = World::create(testbed::shared(), &["a", "b", "c"])
        .await
        .unwrap();
    let mut spec = EnsembleSpec::new(
        format!("{}-zk", world.id),
        &["a", "b", "c"],
        write_agent(&world.dir),
    );
    spec.max_members = 5;
    let zk = DeployedEnsemble::deploy(&world, testbed::shared(), spec.clone())
        .await
        .unwrap();

    // Per myid 1..=5 an ENI and a 1 GiB volume, tagged, in its AZ (4 and 5 cycle: a, b).
    assert_eq!(zk.members.len(), 5);
    let enis = world
        .ec2
        .describe_network_interfaces()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:kafka-agent:cluster")
                .values(&spec.name)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let vols = world
        .ec2
        .describe_volumes()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:kafka-agent:cluster")
                .values(&spec.name)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(enis.network_interfaces().len(), 5);
    assert_eq!(vols.volumes().len(), 5);
    for (m, az) in zk.members.iter().zip(["a", "b", "c", "a", "b"]) {
        let eni = enis
            .network_interfaces()
            .iter()
            .find(|e| e.network_interface_id() == Some(m.eni.as_str()))
            .unwrap_or_else(|| panic!("myid {}: no ENI {}", m.myid, m.eni));
        let tags: Vec<(String, String)> = eni
            .tag_set()
            .iter()
            .map(|t| (t.key().unwrap().into(), t.value().unwrap().into()))
            .collect();
        assert_eq!(m.az, az);
        assert_eq!(eni.availability_zone(), Some(&*format!("us-east-1{az}")));
        assert_eq!(eni.private_ip_address(), Some(m.ip.as_str()));
        assert_eq!(
            tag(&tags, "kafka-agent:role"),
            Some("zookeeper"),
            "{tags:?}"
        );
        assert_eq!(tag(&tags, "kafka-agent:id"), Some(&*m.myid.to_string()));
        let vol = vols
            .volumes()
            .iter()
            .find(|v| v.volume_id() == Some(m.volume.as_str()))
            .unwrap_or_else(|| panic!("myid {}: no volume {}", m.myid, m.volume));
        let tags: Vec<(String, String)> = vol
            .tags()
            .iter()
            .map(|t| (t.key().unwrap().into(), t.value().unwrap().into()))
            .collect();
        assert_eq!(vol.size(), Some(1));
        assert_eq!(vol.availability_zone(), Some(&*format!("us-east-1{az}")));
        assert_eq!(tag(&tags, "kafka-agent:cluster"), Some(spec.name.as_str()));
        assert_eq!(tag(&tags, "kafka-agent:role"), Some("zookeeper"));
        assert_eq!(tag(&tags, "kafka-agent:id"), Some(&*m.myid.to_string()));
        assert_eq!(tag(&tags, "kafka-agent:volume"), Some("new"));
    }

    // Three instances, one per AZ, each with the image's files and the user data's.
    let hosts = booted(&world, &zk, 3, &[]).await;
    let mut myids = BTreeMap::new();
    for (inst, az) in &hosts {
        let myid = spec.azs.iter().position(|a| a == az).unwrap() as u32 + 1;
        assert!(myids.insert(myid, inst.clone()).is_none(), "{hosts:?}");
        let dir = world.host_dir(inst);
        let read = |p: &str| std::fs::read_to_string(dir.join(p)).unwrap();
        assert_eq!(
            read("etc/kafka-agent/agent.toml"),
            format!(
                "# Baked into the image: where this host keeps things.\n\
                 [paths]\nstate_dir = \"{h}/var/lib/kafka-agent\"\n\n\
                 [storage]\ndata_dir = \"{h}/var/lib/zookeeper\"\nfstab = \"{h}/etc/fstab\"\n\
                 sysfs_root = \"{h}/sys\"\ndev_root = \"{h}/dev\"\n\n\
                 [ensemble]\nconf_dir = \"{h}/etc/zookeeper/conf\"\n\
                 superuser_password_file = \"{h}/etc/kafka-agent/zk-super\"\n",
                h = dir.display()
            )
        );
        // Not baked (the image's files are agent.toml alone: ensemble.rs's unit test): the
        // agent makes each member's own at its first boot, owner-only, possibly already.
        let super_file = dir.join("etc/kafka-agent/zk-super");
        if let Ok(meta) = std::fs::metadata(&super_file) {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{super_file:?}");
        }
        assert_eq!(
            read("etc/kafka-agent/config.d/10-cluster.toml"),
            format!(
                "[cluster]\nname = \"{}\"\nrole = \"zookeeper\"\nsize = 5\n\n\
                 [boot]\ndeadline_seconds = 120\n\n\
                 [claim]\nbackend = \"cloudwatch-logs\"\n\n\
                 [signal]\nlifecycle_hook = \"launch\"\nready_timeout_seconds = 120\n\n\
                 [ensemble]\nclient_port = 2181\ninitial_size = 3\n",
                spec.name
            )
        );
    }
    assert_eq!(myids.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);

    // The agent's boot done, ZooKeeper starts on what it rendered and the three form a quorum.
    let servers: String = zk.members[..3]
        .iter()
        .map(|m| {
            format!(
                "server.{}={}:{}:{}:participant;{}",
                m.myid,
                m.ip,
                ensemble::QUORUM_PORT,
                ensemble::ELECTION_PORT,
                ensemble::CLIENT_PORT
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    for (myid, inst) in &myids {
        make_member(&world, &zk, inst, *myid, &servers).await;
    }
    zk.wait_quorum(&world, 3, Duration::from_secs(90))
        .await
        .unwrap();
    let modes = zk.modes(&world).await;
    assert_eq!(modes.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(
        modes.values().filter(|m| *m == "leader").count(),
        1,
        "{modes:?}"
    );
    assert_eq!(
        modes.values().filter(|m| *m == "follower").count(),
        2,
        "{modes:?}"
    );
    let mut pids = BTreeMap::new();
    for (myid, inst) in &myids {
        assert_eq!(
            zk.instance_of(&world, *myid).await.unwrap().as_deref(),
            Some(inst.as_str())
        );
        let pid = zookeeper_pid(&world, inst).await;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zoo_cfg = world.host_dir(inst).join("etc/zookeeper/conf/zoo.cfg");
        assert!(
            cmdline.starts_with("java ")
                && cmdline.contains("org.apache.zookeeper.server.quorum.QuorumPeerMain")
                && cmdline.trim_end().ends_with(&*zoo_cfg.to_string_lossy()),
            "{cmdline}"
        );
        pids.insert(*myid, pid);
        let events: Vec<String> = world.boot_events(inst).into_iter().map(|e| e.1).collect();
        let at = |e: &str| {
            events
                .iter()
                .position(|x| x == e)
                .unwrap_or_else(|| panic!("{inst}: no {e:?} in {events:?}"))
        };
        assert!(
            at("kafka-agent: exited (exit status: 0)") < at("zookeeper: start")
                && at("zookeeper: start") < at("kafka-agent-signal: start")
                && at("kafka-agent-signal: exited (exit status: 0)") < at("boot: done"),
            "{events:?}"
        );
        let calls =
            std::fs::read_to_string(world.host_dir(inst).join("var/log/stand-in-agent.calls"))
                .unwrap();
        let config = world.host_dir(inst).join("etc/kafka-agent/agent.toml");
        assert_eq!(
            calls,
            format!(
                "--config {c} boot\n--config {c} signal\n",
                c = config.display()
            )
        );
    }
    let srvr = zk
        .srvr(&world, &myids[&1], 2)
        .await
        .unwrap()
        .expect("member 2 answers srvr");
    assert!(srvr.contains("Mode: "), "{srvr}");

    // A znode written through one member is read through another.
    zk.zk_cli(&world, &myids[&1], &["create", "/ensemble-image", "hello"])
        .await
        .unwrap();
    let got = zk
        .zk_cli(&world, &myids[&3], &["get", "/ensemble-image"])
        .await
        .unwrap();
    assert_eq!(got, "hello\n");
    assert!(
        zk.zk_cli(&world, &myids[&3], &["get", "/nothing-here"])
            .await
            .is_err()
    );

    // Member 2's instance terminated: its server dies with its host, the other two keep a
    // quorum.
    let victim = zk.terminate(&world, 2).await.unwrap();
    assert_eq!(victim, myids[&2]);
    let victim_proc = PathBuf::from(format!("/proc/{}", pids[&2]));
    world
        .wait_until(Duration::from_secs(30), "member 2's java to die", || {
            !victim_proc.exists()
        })
        .await
        .unwrap();
    for myid in [1, 3] {
        assert!(Path::new(&format!("/proc/{}", pids[&myid])).exists());
    }
    // When member 2 led, the two elect a new leader first (ZooKeeper's leader election: they
    // serve nothing meanwhile), then both serve, one of them leading.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let modes = zk.modes(&world).await;
        let serving = modes.keys().copied().collect::<Vec<_>>();
        let leaders = modes.values().filter(|m| *m == "leader").count();
        if serving == [1, 3] && leaders == 1 {
            break;
        }
        assert!(
            Instant::now() < until,
            "members 1 and 3 did not keep a quorum: {modes:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The group replaces it in its AZ; made member 2 again with a blank data dir, the
    // replacement syncs from the leader.
    let before: Vec<String> = myids.values().cloned().collect();
    let replaced = booted(&world, &zk, 1, &before).await;
    let (replacement, az) = replaced.into_iter().next().unwrap();
    assert_eq!(az, "b");
    make_member(&world, &zk, &replacement, 2, &servers).await;
    zk.wait_quorum(&world, 3, Duration::from_secs(90))
        .await
        .unwrap();
    assert_eq!(
        zk.instance_of(&world, 2).await.unwrap().as_deref(),
        Some(replacement.as_str())
    );
    let node_count = |reply: Option<String>| {
        reply
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("Node count: ").map(str::to_string))
    };
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let one = node_count(zk.srvr(&world, &replacement, 1).await.unwrap());
        let two = node_count(zk.srvr(&world, &replacement, 2).await.unwrap());
        if one.is_some() && one == two {
            break;
        }
        assert!(Instant::now() < until, "node counts: 1 {one:?}, 2 {two:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Nothing is left behind: every host's server dies with the world.
    let dir = world.dir.clone();
    let survivors: Vec<i32> = [
        pids[&1],
        pids[&3],
        zookeeper_pid(&world, &replacement).await,
    ]
    .into();
    world.teardown();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let left = cleanup::leftovers(&dir);
        let alive: Vec<&i32> = survivors
            .iter()
            .filter(|p| Path::new(&format!("/proc/{p}")).exists())
            .collect();
        if left.is_empty() && alive.is_empty() {
            break;
        }
        assert!(
            Instant::now() < until,
            "left behind: {left}; java still running: {alive:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
