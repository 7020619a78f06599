//! A simulated VPC with hosts: one network namespace per instance, a router namespace with one
//! bridge per subnet, and a "hypervisor" loop that makes EC2 attachments physical.
//!
//! * Every running instance of the world's VPC becomes a host: namespace `<world>-<instance>`,
//!   primary interface `ens5` (the primary ENI's MAC and IP, default route via the subnet's
//!   gateway) and IMDS on 169.254.169.254:80.
//! * An ENI attached at device index N (state `attached`) appears in the host as `ens{5+N}`
//!   with the ENI's MAC, plugged into its subnet's bridge, down; it vanishes on detach.
//! * A volume attached (state `attached`) appears in the host's device view
//!   (`hosts/<instance>/sys/block/nvmeKn1`, `hosts/<instance>/dev/nvmeKn1`): a loop device over
//!   the volume's persistent image, NVMe serial = volume id without its dash.
//! * The AWS endpoint and ZooKeeper are reachable from every host at its subnet gateway's
//!   address, on the same ports as on this machine's loopback.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};

use super::aws::{self, Ec2State, REGION};
use super::imds::{self, Imds, Metadata};
use super::process::run;
use super::{Services, netns, new_dir};

/// One subnet of the world's VPC.
#[derive(Debug, Clone)]
pub struct Subnet {
    pub id: String,
    pub az: String,
    pub cidr: String,
    pub gateway: String,
    bridge: String,
}

/// A simulated VPC and its hosts. Dropping it tears everything down.
pub struct World {
    pub id: String,
    pub dir: PathBuf,
    pub vpc_id: String,
    pub subnets: Vec<Subnet>,
    /// Access key id of the world's instance profile: faults set on it hit the agents.
    pub scope: String,
    /// EC2 client for the testbed's own calls (a scope without faults).
    pub ec2: aws_sdk_ec2::Client,
    moto_port: u16,
    zk_ports: Vec<u16>,
    vpc_ns: String,
    rt: Option<tokio::runtime::Runtime>,
    phys: Arc<Mutex<Physical>>,
}

#[derive(Default)]
struct Physical {
    closed: bool,
    hosts: BTreeMap<String, Host>,
    enis: BTreeMap<String, PluggedEni>,
    volumes: BTreeMap<String, PluggedVolume>,
    counter: u32,
    /// For how long IMDS reports a freshly attached ENI at device-number 0 (as EC2 may).
    imds_stale_device_number: Duration,
    /// When each (instance, ENI) attachment was first seen attached.
    attached_since: BTreeMap<(String, String), Instant>,
}

struct Host {
    ns: String,
    dir: PathBuf,
    imds: Arc<Imds>,
    imds_task: tokio::task::JoinHandle<()>,
}

struct PluggedEni {
    instance_id: String,
    vpc_side: String,
}

struct PluggedVolume {
    instance_id: String,
    loop_dev: Option<String>,
    node: String,
    /// GiB as plugged; a ModifyVolume that grows the volume grows the device.
    size: u64,
}

/// Static facts the hypervisor needs besides the EC2 state.
struct Layout {
    world: String,
    dir: PathBuf,
    vpc_id: String,
    vpc_ns: String,
    scope: String,
    subnets: Vec<Subnet>,
}

