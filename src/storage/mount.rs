//! Mounting the id's volume at the data directory, safely:
//!
//! * the device is the one whose NVMe serial names the volume (never root, never another's);
//! * a device with a filesystem is mounted as it is, and a volume still tagged `new` is
//!   re-tagged `formatted` as soon as a filesystem is seen on it;
//! * a device is formatted only when it is provably blank (no signature, and its first and
//!   last MiB read as zeros) and the volume is tagged `new`; the journal records the intent
//!   first, so a format this node began and did not finish is done again, with force;
//! * what cannot be read or named is refused, never formatted;
//! * the data must belong to this id (and cluster) where the configuration will point, checked
//!   on a read-only mount before anything writes to the volume (growing it included):
//!   otherwise the volume is unmounted again and the step refuses, having written nothing;
//! * fstab gets exactly one line for the data directory (by UUID, with `nofail`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::mount::MsFlags;
use serde::Serialize;

use super::{device, gate};
use crate::aws::Clients;
use crate::aws::ec2::ResourceKind;
use crate::aws::retry_transient;
use crate::config::Settings;

/// Storage failures a caller branches on. Each leaves the volume as it was found.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{0}")]
    BlankNotNew(String),
    #[error("{0}")]
    IdentityMismatch(String),
    /// The device cannot be read (an I/O error, a short read) or probed: it proves nothing.
    #[error("{0}")]
    Unreadable(String),
    /// The device holds something no probe names as one filesystem (a partition table,
    /// non-zero bytes without a signature, several signatures at once).
    #[error("{0}")]
    Unrecognised(String),
}

impl StorageError {
    pub fn kind(&self) -> &'static str {
        match self {
            StorageError::BlankNotNew(_) => "blank_volume_not_new",
            StorageError::IdentityMismatch(_) => "identity_mismatch",
            StorageError::Unreadable(_) => "unreadable_device",
            StorageError::Unrecognised(_) => "unrecognised_data",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Mounted {
    pub volume: String,
    pub device: String,
    pub data_dir: String,
    /// mounted | already | formatted_and_mounted
    pub how: String,
}

fn run(program: &str, args: &[&str]) -> Result<std::process::Output> {
    Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))
}

/// The filesystem type and UUID on `dev`, or None when a low-level probe (`blkid -p`) found no
/// signature at all. None alone does not make a device blank: see [`prove_blank`].
pub fn probe(dev: &Path) -> Result<Option<(String, String)>> {
    probe_as(&dev.display().to_string(), dev)
}

/// [`probe`], naming the device as `what` in a refusal (`vol-0ab.. (/dev/nvme1n1)`).
fn probe_as(what: &str, dev: &Path) -> Result<Option<(String, String)>> {
    let out = run("blkid", &["-p", "-o", "export", &dev.to_string_lossy()])?;
    Ok(probed(
        what,
        out.status.code(),
        &String::from_utf8_lossy(&out.stdout),
        &String::from_utf8_lossy(&out.stderr),
    )?)
}

/// What `blkid -p -o export` said (blkid(8): exit 0 found, 2 nothing found, 8 ambivalent
/// low-level probing result, 4 usage or other error).
fn probed(
    dev: &str,
    code: Option<i32>,
    stdout: &str,
    stderr: &str,
) -> Result<Option<(String, String)>, StorageError> {
    match code {
        Some(0) => {
            let props = gate::properties(stdout);
            match props.get("TYPE") {
                Some(t) => Ok(Some((
                    t.clone(),
                    props.get("UUID").cloned().unwrap_or_default(),
                ))),
                // Something is there (a partition table, say) but no filesystem: not blank.
                None => Err(StorageError::Unrecognised(format!(
                    "{dev} holds {} but no filesystem blkid can name: refusing it",
                    props
                        .get("PTTYPE")
                        .map_or("a signature".to_string(), |p| format!(
                            "a {p} partition table"
                        ))
                ))),
            }
        }
        Some(2) => Ok(None),
        Some(8) => Err(StorageError::Unrecognised(format!(
            "{dev} carries several signatures (blkid -p: ambivalent probing result): refusing it"
        ))),
        _ => Err(StorageError::Unreadable(format!(
            "probing {dev} failed (blkid -p exit {}): {}",
            code.map_or("by signal".to_string(), |c| c.to_string()),
            stderr.trim()
        ))),
    }
}

