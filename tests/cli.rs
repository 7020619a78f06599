//! The kafka-agent binary's contract with operators: configuration errors are one line naming
//! file and key, with exit code 3; `config` prints the effective configuration.

use std::path::Path;
use std::process::Command;

fn agent(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kafka-agent"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run kafka-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn setup(main: &str, dropin: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("agent.toml"), main).unwrap();
    if let Some(d) = dropin {
        std::fs::create_dir(dir.path().join("config.d")).unwrap();
        std::fs::write(dir.path().join("config.d/50-site.toml"), d).unwrap();
    }
    dir
}

const GOOD: &str = "[cluster]\nname = \"orders\"\nrole = \"kafka\"\nsize = 3\n\n\
                    [zookeeper]\nconnect = \"10.0.0.5:2181/kafka\"\ndigest = \"agent:s3cret\"\n";

fn assert_one_line_error(stderr: &str, file: &str, key: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {stderr}");
    assert!(lines[0].contains(file), "names the file {file}: {stderr}");
    assert!(lines[0].contains(key), "names the key {key}: {stderr}");
}

#[test]
fn effective_configuration_merges_dropins_and_redacts_secrets() {
    let dir = setup(GOOD, Some("[cluster]\nsize = 6\n"));
    let (code, out, err) = agent(&dir.path().join("agent.toml"), &["config"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("size = 6"), "{out}");
    assert!(out.contains("name = \"orders\""), "{out}");
    assert!(
        out.contains("<redacted>") && !out.contains("s3cret"),
        "{out}"
    );
}

#[test]
fn malformed_file_is_a_one_line_error_with_exit_code_3() {
    let dir = setup(GOOD, Some("[cluster\nsize = 6\n"));
    let (code, _, err) = agent(&dir.path().join("agent.toml"), &["config"]);
    assert_eq!(code, 3, "{err}");
    assert_one_line_error(&err, "50-site.toml", "line 1");
}

#[test]
fn unknown_key_is_named_with_its_file() {
    let dir = setup(GOOD, Some("[zookeeper]\nconect = \"x:1\"\n"));
    let (code, _, err) = agent(&dir.path().join("agent.toml"), &["config"]);
    assert_eq!(code, 3, "{err}");
    assert_one_line_error(&err, "50-site.toml", "zookeeper.conect");
}

#[test]
fn wrong_type_is_named_with_its_file() {
    let dir = setup(&GOOD.replace("size = 3", "size = \"three\""), None);
    let (code, _, err) = agent(&dir.path().join("agent.toml"), &["config"]);
    assert_eq!(code, 3, "{err}");
    assert_one_line_error(&err, "agent.toml", "cluster.size");
}

#[test]
fn missing_file_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = agent(&dir.path().join("agent.toml"), &["config"]);
    assert_eq!(code, 3, "{err}");
    assert_one_line_error(&err, "agent.toml", "cannot read");
}
