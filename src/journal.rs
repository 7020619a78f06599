//! What the agent did, journalled under the state directory, written atomically.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Writes `content` to `path` atomically: temp file in the same directory, fsync, rename,
/// fsync the directory. A file that already holds `content` is not rewritten. Returns whether
/// it wrote.
pub fn write_atomic(path: &Path, content: &[u8]) -> Result<bool> {
    if std::fs::read(path).is_ok_and(|old| old == content) {
        return Ok(false);
    }
    let dir = path.parent().context("path without a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(content)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(true)
}

/// Records a step's outcome as `<state_dir>/<name>.json`.
pub fn record<T: serde::Serialize>(state_dir: &Path, name: &str, value: &T) -> Result<()> {
    let path = state_dir.join(format!("{name}.json"));
    let mut body = serde_json::to_vec_pretty(value)?;
    body.push(b'\n');
    write_atomic(&path, &body).with_context(|| format!("journalling to {}", path.display()))?;
    Ok(())
}

/// Reads what an earlier step recorded, naming the step to run when it is missing.
pub fn read<T: serde::de::DeserializeOwned>(state_dir: &Path, name: &str) -> Result<T> {
    let path = state_dir.join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (run `kafka-agent {name}` first)",
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Reads what a step recorded, or None when it recorded nothing yet.
pub fn read_if_any<T: serde::de::DeserializeOwned>(
    state_dir: &Path,
    name: &str,
) -> Result<Option<T>> {
    let path = state_dir.join(format!("{name}.json"));
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("parsing {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_once_and_skips_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/claim.json");
        assert!(write_atomic(&p, b"a").unwrap());
        assert!(!write_atomic(&p, b"a").unwrap());
        assert!(write_atomic(&p, b"b").unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"b");
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn a_step_that_recorded_nothing_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_if_any::<u32>(dir.path(), "format").unwrap(), None);
        record(dir.path(), "format", &7u32).unwrap();
        assert_eq!(read_if_any::<u32>(dir.path(), "format").unwrap(), Some(7));
    }
}