/// Proves a device on which [`probe`] found no signature blank: its first and last MiB read
/// back as zeros, as a new EBS volume does. blkid's "nothing found" alone is no proof: a device
/// whose reads fail or come back short ends there too, and mkfs run without a terminal does
/// not refuse what it cannot see.
fn prove_blank(what: &str, dev: &Path) -> Result<(), StorageError> {
    match device::reads_as_zeros(dev) {
        Ok(true) => Ok(()),
        Ok(false) => Err(StorageError::Unrecognised(format!(
            "{what} holds data no probe names (its first or last MiB is not zeros): it is not blank; refusing to format it"
        ))),
        Err(e) => Err(StorageError::Unreadable(format!(
            "{what} cannot be read: {e:#}; refusing to format it"
        ))),
    }
}

/// The journal entry of the volume's first format (`<state_dir>/format.json`), written before
/// mkfs runs: only a volume this node began formatting is ever formatted with force.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Format {
    pub volume: String,
    pub device: String,
    pub filesystem: String,
    /// `formatting` (mkfs may have been cut short) | `formatted` (the volume is tagged so).
    pub state: String,
}

/// The device of a volume EC2 reports attached shows up within moments (NVMe hot-plug, then
/// udev): sysfs is read every 2 ms for the first seconds (a directory listing and a few small
/// reads each; the mount, the identity gate and the render all wait on this), then less often.
const DEVICE_POLL: Duration = Duration::from_millis(2);
const DEVICE_STEADY: Duration = Duration::from_secs(3);

const FORMAT: &str = "format";
const FORMATTING: &str = "formatting";
const FORMATTED: &str = "formatted";

/// Journals the intent, then makes a `filesystem` on `dev` (`force`: over what a format this
/// node began left behind). Returns the new filesystem's type and UUID.
fn format(
    state_dir: &Path,
    volume: &str,
    dev: &Path,
    filesystem: &str,
    force: bool,
) -> Result<(String, String)> {
    let intent = Format {
        volume: volume.into(),
        device: dev.to_string_lossy().into_owned(),
        filesystem: filesystem.into(),
        state: FORMATTING.into(),
    };
    crate::journal::record(state_dir, FORMAT, &intent)?;
    tracing::info!(volume, device = %dev.display(), fs = filesystem, force, "formatting a new volume");
    let mut args = vec!["-q"];
    if force {
        // mkfs.xfs -f, mkfs.ext4 -F: overwrite what is there.
        args.push(if filesystem == "xfs" { "-f" } else { "-F" });
    }
    let dev_arg = dev.to_string_lossy();
    args.push(&dev_arg);
    let out = run(&format!("mkfs.{filesystem}"), &args)?;
    if !out.status.success() {
        bail!(
            "mkfs.{filesystem} {} ({volume}) failed: {}",
            dev.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    probe(dev)?.with_context(|| format!("no filesystem on {} after mkfs", dev.display()))
}

/// A mount as /proc/self/mountinfo shows it.
struct Mount {
    /// `major:minor` of the mounted device.
    dev: String,
    point: String,
    read_only: bool,
}

/// Options of the identity gate's read-only look: no journal recovery, which would write
/// (`norecovery`, xfs(5); `noload`, ext4(5)). A journal left dirty by a crash is replayed by the
/// read-write mount that follows, and the gate looks again.
fn look_options(fs: &str) -> Option<&'static str> {
    match fs {
        "xfs" => Some("norecovery"),
        "ext4" => Some("noload"),
        _ => None,
    }
}

/// Every mount of this process's namespace.
fn mounts() -> Vec<Mount> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            Some(Mount {
                dev: f.get(2)?.to_string(),
                point: f.get(4)?.replace("\\040", " "),
                read_only: f.get(5)?.split(',').any(|o| o == "ro"),
            })
        })
        .collect()
}

async fn volume_state(
    clients: &Clients,
    settings: &Settings,
    volume: &str,
) -> Result<Option<String>> {
    let vol = clients.ec2.describe(ResourceKind::Volume, volume).await?;
    Ok(vol.tags.get(&settings.storage.state_tag).cloned())
}

