//! A host's boot as its AMI would run it: the files the image bakes, then cloud-init with the
//! instance's user data, then the systemd units in their order. Only for worlds given a
//! [`BootSpec`] (`World::boot_with`); other worlds' hosts boot to an idle namespace and tests
//! run the agent by hand.
//!
//! cloud-init, as far as the project's user data needs it (cloud-init documentation, "User
//! data formats" and the `write_files` and `runcmd` modules):
//! * a `#!` script is written to `var/lib/cloud/instance/scripts/part-001` and run;
//! * a `#cloud-config` document is honoured for `write_files` (path, content, encoding
//!   `text`/`b64`/`base64`, permissions as an octal string, `append`, `owner` only as
//!   `root:root`) and `runcmd` (a string runs under `sh -c`, a list is an argv); any other key
//!   is refused loudly: the output log says which, and nothing of that document runs;
//! * anything else (MIME multipart, `#include`, gzip) is refused the same way.
//!
//! The hosts have no systemd. A `runcmd` meets `systemctl` as the image's units are at that
//! moment: every unit is enabled and none has run yet (the host starts them, in their order,
//! once cloud-init is done). So `is-failed` / `is-active` answer `inactive`, and `start
//! --no-block` / `enable --now --no-block` of the image's units is accepted as the start job
//! their enablement already queued (noted as `systemctl: start <unit>`); an unknown unit fails
//! as systemctl fails it (exit 5), and a blocking start or any other verb is refused loudly:
//! they would need a unit to run during cloud-init, which this order does not model.
//!
//! Paths are the host's: an absolute path in user data lands below the host's directory, and
//! commands run in the host's network namespace with `HOST_ROOT` set to that directory, its
//! AWS endpoint (as the image's environment would have it) and cwd there. Output goes to the
//! host's `var/log/cloud-init-output.log`; each unit's to `var/log/<unit>.log`. Every step is
//! noted with its time in `var/log/testbed-boot.log` (`<unix ms> <event>`), for timelines.
//!
//! The units run in the order of the project's systemd/ files: oneshot units to completion
//! (a failed one stops the units after it, as `Requires=` does), long-running ones started
//! and left running, their main pid in the host's `run/<unit>.pid` while they run (systemd's
//! MainPID; `testbed/standin/kafka-stop.sh` stops a unit by it, as `systemctl stop` would). On
//! terminate the host's processes get SIGTERM when the instance begins shutting down and
//! SIGKILL when it is gone.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

/// What the image bakes and which units it starts at boot.
#[derive(Debug, Clone)]
pub struct BootSpec {
    /// Files the image holds before first boot: absolute path in the host's view, content.
    /// `{host}` in a content is replaced by the host's directory.
    pub baked: Vec<(String, String)>,
    /// The units, in order.
    pub units: Vec<Unit>,
}

/// One systemd unit: its command (with `{host}` replaced) and whether boot waits for it.
#[derive(Debug, Clone)]
pub struct Unit {
    pub name: String,
    pub argv: Vec<String>,
    /// Type=oneshot: runs to completion before the next unit; a failure stops the rest.
    pub oneshot: bool,
}

/// The process groups a host's boot started, to signal on shutdown. Once killed (the host
/// halted), a group started later by a boot still in flight is killed as it is added.
#[derive(Debug, Default, Clone)]
pub(crate) struct Processes(Arc<Mutex<(bool, Vec<i32>)>>);

impl Processes {
    fn add(&self, pgid: i32) {
        let mut p = self.0.lock().unwrap();
        if p.0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        p.1.push(pgid);
    }

    pub(crate) fn signal(&self, sig: nix::sys::signal::Signal) {
        let mut p = self.0.lock().unwrap();
        if sig == nix::sys::signal::Signal::SIGKILL {
            p.0 = true;
        }
        for pgid in p.1.iter() {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(*pgid), sig);
        }
    }
}

