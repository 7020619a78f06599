//! `kafka-testbed check-release`: the release binary runs where nothing else is.
//!
//! It must be static (no program interpreter), stripped and at most 25 MB. In an empty root
//! (the binary, `/etc/hosts` with localhost only, `/etc/resolv.conf`) inside a network
//! namespace it prints its version and help, and its start-up time is measured there. Then,
//! with its config file added, `claim --dry-run` reads the instance's identity from an IMDS
//! stand-in, resolves its region's AWS endpoint through DNS (dnsmasq in the namespace serves
//! the region's names, nothing else does) and connects there, naming the endpoint in its TLS
//! ClientHello; the endpoint hangs up, and the agent retries until its boot deadline and
//! exits as its contract says (5 or 9), not with a panic. Namespace, dnsmasq and root go on
//! every path.

use std::ffi::CString;
use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::AsyncReadExt;

use super::imds::{Imds, Metadata};
use super::{cleanup, netns, process};

/// The largest release binary the project ships.
pub const MAX_BYTES: u64 = 25 * 1024 * 1024;
/// The region the stand-in IMDS reports: its endpoints are `<service>.testbed-region.amazonaws.com`.
const REGION: &str = "testbed-region";
/// dnsmasq's address in the namespace (TEST-NET-1).
const DNS: &str = "192.0.2.53";
/// Where DNS says the region's endpoints are (TEST-NET-2): only dnsmasq knows this address.
const ENDPOINT: &str = "198.51.100.7";
/// Runs of `--version` whose median is the start-up time.
const STARTUP_RUNS: usize = 20;
/// The agent's boot deadline (the least it accepts), and how long after it the check waits
/// for the agent to give up.
const BOOT_DEADLINE: Duration = Duration::from_secs(10);
const EXIT_WITHIN: Duration = Duration::from_secs(30);
/// A CloudWatch Logs ledger and no ENIs or volumes: `claim --dry-run`'s first AWS call goes to
/// `logs.<region>.amazonaws.com`.
fn config() -> String {
    format!(
        "[cluster]\nname = \"release-check\"\nrole = \"kafka\"\nsize = 3\n\n\
         [boot]\ndeadline_seconds = {}\n\n\
         [claim]\nbackend = \"cloudwatch-logs\"\n\n\
         [resources]\neni = false\nvolume = false\n",
        BOOT_DEADLINE.as_secs()
    )
}

/// What an ELF file says about how it runs.
#[derive(Debug, PartialEq, Eq)]
pub struct Elf {
    /// The loader a dynamically linked executable names (`PT_INTERP`); none when static.
    pub interpreter: Option<String>,
    /// Whether it still has a symbol table (`.symtab`): not stripped.
    pub symbols: bool,
}

/// Reads the program and section headers of a 64-bit little-endian ELF file.
pub fn elf(bytes: &[u8]) -> Result<Elf> {
    if bytes.get(..6) != Some(b"\x7fELF\x02\x01") {
        bail!("not a 64-bit little-endian ELF file");
    }
    let int = |at: usize, len: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(len)?)?;
        Some(
            b.iter()
                .rev()
                .fold(0usize, |v, x| (v << 8) | usize::from(*x)),
        )
    };
    let parse = || -> Option<Elf> {
        let (phoff, phentsize, phnum) = (int(0x20, 8)?, int(0x36, 2)?, int(0x38, 2)?);
        let (shoff, shentsize, shnum) = (int(0x28, 8)?, int(0x3a, 2)?, int(0x3c, 2)?);
        let mut interpreter = None;
        for i in 0..phnum {
            let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
            if int(ph, 4)? == 3 {
                let (offset, size) = (int(ph + 8, 8)?, int(ph + 32, 8)?);
                let path = bytes.get(offset..offset.checked_add(size)?)?;
                let path = String::from_utf8_lossy(path);
                interpreter = Some(path.trim_end_matches('\0').to_string());
            }
        }
        let mut symbols = false;
        for i in 0..shnum {
            let sh = shoff.checked_add(i.checked_mul(shentsize)?)?;
            symbols |= int(sh + 4, 4)? == 2;
        }
        Some(Elf {
            interpreter,
            symbols,
        })
    };
    parse().context("truncated ELF headers")
}

