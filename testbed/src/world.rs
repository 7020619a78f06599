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
//! * An address in the VPC (a service on an ENI's) is reachable from this machine through a
//!   proxy on its loopback ([`World::reach`]).
//!
//! [`World`] is the façade over what it models: the VPC and its router ([`vpc`]),
//! the hosts ([`host`]) and the hypervisor ([`hypervisor`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};

use super::aws::REGION;
use super::host::{self, halt};
use super::hypervisor::{self, Layout, Physical};
use super::vpc;
use super::{Services, netns, new_dir};

pub use super::hypervisor::xen;
pub use super::vpc::Subnet;

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

impl World {
    /// Creates a VPC with one /24 subnet per AZ suffix (e.g. `["a", "b"]`) and its network.
    pub async fn create(services: &Services, azs: &[&str]) -> Result<World> {
        super::require_root()?;
        let (id, dir) = new_dir("kt")?;
        let admin = aws_sdk_ec2::Client::new(&services.moto.sdk_config(&format!("{id}-admin")));
        let (vpc_id, subnets) = vpc::create(&admin, azs).await?;
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
        vpc::build_router(&self.vpc_ns, &self.subnets)?;
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
        let proxy = vpc::expose(&self.vpc_ns, port)?;
        self.rt.as_ref().unwrap().spawn(proxy);
        Ok(())
    }

    /// Makes `ip:port` in the VPC (a service on an ENI's address) reachable from this
    /// machine: returns a port on 127.0.0.1 whose every connection is made onward from inside
    /// the VPC's router. The proxy lives as long as the world.
    pub fn reach(&self, ip: &str, port: u16) -> Result<u16> {
        let target = std::net::SocketAddr::new(
            ip.parse()
                .with_context(|| format!("{ip:?} is not an IP address"))?,
            port,
        );
        let (local, proxy) = vpc::reach(&self.vpc_ns, target)?;
        self.rt.as_ref().unwrap().spawn(proxy);
        Ok(local)
    }

    fn layout(&self) -> Layout {
        Layout {
            world: self.id.clone(),
            dir: self.dir.clone(),
            vpc_id: self.vpc_id.clone(),
            vpc_ns: self.vpc_ns.clone(),
            scope: self.scope.clone(),
            subnets: self.subnets.clone(),
            moto_port: self.moto_port,
        }
    }

    /// From now on every new host boots as the image `spec` describes (unless its AMI has an
    /// image of its own, [`World::boot_image`]): baked files, cloud-init with the instance's
    /// user data, then the units (see [`crate::cloudinit`]).
    pub fn boot_with(&self, spec: crate::cloudinit::BootSpec) {
        self.phys.lock().unwrap().boot = Some(Arc::new(spec));
    }

    /// From now on every new host launched from AMI `ami` boots as `spec` describes, whatever
    /// the default ([`World::boot_with`]) is: a world of two kinds of instances (brokers and
    /// ZooKeeper members) tells them apart by their AMI, as EC2 does.
    pub fn boot_image(&self, ami: &str, spec: crate::cloudinit::BootSpec) {
        self.phys
            .lock()
            .unwrap()
            .images
            .insert(ami.to_string(), Arc::new(spec));
    }

    /// The host's boot events so far (`var/log/testbed-boot.log`): unix ms, event.
    pub fn boot_events(&self, instance_id: &str) -> Vec<(u128, String)> {
        std::fs::read_to_string(self.host_dir(instance_id).join("var/log/testbed-boot.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (t, e) = l.split_once(' ')?;
                Some((t.parse().ok()?, e.to_string()))
            })
            .collect()
    }