/// Where and how one host boots.
#[derive(Debug, Clone)]
pub(crate) struct HostBoot {
    pub(crate) instance_id: String,
    pub(crate) dir: PathBuf,
    pub(crate) ns: String,
    pub(crate) aws_endpoint: String,
    pub(crate) user_data: Option<String>,
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Notes a boot event in the host's `var/log/testbed-boot.log`.
pub(crate) fn note(dir: &Path, event: &str) {
    use std::io::Write;
    let path = dir.join("var/log/testbed-boot.log");
    let _ = std::fs::create_dir_all(path.parent().unwrap());
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        let _ = writeln!(f, "{} {event}", now_ms());
    }
}

/// An absolute path of the host's view, below the host's directory.
fn in_host(dir: &Path, path: &str) -> Result<PathBuf> {
    let rel = path
        .strip_prefix('/')
        .with_context(|| format!("{path:?} is not an absolute path"))?;
    if rel.split('/').any(|c| c == "..") {
        bail!("{path:?} leaves the root");
    }
    Ok(dir.join(rel))
}

/// Boots the host: baked files, cloud-init, units. Runs to the end of the last oneshot unit
/// (long-running units keep running, their process groups in `procs`).
pub(crate) async fn boot(spec: Arc<BootSpec>, host: HostBoot, procs: Processes) {
    let dir = &host.dir;
    note(dir, "boot");
    for (path, content) in &spec.baked {
        let write = in_host(dir, path).and_then(|p| {
            std::fs::create_dir_all(p.parent().unwrap())?;
            std::fs::write(&p, content.replace("{host}", &dir.to_string_lossy()))?;
            Ok(())
        });
        if let Err(e) = write {
            note(dir, &format!("image: cannot write {path}: {e:#}"));
            return;
        }
    }
    let log = dir.join("var/log/cloud-init-output.log");
    match &host.user_data {
        None => note(dir, "cloud-init: no user data"),
        Some(data) => {
            note(dir, "cloud-init: start");
            match cloud_init(&host, data, &log, &procs, &spec.units).await {
                Ok(()) => note(dir, "cloud-init: done"),
                Err(e) => {
                    append(&log, &format!("cloud-init: {e:#}\n"));
                    note(dir, &format!("cloud-init: failed: {e:#}"));
                }
            }
        }
    }
    for unit in &spec.units {
        let argv: Vec<String> = unit
            .argv
            .iter()
            .map(|a| a.replace("{host}", &dir.to_string_lossy()))
            .collect();
        let unit_log = dir.join(format!("var/log/{}.log", unit.name));
        note(dir, &format!("{}: start", unit.name));
        let child = spawn(&host, &argv, &unit_log, &procs);
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                note(dir, &format!("{}: failed to start: {e:#}", unit.name));
                return;
            }
        };
        if !unit.oneshot {
            let (d, name) = (dir.clone(), unit.name.clone());
            let pidfile = dir.join(format!("run/{name}.pid"));
            let pid = child.id().map(|p| p.to_string()).unwrap_or_default();
            let _ = std::fs::create_dir_all(pidfile.parent().unwrap());
            let _ = std::fs::write(&pidfile, format!("{pid}\n"));
            tokio::spawn(async move {
                let status = child.wait().await;
                // systemd forgets a unit's MainPID once it exited.
                if std::fs::read_to_string(&pidfile).is_ok_and(|p| p.trim() == pid) {
                    let _ = std::fs::remove_file(&pidfile);
                }
                note(&d, &format!("{name}: exited ({})", describe(status)));
            });
            continue;
        }
        let status = child.wait().await;
        let ok = status.as_ref().is_ok_and(|s| s.success());
        note(
            dir,
            &format!("{}: exited ({})", unit.name, describe(status)),
        );
        if !ok {
            note(
                dir,
                &format!("{}: failed; the units after it do not start", unit.name),
            );
            return;
        }
    }
    note(dir, "boot: done");
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => e.to_string(),
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let _ = std::fs::create_dir_all(path.parent().unwrap());
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(text.as_bytes());
    }
}

