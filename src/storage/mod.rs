//! Step 3, storage: the volume's block device ([`device`]), the gate that the data on it
//! belongs to this id and cluster ([`gate`]), and the mount that formats only a volume that
//! is provably new ([`mount`]).

use std::path::{Path, PathBuf};

use crate::config::Role;

pub mod device;
pub mod gate;
pub mod kraft;
pub mod mount;

/// The directory below the volume's mount (`storage.data_dir`) that the rendered
/// configuration points at: Kafka's `log.dirs`, ZooKeeper's `dataDir`. A subdirectory, not
/// the mount itself: the root of an ext4 filesystem holds `lost+found`, which Kafka would
/// take for a log directory it cannot load.
pub const KAFKA_LOG_DIR: &str = "kafka-logs";
/// See [`KAFKA_LOG_DIR`].
pub const ZOOKEEPER_DATA_DIR: &str = "zookeeper";

/// Where the role keeps its data on the volume mounted at `mount`.
pub fn data_dir(role: Role, mount: &Path) -> PathBuf {
    mount.join(match role {
        Role::Kafka => KAFKA_LOG_DIR,
        Role::Zookeeper => ZOOKEEPER_DATA_DIR,
    })
}
