//! The hosts: one network namespace per running instance, with its primary interface `ens5`
//! plugged into its subnet's bridge, IMDS on 169.254.169.254:80, and a directory holding its
//! device view (`sys/`, `dev/`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::aws;
use super::cloudinit::{self, HostBoot, Processes};
use super::hypervisor::{Guard, Layout, Physical, release_volume};
use super::imds::Imds;
use super::netns;

/// A running instance's host.
pub(crate) struct Host {
    pub(crate) ns: String,
    /// The router side of its primary interface (a port on its subnet's bridge).
    pub(crate) port: String,
    pub(crate) dir: PathBuf,
    pub(crate) imds: Arc<Imds>,
    pub(crate) imds_task: tokio::task::JoinHandle<()>,
    /// What its boot started (see [`super::cloudinit`]).
    pub(crate) procs: Processes,
    pub(crate) shutting_down: bool,
}

pub(crate) fn boot(
    l: &Layout,
    p: &mut Physical,
    info: &aws::InstanceInfo,
    rt: &tokio::runtime::Handle,
) -> Result<()> {
    let subnet = l
        .subnets
        .iter()
        .find(|s| s.id == info.subnet_id)
        .context("instance in a subnet the world does not know")?;
    let ns = format!("{}-{}", l.world, info.id);
    let dir = l.dir.join("hosts").join(&info.id);
    std::fs::create_dir_all(dir.join("sys/block"))?;
    std::fs::create_dir_all(dir.join("dev"))?;
    netns::delete(&ns)?;
    netns::create(&ns)?;
    netns::ip_in(&ns, &["addr", "add", "169.254.169.254/32", "dev", "lo"])?;
    p.counter += 1;
    let vpc_side = format!("h{}", p.counter);
    netns::veth_to_bridge(
        &ns,
        "ens5",
        info.mac.as_deref(),
        &l.vpc_ns,
        &vpc_side,
        &subnet.bridge,
    )?;
    let ip = info
        .private_ip
        .as_deref()
        .context("instance without private IP")?;
    netns::ip_in(&ns, &["addr", "add", &format!("{ip}/24"), "dev", "ens5"])?;
    netns::ip_in(&ns, &["link", "set", "ens5", "up"])?;
    netns::ip_in(&ns, &["route", "add", "default", "via", &subnet.gateway])?;
    // EC2 may hand a dead instance's address to a new one: forget the old MAC at the gateway.
    let _ = netns::ip_in(&l.vpc_ns, &["neigh", "flush", "to", ip]);
    let listener = netns::in_netns(&ns, || std::net::TcpListener::bind(("169.254.169.254", 80)))??;
    listener.set_nonblocking(true)?;
    let imds = Arc::new(Imds::default());
    let server = imds.clone();
    let imds_task = rt.spawn(async move {
        if let Ok(l) = tokio::net::TcpListener::from_std(listener) {
            server.serve(l).await;
        }
    });
    p.guards.insert(
        vpc_side.clone(),
        Guard {
            mac: info.mac.clone(),
            ips: vec![ip.to_string()],
        },
    );
    let procs = Processes::default();
    if let Some(spec) = image_of(p, info) {
        let aws_endpoint = format!("http://{}:{}", subnet.gateway, l.moto_port);
        let admin = super::aws::sdk_config(
            &format!("http://127.0.0.1:{}", l.moto_port),
            &format!("{}-admin", l.world),
        );
        let host = HostBoot {
            instance_id: info.id.clone(),
            dir: dir.clone(),
            ns: ns.clone(),
            aws_endpoint,
            user_data: None,
        };
        let procs = procs.clone();
        let metadata = imds.clone();
        rt.spawn(async move {
            // EC2's IMDS serves an instance before its OS boots: the hypervisor fills this
            // host's in the same pass that made the host, so wait for that.
            for _ in 0..1000 {
                if !metadata.metadata.read().unwrap().instance_id.is_empty() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            let user_data = user_data(&admin, &host.instance_id).await;
            cloudinit::boot(spec, HostBoot { user_data, ..host }, procs).await;
        });
    }
    p.hosts.insert(
        info.id.clone(),
        Host {
            ns,
            port: vpc_side,
            dir,
            imds,
            imds_task,
            procs,
            shutting_down: false,
        },
    );
    Ok(())
}

/// The image an instance boots: the one registered for its AMI, else the world's default.
fn image_of(p: &Physical, info: &aws::InstanceInfo) -> Option<Arc<cloudinit::BootSpec>> {
    p.images.get(&info.image_id).or(p.boot.as_ref()).cloned()
}

/// The instance's user data (DescribeInstanceAttribute, base64), if it has any.
async fn user_data(config: &aws_config::SdkConfig, instance_id: &str) -> Option<String> {
    let ec2 = aws_sdk_ec2::Client::new(config);
    let out = ec2
        .describe_instance_attribute()
        .instance_id(instance_id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .ok()?;
    let encoded = out.user_data()?.value()?;
    let bytes = cloudinit::base64(encoded)?;
    let text = String::from_utf8(bytes).ok()?;
    (!text.is_empty()).then_some(text)
}

/// Takes a host down: its processes (all of them), mounts, loop devices, interfaces and IMDS
/// go away. The interfaces' VPC sides (`vpc_ns`) are deleted here, not left to the
/// namespace's end: a terminated instance's ENI is off the subnet at once, even while
/// something still holds the host's namespace open.
pub(crate) fn halt(p: &mut Physical, vpc_ns: &str, instance_id: &str) {
    let vols: Vec<String> = p
        .volumes
        .iter()
        .filter(|(_, v)| v.instance_id == instance_id)
        .map(|(id, _)| id.clone())
        .collect();
    let Some(host) = p.hosts.remove(instance_id) else {
        return;
    };
    for v in vols {
        if let Some(pv) = p.volumes.remove(&v) {
            release_volume(&host.dir, &pv);
        }
    }
    let ports: Vec<String> = p
        .enis
        .values()
        .filter(|e| e.instance_id == instance_id)
        .map(|e| e.vpc_side.clone())
        .chain([host.port.clone()])
        .collect();
    host.imds_task.abort();
    host.procs.signal(nix::sys::signal::Signal::SIGKILL);
    netns::kill_all_in(&host.ns);
    for port in ports {
        p.guards.remove(&port);
        let _ = netns::ip_in(vpc_ns, &["link", "delete", &port]);
    }
    p.enis.retain(|_, e| e.instance_id != instance_id);
    let _ = netns::delete(&host.ns);
}

/// The host's own directory in the world's directory `world_dir`: its device view (`sys/`,
/// `dev/`) and files.
pub(crate) fn dir(world_dir: &Path, instance_id: &str) -> PathBuf {
    world_dir.join("hosts").join(instance_id)
}

/// A command that runs on the host of namespace `ns`: in that namespace, with the AWS
/// endpoint pointed at `aws_endpoint` and no credentials but the instance profile's (IMDS).
pub(crate) fn command(ns: &str, program: &str, aws_endpoint: String) -> Command {
    let mut cmd = netns::command(ns, program);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("AWS_ENDPOINT_URL", aws_endpoint);
    cmd
}

/// The interface names inside the host of namespace `ns`, with their MAC addresses.
pub(crate) fn links(ns: &str) -> Result<BTreeMap<String, String>> {
    let out = netns::ip_in(ns, &["-o", "link", "show"])?;
    let mut links = BTreeMap::new();
    for line in out.lines() {
        let name = line
            .split(": ")
            .nth(1)
            .unwrap_or("")
            .split('@')
            .next()
            .unwrap_or("");
        if let Some(mac) = line
            .split("link/ether ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
        {
            links.insert(name.to_string(), mac.to_string());
        }
    }
    Ok(links)
}

/// The block devices in the device view of the host whose directory is `host_dir`: node
/// name -> serial.
pub(crate) fn devices(host_dir: &Path) -> BTreeMap<String, String> {
    let block = host_dir.join("sys/block");
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(block).into_iter().flatten().flatten() {
        let serial = std::fs::read_to_string(e.path().join("device/serial")).unwrap_or_default();
        out.insert(
            e.file_name().to_string_lossy().into_owned(),
            serial.trim().to_string(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(ami: &str) -> aws::InstanceInfo {
        aws::InstanceInfo {
            id: "i-0123".into(),
            state: "running".into(),
            az: "us-east-1a".into(),
            subnet_id: "subnet-1".into(),
            private_ip: Some("10.0.1.5".into()),
            mac: None,
            primary_eni: None,
            instance_type: "m5.large".into(),
            root_device_name: "/dev/xvda".into(),
            image_id: ami.into(),
            tags: BTreeMap::new(),
            target_lifecycle_state: None,
        }
    }

    fn image(file: &str) -> Arc<cloudinit::BootSpec> {
        Arc::new(cloudinit::BootSpec {
            baked: vec![(file.into(), String::new())],
            units: Vec::new(),
        })
    }

    fn baked(spec: Option<Arc<cloudinit::BootSpec>>) -> Option<String> {
        spec.map(|s| s.baked[0].0.clone())
    }

    #[test]
    fn an_instance_boots_its_amis_image_else_the_default() {
        let mut p = Physical::default();
        assert!(image_of(&p, &instance("ami-1")).is_none());
        p.images.insert("ami-zk".into(), image("/zk"));
        assert!(image_of(&p, &instance("ami-1")).is_none());
        p.boot = Some(image("/kafka"));
        assert_eq!(
            baked(image_of(&p, &instance("ami-zk"))).as_deref(),
            Some("/zk")
        );
        assert_eq!(
            baked(image_of(&p, &instance("ami-1"))).as_deref(),
            Some("/kafka")
        );
        assert_eq!(
            baked(image_of(&p, &instance(""))).as_deref(),
            Some("/kafka")
        );
    }
}