/// Starts `argv` on the host, output appended to `log`, in a process group of its own.
fn spawn(
    host: &HostBoot,
    argv: &[String],
    log: &Path,
    procs: &Processes,
) -> Result<tokio::process::Child> {
    let (program, args) = argv.split_first().context("an empty command")?;
    std::fs::create_dir_all(log.parent().unwrap())?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut cmd = super::host::command(&host.ns, program, host.aws_endpoint.clone());
    cmd.args(args)
        .current_dir(&host.dir)
        .env("HOST_ROOT", &host.dir)
        .env("INSTANCE_ID", &host.instance_id)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone()?))
        .stderr(Stdio::from(out));
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = tokio::process::Command::from(cmd)
        .kill_on_drop(false)
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    if let Some(pid) = child.id() {
        procs.add(pid as i32);
    }
    Ok(child)
}

async fn run(host: &HostBoot, argv: &[String], log: &Path, procs: &Processes) -> Result<()> {
    let status = spawn(host, argv, log, procs)?.wait().await?;
    if !status.success() {
        bail!("`{}` failed ({status})", argv.join(" "));
    }
    Ok(())
}

/// Runs the user data as cloud-init would, or refuses it naming what is not modelled.
async fn cloud_init(
    host: &HostBoot,
    data: &str,
    log: &Path,
    procs: &Processes,
    units: &[Unit],
) -> Result<()> {
    if data.starts_with("#!") {
        let script = host.dir.join("var/lib/cloud/instance/scripts/part-001");
        std::fs::create_dir_all(script.parent().unwrap())?;
        std::fs::write(&script, data)?;
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        return run(host, &[script.to_string_lossy().into_owned()], log, procs).await;
    }
    if !data.starts_with("#cloud-config") {
        let first = data.lines().next().unwrap_or("");
        bail!(
            "user data starting {first:?} is not modelled by the testbed (a `#!` script or a \
             `#cloud-config` document only)"
        );
    }
    let doc = parse_yaml(data)?;
    let map = doc
        .as_object()
        .context("the #cloud-config document is not a mapping")?;
    if let Some(unknown) = map
        .keys()
        .find(|k| !["write_files", "runcmd"].contains(&k.as_str()))
    {
        bail!(
            "cloud-config key `{unknown}` is not modelled by the testbed (write_files and \
             runcmd only): refusing the document rather than ignoring it"
        );
    }
    for f in map
        .get("write_files")
        .and_then(|w| w.as_array())
        .into_iter()
        .flatten()
    {
        write_file(&host.dir, f)?;
    }
    for c in map
        .get("runcmd")
        .and_then(|r| r.as_array())
        .into_iter()
        .flatten()
    {
        let argv: Vec<String> = match c {
            serde_json::Value::String(s) => vec!["sh".into(), "-c".into(), s.clone()],
            serde_json::Value::Array(a) => a
                .iter()
                .map(|v| match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
            other => bail!("runcmd entry {other} is neither a string nor a list"),
        };
        append(log, &format!("runcmd: {}\n", argv.join(" ")));
        // `systemctl` is the image's as cloud-init meets it (see the module's documentation).
        let shim = systemctl(&host.dir, units)?;
        let path = std::env::var("PATH").unwrap_or_default();
        let argv: Vec<String> = ["env".into(), format!("PATH={}:{path}", shim.display())]
            .into_iter()
            .chain(argv)
            .collect();
        run(host, &argv, log, procs).await?;
    }
    Ok(())
}

/// Writes the host's `systemctl` for runcmd (`run/testbed/bin/systemctl`, knowing the image's
/// `units`) and returns its directory.
fn systemctl(dir: &Path, units: &[Unit]) -> Result<PathBuf> {
    let bin = dir.join("run/testbed/bin");
    std::fs::create_dir_all(&bin)?;
    let names: Vec<&str> = units.iter().map(|u| u.name.as_str()).collect();
    let script = SYSTEMCTL.replace("@UNITS@", &names.join(" "));
    let path = bin.join("systemctl");
    std::fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(bin)
}

/// systemctl as runcmd meets it on the testbed's image: `@UNITS@` are the image's units.
const SYSTEMCTL: &str = r#"#!/bin/sh
# kafka-testbed: systemctl during cloud-init's runcmd (testbed/src/cloudinit.rs). The image's
# units are enabled and none has run yet: the host starts them once cloud-init is done.
units=" @UNITS@ "
verb= names= quiet= block=1 now=
for a in "$@"; do
  case $a in
    -q|--quiet) quiet=1 ;;
    --no-block) block= ;;
    --now) now=1 ;;
    -*) echo "systemctl: option $a is not modelled by the testbed" >&2; exit 1 ;;
    *) if [ -z "$verb" ]; then verb=$a; else names="$names $a"; fi ;;
  esac
