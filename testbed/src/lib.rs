//! The testbed: the agent's world on one machine, for tests and the demo.
//!
//! * [`aws`]: moto with AWS's refusals, delays, signal APIs and faults (`aws/awsbed.py`);
//! * [`zookeeper`]: the Debian ZooKeeper server, standalone or an ensemble;
//! * [`world`]: a VPC of simulated hosts (network namespaces), each with IMDSv2
//!   ([`imds`]), where attached ENIs become interfaces and attached volumes loop devices;
//!   the façade over what it models:
//!   * [`vpc`]: the VPC, its subnets and the router namespace joining them, where moto and
//!     ZooKeeper are reachable at each subnet's gateway;
//!   * [`host`]: the hosts, one network namespace per instance with its primary interface
//!     and IMDS;
//!   * [`hypervisor`]: the loop that makes EC2's attachments physical;
//! * [`cleanup`]: nothing is left behind, even after a crash.
//!
//! Everything lives under [`root()`] (`/var/tmp/kafka-testbed`), one directory per world or
//! service set, named like the namespaces it owns, with the owner's pid to sweep after a crash.

pub mod aws;
pub mod blackhole;
pub mod cleanup;
pub mod cloudinit;
pub mod cluster;
pub mod ensemble;
pub mod host;
pub mod http;
pub mod hypervisor;
pub mod imds;
pub mod java;
pub mod netns;
pub mod process;
pub mod release;
pub mod stack;
pub mod standin;
pub mod vpc;
pub mod world;
pub mod zookeeper;

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};

pub use world::World;

/// Where every testbed keeps its files.
pub fn root() -> PathBuf {
    std::env::var_os("KAFKA_TESTBED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/kafka-testbed"))
}

/// Fails clearly unless running as root.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid cannot fail and has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the testbed needs root (network namespaces, loop devices, mounts): \
             run the tests with `sudo scripts/test`"
        );
    }
    Ok(())
}

/// A fresh directory `<root>/<prefix><hex>` marked with this process's pid.
pub fn new_dir(prefix: &str) -> Result<(String, PathBuf)> {
    let id = format!("{prefix}{:06x}", rand::random::<u32>() & 0xff_ffff);
    let dir = root().join(&id);
    // The directory appears with its owner already in it (made under a hidden name, then
    // renamed): a sweep running concurrently must never see it ownerless and take it.
    let making = root().join(format!(".{id}.new"));
    std::fs::create_dir_all(&making).with_context(|| format!("creating {}", making.display()))?;
    std::fs::write(making.join("owner"), std::process::id().to_string())?;
    std::fs::rename(&making, &dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok((id, dir))
}

/// The servers worlds share: one moto, one ZooKeeper ensemble.
pub struct Services {
    pub dir: PathBuf,
    pub moto: aws::Moto,
    pub zookeeper: zookeeper::Ensemble,
}

impl Services {
    /// Starts moto and a ZooKeeper ensemble of `zk_members`.
    pub fn start(zk_members: u32) -> Result<Services> {
        require_root()?;
        cleanup::sweep_dead()?;
        let (_, dir) = new_dir("ks")?;
        let moto = aws::Moto::start(&dir).context("starting moto")?;
        let zookeeper =
            zookeeper::Ensemble::start(&dir, zk_members).context("starting ZooKeeper")?;
        Ok(Services {
            dir,
            moto,
            zookeeper,
        })
    }
}

/// The services shared by every test of one test binary, started on first use. Their
/// processes die with the test process; their directory is swept by the next run.
pub fn shared() -> &'static Services {
    static SHARED: OnceLock<Services> = OnceLock::new();
    SHARED.get_or_init(|| match Services::start(1) {
        Ok(s) => s,
        Err(e) => panic!("testbed services did not start: {e:#}"),
    })
}
