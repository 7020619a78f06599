//! The hypervisor: makes EC2's attachments physical. A loop reads the VPC's state in EC2 and
//! boots and halts hosts, plugs attached ENIs into them as interfaces and attached volumes as
//! loop devices in their device view, and keeps each host's IMDS in line.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::aws::{self, Ec2State, REGION};
use super::host::{Host, boot, halt};
use super::imds::{self, Metadata};
use super::netns;
use super::process::run;
use super::vpc::Subnet;

/// What the hypervisor has made physical: hosts, plugged ENIs and volumes.
#[derive(Default)]
pub(crate) struct Physical {
    pub(crate) closed: bool,
    pub(crate) hosts: BTreeMap<String, Host>,
    pub(crate) enis: BTreeMap<String, PluggedEni>,
    pub(crate) volumes: BTreeMap<String, PluggedVolume>,
    pub(crate) counter: u32,
    /// For how long IMDS reports a freshly attached ENI at device-number 0 (as EC2 may).
    pub(crate) imds_stale_device_number: Duration,
    /// For how long IMDS lags behind a fresh ENI's addresses: `local-ipv4s` answers 404 for
    /// the first half of it and an empty list for the second ("newly provisioned resources
    /// take some time to be fully reflected in IMDS"; amazon-ec2-net-utils polls 30 s for it).
    pub(crate) imds_lagging_addresses: Duration,
    /// When each (instance, ENI) attachment was first seen attached.
    attached_since: BTreeMap<(String, String), Instant>,
    /// The VPC's source/destination check: each port on a subnet's bridge (the router side of
    /// a host's interface) with the MAC and addresses of the ENI behind it.
    pub(crate) guards: BTreeMap<String, Guard>,
    /// The guards as last handed to the loader of the router namespace's ruleset.
    loaded_guards: Option<BTreeMap<String, Guard>>,
    /// What a new host runs at boot when no image is registered for its AMI in `images`
    /// (none: it idles; tests run the agent by hand).
    pub(crate) boot: Option<Arc<super::cloudinit::BootSpec>>,
    /// The images by AMI: a new host launched from one of these boots it, as EC2 boots an
    /// instance from its AMI.
    pub(crate) images: BTreeMap<String, Arc<super::cloudinit::BootSpec>>,
}

/// What may leave through one bridge port: frames from the ENI's MAC, IPv4 packets from its
/// addresses. The VPC drops the rest ("source/destination checking", which is why a second
/// ENI needs policy routing: amazon-ec2-net-utils, "policy routing rules to accommodate VPC
/// source/dest restrictions").
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Guard {
    pub(crate) mac: Option<String>,
    pub(crate) ips: Vec<String>,
}

/// The nftables ruleset of the VPC's source/destination check, replacing the previous one.
pub(crate) fn guard_ruleset(guards: &BTreeMap<String, Guard>) -> String {
    let mut rules = String::new();
    for (port, g) in guards {
        if let Some(mac) = &g.mac {
            rules.push_str(&format!(
                "    iifname \"{port}\" ether saddr != {mac} drop\n"
            ));
        }
        if !g.ips.is_empty() {
            rules.push_str(&format!(
                "    iifname \"{port}\" ip saddr != {{ {} }} drop\n",
                g.ips.join(", ")
            ));
        }
    }
    format!(
        "table bridge vpc {{}}\ndelete table bridge vpc\ntable bridge vpc {{\n  chain \
         source_check {{\n    type filter hook prerouting priority 0; policy accept;\n{rules}  \
         }}\n}}\n"
    )
}

pub(crate) struct PluggedEni {
    pub(crate) instance_id: String,
    pub(crate) vpc_side: String,
}

pub(crate) struct PluggedVolume {
    pub(crate) instance_id: String,
    loop_dev: Option<String>,
    node: String,
    /// GiB as plugged; a ModifyVolume that grows the volume grows the device.
    size: u64,
}