/// The fstab text with exactly one line for `mount_point`.
pub fn fstab_with(current: &str, line: &str, mount_point: &str) -> String {
    let mut out: Vec<&str> = current
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            l.trim_start().starts_with('#') || f.get(1) != Some(&mount_point)
        })
        .collect();
    out.push(line);
    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// Runs the storage step for the attached volume (`handed` by the attach step of the same
/// boot, else read from its journal); every wait ends by `deadline`.
pub async fn run_step(
    settings: &Settings,
    clients: &Clients,
    handed: Option<&crate::attach::Attachment>,
    arrived: Option<&tokio::sync::Notify>,
    deadline: Instant,
) -> Result<Mounted> {
    let st = &settings.storage;
    // The state tag as the attach step last described it, when handed over.
    let (volume, id, known_state) = match handed {
        Some(a) => {
            let v = a
                .volume
                .as_ref()
                .context("the attach step attached no volume")?;
            (
                v.id.clone(),
                a.broker_id,
                Some(v.tags.get(&st.state_tag).cloned()),
            )
        }
        None => {
            let attached: serde_json::Value =
                crate::journal::read(&settings.paths.state_dir, "attach")?;
            let volume = attached["volume"]["id"]
                .as_str()
                .context("the attach journal names no volume")?
                .to_string();
            let id = attached["broker_id"]
                .as_u64()
                .context("the attach journal names no id")? as u32;
            (volume, id, None)
        }
    };

    // The device: wait for it to appear.
    let root = mounts()
        .into_iter()
        .find(|m| m.point == "/")
        .map(|m| device::whole_disk(&st.sysfs_root, &m.dev));
    let mut backoff = crate::backoff::Backoff::steady(
        DEVICE_POLL,
        DEVICE_STEADY,
        Duration::from_secs(1),
        deadline,
    );
    let dev = loop {
        let devices = device::list(&st.sysfs_root, &st.dev_root)?;
        let found = device::find(
            &devices,
            &volume,
            &settings.resources.volume_device,
            root.as_deref(),
        )?;
        if let Some(d) = found.filter(|d| d.path.exists()) {
            // Its block device is proof that the volume is attached here.
            if let Some(n) = arrived {
                n.notify_one();
            }
            break d;
        }
        if !backoff.wait().await {
            bail!(
                "{volume} did not appear as a block device under {}",
                st.sysfs_root.display()
            );
        }
    };

    tracing::debug!(volume, device = %dev.path.display(), "device present");
    let what = format!("{volume} ({})", dev.path.display());
    let state_dir = settings.paths.state_dir.clone();
    let state = match known_state {
        Some(s) => s,
        None => retry_transient(deadline, || volume_state(clients, settings, &volume)).await?,
    };
    let is_new = state.as_deref() == Some("new");
    let begun = crate::journal::read_if_any::<Format>(&state_dir, FORMAT)?
        .filter(|f| f.volume == volume && f.state == FORMATTING);
    let checked = |fs: String, uuid: String| Checked {
        storage: st.clone(),
        role: settings.cluster.role,
        volume: volume.clone(),
        id,
        what: what.clone(),
        fs,
        uuid,
    };
    // A volume that is not new, with no format of ours pending and nothing mounted at the data
    // directory, holds a filesystem or is refused: the identity gate's read-only look (with
    // the configured filesystem) goes beside the probe (blkid, ~8 ms), which must still pass
    // before anything writes. The look writes nothing; when the probe names another
    // filesystem, or the look could not be taken, it is taken again after the probe.
    let data_dir = st.data_dir.to_string_lossy().into_owned();
    let look_early = !is_new && begun.is_none() && !mounts().iter().any(|m| m.point == data_dir);
    // What is on the device (and a format when it is provably new): blkid and mkfs block, so
    // on a thread of their own, as the mounts below.
    let probing = blocking({
        let (state_dir, volume, dev, what) = (
            state_dir.clone(),
            volume.clone(),
            dev.path.clone(),
            what.clone(),
        );
        let (filesystem, state_tag) = (st.filesystem.clone(), st.state_tag.clone());
        let resumed = begun.is_some();
        move || {
            filesystem_on(
                &state_dir,
                &volume,
                &dev,
                &what,
                &filesystem,
                resumed && is_new,
                is_new,
                || {
                    format!(
                        "{what} is blank but tagged {state_tag}={}: that is lost data, not a new disk; refusing to format it",
                        state.as_deref().unwrap_or("<missing>")
                    )
                },
            )
        }
    });
    let (probed, early) = if look_early {
        let (check, device) = (checked(st.filesystem.clone(), String::new()), dev.clone());
        let (probed, looked) = tokio::join!(probing, blocking(move || Ok(check.look(&device))));
        (probed, Some(looked.and_then(|l| l)))
    } else {
        (probing.await, None)
    };
    let (fs, uuid, formatted) = probed?;
    let looked = match early {
        Some(Ok(Ok(()))) if fs == st.filesystem => true,
        Some(Ok(Err(refusal))) if fs == st.filesystem => return Err(refusal),
        _ => false,
    };
    // A filesystem is on the volume: it is no longer new, whoever made it (a node that died
    // between its mkfs and this tag leaves it to the next one).
    if is_new {
        let formatted = [(st.state_tag.clone(), "formatted".to_string())];
        retry_transient(deadline, || clients.ec2.tag(&volume, &formatted)).await?;
    }
    if let Some(begun) = begun {
        crate::journal::record(
            &state_dir,
            FORMAT,
            &Format {
                state: FORMATTED.into(),
                ..begun
            },
        )?;
    }
    let check = checked(fs, uuid);
    let device = dev.clone();
    let already = blocking(move || check.mount(&device, looked)).await?;
    let how = match (formatted, already) {
        (true, _) => "formatted_and_mounted",
        (false, true) => "already",
        (false, false) => "mounted",
    };
    let out = Mounted {
        volume,
        device: dev.path.to_string_lossy().into_owned(),
        data_dir,
        how: how.into(),
    };
    crate::journal::record(&settings.paths.state_dir, "storage", &out)?;
    Ok(out)
}

