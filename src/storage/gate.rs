//! The identity gate: data on a volume must belong to this id and cluster before anything
//! uses it. Kafka keeps `meta.properties` (broker.id or node.id, cluster.id) in each log dir;
//! ZooKeeper keeps `myid` in its data dir.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::config::Role;

/// What a data directory says about whose it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub node_id: Option<u32>,
    pub cluster_id: Option<String>,
}

/// Parses java.util.Properties-style `key=value` lines (comments and blanks skipped).
pub fn properties(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
        .filter_map(|l| {
            let i = l.find(['=', ':'])?;
            Some((l[..i].trim().to_string(), l[i + 1..].trim().to_string()))
        })
        .collect()
}

/// Reads Kafka's meta.properties: node.id (KRaft) or broker.id, and cluster.id.
pub fn kafka(meta: &str) -> Found {
    let p = properties(meta);
    Found {
        node_id: p
            .get("node.id")
            .or_else(|| p.get("broker.id"))
            .and_then(|v| v.parse().ok()),
        cluster_id: p.get("cluster.id").cloned(),
    }
}

/// What each of `dirs` says about whose data it holds: Kafka's `meta.properties` or
/// ZooKeeper's `myid`. A directory without the file says nothing; a file that cannot be read
/// is an error naming it (it proves nothing either way).
pub fn read(role: Role, dirs: &[PathBuf]) -> Result<Vec<(PathBuf, Found)>> {
    let name = match role {
        Role::Kafka => "meta.properties",
        Role::Zookeeper => "myid",
    };
    let mut out = Vec::new();
    for dir in dirs {
        let path = dir.join(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let found = match role {
            Role::Kafka => kafka(&text),
            Role::Zookeeper => Found {
                node_id: text.trim().parse().ok(),
                cluster_id: None,
            },
        };
        out.push((path, found));
    }
    Ok(out)
}

/// The first reason to refuse among what [`read`] found, naming the file.
pub fn refusal(
    volume: &str,
    found: &[(PathBuf, Found)],
    id: u32,
    cluster: Option<&str>,
) -> Option<String> {
    found.iter().find_map(|(path, f)| {
        mismatch(volume, f, id, cluster).map(|why| format!("{why} ({})", path.display()))
    })
}

/// None when the data belongs to `id` (and `cluster`, when both sides know it); otherwise the
/// reason to refuse, phrased for the FAILURE reason.
pub fn mismatch(volume: &str, found: &Found, id: u32, cluster: Option<&str>) -> Option<String> {
    let wrong_id = found.node_id.is_some_and(|n| n != id);
    let wrong_cluster =
        matches!((cluster, &found.cluster_id), (Some(want), Some(have)) if want != have);
    if !wrong_id && !wrong_cluster {
        return None;
    }
    let node = found
        .node_id
        .map_or("an unknown node".to_string(), |n| format!("node {n}"));
    let of = found
        .cluster_id
        .as_deref()
        .map_or(String::new(), |c| format!(" of cluster {c}"));
    let expected = match cluster {
        Some(c) => format!("node {id} of cluster {c}"),
        None => format!("node {id}"),
    };
    Some(format!("{volume} holds {node}{of}, expected {expected}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kraft_and_zk_mode_meta() {
        let kraft = "#\n#Tue Nov 22\nnode.id=2\nversion=1\ncluster.id=abc\ndirectory.id=x\n";
        assert_eq!(
            kafka(kraft),
            Found {
                node_id: Some(2),
                cluster_id: Some("abc".into())
            }
        );
        let zk = "version=0\nbroker.id=5\ncluster.id = q1";
        assert_eq!(
            kafka(zk),
            Found {
                node_id: Some(5),
                cluster_id: Some("q1".into())
            }
        );
    }

    #[test]
    fn reads_every_data_dir_and_names_the_file_that_refuses() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        let logs = root.join("kafka-logs");
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::write(logs.join("meta.properties"), "node.id=2\n").unwrap();
        let found = read(Role::Kafka, &[root.clone(), logs.clone()]).unwrap();
        assert_eq!(found.len(), 1, "the mount root holds no meta.properties");
        let why = refusal("vol-1", &found, 1, None).unwrap();
        assert!(
            why.starts_with("vol-1 holds node 2, expected node 1 ("),
            "{why}"
        );
        assert!(why.contains("kafka-logs/meta.properties"), "{why}");
        assert_eq!(refusal("vol-1", &found, 2, None), None);

        std::fs::write(root.join("myid"), "3\n").unwrap();
        let found = read(Role::Zookeeper, &[root.clone(), root.join("zookeeper")]).unwrap();
        assert_eq!(found[0].1.node_id, Some(3));
        // A file that cannot be read proves nothing: an error, not a pass.
        std::fs::create_dir_all(root.join("zookeeper/myid")).unwrap();
        assert!(read(Role::Zookeeper, &[root.join("zookeeper")]).is_err());
    }

    #[test]
    fn refuses_other_nodes_and_clusters_with_a_reason() {
        let f = Found {
            node_id: Some(2),
            cluster_id: Some("X".into()),
        };
        assert_eq!(
            mismatch("vol-1", &f, 1, Some("X")).unwrap(),
            "vol-1 holds node 2 of cluster X, expected node 1 of cluster X"
        );
        assert!(mismatch("vol-1", &f, 2, Some("Y")).is_some());
        assert!(mismatch("vol-1", &f, 2, Some("X")).is_none());
        assert!(mismatch("vol-1", &f, 2, None).is_none());
    }
}
