//! Leaving nothing behind: sweeping what crashed testbeds left, and checking that nothing is.
//!
//! A testbed owns, under its directory `<root>/<id>`: namespaces named `<id>-*`, loop devices
//! over image files in it, mounts below it and processes whose command line names it.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::process::run;
use super::{netns, root};

/// What a testbed directory (or all of them) still holds.
#[derive(Debug, Default)]
pub struct Leftovers {
    pub namespaces: Vec<String>,
    /// Interfaces in the root namespace named like a testbed's temporary veth ends.
    pub links: Vec<String>,
    pub loop_devices: Vec<String>,
    pub mounts: Vec<String>,
    pub processes: Vec<String>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
            && self.links.is_empty()
            && self.loop_devices.is_empty()
            && self.mounts.is_empty()
            && self.processes.is_empty()
    }
}

impl std::fmt::Display for Leftovers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (what, list) in [
            ("namespace", &self.namespaces),
            ("link", &self.links),
            ("loop device", &self.loop_devices),
            ("mount", &self.mounts),
            ("process", &self.processes),
        ] {
            for item in list {
                writeln!(f, "{what}: {item}")?;
            }
        }
        Ok(())
    }
}

/// Root-namespace interfaces whose names start with `prefix` (veth ends are made there under
/// `<testbed id><n>a|b` before they move into their namespaces).
fn links(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Loop devices whose backing file lies under `dir`.
fn loops_under(dir: &Path) -> Vec<String> {
    let out = run("losetup", &["-n", "-l", "-O", "NAME,BACK-FILE"]).unwrap_or_default();
    out.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (dev, file) = (it.next()?, it.next()?);
            Path::new(file).starts_with(dir).then(|| dev.to_string())
        })
        .collect()
}

/// (device major:minor, mount point) of every mount.
fn mounts() -> Vec<(String, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            Some((f.get(2)?.to_string(), unescape(f.get(4)?)))
        })
        .collect()
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn majmin(dev: &str) -> Option<String> {
    let rdev = nix::sys::stat::stat(dev).ok()?.st_rdev;
    Some(format!("{}:{}", libc::major(rdev), libc::minor(rdev)))
}

/// Unmounts every mount of block device `dev` (lazily where it is busy), then flushes its
/// buffers, so that what was written reaches the backing image before the device goes.
pub fn unmount_device(dev: &str) {
    let Some(mm) = majmin(dev) else { return };
    for (m, target) in mounts().into_iter().rev() {
        if m == mm && nix::mount::umount(target.as_str()).is_err() {
            let _ = nix::mount::umount2(target.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
    nix::unistd::sync();
    let _ = run("blockdev", &["--flushbufs", dev]);
}

fn processes_naming(dir: &Path) -> Vec<(i32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&needle) {
            out.push((pid, cmd.trim().to_string()));
        }
    }
    out
}

/// What remains of the testbed `dir` (or of every testbed, for the root).
pub fn leftovers(dir: &Path) -> Leftovers {
    let all = dir == root();
    let id = if all {
        "kt".to_string()
    } else {
        dir.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    };
    let prefix = if all { String::new() } else { format!("{id}-") };
    let loops = loops_under(dir);
    let loop_ids: Vec<String> = loops.iter().filter_map(|d| majmin(d)).collect();
    Leftovers {
        namespaces: netns::list(&prefix)
            .into_iter()
            .filter(|n| !all || n.starts_with("kt"))
            .collect(),
        links: links(&id),
        mounts: mounts()
            .into_iter()
            .filter(|(mm, target)| Path::new(target).starts_with(dir) || loop_ids.contains(mm))
            .map(|(_, t)| t)
            .collect(),
        loop_devices: loops,
        processes: processes_naming(dir)
            .into_iter()
            .map(|(p, c)| format!("{p} {c}"))
            .collect(),
    }
}

/// Removes everything testbed `dir` holds, and the directory.
pub fn sweep(dir: &Path) -> Result<()> {
    for (pid, _) in processes_naming(dir) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let left = leftovers(dir);
    for m in left.mounts.iter().rev() {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
    for l in &left.loop_devices {
        let _ = run("losetup", &["-d", l]);
    }
    for n in &left.namespaces {
        let _ = netns::delete(n);
    }
    for l in &left.links {
        let _ = netns::ip(&["link", "delete", l]);
    }
    if dir != root() {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

fn owner_alive(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("owner"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// Testbed directories whose owner process is gone.
pub fn dead_dirs() -> Vec<PathBuf> {
    std::fs::read_dir(root())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        // `.<id>.new` is a directory being made by `new_dir`: not a testbed (yet).
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .filter(|p| p.is_dir() && !owner_alive(p))
        .collect()
}

/// Sweeps every testbed whose owner died.
pub fn sweep_dead() -> Result<()> {
    for d in dead_dirs() {
        sweep(&d)?;
    }
    Ok(())
}