done
case $verb in
  is-failed|is-active)
    for n in $names; do [ -n "$quiet" ] || echo inactive; done
    if [ "$verb" = is-failed ]; then exit 1; else exit 3; fi ;;
  start|enable)
    if [ "$verb" = enable ] && [ -z "$now" ]; then exit 0; fi
    if [ -n "$block" ]; then
      echo "systemctl $verb without --no-block is not modelled by the testbed: it would wait for a unit the host starts only after cloud-init" >&2
      exit 1
    fi
    for n in $names; do
      case "$units" in
        *" ${n%.service} "*) ;;
        *) echo "Failed to start $n: Unit $n not found." >&2; exit 5 ;;
      esac
    done
    for n in $names; do
      echo "$(date +%s%3N) systemctl: start $n" >>"$HOST_ROOT/var/log/testbed-boot.log"
    done ;;
  *) echo "systemctl $verb is not modelled by the testbed" >&2; exit 1 ;;
esac
"#;

/// One `write_files` entry.
fn write_file(dir: &Path, f: &serde_json::Value) -> Result<()> {
    let o = f
        .as_object()
        .context("a write_files entry is not a mapping")?;
    for k in o.keys() {
        if ![
            "path",
            "content",
            "encoding",
            "permissions",
            "owner",
            "append",
        ]
        .contains(&k.as_str())
        {
            bail!("write_files key `{k}` is not modelled by the testbed");
        }
    }
    let path = o
        .get("path")
        .and_then(|p| p.as_str())
        .context("a write_files entry without a path")?;
    let content = o.get("content").and_then(|c| c.as_str()).unwrap_or("");
    let bytes = match o.get("encoding").and_then(|e| e.as_str()).unwrap_or("text") {
        "text" => content.as_bytes().to_vec(),
        "b64" | "base64" => {
            base64(content).with_context(|| format!("{path}: content is not base64"))?
        }
        other => bail!("{path}: encoding {other:?} is not modelled by the testbed"),
    };
    if let Some(owner) = o.get("owner").and_then(|v| v.as_str())
        && owner != "root:root"
    {
        bail!("{path}: owner {owner:?} is not modelled by the testbed (root:root only)");
    }
    let target = in_host(dir, path)?;
    std::fs::create_dir_all(target.parent().unwrap())?;
    let append = o.get("append").and_then(|a| a.as_bool()).unwrap_or(false);
    if append {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&target)?
            .write_all(&bytes)?;
    } else {
        std::fs::write(&target, &bytes)?;
    }
    // cloud-init's default is 0644.
    let mode = match o.get("permissions").and_then(|p| p.as_str()) {
        Some(p) => u32::from_str_radix(p.trim_start_matches("0o"), 8)
            .with_context(|| format!("{path}: permissions {p:?} are not octal"))?,
        None => 0o644,
    };
    std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    Ok(())
}