/// Static facts the hypervisor needs besides the EC2 state.
pub(crate) struct Layout {
    pub(crate) world: String,
    pub(crate) dir: PathBuf,
    pub(crate) vpc_id: String,
    pub(crate) vpc_ns: String,
    pub(crate) scope: String,
    pub(crate) subnets: Vec<Subnet>,
    /// moto's port on this machine (hosts reach it at their subnet's gateway).
    pub(crate) moto_port: u16,
}

/// The hypervisor's loop: brings the physical side in line with the VPC's state in EC2 (moto
/// on `port`) as soon as a call may have changed it, and at least every 100 ms (transitions
/// due by time).
pub(crate) async fn run_loop(
    layout: Arc<Layout>,
    phys: Arc<Mutex<Physical>>,
    port: u16,
    handle: tokio::runtime::Handle,
) {
    let guards = guard_loader(layout.vpc_ns.clone());
    let mut seen = None;
    loop {
        match aws::state_after(port, &layout.vpc_id, seen, Duration::from_millis(100)).await {
            Ok(state) => {
                seen = Some(state.generation);
                let (l, p, h, g) = (layout.clone(), phys.clone(), handle.clone(), guards.clone());
                let r = tokio::task::spawn_blocking(move || {
                    let mut p = p.lock().unwrap();
                    reconcile(&l, &mut p, &state, &h, &g)
                })
                .await;
                if let Ok(Err(e)) = r {
                    tracing::warn!("hypervisor: {e:#}");
                }
            }
            Err(e) => {
                tracing::warn!("hypervisor: reading EC2 state: {e:#}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Loads the VPC's source/destination check ([`guard_ruleset`]) on a thread of its own, the
/// newest ruleset sent: `nft` takes ~20 ms, and the hypervisor's next look at EC2 (a volume
/// attached just after an ENI) need not wait for it. The thread ends with the last sender.
fn guard_loader(vpc_ns: String) -> std::sync::mpsc::Sender<String> {
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        while let Ok(mut ruleset) = rx.recv() {
            while let Ok(newer) = rx.try_recv() {
                ruleset = newer;
            }
            if let Err(e) = netns::nft_in(&vpc_ns, &ruleset) {
                tracing::warn!("hypervisor: loading the VPC's source/destination check: {e:#}");
            }
        }
    });
    tx
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
    guards: &std::sync::mpsc::Sender<String>,
) -> Result<()> {
    if p.closed {
        return Ok(());
    }
    let running: BTreeMap<&str, &aws::InstanceInfo> = state
        .instances
        .iter()
        // A shutting-down instance's OS is still taking itself down: its host stays up.
        .filter(|i| i.state == "running" || i.state == "shutting-down")
        .map(|i| (i.id.as_str(), i))
        .collect();
    let gone: Vec<String> = p
        .hosts
        .keys()
        .filter(|h| !running.contains_key(h.as_str()))
        .cloned()
        .collect();
    for h in gone {
        halt(p, &l.vpc_ns, &h);
    }
    // The OS of an instance shutting down stops its services (SIGTERM), as systemd would.
    for (id, info) in &running {
        if info.state == "shutting-down"
            && let Some(host) = p.hosts.get_mut(*id)
            && !host.shutting_down
        {
            host.shutting_down = true;
            host.procs.signal(nix::sys::signal::Signal::SIGTERM);
            super::cloudinit::note(&host.dir, "shutdown");
        }
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
                let age = p
                    .attached_since
                    .get(&(id.clone(), e.id.clone()))
                    .map(|t| now.duration_since(*t));
                let fresh = age.is_some_and(|a| a < p.imds_stale_device_number);
                let lag = p.imds_lagging_addresses;
                let local_ipv4s = match age {
                    Some(a) if a < lag / 2 => None,
                    Some(a) if a < lag => Some(Vec::new()),
                    _ => Some(e.private_ips.clone()),
                };
                (a.instance_id == *id && a.status == "attached").then(|| imds::Interface {
                    mac: e.mac.clone(),
                    device_number: if fresh { 0 } else { a.device_index },
                    interface_id: e.id.clone(),
                    local_ipv4s,
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
        *host.imds.target_lifecycle_state.write().unwrap() = info.target_lifecycle_state.clone();
    }
    // ENIs (device index > 0; the primary is part of the host): stale ones go first; new
    // ones are planned here and plumbed (one `ip` run each) on a thread of their own while the
    // volumes are plugged, as EC2 attaches the two independently.
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
        p.guards.remove(&pe.vpc_side);
        let _ = netns::ip_in(&l.vpc_ns, &["link", "delete", &pe.vpc_side]);
    }
    let mut planned = Vec::new();
    for (id, eni) in want {
        if !p.enis.contains_key(id) {
            planned.push(plan_eni(l, p, eni).with_context(|| format!("plugging {id}"))?);
        }
    }
    let vpc_ns = l.vpc_ns.as_str();
    let (volumes, plumbed) = std::thread::scope(|scope| {
        let plumbing = scope.spawn(|| planned.iter().map(|w| w.plumb(vpc_ns)).collect::<Vec<_>>());
        let volumes = plug_volumes(l, p, state, &running);
        (volumes, plumbing.join())
    });
    // The ENIs' plumbing is theirs once done (recorded even when a volume failed: made twice,
    // their names would clash).
    let plumbed = plumbed.map_err(|_| anyhow::anyhow!("plugging ENIs panicked"))?;
    for (plug, made) in planned.into_iter().zip(plumbed) {
        made.with_context(|| format!("plugging {}", plug.eni))?;
        plug.record(p);
    }
    volumes?;
    if p.loaded_guards.as_ref() != Some(&p.guards) {
        guards
            .send(guard_ruleset(&p.guards))
            .map_err(|_| anyhow::anyhow!("the source/destination check's loader is gone"))?;
        p.loaded_guards = Some(p.guards.clone());
    }
    Ok(())
}

/// Plugs the volumes EC2 has attached to running hosts, unplugs those it no longer has.
fn plug_volumes(
    l: &Layout,
    p: &mut Physical,
    state: &Ec2State,
    running: &BTreeMap<&str, &aws::InstanceInfo>,
) -> Result<()> {
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

/// A new ENI's plug: names chosen, plumbing to make ([`EniPlug::plumb`]), then recorded.
struct EniPlug {
    eni: String,
    instance_id: String,
    ns: String,
    name: String,
    vpc_side: String,
    bridge: String,
    mac: String,
    ips: Vec<String>,
}

fn plan_eni(l: &Layout, p: &mut Physical, eni: &aws::EniInfo) -> Result<EniPlug> {
    let a = eni.attachment.as_ref().unwrap();
    let host = &p.hosts[&a.instance_id];
    let subnet = l
        .subnets
        .iter()
        .find(|s| s.id == eni.subnet_id)
        .context("ENI in a subnet the world does not know")?;
    p.counter += 1;
    Ok(EniPlug {
        eni: eni.id.clone(),
        instance_id: a.instance_id.clone(),
        ns: host.ns.clone(),
        name: format!("ens{}", 5 + a.device_index),
        vpc_side: format!("e{}", p.counter),
        bridge: subnet.bridge.clone(),
        mac: eni.mac.clone(),
        ips: eni.private_ips.clone(),
    })
}

impl EniPlug {
    /// The veth pair, its VPC side on the subnet's bridge (touches no [`Physical`]).
    fn plumb(&self, vpc_ns: &str) -> Result<()> {
        netns::veth_to_bridge(
            &self.ns,
            &self.name,
            Some(&self.mac),
            vpc_ns,
            &self.vpc_side,
            &self.bridge,
        )
    }

    fn record(self, p: &mut Physical) {
        p.guards.insert(
            self.vpc_side.clone(),
            Guard {
                mac: Some(self.mac),
                ips: self.ips,
            },
        );
        p.enis.insert(
            self.eni,
            PluggedEni {
                instance_id: self.instance_id,
                vpc_side: self.vpc_side,
            },
        );
    }
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
pub(crate) fn release_volume(host_dir: &Path, pv: &PluggedVolume) {
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