    fn start_hypervisor(&self) {
        let layout = Arc::new(self.layout());
        let phys = self.phys.clone();
        let port = self.moto_port;
        let rt = self.rt.as_ref().unwrap();
        let handle = rt.handle().clone();
        rt.spawn(hypervisor::run_loop(layout, phys, port, handle));
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
            halt(&mut p, &self.vpc_ns, instance_id);
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

    /// From now on IMDS lags behind each freshly attached ENI's addresses for `window`: its
    /// `local-ipv4s` answers 404, then an empty list, then the addresses.
    pub fn imds_lagging_addresses(&self, window: Duration) {
        self.phys.lock().unwrap().imds_lagging_addresses = window;
    }

    /// The host's own directory: its device view (`sys/`, `dev/`) and files.
    pub fn host_dir(&self, instance_id: &str) -> PathBuf {
        host::dir(&self.dir, instance_id)
    }

    /// The agent's journal `name` on a host (`var/lib/kafka-agent/<name>.json`), as JSON;
    /// `Null` while it is missing or half-written.
    pub fn agent_journal(&self, instance_id: &str, name: &str) -> serde_json::Value {
        std::fs::read_to_string(
            self.host_dir(instance_id)
                .join(format!("var/lib/kafka-agent/{name}.json")),
        )
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
    }

    /// The AWS endpoint as a host reaches it.
    pub fn aws_endpoint_for(&self, instance_id: &str) -> Result<String> {
        Ok(vpc::http_url(
            &self.gateway_of(instance_id)?,
            self.moto_port,
        ))
    }

    /// The ZooKeeper connect string as a host reaches it.
    pub fn zookeeper_for(&self, instance_id: &str) -> Result<String> {
        let gw = self.gateway_of(instance_id)?;
        Ok(vpc::connect_string(&gw, &self.zk_ports))
    }

    fn gateway_of(&self, instance_id: &str) -> Result<String> {
        vpc::gateway_of(&self.netns(instance_id), instance_id)
    }

    /// A command that runs on the instance's host: in its network namespace, with the AWS
    /// endpoint pointed at the testbed and no credentials but the instance profile's (IMDS).
    pub fn command(&self, instance_id: &str, program: &str) -> Result<Command> {
        let endpoint = self.aws_endpoint_for(instance_id)?;
        Ok(host::command(&self.netns(instance_id), program, endpoint))
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
        host::links(&self.netns(instance_id))
    }

    /// The interfaces in the VPC's own namespace (the subnets' bridges and every host's and
    /// ENI's port on them), with their MAC addresses.
    pub fn vpc_links(&self) -> Result<BTreeMap<String, String>> {
        host::links(&self.vpc_ns)
    }

    /// The block devices in a host's device view: node name -> serial.
    pub fn host_devices(&self, instance_id: &str) -> BTreeMap<String, String> {
        host::devices(&self.host_dir(instance_id))
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
            halt(&mut p, &self.vpc_ns, &h);
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

/// Fault switches for endpoints that stop answering.
impl World {
    /// A port that accepts connections and never answers (see [`super::blackhole`]),
    /// reachable from every host at its subnet gateway: point an agent's endpoint at
    /// [`World::address_for`] it.
    pub fn black_hole(&self) -> Result<u16> {
        let (port, hole) = super::blackhole::listen(&self.vpc_ns)?;
        self.rt.as_ref().unwrap().spawn(hole);
        Ok(port)
    }

    /// `<gateway>:<port>`: a port of the router namespace (an exposed service, a black hole)
    /// as the instance's host reaches it.
    pub fn address_for(&self, instance_id: &str, port: u16) -> Result<String> {
        Ok(format!("{}:{port}", self.gateway_of(instance_id)?))
    }

    /// From now on the instance's IMDS answers every request with 503 for `window`, as an
    /// overloaded or restarting metadata service may.
    pub fn imds_unavailable(&self, instance_id: &str, window: Duration) -> Result<()> {
        let p = self.phys.lock().unwrap();
        let host = p
            .hosts
            .get(instance_id)
            .with_context(|| format!("{instance_id} has no host"))?;
        *host.imds.unavailable_until.lock().unwrap() = Some(Instant::now() + window);
        Ok(())
    }
}