/// Standard base64 (padding optional, whitespace ignored).
pub(crate) fn base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
    {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Standard base64 with padding (user data as RunInstances and launch configurations take it).
pub fn base64_encode(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// YAML to JSON through the venv's PyYAML (moto's dependency): the testbed carries no YAML
/// parser of its own.
fn parse_yaml(text: &str) -> Result<serde_json::Value> {
    use std::io::Write;
    let python = super::aws::venv().join("bin/python");
    let mut child = std::process::Command::new(&python)
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", python.display()))?;
    child.stdin.take().unwrap().write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "the #cloud-config document is not YAML: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes() {
        assert_eq!(base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64("aGk").unwrap(), b"hi");
        assert_eq!(base64("I2Nsb3Vk\nLWNvbmZpZw==").unwrap(), b"#cloud-config");
        assert!(base64("a*b").is_none());
        for text in ["", "h", "hi", "hey", "#cloud-config\nruncmd: []\n"] {
            assert_eq!(
                base64(&base64_encode(text.as_bytes())).unwrap(),
                text.as_bytes()
            );
        }
        assert_eq!(base64_encode(b"hello"), "aGVsbG8=");
    }

    #[test]
    fn paths_stay_below_the_host() {
        let d = Path::new("/h");
        assert_eq!(in_host(d, "/etc/a").unwrap(), PathBuf::from("/h/etc/a"));
        assert!(in_host(d, "etc/a").is_err());
        assert!(in_host(d, "/etc/../../x").is_err());
    }

    #[test]
    fn write_files_honours_encoding_mode_and_append_and_refuses_the_rest() {
        let d = tempdir();
        let f = |v: serde_json::Value| write_file(&d, &v);
        f(serde_json::json!({"path": "/etc/x", "content": "aGk=", "encoding": "b64", "permissions": "0600"})).unwrap();
        assert_eq!(std::fs::read(d.join("etc/x")).unwrap(), b"hi");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(d.join("etc/x")).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        f(serde_json::json!({"path": "/etc/x", "content": "!", "append": true})).unwrap();
        assert_eq!(std::fs::read(d.join("etc/x")).unwrap(), b"hi!");
        assert!(f(serde_json::json!({"path": "/etc/y", "content": "", "defer": true})).is_err());
        assert!(f(serde_json::json!({"path": "/etc/y", "owner": "kafka:kafka"})).is_err());
        assert!(f(serde_json::json!({"path": "/etc/y", "encoding": "gzip"})).is_err());
    }

    #[test]
    fn systemctl_in_runcmd_knows_the_images_units_and_that_none_has_run() {
        let d = tempdir();
        let unit = |name: &str| Unit {
            name: name.into(),
            argv: vec!["true".into()],
            oneshot: true,
        };
        let bin = systemctl(&d, &[unit("kafka-agent"), unit("kafka")]).unwrap();
        let sh = |cmd: &str| {
            std::process::Command::new("sh")
                .args(["-c", cmd])
                .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
                .env("HOST_ROOT", &d)
                .output()
                .unwrap()
        };
        let code = |cmd: &str| sh(cmd).status.code().unwrap();
        std::fs::create_dir_all(d.join("var/log")).unwrap();
        // The template's runcmd: nothing has failed, so the units are started.
        let out = sh("systemctl is-failed --quiet kafka-agent.service || \
                      systemctl start --no-block kafka-agent.service kafka.service");
        assert!(out.status.success(), "{out:?}");
        let log = std::fs::read_to_string(d.join("var/log/testbed-boot.log")).unwrap();
        assert!(
            log.contains(" systemctl: start kafka-agent.service\n"),
            "{log}"
        );
        assert!(log.contains(" systemctl: start kafka.service\n"), "{log}");
        assert_eq!(code("systemctl is-active kafka"), 3);
        assert_eq!(code("systemctl enable --now --no-block kafka"), 0);
        assert_eq!(
            code("systemctl start --no-block kafka-agent-watch.service"),
            5
        );
        assert_eq!(code("systemctl start kafka.service"), 1);
        assert_eq!(code("systemctl restart --no-block kafka.service"), 1);
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("cloudinit-test-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
