//! KRaft: a log directory must be formatted (`kafka-storage format`: meta.properties with
//! node.id, cluster.id and a directory id, and the bootstrap checkpoint) before Kafka starts.
//! The agent runs the configured command on a new, empty log directory only, never on one
//! holding meta.properties, and refuses a log directory that holds data without it.
//!
//! Runs after render (the command reads the rendered server.properties for `log.dirs`,
//! `node.id` and the quorum) and after the mount's identity gate. The intent is journalled
//! (`kraft-format.json`) before the command runs, so that a run killed half way converges:
//! what a cut-short format left in the directory is this node's own and is formatted again.
//!
//! Kafka's operations guide, "KRaft": `kafka-storage.sh format --cluster-id <id> --config
//! server.properties` (https://kafka.apache.org/documentation/#kraft_storage).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::gate;
use super::mount::StorageError;
use crate::config::{Kraft, Role, Settings};

const JOURNAL: &str = "kraft-format";

/// What the step found or did (journalled as `kraft-format.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Formatted {
    pub volume: String,
    pub log_dir: PathBuf,
    /// formatting (the command may have been cut short) | formatted | already (meta.properties
    /// was there)
    pub state: String,
}

/// Entries of `dir` (none when it does not exist), sorted.
fn entries(dir: &Path) -> Result<Vec<String>> {
    let read = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut out = Vec::new();
    for e in read {
        out.push(e?.file_name().to_string_lossy().into_owned());
    }
    out.sort();
    Ok(out)
}

/// Formats the log directory of `volume` (mounted at `storage.data_dir`) for node `id` when it
/// is new and empty; checks what the command wrote through the identity gate.
pub fn run(
    settings: &Settings,
    kraft: &Kraft,
    rendered: &Path,
    volume: &str,
    id: u32,
) -> Result<Formatted> {
    let state_dir = &settings.paths.state_dir;
    let cluster_id = settings
        .storage
        .cluster_id
        .as_deref()
        .context("storage.cluster_id is not set (required in KRaft mode)")?;
    let log_dir = super::data_dir(Role::Kafka, &settings.storage.data_dir);
    let meta = log_dir.join("meta.properties");
    let done = |state: &str| Formatted {
        volume: volume.to_string(),
        log_dir: log_dir.clone(),
        state: state.to_string(),
    };
    let begun = crate::journal::read_if_any::<Formatted>(state_dir, JOURNAL)?
        .filter(|f| f.volume == volume && f.state == "formatting");
    if meta.exists() && begun.is_none() {
        // The mount's gate has read it already; formatting it would lose the node's data.
        return Ok(done("already"));
    }
    let found = entries(&log_dir)?;
    if !found.is_empty() && begun.is_none() {
        let shown: Vec<&str> = found.iter().take(5).map(String::as_str).collect();
        return Err(StorageError::Unrecognised(format!(
            "{} on {volume} holds {} entries ({}{}) but no meta.properties: not a new log \
             directory, and formatting would bury what it holds; refusing to run kafka-storage \
             format (restore its meta.properties, or empty it if it is truly unwanted)",
            log_dir.display(),
            found.len(),
            shown.join(", "),
            if found.len() > shown.len() {
                ", ..."
            } else {
                ""
            }
        ))
        .into());
    }
    crate::journal::record(state_dir, JOURNAL, &done("formatting"))?;
    let (program, args) = kraft
        .format_command
        .split_first()
        .context("kafka.format_command is empty")?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .arg("--config")
        .arg(rendered)
        .arg("--cluster-id")
        .arg(cluster_id);
    // Cut short earlier: what it left is this node's own, and `--ignore-formatted` lets the
    // tool finish a directory it formatted before the cut.
    if begun.is_some() {
        cmd.arg("--ignore-formatted");
    }
    tracing::info!(command = ?cmd, log_dir = %log_dir.display(), "formatting the KRaft log directory");
    let out = cmd.output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            kraft.format_command.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // What the tool wrote must be this node's, as any meta.properties found later will be.
    let written = gate::read(Role::Kafka, std::slice::from_ref(&log_dir))?;
    if written.is_empty() {
        bail!(
            "`{}` succeeded but {} has no meta.properties: check log.dirs in {}",
            kraft.format_command.join(" "),
            log_dir.display(),
            rendered.display()
        );
    }
    if let Some(why) = gate::refusal(volume, &written, id, Some(cluster_id)) {
        return Err(StorageError::IdentityMismatch(why).into());
    }
    let formatted = done("formatted");
    crate::journal::record(state_dir, JOURNAL, &formatted)?;
    Ok(formatted)
}
