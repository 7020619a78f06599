//! java.util.Properties as Kafka reads server.properties (`Utils.loadProps`: `Properties.load`
//! of an InputStream, ISO-8859-1), run by the machine's OpenJDK (it comes with Debian's
//! ZooKeeper): the referee for the agent's renderer and the stand-in broker's parser.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Loads a file with java.util.Properties.load(InputStream) and prints every key and value
/// sorted, with \, = and anything outside printable ASCII escaped, one line per entry.
const PROPS_JAVA: &str = r#"
import java.io.*;
import java.util.*;

public class Props {
    static String esc(String s) {
        StringBuilder b = new StringBuilder();
        for (char c : s.toCharArray()) {
            if (c == '\\') b.append("\\\\");
            else if (c == '=') b.append("\\=");
            else if (c < 0x20 || c > 0x7e) b.append(String.format("\\u%04X", (int) c));
            else b.append(c);
        }
        return b.toString();
    }
    public static void main(String[] args) throws Exception {
        Properties p = new Properties();
        try (InputStream in = new FileInputStream(args[0])) { p.load(in); }
        for (String k : new TreeSet<>(p.stringPropertyNames())) {
            System.out.println(esc(k) + "=" + esc(p.getProperty(k)));
        }
    }
}
"#;

/// An entry's one-line form, as Props.esc prints it: `esc(key)=esc(value)`.
pub fn esc(s: &str) -> String {
    let mut out = String::new();
    for unit in s.encode_utf16() {
        match unit {
            0x5c => out.push_str("\\\\"),
            0x3d => out.push_str("\\="),
            0x20..=0x7e => out.push(unit as u8 as char),
            u => out.push_str(&format!("\\u{u:04X}")),
        }
    }
    out
}

/// The machine's `java`: JAVA_HOME, PATH, then /usr/lib/jvm/*/bin/java.
pub fn java() -> Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(home) = std::env::var_os("JAVA_HOME") {
        candidates.push(PathBuf::from(home).join("bin/java"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("java")));
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/jvm") {
        let mut jvms: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin/java"))
            .collect();
        jvms.sort();
        candidates.extend(jvms);
    }
    candidates.into_iter().find(|p| p.is_file()).context(
        "no `java` found (JAVA_HOME, PATH, /usr/lib/jvm/*/bin/java): install OpenJDK (it comes \
         with the Debian zookeeper package: apt-get install default-jre-headless)",
    )
}

/// The whole map java.util.Properties reads from `file`, each entry in the [`esc`] form,
/// sorted.
pub fn load(file: &Path) -> Result<Vec<String>> {
    let dir = std::env::temp_dir().join(format!(
        "kafka-testbed-props-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir)?;
    let src = dir.join("Props.java");
    std::fs::write(&src, PROPS_JAVA)?;
    let java = java()?;
    let out = Command::new(&java)
        .arg(&src)
        .arg(file)
        .output()
        .with_context(|| format!("running {}", java.display()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = out?;
    if !out.status.success() {
        bail!(
            "{} Props.java {}: {}\n{}",
            java.display(),
            file.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut lines: Vec<String> = String::from_utf8(out.stdout)?
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    Ok(lines)
}