/// The server name (SNI) a TLS ClientHello asks for, from the first record a client sends.
pub fn server_name(record: &[u8]) -> Option<String> {
    let mut r = Reader(record);
    if r.u8()? != 0x16 {
        return None; // not a handshake record
    }
    r.take(2)?;
    let n = r.u16()?;
    let mut r = Reader(r.take(n)?);
    if r.u8()? != 0x01 {
        return None; // not a ClientHello
    }
    let n = r.u24()?;
    let mut r = Reader(r.take(n)?);
    r.take(2 + 32)?; // version, random
    let n = r.u8()?;
    r.take(n)?; // session id
    let n = r.u16()?;
    r.take(n)?; // cipher suites
    let n = r.u8()?;
    r.take(n)?; // compression methods
    let n = r.u16()?;
    let mut extensions = Reader(r.take(n)?);
    while !extensions.0.is_empty() {
        let (kind, n) = (extensions.u16()?, extensions.u16()?);
        let mut data = Reader(extensions.take(n)?);
        if kind != 0 {
            continue; // not server_name
        }
        let n = data.u16()?;
        let mut names = Reader(data.take(n)?);
        while !names.0.is_empty() {
            let (kind, n) = (names.u8()?, names.u16()?);
            let name = names.take(n)?;
            if kind == 0 {
                return String::from_utf8(name.to_vec()).ok();
            }
        }
    }
    None
}

/// Big-endian fields off the front of a TLS message.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn int(&mut self, n: usize) -> Option<usize> {
        Some(
            self.take(n)?
                .iter()
                .fold(0usize, |v, x| (v << 8) | usize::from(*x)),
        )
    }
    fn u8(&mut self) -> Option<usize> {
        self.int(1)
    }
    fn u16(&mut self) -> Option<usize> {
        self.int(2)
    }
    fn u24(&mut self) -> Option<usize> {
        self.int(3)
    }
}

/// What the check measured.
#[derive(Debug)]
pub struct Report {
    pub bytes: u64,
    pub version: String,
    /// Median, min and max of [`STARTUP_RUNS`] runs of `--version` in the empty root.
    pub startup: [Duration; 3],
    /// The endpoint name the agent connected for (its TLS SNI) and dnsmasq's log of it.
    pub server_name: String,
    pub dns_log: Vec<String>,
    /// Connections the agent made to the endpoint (its retries) until its boot deadline.
    pub connections: usize,
    /// How it ended: its exit status and its one-line error.
    pub exit: String,
}

/// A check's namespace, root and processes; all of it goes when dropped.
struct Bed {
    dir: PathBuf,
    ns: String,
    children: Vec<Child>,
}

impl Drop for Bed {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = netns::delete(&self.ns);
        let _ = cleanup::sweep(&self.dir);
    }
}

