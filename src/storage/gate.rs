//! The identity gate: data on a volume must belong to this id and cluster before anything
//! uses it. Kafka keeps `meta.properties` (broker.id or node.id, cluster.id) in each log dir;
//! ZooKeeper keeps `myid` in its data dir.

use std::collections::BTreeMap;

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