/// Runs blocking work (child processes, mount(2), reads of the device) on tokio's blocking
/// pool: `boot` polls its steps side by side in one task, and a step that blocked its thread
/// would stall the others (the route's IMDS polls sat out a whole mount).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .context("the mount step's worker thread panicked")?
}

/// The filesystem on `dev` as (type, UUID, formatted now): what a probe finds, else a fresh
/// one when the device is provably blank and the volume is tagged new (`is_new`), or again
/// (`redo`) over a format this node began and did not finish. A blank volume not tagged new
/// is refused with `not_new()`'s words.
#[allow(clippy::too_many_arguments)]
fn filesystem_on(
    state_dir: &Path,
    volume: &str,
    dev: &Path,
    what: &str,
    filesystem: &str,
    redo: bool,
    is_new: bool,
    not_new: impl FnOnce() -> String,
) -> Result<(String, String, bool)> {
    if redo {
        // This node began formatting the volume and did not finish: nothing has mounted it
        // since (a mount only follows a finished format), so formatting it again, with force,
        // loses nothing. What a killed mkfs left may look like a filesystem, or like nothing.
        tracing::warn!(volume, device = %dev.display(), "formatting again: the format this node began did not finish");
        let (fs, uuid) = format(state_dir, volume, dev, filesystem, true)?;
        return Ok((fs, uuid, true));
    }
    if let Some((fs, uuid)) = probe_as(what, dev)? {
        return Ok((fs, uuid, false));
    }
    prove_blank(what, dev)?;
    if !is_new {
        return Err(StorageError::BlankNotNew(not_new()).into());
    }
    let (fs, uuid) = format(state_dir, volume, dev, filesystem, false)?;
    Ok((fs, uuid, true))
}

/// How much smaller than its device a filesystem that fills it may look: statfs leaves out
/// the filesystem's own metadata (XFS's internal log, ext4's inode tables), under 512 MiB but
/// on very large volumes. An EBS volume grows by whole GiB ("Size: the target size of the
/// volume, in GiB", ModifyVolume), so a grown one is always further off than this.
const GROWN_BY_MORE_THAN: u64 = 512 << 20;