/// Checks the release binary at `binary` (see the module docs); what it measured.
pub fn check(binary: &Path) -> Result<Report> {
    crate::require_root()?;
    let bytes = std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let facts = elf(&bytes).with_context(|| format!("reading {}", binary.display()))?;
    if let Some(loader) = facts.interpreter {
        bail!(
            "{} is dynamically linked (it needs the loader {loader} and shared libraries, which an \
             empty root does not have): build the release binary with scripts/release",
            binary.display()
        );
    }
    if facts.symbols {
        bail!(
            "{} is not stripped (it has a .symtab): build it with scripts/release",
            binary.display()
        );
    }
    let size = bytes.len() as u64;
    if size > MAX_BYTES {
        bail!(
            "{} is {size} bytes ({:.1} MB), over the limit of 25 MB",
            binary.display(),
            mb(size)
        );
    }
    drop(bytes);
    for tool in ["dnsmasq", "nsenter", "ip"] {
        process::run("sh", &["-c", &format!("command -v {tool}")])
            .with_context(|| format!("{tool} is missing: run scripts/setup"))?;
    }

    cleanup::sweep_dead()?;
    let (id, dir) = crate::new_dir("kt")?;
    let mut bed = Bed {
        ns: format!("{id}-rel"),
        dir,
        children: Vec::new(),
    };
    let root = bed.dir.join("root");
    std::fs::create_dir_all(root.join("etc"))?;
    std::fs::copy(binary, root.join("kafka-agent"))
        .with_context(|| format!("copying {} into {}", binary.display(), root.display()))?;
    std::fs::set_permissions(root.join("kafka-agent"), PermissionsExt::from_mode(0o755))?;
    std::fs::write(
        root.join("etc/hosts"),
        "127.0.0.1 localhost\n::1 localhost\n",
    )?;
    std::fs::write(root.join("etc/resolv.conf"), format!("nameserver {DNS}\n"))?;

    netns::create(&bed.ns)?;
    for addr in [DNS, ENDPOINT, "169.254.169.254"] {
        netns::ip_in(
            &bed.ns,
            &["addr", "add", &format!("{addr}/32"), "dev", "lo"],
        )?;
    }
    let ns = File::open(netns::path(&bed.ns))
        .with_context(|| format!("opening namespace {}", bed.ns))?;

    // The empty root: the binary, /etc/hosts, /etc/resolv.conf and nothing else.
    let version = run_ok(&root, &ns, &["--version"])?.trim().to_string();
    if !version.starts_with("kafka-agent ") {
        bail!("`kafka-agent --version` in the empty root printed {version:?}");
    }
    if !run_ok(&root, &ns, &["--help"])?.contains("Usage:") {
        bail!("`kafka-agent --help` in the empty root printed no usage");
    }
    let mut times = Vec::with_capacity(STARTUP_RUNS);
    for _ in 0..STARTUP_RUNS {
        let start = Instant::now();
        run_ok(&root, &ns, &["--version"])?;
        times.push(start.elapsed());
    }
    times.sort();
    let startup = [times[times.len() / 2], times[0], times[times.len() - 1]];

    // DNS: dnsmasq answers for the region's endpoints; IMDS says the instance is in that region.
    let dns_log = bed.dir.join("dnsmasq.log");
    let (out, err) = process::log_file(&bed.dir.join("dnsmasq.out"))?;
    let mut dnsmasq = netns::command(&bed.ns, "dnsmasq");
    dnsmasq
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--user=root",
            "--log-queries",
        ])
        .arg(format!("--listen-address={DNS}"))
        .arg(format!("--address=/{REGION}.amazonaws.com/{ENDPOINT}"))
        .arg(format!(
            "--pid-file={}",
            bed.dir.join("dnsmasq.pid").display()
        ))
        .arg(format!("--log-facility={}", dns_log.display()))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    bed.children.push(process::spawn_tied(dnsmasq)?);
    let dns: SocketAddr = format!("{DNS}:53").parse()?;
    let waited = {
        let child = bed.children.last_mut().expect("dnsmasq was just pushed");
        wait_in(&bed.ns, dns, child)
    };
    waited.with_context(|| {
        format!(
            "dnsmasq did not start in {}: {}",
            bed.ns,
            process::tail(&bed.dir.join("dnsmasq.out"), 10)
        )
    })?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let imds = Arc::new(Imds::default());
    *imds.metadata.write().unwrap() = Metadata {
        instance_id: "i-0c0ffee0release0".into(),
        instance_type: "m5.large".into(),
        az: format!("{REGION}a"),
        region: REGION.into(),
        account_id: "123456789012".into(),
        private_ip: "10.0.0.10".into(),
        mac: "02:00:00:00:00:01".into(),
        interfaces: Vec::new(),
        access_key_id: "AKIDRELEASECHECK".into(),
    };
    let imds_listener = bind_in(&bed.ns, "169.254.169.254:80")?;
    rt.spawn(async move {
        if let Ok(l) = tokio::net::TcpListener::from_std(imds_listener) {
            imds.serve(l).await;
        }
    });
    let endpoint_listener = bind_in(&bed.ns, &format!("{ENDPOINT}:443"))?;
    let (seen, hellos) = mpsc::channel();
    rt.spawn(async move {
        let Ok(l) = tokio::net::TcpListener::from_std(endpoint_listener) else {
            return;
        };
        while let Ok((mut stream, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let read = tokio::time::timeout(Duration::from_secs(5), first_record(&mut stream));
                let record = read.await.ok().and_then(Result::ok).unwrap_or_default();
                let _ = seen.send(server_name(&record));
            });
        }
    });

    std::fs::create_dir_all(root.join("etc/kafka-agent"))?;
    std::fs::write(root.join("etc/kafka-agent/agent.toml"), config())?;
    let agent_log = bed.dir.join("agent.log");
    let (out, err) = process::log_file(&agent_log)?;
    let mut agent = in_root(&root, &ns, &["claim", "--dry-run"]);
    agent.stdin(Stdio::null()).stdout(out).stderr(err);
    bed.children.push(process::spawn_tied(agent)?);
    // It connects, its ClientHello naming the endpoint; the listener hangs up, and the agent
    // retries (the SDK's retries, then its own jittered backoff) until its boot deadline and
    // exits as its contract says: 5 (coordination_unreachable) or 9 (timeout).
    let suffix = format!(".{REGION}.amazonaws.com");
    let deadline = Instant::now() + BOOT_DEADLINE + EXIT_WITHIN;
    let mut names = Vec::new();
    let status = loop {
        match hellos.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(name)) if name.ends_with(&suffix) => names.push(name),
            Ok(name) => bail!(
                "kafka-agent connected to {ENDPOINT}:443 but its ClientHello asked for {name:?}, \
                 not a name in {REGION}; its log:\n{}",
                process::tail(&agent_log, 20)
            ),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the endpoint listener stopped"),
        }
        let agent = bed.children.last_mut().expect("the agent was just pushed");
        if let Some(status) = agent.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            bail!(
                "kafka-agent in the empty root is still running {EXIT_WITHIN:?} after its boot \
                 deadline of {BOOT_DEADLINE:?}; its log:\n{}",
                process::tail(&agent_log, 20)
            );
        }
    };
    names.extend(hellos.try_iter().flatten());
    let Some(server_name) = names.first().cloned() else {
        bail!(
            "kafka-agent in the empty root never connected to {ENDPOINT}:443, where DNS puts \
             *{suffix}, before it exited ({status}); its log:\n{}\ndnsmasq's log:\n{}",
            process::tail(&agent_log, 20),
            process::tail(&dns_log, 10)
        );
    };
    let log = std::fs::read_to_string(&agent_log).unwrap_or_default();
    if log.contains("panicked") || !matches!(status.code(), Some(5 | 9)) {
        bail!(
            "kafka-agent in the empty root reached {server_name}, but when the endpoint hung up \
             it ended with {status} instead of exiting 5 (coordination_unreachable) or 9 \
             (timeout) at its deadline; its log:\n{}",
            process::tail(&agent_log, 20)
        );
    }
    let exit = format!(
        "{status}: {}",
        log.lines().last().unwrap_or_default().trim()
    );
    // dnsmasq writes its log a moment after it answers.
    let query = format!("query[A] {server_name} ");
    let deadline = Instant::now() + Duration::from_secs(3);
    let dns_log = loop {
        let text = std::fs::read_to_string(&dns_log).unwrap_or_default();
        if text.contains(&query) || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut lines: Vec<String> = Vec::new();
    for l in dns_log.lines().filter(|l| l.contains(&server_name)) {
        let l = l.split_once("]: ").map_or(l, |(_, m)| m).to_string();
        if !lines.contains(&l) {
            lines.push(l);
        }
    }
    let dns_log = lines;
    if !dns_log.iter().any(|l| l.starts_with(&query)) {
        bail!(
            "kafka-agent connected for {server_name}, but dnsmasq logged no query for it: \
             the name was not resolved through DNS"
        );
    }
    drop(rt);
    drop(bed);
    Ok(Report {
        bytes: size,
        version,
        startup,
        server_name,
        dns_log,
        connections: names.len(),
        exit,
    })
}