impl World {
    /// Creates a VPC with one /24 subnet per AZ suffix (e.g. `["a", "b"]`) and its network.
    pub async fn create(services: &Services, azs: &[&str]) -> Result<World> {
        super::require_root()?;
        let (id, dir) = new_dir("kt")?;
        let admin = aws_sdk_ec2::Client::new(&services.moto.sdk_config(&format!("{id}-admin")));
        let vpc_id = admin
            .create_vpc()
            .cidr_block("10.0.0.0/16")
            .send()
            .await
            .context("creating the world's VPC")?
            .vpc
            .and_then(|v| v.vpc_id)
            .context("CreateVpc returned no id")?;
        let mut subnets = Vec::new();
        for (k, az) in azs.iter().enumerate() {
            let cidr = format!("10.0.{}.0/24", k + 1);
            let az = format!("{REGION}{az}");
            let subnet = admin
                .create_subnet()
                .vpc_id(&vpc_id)
                .cidr_block(&cidr)
                .availability_zone(&az)
                .send()
                .await
                .with_context(|| format!("creating subnet {cidr} in {az}"))?
                .subnet
                .and_then(|s| s.subnet_id)
                .context("CreateSubnet returned no id")?;
            subnets.push(Subnet {
                id: subnet,
                az,
                gateway: format!("10.0.{}.1", k + 1),
                cidr,
                bridge: format!("br{}", k + 1),
            });
        }
        let vpc_ns = format!("{id}-vpc");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("{id}-world"))
            .enable_all()
            .build()?;
        let mut world = World {
            scope: id.clone(),
            id,
            dir,
            vpc_id,
            subnets,
            ec2: admin,
            moto_port: services.moto.port(),
            zk_ports: services.zookeeper.client_ports(),
            vpc_ns,
            rt: Some(rt),
            phys: Arc::default(),
        };
        world.build_router()?;
        world.start_hypervisor();
        Ok(world)
    }

    fn build_router(&mut self) -> Result<()> {
        netns::create(&self.vpc_ns)?;
        netns::sysctl(&self.vpc_ns, "net.ipv4.ip_forward", "1")?;
        for s in &self.subnets {
            netns::ip_in(&self.vpc_ns, &["link", "add", &s.bridge, "type", "bridge"])?;
            netns::ip_in(
                &self.vpc_ns,
                &[
                    "addr",
                    "add",
                    &format!("{}/24", s.gateway),
                    "dev",
                    &s.bridge,
                ],
            )?;
            netns::ip_in(&self.vpc_ns, &["link", "set", &s.bridge, "up"])?;
        }
        let mut ports = vec![self.moto_port];
        ports.extend(&self.zk_ports);
        for port in ports {
            self.expose(port)?;
        }
        Ok(())
    }

    /// Makes a service on this machine's loopback `port` reachable from every host at its
    /// subnet gateway, same port (moto and the shared ZooKeeper are exposed at creation).
    pub fn expose(&self, port: u16) -> Result<()> {
        let listener = netns::in_netns(&self.vpc_ns, move || {
            std::net::TcpListener::bind(("0.0.0.0", port))
        })?
        .with_context(|| format!("binding the service proxy on port {port}"))?;
        listener.set_nonblocking(true)?;
        self.rt.as_ref().unwrap().spawn(proxy(listener, port));
        Ok(())
    }

    fn layout(&self) -> Layout {
        Layout {
            world: self.id.clone(),
            dir: self.dir.clone(),
            vpc_id: self.vpc_id.clone(),
            vpc_ns: self.vpc_ns.clone(),
            scope: self.scope.clone(),
            subnets: self.subnets.clone(),
        }
    }

    fn start_hypervisor(&self) {
        let layout = Arc::new(self.layout());
        let phys = self.phys.clone();
        let port = self.moto_port;
        let rt = self.rt.as_ref().unwrap();
        let handle = rt.handle().clone();
        rt.spawn(async move {
            loop {
                match aws::state(port, &layout.vpc_id).await {
                    Ok(state) => {
                        let (l, p, h) = (layout.clone(), phys.clone(), handle.clone());
                        let r = tokio::task::spawn_blocking(move || {
                            let mut p = p.lock().unwrap();
                            reconcile(&l, &mut p, &state, &h)
                        })
                        .await;
                        if let Ok(Err(e)) = r {
                            tracing::warn!("hypervisor: {e:#}");
                        }
                    }
                    Err(e) => tracing::warn!("hypervisor: reading EC2 state: {e:#}"),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }

    pub fn subnet(&self, az_suffix: &str) -> Result<&Subnet> {
        let az = format!("{REGION}{az_suffix}");
        self.subnets
            .iter()
            .find(|s| s.az == az)
            .with_context(|| format!("the world has no subnet in {az}"))
    }

    /// Launches an instance in the AZ and waits until its host is up.
    pub async fn launch(&self, az_suffix: &str, tags: &[(&str, &str)]) -> Result<String> {
        self.launch_as(az_suffix, "m5.large", tags).await
    }

    /// Launches an instance of a given type: Xen types (see [`xen`]) get `xvd*` devices.
    pub async fn launch_as(
        &self,
        az_suffix: &str,
        instance_type: &str,
        tags: &[(&str, &str)],
    ) -> Result<String> {
        let subnet = self.subnet(az_suffix)?;
        let mut req = self
            .ec2
            .run_instances()
            .image_id("ami-12c6146b")
            .instance_type(aws_sdk_ec2::types::InstanceType::from(instance_type))
            .min_count(1)
            .max_count(1)
            .subnet_id(&subnet.id);
        if !tags.is_empty() {
            req = req.tag_specifications(tag_spec(ResourceType::Instance, tags));
        }
        let out = req.send().await.context("RunInstances")?;
        let id = out
            .instances()
            .first()
            .and_then(|i| i.instance_id())
            .context("RunInstances returned no instance")?
            .to_string();
        self.wait_for(Duration::from_secs(30), "host to boot", |p| {
            p.hosts.contains_key(&id)
        })
        .await?;
        Ok(id)
    }

    /// Terminates an instance in EC2; its host goes down with it.
    pub async fn terminate(&self, instance_id: &str) -> Result<()> {
        self.ec2
            .terminate_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .with_context(|| format!("terminating {instance_id}"))?;
        self.wait_for(Duration::from_secs(30), "host to halt", |p| {
            !p.hosts.contains_key(instance_id)
        })
        .await
    }

    /// Power-cycles a host: mounts and network configuration are lost, attachments stay.
    pub async fn reboot(&self, instance_id: &str) -> Result<()> {
        self.ec2
            .reboot_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .with_context(|| format!("rebooting {instance_id}"))?;
        {
            let mut p = self.phys.lock().unwrap();
            halt(&mut p, instance_id);
        }
        self.wait_for(Duration::from_secs(30), "host to boot again", |p| {
            p.hosts.contains_key(instance_id)
        })
        .await
    }

    /// Creates an ENI in the AZ's subnet; returns (id, primary private IP).
    pub async fn create_eni(
        &self,
        az_suffix: &str,
        tags: &[(&str, &str)],
    ) -> Result<(String, String)> {
        let subnet = self.subnet(az_suffix)?;
        let mut req = self.ec2.create_network_interface().subnet_id(&subnet.id);
        if !tags.is_empty() {
            req = req.tag_specifications(tag_spec(ResourceType::NetworkInterface, tags));
        }
        let eni = req
            .send()
            .await
            .context("CreateNetworkInterface")?
            .network_interface
            .context("CreateNetworkInterface returned nothing")?;
        Ok((
            eni.network_interface_id.unwrap_or_default(),
            eni.private_ip_address.unwrap_or_default(),
        ))
    }

    /// Creates a volume of `gib` GiB in the AZ.
    pub async fn create_volume(
        &self,
        az_suffix: &str,
        gib: i32,
        tags: &[(&str, &str)],
    ) -> Result<String> {
        let mut req = self
            .ec2
            .create_volume()
            .availability_zone(format!("{REGION}{az_suffix}"))
            .size(gib);
        if !tags.is_empty() {
            req = req.tag_specifications(tag_spec(ResourceType::Volume, tags));
        }
        req.send()
            .await
            .context("CreateVolume")?
            .volume_id
            .context("CreateVolume returned no id")
    }

    /// The network namespace of an instance's host.
    pub fn netns(&self, instance_id: &str) -> String {
        format!("{}-{instance_id}", self.id)
    }

    /// An ENI's MAC address, as EC2 tells it.
    pub async fn mac_of(&self, eni: &str) -> Result<String> {
        self.ec2
            .describe_network_interfaces()
            .network_interface_ids(eni)
            .send()
            .await
            .with_context(|| format!("describing {eni}"))?
            .network_interfaces()
            .first()
            .and_then(|e| e.mac_address())
            .map(str::to_string)
            .with_context(|| format!("{eni} has no MAC address"))
    }

    /// From now on IMDS reports each freshly attached ENI at device-number 0 for `window`
    /// before its real device number, as EC2's IMDS briefly may.
    pub fn imds_stale_device_number(&self, window: Duration) {
        self.phys.lock().unwrap().imds_stale_device_number = window;
    }

    /// The host's own directory: its device view (`sys/`, `dev/`) and files.
    pub fn host_dir(&self, instance_id: &str) -> PathBuf {
        self.dir.join("hosts").join(instance_id)
    }

    /// The AWS endpoint as a host reaches it.
    pub fn aws_endpoint_for(&self, instance_id: &str) -> Result<String> {
        Ok(format!(
            "http://{}:{}",
            self.gateway_of(instance_id)?,
            self.moto_port
        ))
    }

    /// The ZooKeeper connect string as a host reaches it.
    pub fn zookeeper_for(&self, instance_id: &str) -> Result<String> {
        let gw = self.gateway_of(instance_id)?;
        Ok(self
            .zk_ports
            .iter()
            .map(|p| format!("{gw}:{p}"))
            .collect::<Vec<_>>()
            .join(","))
    }

    fn gateway_of(&self, instance_id: &str) -> Result<String> {
        let ns = self.netns(instance_id);
        let routes = netns::ip_in(&ns, &["route", "show", "default"])
            .with_context(|| format!("{instance_id} has no host"))?;
        routes
            .split_whitespace()
            .skip_while(|w| *w != "via")
            .nth(1)
            .map(str::to_string)
            .with_context(|| format!("{instance_id} has no default route"))
    }

    /// A command that runs on the instance's host: in its network namespace, with the AWS
    /// endpoint pointed at the testbed and no credentials but the instance profile's (IMDS).
    pub fn command(&self, instance_id: &str, program: &str) -> Result<Command> {
        let mut cmd = netns::command(&self.netns(instance_id), program);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("AWS_ENDPOINT_URL", self.aws_endpoint_for(instance_id)?);
        Ok(cmd)
    }

    /// Runs a future on a thread inside the instance's namespace (its sockets live there).
    pub fn on_host<T: Send + 'static>(
        &self,
        instance_id: &str,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T> {
        netns::block_on_in(&self.netns(instance_id), fut)
    }

    /// The interface names inside the host, with their MAC addresses.
    pub fn host_links(&self, instance_id: &str) -> Result<BTreeMap<String, String>> {
        let out = netns::ip_in(&self.netns(instance_id), &["-o", "link", "show"])?;
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

    /// The block devices in a host's device view: node name -> serial.
    pub fn host_devices(&self, instance_id: &str) -> BTreeMap<String, String> {
        let block = self.host_dir(instance_id).join("sys/block");
        let mut out = BTreeMap::new();
        for e in std::fs::read_dir(block).into_iter().flatten().flatten() {
            let serial =
                std::fs::read_to_string(e.path().join("device/serial")).unwrap_or_default();
            out.insert(
                e.file_name().to_string_lossy().into_owned(),
                serial.trim().to_string(),
            );
        }
        out
    }

    /// Waits until the physical side satisfies `ok`.
    async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        ok: impl Fn(&Physical) -> bool,
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            if ok(&self.phys.lock().unwrap()) {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `check` holds for the host, polling; for tests.
    pub async fn wait_until<F: Fn() -> bool>(
        &self,
        timeout: Duration,
        what: &str,
        check: F,
    ) -> Result<()> {
        let start = Instant::now();
        while !check() {
            if start.elapsed() > timeout {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Tears the world down now (also done on drop).
    pub fn teardown(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        let mut p = self.phys.lock().unwrap();
        p.closed = true;
        let hosts: Vec<String> = p.hosts.keys().cloned().collect();
        for h in hosts {
            halt(&mut p, &h);
        }
        let _ = netns::delete(&self.vpc_ns);
        if std::env::var_os("KAFKA_TESTBED_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn tag_spec(kind: ResourceType, tags: &[(&str, &str)]) -> TagSpecification {
    let mut spec = TagSpecification::builder().resource_type(kind);
    for (k, v) in tags {
        spec = spec.tags(Tag::builder().key(*k).value(*v).build());
    }
    spec.build()
}

async fn proxy(listener: std::net::TcpListener, port: u16) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

fn present(status: &str) -> bool {
    status == "attached" || status == "detaching"
}

/// Brings the physical side in line with EC2's state.
fn reconcile(
    l: &Layout,
    p: &mut Physical,
    state: &Ec2State,
    rt: &tokio::runtime::Handle,
) -> Result<()> {
    if p.closed {
        return Ok(());
    }
    let running: BTreeMap<&str, &aws::InstanceInfo> = state
        .instances
        .iter()
        .filter(|i| i.state == "running")
        .map(|i| (i.id.as_str(), i))
        .collect();
    let gone: Vec<String> = p
        .hosts
        .keys()
        .filter(|h| !running.contains_key(h.as_str()))
        .cloned()
        .collect();
    for h in gone {
        halt(p, &h);
    }
    for (id, info) in &running {
        if !p.hosts.contains_key(*id) {
            boot(l, p, info, rt).with_context(|| format!("booting host {id}"))?;
        }
    }
    // IMDS first: when a device appears, IMDS already tells about it.
    let now = Instant::now();
    let attached: BTreeSet<(String, String)> = state
        .enis
        .iter()
        .filter_map(|e| {
            let a = e.attachment.as_ref()?;
            (a.status == "attached").then(|| (a.instance_id.clone(), e.id.clone()))
        })
        .collect();
    p.attached_since.retain(|k, _| attached.contains(k));
    for k in attached {
        p.attached_since.entry(k).or_insert(now);
    }
    for (id, host) in &p.hosts {
        let info = running[id.as_str()];
        let mut interfaces: Vec<imds::Interface> = state
            .enis
            .iter()
            .filter_map(|e| {
                let a = e.attachment.as_ref()?;
                let fresh = p
                    .attached_since
                    .get(&(id.clone(), e.id.clone()))
                    .is_some_and(|t| now.duration_since(*t) < p.imds_stale_device_number);
                (a.instance_id == *id && a.status == "attached").then(|| imds::Interface {
                    mac: e.mac.clone(),
                    device_number: if fresh { 0 } else { a.device_index },
                    interface_id: e.id.clone(),
                    local_ipv4s: e.private_ips.clone(),
                    subnet_id: e.subnet_id.clone(),
                    subnet_cidr: e.cidr.clone(),
                    vpc_id: l.vpc_id.clone(),
                })
            })
            .collect();
        interfaces.sort_by_key(|i| i.device_number);
        let md = Metadata {
            instance_id: id.clone(),
            instance_type: info.instance_type.clone(),
            az: info.az.clone(),
            region: REGION.into(),
            account_id: "123456789012".into(),
            private_ip: info.private_ip.clone().unwrap_or_default(),
            mac: info.mac.clone().unwrap_or_default(),
            interfaces,
            access_key_id: l.scope.clone(),
        };
        *host.imds.metadata.write().unwrap() = md;
    }
    // ENIs (device index > 0; the primary is part of the host).
    let want: BTreeMap<&str, &aws::EniInfo> = state
        .enis
        .iter()
        .filter(|e| {
            e.attachment.as_ref().is_some_and(|a| {
                a.device_index > 0 && present(&a.status) && p.hosts.contains_key(&a.instance_id)
            })
        })
        .map(|e| (e.id.as_str(), e))
        .collect();
    let stale: Vec<String> = p
        .enis
        .iter()
        .filter(|(id, pe)| {
            want.get(id.as_str())
                .is_none_or(|e| e.attachment.as_ref().unwrap().instance_id != pe.instance_id)
        })
        .map(|(id, _)| id.clone())
        .collect();
    for id in stale {
        let pe = p.enis.remove(&id).unwrap();
        let _ = netns::ip_in(&l.vpc_ns, &["link", "delete", &pe.vpc_side]);
    }
    for (id, eni) in want {
        if !p.enis.contains_key(id) {
            plug_eni(l, p, eni).with_context(|| format!("plugging {id}"))?;
        }
    }
    // Volumes.
    let want: BTreeMap<&str, &aws::VolumeInfo> = state
        .volumes
        .iter()
        .filter(|v| {
            v.attachment
                .as_ref()
                .is_some_and(|a| present(&a.status) && p.hosts.contains_key(&a.instance_id))
        })
        .map(|v| (v.id.as_str(), v))
        .collect();
    let stale: Vec<String> = p
        .volumes
        .iter()
        .filter(|(id, pv)| {
            want.get(id.as_str())
                .is_none_or(|v| v.attachment.as_ref().unwrap().instance_id != pv.instance_id)
        })
        .map(|(id, _)| id.clone())
        .collect();
    for id in stale {
        unplug_volume(l, p, &id);
    }
    for (id, vol) in want {
        if !p.volumes.contains_key(id) {
            let host = running.get(vol.attachment.as_ref().unwrap().instance_id.as_str());
            let root =
                host.is_some_and(|i| i.root_device_name == vol.attachment.as_ref().unwrap().device);
            let xen = host.is_some_and(|i| xen(&i.instance_type));
            plug_volume(l, p, vol, root, xen).with_context(|| format!("plugging {id}"))?;
        }
        grow_volume(l, p, vol).with_context(|| format!("growing {id}"))?;
    }
    Ok(())
}

/// A volume modified to a larger size: grow its image and tell the loop device.
fn grow_volume(l: &Layout, p: &mut Physical, vol: &aws::VolumeInfo) -> Result<()> {
    let Some(pv) = p.volumes.get_mut(&vol.id) else {
        return Ok(());
    };
    let Some(dev) = pv.loop_dev.clone() else {
        return Ok(());
    };
    if vol.size <= pv.size {
        return Ok(());
    }
    let image = l.dir.join("volumes").join(format!("{}.img", vol.id));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)?
        .set_len(vol.size * 1024 * 1024 * 1024)?;
    run("losetup", &["-c", &dev])?;
    let host_dir = p.hosts[&pv.instance_id].dir.clone();
    let sectors = vol.size * 1024 * 1024 * 1024 / 512;
    std::fs::write(
        host_dir.join("sys/block").join(&pv.node).join("size"),
        format!("{sectors}\n"),
    )?;
    pv.size = vol.size;
    Ok(())
}

fn boot(
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
    let tmp = format!("{}{}", l.world, p.counter);
    netns::veth(&tmp, &ns, "ens5", info.mac.as_deref(), &l.vpc_ns, &vpc_side)?;
    netns::ip_in(
        &l.vpc_ns,
        &["link", "set", &vpc_side, "master", &subnet.bridge, "up"],
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
    p.hosts.insert(
        info.id.clone(),
        Host {
            ns,
            dir,
            imds,
            imds_task,
        },
    );
    Ok(())
}

/// Takes a host down: its mounts, loop devices, interfaces and IMDS go away.
fn halt(p: &mut Physical, instance_id: &str) {
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
    p.enis.retain(|_, e| e.instance_id != instance_id);
    host.imds_task.abort();
    let _ = netns::delete(&host.ns);
}

fn plug_eni(l: &Layout, p: &mut Physical, eni: &aws::EniInfo) -> Result<()> {
    let a = eni.attachment.as_ref().unwrap();
    let host = &p.hosts[&a.instance_id];
    let subnet = l
        .subnets
        .iter()
        .find(|s| s.id == eni.subnet_id)
        .context("ENI in a subnet the world does not know")?;
    let ns = host.ns.clone();
    p.counter += 1;
    let vpc_side = format!("e{}", p.counter);
    let tmp = format!("{}{}", l.world, p.counter);
    let name = format!("ens{}", 5 + a.device_index);
    netns::veth(&tmp, &ns, &name, Some(&eni.mac), &l.vpc_ns, &vpc_side)?;
    netns::ip_in(
        &l.vpc_ns,
        &["link", "set", &vpc_side, "master", &subnet.bridge, "up"],
    )?;
    p.enis.insert(
        eni.id.clone(),
        PluggedEni {
            instance_id: a.instance_id.clone(),
            vpc_side,
        },
    );
    Ok(())
}

/// Whether an instance type is Xen-based (no NVMe: EBS volumes appear as `xvd*` without a
/// serial, under the name they were attached as).
pub fn xen(instance_type: &str) -> bool {
    let family = instance_type.split('.').next().unwrap_or("");
    matches!(
        family,
        "t1" | "t2"
            | "m1"
            | "m2"
            | "m3"
            | "m4"
            | "c1"
            | "c3"
            | "c4"
            | "r3"
            | "r4"
            | "i2"
            | "d2"
            | "x1"
            | "x1e"
            | "p2"
            | "p3"
            | "g2"
            | "g3"
            | "h1"
            | "f1"
    )
}

/// The kernel name of a volume attached as `device` (`/dev/sdf`) on a Xen instance: `xvdf`.
fn xen_name(device: &str) -> String {
    let base = device.trim_start_matches("/dev/");
    let suffix = base
        .strip_prefix("xvd")
        .or_else(|| base.strip_prefix("sd"))
        .unwrap_or(base);
    // A partition name (`sda1`, the root) names its whole disk.
    format!(
        "xvd{}",
        suffix.trim_end_matches(|c: char| c.is_ascii_digit())
    )
}

fn plug_volume(
    l: &Layout,
    p: &mut Physical,
    vol: &aws::VolumeInfo,
    root: bool,
    xen: bool,
) -> Result<()> {
    let a = vol.attachment.as_ref().unwrap();
    let host_dir = p.hosts[&a.instance_id].dir.clone();
    let used: BTreeSet<&str> = p
        .volumes
        .values()
        .filter(|v| v.instance_id == a.instance_id)
        .map(|v| v.node.as_str())
        .collect();
    let node = if xen {
        xen_name(&a.device)
    } else if root {
        "nvme0n1".to_string()
    } else {
        (1..)
            .map(|k| format!("nvme{k}n1"))
            .find(|n| !used.contains(n.as_str()))
            .unwrap()
    };
    let sys = host_dir.join("sys/block").join(&node);
    // What makes the device visible comes last: the serial on NVMe; without NVMe (no serial)
    // the sysfs entry itself, prepared under another name and renamed.
    let building = if xen {
        host_dir.join("sys").join(format!(".plugging-{node}"))
    } else {
        sys.clone()
    };
    let _ = std::fs::remove_dir_all(&building);
    std::fs::create_dir_all(building.join("device"))?;
    if !xen {
        std::fs::write(
            building.join("device/model"),
            "Amazon Elastic Block Store\n",
        )?;
    }
    let sectors = vol.size * 1024 * 1024 * 1024 / 512;
    std::fs::write(building.join("size"), format!("{sectors}\n"))?;
    let mut loop_dev = None;
    if !root {
        // The root disk is only described; data volumes are real loop devices.
        let images = l.dir.join("volumes");
        std::fs::create_dir_all(&images)?;
        let image = images.join(format!("{}.img", vol.id));
        if !image.exists() {
            let f = std::fs::File::create(&image)?;
            f.set_len(vol.size * 1024 * 1024 * 1024)?;
        }
        let dev = run("losetup", &["--find", "--show", &image.to_string_lossy()])?
            .trim()
            .to_string();
        let rdev = nix::sys::stat::stat(dev.as_str())?.st_rdev;
        let (major, minor) = (libc::major(rdev), libc::minor(rdev));
        std::fs::write(building.join("dev"), format!("{major}:{minor}\n"))?;
        let node_path = host_dir.join("dev").join(&node);
        let _ = std::fs::remove_file(&node_path);
        nix::sys::stat::mknod(
            &node_path,
            nix::sys::stat::SFlag::S_IFBLK,
            nix::sys::stat::Mode::from_bits_truncate(0o660),
            rdev,
        )
        .with_context(|| format!("mknod {}", node_path.display()))?;
        loop_dev = Some(dev);
    }
    if xen {
        let _ = std::fs::remove_dir_all(&sys);
        std::fs::rename(&building, &sys)?;
    } else {
        std::fs::write(
            sys.join("device/serial"),
            format!("{}\n", vol.id.replace('-', "")),
        )?;
    }
    p.volumes.insert(
        vol.id.clone(),
        PluggedVolume {
            instance_id: a.instance_id.clone(),
            loop_dev,
            node,
            size: vol.size,
        },
    );
    Ok(())
}

fn unplug_volume(_l: &Layout, p: &mut Physical, id: &str) {
    let Some(pv) = p.volumes.remove(id) else {
        return;
    };
    if let Some(host) = p.hosts.get(&pv.instance_id) {
        release_volume(&host.dir, &pv);
    }
}

/// Yanks a volume from a host: lazy-unmounts whatever uses it, frees the loop device, removes
/// the device view entries.
fn release_volume(host_dir: &Path, pv: &PluggedVolume) {
    if let Some(dev) = &pv.loop_dev {
        super::cleanup::unmount_device(dev);
        let _ = run("losetup", &["-d", dev]);
    }
    let _ = std::fs::remove_dir_all(host_dir.join("sys/block").join(&pv.node));
    let node = host_dir.join("dev").join(&pv.node);
    if std::fs::symlink_metadata(&node).is_ok_and(|m| m.file_type().is_block_device()) {
        let _ = std::fs::remove_file(node);
    }
}