/// Whether the device under the filesystem mounted at `mount_point` is larger than the
/// filesystem by more than its metadata could explain ([`GROWN_BY_MORE_THAN`]). A volume
/// whose metadata alone exceeds that is grown every time, which the grow tools do as a no-op.
fn grown(dev: &Path, mount_point: &Path) -> Result<bool> {
    use std::io::Seek;
    let device = std::fs::File::open(dev)
        .and_then(|mut f| f.seek(std::io::SeekFrom::End(0)))
        .with_context(|| format!("reading the size of {}", dev.display()))?;
    let fs = nix::sys::statvfs::statvfs(mount_point)
        .with_context(|| format!("statfs {}", mount_point.display()))?;
    let fs = fs.blocks() as u64 * fs.fragment_size() as u64;
    Ok(fs_needs_growing(device, fs))
}

fn fs_needs_growing(device_bytes: u64, fs_bytes: u64) -> bool {
    device_bytes > fs_bytes.saturating_add(GROWN_BY_MORE_THAN)
}

/// What the identity gate and the mounts need, owned (they run on a worker thread).
struct Checked {
    storage: crate::config::Storage,
    role: crate::config::Role,
    volume: String,
    id: u32,
    what: String,
    fs: String,
    uuid: String,
}

impl Checked {
    /// The identity gate's look: the filesystem mounted read-only at the data directory, in
    /// a way that also leaves its journal alone (a plain read-only XFS mount still writes its
    /// log and superblock), the gate, and the unmount. Err when the look could not be taken
    /// (mount or unmount failed); Ok(Err) when the gate refuses the data.
    fn look(&self, device: &device::Device) -> Result<Result<()>> {
        let st = &self.storage;
        let (what, fs) = (&self.what, self.fs.as_str());
        let data_dir = st.data_dir.to_string_lossy().into_owned();
        std::fs::create_dir_all(&st.data_dir).with_context(|| format!("creating {data_dir}"))?;
        nix::mount::mount(
            Some(&device.path),
            &st.data_dir,
            Some(fs),
            MsFlags::MS_NOATIME | MsFlags::MS_RDONLY,
            look_options(fs),
        )
        .with_context(|| {
            format!("mounting {what} read-only, without journal recovery, at {data_dir}")
        })?;
        let refused = self.refusal();
        nix::mount::umount(&st.data_dir).with_context(|| format!("unmounting {data_dir}"))?;
        Ok(match refused {
            Some(err) => Err(err),
            None => Ok(()),
        })
    }

    /// Why the data at the data directory is not this id's (and cluster's), if it is not:
    /// read where the rendered configuration will point (log.dirs, dataDir) and at the mount
    /// itself.
    fn refusal(&self) -> Option<anyhow::Error> {
        let st = &self.storage;
        let volume = &self.volume;
        let dirs = [
            st.data_dir.clone(),
            super::data_dir(self.role, &st.data_dir),
        ];
        match gate::read(self.role, &dirs) {
            Ok(found) => gate::refusal(volume, &found, self.id, st.cluster_id.as_deref())
                .map(|why| StorageError::IdentityMismatch(why).into()),
            Err(e) => Some(e.context(format!("checking whose data {volume} holds"))),
        }
    }