/// Prints a report.
pub fn print(binary: &Path, r: &Report) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("check-release: {}", binary.display());
    println!("  static (no program interpreter), stripped");
    println!(
        "  size: {:.1} MB ({} bytes), limit 25 MB",
        mb(r.bytes),
        r.bytes
    );
    println!(
        "  empty root (binary, /etc/hosts, /etc/resolv.conf): `--version` prints {:?}, `--help` works",
        r.version
    );
    println!(
        "  start-up: median {:.1} ms (min {:.1}, max {:.1}) over {STARTUP_RUNS} runs of `kafka-agent --version` there",
        ms(r.startup[0]),
        ms(r.startup[1]),
        ms(r.startup[2])
    );
    println!(
        "  DNS: `claim --dry-run` resolved {} through dnsmasq at {DNS} and connected to {ENDPOINT}:443 \
         (TLS server name {})",
        r.server_name, r.server_name
    );
    for l in &r.dns_log {
        println!("    dnsmasq: {l}");
    }
    println!(
        "  when the endpoint hung up: {} connections (retries), then at its {}s deadline {}",
        r.connections,
        BOOT_DEADLINE.as_secs(),
        r.exit
    );
    println!("check-release: ok");
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The agent as `/kafka-agent` in `root` (chroot) and namespace `ns`, with an empty environment.
fn in_root(root: &Path, ns: &File, args: &[&str]) -> Command {
    let root = CString::new(root.as_os_str().as_encoded_bytes()).expect("a path has no NUL");
    let ns = ns.as_raw_fd();
    let mut cmd = Command::new("/kafka-agent");
    cmd.args(args).env_clear();
    // SAFETY: setns, chroot and chdir are async-signal-safe syscalls on memory prepared before
    // the fork; they touch only the child.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns, libc::CLONE_NEWNET) != 0
                || libc::chroot(root.as_ptr()) != 0
                || libc::chdir(c"/".as_ptr()) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Runs the agent in the empty root to completion; its stdout, or an error naming the command.
fn run_ok(root: &Path, ns: &File, args: &[&str]) -> Result<String> {
    let what = format!(
        "`kafka-agent {}` in the empty root {}",
        args.join(" "),
        root.display()
    );
    let out = in_root(root, ns, args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A listener on `addr` inside namespace `ns`, ready for tokio.
fn bind_in(ns: &str, addr: &str) -> Result<std::net::TcpListener> {
    let a = addr.to_string();
    let l = netns::in_netns(ns, move || std::net::TcpListener::bind(&a))?
        .with_context(|| format!("listening on {addr} in {ns}"))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Waits until something accepts connections on `addr` inside namespace `ns`.
fn wait_in(ns: &str, addr: SocketAddr, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let up = netns::in_netns(ns, move || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        })?;
        if up {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("exited with {status} before listening on {addr}");
        }
        if Instant::now() > deadline {
            bail!("nothing listens on {addr} after 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The first TLS record a client sends (its ClientHello), or what came before it hung up.
async fn first_record(stream: &mut tokio::net::TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if buf.len() >= 5 && buf.len() >= 5 + (usize::from(buf[3]) << 8 | usize::from(buf[4])) {
            return Ok(buf);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello record with the given extensions (type, data).
    fn hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let be16 = |n: usize| (n as u16).to_be_bytes().to_vec();
        let mut exts = Vec::new();
        for (kind, data) in extensions {
            exts.extend(kind.to_be_bytes());
            exts.extend(be16(data.len()));
            exts.extend(data);
        }
        let mut body = vec![3, 3];
        body.extend([7u8; 32]); // random
        body.extend([2, 0xaa, 0xbb]); // session id
        body.extend(be16(4));
        body.extend([0x13, 0x01, 0x13, 0x02]); // cipher suites
        body.extend([1, 0]); // compression: null
        body.extend(be16(exts.len()));
        body.extend(exts);
        let mut hs = vec![1];
        hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend(body);
        let mut record = vec![0x16, 3, 1];
        record.extend(be16(hs.len()));
        record.extend(hs);
        record
    }

    fn sni(name: &str) -> (u16, Vec<u8>) {
        let mut entry = vec![0];
        entry.extend((name.len() as u16).to_be_bytes());
        entry.extend(name.as_bytes());
        let mut data = (entry.len() as u16).to_be_bytes().to_vec();
        data.extend(entry);
        (0, data)
    }

    #[test]
    fn the_server_name_of_a_client_hello() {
        let name = "ec2.testbed-region.amazonaws.com";
        let record = hello(&[(10, vec![0, 2, 0, 29]), sni(name), (43, vec![2, 3, 4])]);
        assert_eq!(server_name(&record).as_deref(), Some(name));
    }

    #[test]
    fn no_server_name_without_the_extension_or_from_garbage() {
        assert_eq!(server_name(&hello(&[(10, vec![0, 2, 0, 29])])), None);
        let record = hello(&[sni("logs.testbed-region.amazonaws.com")]);
        assert_eq!(server_name(&record[..record.len() - 3]), None);
        assert_eq!(server_name(b"GET / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(server_name(&[]), None);
    }

    #[test]
    fn a_dynamically_linked_executable_names_its_loader() {
        // The test binary itself is an ordinary (dynamic, unstripped) build.
        let me = std::fs::read("/proc/self/exe").unwrap();
        let facts = elf(&me).unwrap();
        assert!(
            facts.interpreter.as_deref().unwrap().contains("ld-linux"),
            "{facts:?}"
        );
    }

    #[test]
    fn a_static_stripped_executable_names_nothing() {
        // An ELF64 header with one PT_LOAD program header and one SHT_PROGBITS section.
        let mut f = vec![0u8; 64 + 56 + 64];
        f[..6].copy_from_slice(b"\x7fELF\x02\x01");
        f[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        f[0x28..0x30].copy_from_slice(&120u64.to_le_bytes()); // e_shoff
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        f[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
        f[0x3c..0x3e].copy_from_slice(&1u16.to_le_bytes()); // e_shnum
        f[64] = 1; // PT_LOAD
        f[120 + 4] = 1; // SHT_PROGBITS
        assert_eq!(
            elf(&f).unwrap(),
            Elf {
                interpreter: None,
                symbols: false
            }
        );
        f[120 + 4] = 2; // SHT_SYMTAB
        assert!(elf(&f).unwrap().symbols);
        assert!(elf(&f[..100]).is_err());
        assert!(elf(b"#!/bin/sh\n").is_err());
    }
}
