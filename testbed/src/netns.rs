//! Network namespaces as simulated hosts: creating them, wiring veth pairs between them, and
//! running code or commands inside one.
//!
//! The testbed itself shells out to `ip` (the agent never does: it speaks netlink).

use std::fs::File;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use super::process::run;

/// Runs `ip` with the given arguments.
pub fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

/// Runs `ip` inside namespace `ns`.
///
/// Through nsenter, not `ip -n` or `ip netns exec`: those unshare the mount namespace (to
/// remount /sys), so for as long as they run they hold a copy of every mount on the machine.
/// A volume a test (or the agent) unmounts meanwhile keeps its superblock alive in that copy,
/// and mounting it again with other flags fails with EBUSY.
pub fn ip_in(ns: &str, args: &[&str]) -> Result<String> {
    let out = command(ns, "ip")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .context("running ip")?;
    if !out.status.success() {
        anyhow::bail!(
            "`ip {}` in {ns} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Loads an nftables ruleset (`nft -f -`) inside namespace `ns`, as one transaction.
pub fn nft_in(ns: &str, ruleset: &str) -> Result<()> {
    use std::io::Write;
    let mut child = command(ns, "nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running nft")?;
    child
        .stdin
        .take()
        .context("nft's stdin")?
        .write_all(ruleset.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        anyhow::bail!(
            "nft in {ns} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub fn path(ns: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(ns)
}

/// Creates namespace `ns` with its loopback up.
pub fn create(ns: &str) -> Result<()> {
    ip(&["netns", "add", ns]).with_context(|| format!("creating network namespace {ns}"))?;
    ip_in(ns, &["link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes namespace `ns` (and with it every interface inside); absent is fine.
pub fn delete(ns: &str) -> Result<()> {
    if path(ns).exists() {
        ip(&["netns", "delete", ns]).with_context(|| format!("deleting network namespace {ns}"))?;
    }
    Ok(())
}

/// Kills (SIGKILL) every process whose network namespace is `ns`, except this one: what a
/// host's power going off does to whatever ran on it, including what a test or an operator
/// started there by hand. Left alive, one process keeps the namespace (and every interface in
/// it, addresses and MACs included) after `ip netns delete`.
pub fn kill_all_in(ns: &str) {
    use std::os::unix::fs::MetadataExt;
    let Ok(target) = std::fs::metadata(path(ns)) else {
        return;
    };
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(net) = std::fs::metadata(entry.path().join("ns/net")) else {
            continue; // gone meanwhile, or a kernel thread
        };
        if net.dev() == target.dev() && net.ino() == target.ino() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Names of the existing namespaces that start with `prefix`.
pub fn list(prefix: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Sets a sysctl inside namespace `ns` (net.* sysctls are per namespace).
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    let file = format!("/proc/sys/{}", key.replace('.', "/"));
    let value = value.to_string();
    in_netns(ns, move || {
        std::fs::write(&file, value).with_context(|| format!("writing {file}"))
    })?
}

/// A veth pair: `a_name` inside `a_ns` (with MAC `a_mac` if given), `b_name` inside `b_ns`,
/// enslaved to `b_ns`'s bridge `bridge` and up. One `ip` run inside `b_ns` makes both ends
/// in their namespaces: nothing is created elsewhere and moved (a move between namespaces
/// waits for the network's RCU grace periods: ~50 ms for the old four runs against ~7 ms), and
/// a failure leaves nothing behind.
pub fn veth_to_bridge(
    a_ns: &str,
    a_name: &str,
    a_mac: Option<&str>,
    b_ns: &str,
    b_name: &str,
    bridge: &str,
) -> Result<()> {
    let mut args = vec![
        "link", "add", b_name, "master", bridge, "up", "type", "veth", "peer", "name", a_name,
    ];
    if let Some(mac) = a_mac {
        args.extend(["address", mac]);
    }
    args.extend(["netns", a_ns]);
    ip_in(b_ns, &args)
        .with_context(|| format!("creating veth {a_ns}/{a_name} <-> {b_ns}/{b_name}"))?;
    Ok(())
}

/// Runs `f` on a fresh thread that has entered namespace `ns`. Sockets created there belong
/// to `ns` for their whole life, whichever thread uses them later.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let file = File::open(path(ns)).with_context(|| format!("opening namespace {ns}"))?;
    let ns = ns.to_string();
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering namespace {ns}"))?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in a network namespace panicked"))?
}

/// Runs a future to completion on a thread inside namespace `ns`, with its own runtime.
pub fn block_on_in<T: Send + 'static>(
    ns: &str,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T> {
    in_netns(ns, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build a runtime")
            .block_on(fut)
    })
}

/// A command that runs inside namespace `ns` (network only: mounts stay in the root mount
/// namespace, where tests and cleanup see them).
pub fn command(ns: &str, program: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", path(ns).display()))
        .arg("--")
        .arg(program);
    cmd
}