    /// Mounts the filesystem on `device` at the data dir behind the identity gate (its look
    /// taken here unless `looked`: passed on this filesystem just before), grows it when the
    /// volume grew, and writes its fstab line. True when it was mounted read-write there
    /// already.
    fn mount(&self, device: &device::Device, looked: bool) -> Result<bool> {
        let st = &self.storage;
        let (volume, what, fs) = (&self.volume, &self.what, self.fs.as_str());
        let (dev_path, dev) = (&device.path, device.dev.as_str());
        // The identity gate looks before anything writes to the volume, through a read-only
        // look ([`Checked::look`]), then again once the read-write mount has replayed the
        // journal.
        let data_dir = st.data_dir.to_string_lossy().into_owned();
        let mounted = mounts()
            .into_iter()
            .find(|m| m.dev == dev && m.point == data_dir);
        let unmount =
            || nix::mount::umount(&st.data_dir).with_context(|| format!("unmounting {data_dir}"));
        let already = matches!(&mounted, Some(m) if !m.read_only);
        if already {
            if let Some(err) = self.refusal() {
                return Err(err);
            }
        } else {
            if mounted.is_some() {
                // A look left by a run killed before its read-write mount.
                unmount()?;
            }
            if !looked {
                self.look(device)??;
            }
            tracing::debug!(
                volume,
                "identity gate passed read-only; mounting read-write"
            );
            nix::mount::mount(
                Some(dev_path),
                &st.data_dir,
                Some(fs),
                MsFlags::MS_NOATIME,
                None::<&str>,
            )
            .with_context(|| format!("mounting {what} read-write at {data_dir}"))?;
            // What a crashed writer left in the journal shows only now that it is replayed.
            if let Some(err) = self.refusal() {
                let _ = unmount();
                return Err(err);
            }
        }
        tracing::debug!(volume, data_dir, "mounted");
        // A volume grown since it was formatted: grow the filesystem.
        if grown(dev_path, &st.data_dir)? {
            tracing::info!(volume, data_dir, "the volume grew: growing its filesystem");
            let grow = match fs {
                "xfs" => run("xfs_growfs", &["-d", &data_dir])?,
                "ext4" => run("resize2fs", &[&dev_path.to_string_lossy()])?,
                _ => run("true", &[])?,
            };
            if !grow.status.success() {
                bail!(
                    "growing the filesystem on {what} failed: {}",
                    String::from_utf8_lossy(&grow.stderr).trim()
                );
            }
        }
        let line = format!(
            "UUID={} {data_dir} {fs} defaults,noatime,nofail 0 2",
            self.uuid
        );
        let current = std::fs::read_to_string(&st.fstab).unwrap_or_default();
        crate::journal::write_atomic(&st.fstab, fstab_with(&current, &line, &data_dir).as_bytes())
            .with_context(|| format!("writing {}", st.fstab.display()))?;
        Ok(already)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_probe_that_found_nothing_may_lead_to_a_format() {
        let dev = "vol-1 (/dev/nvme1n1)";
        let fs = "DEVNAME=/dev/nvme1n1\nUUID=u1\nTYPE=xfs\nUSAGE=filesystem\n";
        assert_eq!(
            probed(dev, Some(0), fs, "").unwrap(),
            Some(("xfs".into(), "u1".into()))
        );
        assert_eq!(probed(dev, Some(2), "", "").unwrap(), None);
        let refused = |code, out: &str, kind: &str| {
            let e =
                probed(dev, code, out, "blkid: error: /dev/nvme1n1: No such device").unwrap_err();
            assert_eq!(e.kind(), kind, "{e}");
            assert!(e.to_string().contains(dev), "{e}");
        };
        refused(Some(0), "PTUUID=x\nPTTYPE=gpt\n", "unrecognised_data");
        refused(Some(8), "", "unrecognised_data");
        refused(Some(4), "", "unreadable_device");
        refused(None, "", "unreadable_device");
    }

    #[test]
    fn a_filesystem_is_grown_only_when_its_volume_grew_by_whole_gib() {
        const GIB: u64 = 1 << 30;
        // A 1 GiB XFS shows ~1014 MiB (its log left out): not grown.
        assert!(!fs_needs_growing(GIB, GIB - (10 << 20)));
        // The same filesystem once the volume is 2 GiB.
        assert!(fs_needs_growing(2 * GIB, GIB - (10 << 20)));
        // Filled to the device.
        assert!(!fs_needs_growing(16 * GIB, 16 * GIB));
    }

    #[test]
    fn fstab_keeps_one_line_per_mount_point() {
        let cur =
            "# static\nUUID=a / ext4 defaults 0 1\nUUID=old /var/lib/kafka xfs defaults 0 2\n";
        let new = fstab_with(
            cur,
            "UUID=b /var/lib/kafka xfs defaults,noatime,nofail 0 2",
            "/var/lib/kafka",
        );
        assert_eq!(
            new,
            "# static\nUUID=a / ext4 defaults 0 1\nUUID=b /var/lib/kafka xfs defaults,noatime,nofail 0 2\n"
        );
        assert_eq!(
            fstab_with(
                &new,
                "UUID=b /var/lib/kafka xfs defaults,noatime,nofail 0 2",
                "/var/lib/kafka"
            ),
            new
        );
    }
}
