//! Finding a volume's block device: by its NVMe serial (the volume id without its dash) under
//! sysfs, which is trustworthy where /dev/disk/by-id links can be stale; on instances without
//! NVMe, by the requested device name with its xvd/sd aliasing. Never the root device, never
//! a device whose serial names another volume. And reading a device's edges, to prove a volume
//! blank before it is formatted.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// A block device as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Kernel name, e.g. `nvme1n1`.
    pub name: String,
    /// The node to open, under the dev root.
    pub path: PathBuf,
    /// `major:minor`.
    pub dev: String,
    /// The NVMe serial, if any.
    pub serial: Option<String>,
}

/// The serial an EBS volume shows over NVMe: `vol-0abc` -> `vol0abc`.
pub fn ebs_serial(volume_id: &str) -> String {
    volume_id.replacen('-', "", 1)
}

/// Every whole block device under `<sys>/block`.
pub fn list(sys: &Path, dev: &Path) -> Result<Vec<Device>> {
    let block = sys.join("block");
    let mut out = Vec::new();
    let entries =
        std::fs::read_dir(&block).with_context(|| format!("listing {}", block.display()))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let read = |p: &str| {
            std::fs::read_to_string(e.path().join(p))
                .ok()
                .map(|s| s.trim().to_string())
        };
        out.push(Device {
            path: dev.join(&name),
            dev: read("dev").unwrap_or_default(),
            serial: read("device/serial").filter(|s| !s.is_empty()),
            name,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The `major:minor` of the whole disk holding the block device `dev` (`major:minor`): a
/// partition's parent (a root filesystem on `nvme0n1p1`, 259:1, lives on the disk 259:0, the
/// one [`find`] must never pick); any other device as it is. Read from
/// `<sys>/dev/block/<dev>`, whose `partition` file marks a partition and whose parent
/// directory is its disk (kernel ABI, sysfs-block).
pub fn whole_disk(sys: &Path, dev: &str) -> String {
    let node = sys.join("dev/block").join(dev);
    if !node.join("partition").exists() {
        return dev.to_string();
    }
    std::fs::read_to_string(node.join("../dev"))
        .map(|d| d.trim().to_string())
        .ok()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| dev.to_string())
}

/// The names a requested EBS device name may appear under without NVMe.
pub fn aliases(requested: &str) -> Vec<String> {
    let base = requested.trim_start_matches("/dev/");
    let suffix = base
        .strip_prefix("xvd")
        .or_else(|| base.strip_prefix("sd"))
        .unwrap_or(base);
    vec![format!("xvd{suffix}"), format!("sd{suffix}")]
}

/// The volume's device, or None when it is not there (yet).
///
/// `root` is the `major:minor` of the disk holding `/` ([`whole_disk`]; never a candidate).
pub fn find(
    devices: &[Device],
    volume_id: &str,
    requested: &str,
    root: Option<&str>,
) -> Result<Option<Device>> {
    let serial = ebs_serial(volume_id);
    let usable = |d: &&Device| root.is_none_or(|r| d.dev != r);
    if let Some(d) = devices
        .iter()
        .filter(usable)
        .find(|d| d.serial.as_deref() == Some(serial.as_str()))
    {
        return Ok(Some(d.clone()));
    }
    let names = aliases(requested);
    match devices
        .iter()
        .filter(usable)
        .find(|d| names.contains(&d.name))
    {
        Some(d) => match &d.serial {
            Some(other) if other.starts_with("vol") => bail!(
                "{} ({requested}) carries serial {other}, another volume than {volume_id}: refusing it",
                d.path.display()
            ),
            _ => Ok(Some(d.clone())),
        },
        None => Ok(None),
    }
}

/// How much of each end of a volume is read to prove it blank.
pub const EDGE: u64 = 1 << 20;

/// Whether the first and last [`EDGE`] bytes of the device read back as zeros.
///
/// A new EBS volume created empty (not from a snapshot or a volume copy) reads as zeros: no
/// data blocks are written to it before it is used, unlike a volume from a snapshot ("Empty
/// volumes deliver their maximum performance immediately after creation and do not require
/// initialization", AWS, "Initialize Amazon EBS volumes",
/// <https://docs.aws.amazon.com/ebs/latest/userguide/initalize-volume.html>). Filesystems,
/// RAID/LVM labels and partition tables keep marks at one end or the other.
///
/// Reads bypass the page cache (`O_DIRECT`): what counts is what the device returns now. An
/// I/O error, or a read that returns fewer bytes than asked (a device whose backing store
/// vanished), is an error: such a device proves nothing.
pub fn reads_as_zeros(path: &Path) -> Result<bool> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::{FileExt, OpenOptionsExt};

    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let size = file
        .seek(SeekFrom::End(0))
        .with_context(|| format!("reading the size of {}", path.display()))?;
    if size == 0 {
        bail!("{} reports a size of 0 bytes", path.display());
    }
    // O_DIRECT wants buffers and offsets aligned to the logical block size (512 or 4096).
    const ALIGN: u64 = 4096;
    let len = EDGE.min(size);
    let tail = (size - len) / ALIGN * ALIGN;
    let mut raw = vec![0u8; len as usize + ALIGN as usize];
    let at = raw.as_ptr().align_offset(ALIGN as usize);
    for start in [0, tail] {
        let want = len.min(size - start) as usize;
        let buf = &mut raw[at..at + want];
        let got = file.read_at(buf, start).with_context(|| {
            format!(
                "reading {want} bytes at offset {start} of {}",
                path.display()
            )
        })?;
        if got != want {
            bail!(
                "short read at offset {start} of {}: {got} of {want} bytes",
                path.display()
            );
        }
        if buf.iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str, mm: &str, serial: Option<&str>) -> Device {
        Device {
            name: name.into(),
            path: PathBuf::from("/dev").join(name),
            dev: mm.into(),
            serial: serial.map(str::to_string),
        }
    }

    #[test]
    fn a_partitions_whole_disk_is_its_parent_in_sysfs() {
        let sys = tempfile::tempdir().unwrap();
        let disk = sys.path().join("devices/pci0000:00/nvme/nvme0/nvme0n1");
        std::fs::create_dir_all(disk.join("nvme0n1p1")).unwrap();
        std::fs::write(disk.join("dev"), "259:0\n").unwrap();
        std::fs::write(disk.join("nvme0n1p1/dev"), "259:1\n").unwrap();
        std::fs::write(disk.join("nvme0n1p1/partition"), "1\n").unwrap();
        let links = sys.path().join("dev/block");
        std::fs::create_dir_all(&links).unwrap();
        std::os::unix::fs::symlink(disk.join("nvme0n1p1"), links.join("259:1")).unwrap();
        std::os::unix::fs::symlink(&disk, links.join("259:0")).unwrap();
        assert_eq!(whole_disk(sys.path(), "259:1"), "259:0");
        assert_eq!(whole_disk(sys.path(), "259:0"), "259:0");
        // Not a block device sysfs knows (btrfs's 0:NN, a test's tree): as it is.
        assert_eq!(whole_disk(sys.path(), "0:31"), "0:31");
    }

    #[test]
    fn nvme_serial_wins_over_names() {
        let devs = [
            dev("nvme0n1", "259:0", Some("vol0root")),
            dev("nvme1n1", "259:1", Some("vol0other")),
            dev("nvme2n1", "259:2", Some("vol0abc")),
        ];
        let d = find(&devs, "vol-0abc", "/dev/xvdf", Some("259:0"))
            .unwrap()
            .unwrap();
        assert_eq!(d.name, "nvme2n1");
        assert_eq!(
            find(&devs, "vol-0zzz", "/dev/xvdf", Some("259:0")).unwrap(),
            None
        );
    }

    #[test]
    fn never_the_root_device() {
        let devs = [dev("nvme0n1", "259:0", Some("vol0abc"))];
        assert_eq!(
            find(&devs, "vol-0abc", "/dev/xvdf", Some("259:0")).unwrap(),
            None
        );
    }

    #[test]
    fn xen_names_alias_and_foreign_serials_are_refused() {
        let devs = [dev("xvda", "202:0", None), dev("xvdf", "202:80", None)];
        assert_eq!(
            find(&devs, "vol-0abc", "/dev/sdf", Some("202:0"))
                .unwrap()
                .unwrap()
                .name,
            "xvdf"
        );
        let devs = [dev("xvdf", "202:80", Some("vol0other"))];
        assert!(find(&devs, "vol-0abc", "/dev/sdf", None).is_err());
    }

    #[test]
    fn zeros_at_both_ends_read_as_blank_and_a_mark_does_not() {
        let t = tempfile::tempdir().unwrap();
        let img = t.path().join("img");
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(8 << 20).unwrap();
        assert!(reads_as_zeros(&img).unwrap());
        std::os::unix::fs::FileExt::write_all_at(&f, b"x", (8 << 20) - 1).unwrap();
        assert!(!reads_as_zeros(&img).unwrap());
        f.set_len(0).unwrap();
        assert!(
            reads_as_zeros(&img).is_err(),
            "an empty device proves nothing"
        );
    }

    #[test]
    fn lists_a_sysfs_tree() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("block/nvme1n1");
        std::fs::create_dir_all(d.join("device")).unwrap();
        std::fs::write(d.join("dev"), "7:3\n").unwrap();
        std::fs::write(d.join("device/serial"), "vol0abc  \n").unwrap();
        let devs = list(t.path(), Path::new("/x/dev")).unwrap();
        assert_eq!(
            devs,
            [Device {
                name: "nvme1n1".into(),
                path: "/x/dev/nvme1n1".into(),
                dev: "7:3".into(),
                serial: Some("vol0abc".into())
            }]
        );
    }
}
