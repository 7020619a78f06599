//! Step 6: telling the truth. `signal` waits until the broker serves, then tells
//! CloudFormation (SignalResource) and the launch lifecycle hook (CompleteLifecycleAction);
//! a failed `boot` tells them through [`send`] too.
//!
//! * Readiness ([`wait_ready`]): zookeeper mode, `/brokers/ids/<id>` exists and one of its
//!   endpoints is this node's advertised host; kraft, the advertised listener accepts TCP
//!   connections; then the optional `[signal] ready_command`. Bounded by
//!   `ready_timeout_seconds` and the deadline; running out is [`NotReady`] (`not_ready`).
//! * Who is told ([`Targets`]): the stack and logical id from `[signal]` or the instance's
//!   `aws:cloudformation:stack-name` / `aws:cloudformation:logical-id` tags (UniqueId = the
//!   instance id); the hook from `[signal] lifecycle_hook` and its group from the config or
//!   the `aws:autoscaling:groupName` tag. Heartbeats keep the hook waiting while `signal` waits.
//! * SignalResource carries no reason (the API has none): a failure's kind and message go to
//!   the instance's `[signal] failure_tag` (EC2 tag values hold 256 characters), the journal
//!   and the log. A stack that "cannot be signaled" any more, or a hook with no pending action,
//!   is logged and no failure. Each part is best-effort within the deadline.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;

use crate::aws::asg::{self, Hooked, LifecycleResult};
use crate::aws::cfn::{self, Signaled};
use crate::aws::imds::Identity;
use crate::aws::{Clients, retry_transient};
use crate::config::Settings;
use crate::config::{KafkaMode, Role, SignalSettings};

/// The tags CloudFormation and Auto Scaling put on the instances they launch.
pub const STACK_TAG: &str = "aws:cloudformation:stack-name";
pub const LOGICAL_ID_TAG: &str = "aws:cloudformation:logical-id";
pub const GROUP_TAG: &str = "aws:autoscaling:groupName";

/// EC2 tag values hold at most 256 Unicode characters (Amazon EC2 User Guide, "Tag
/// restrictions").
pub const TAG_VALUE_MAX: usize = 256;

/// How the boot (or the readiness wait) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure { kind: String, message: String },
}

/// What was sent. `cloudformation`: `SUCCESS` | `FAILURE` accepted, `not_waiting` (the stack
/// no longer takes signals), `None` when no stack is known or the call failed. `lifecycle`:
/// `CONTINUE` | `ABANDON` accepted, `no_active_action`, `None` likewise.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Sent {
    pub cloudformation: Option<String>,
    pub lifecycle: Option<String>,
    pub unhealthy: bool,
}

/// The broker did not serve in time (kind `not_ready`).
#[derive(Debug, thiserror::Error)]
#[error("broker {id} did not serve at {address} within {waited:?}: {last}")]
pub struct NotReady {
    pub id: u32,
    pub address: IpAddr,
    pub waited: Duration,
    /// What was last seen instead.
    pub last: String,
}

impl NotReady {
    pub fn kind(&self) -> &'static str {
        "not_ready"
    }
}

/// Whom a signal goes to, resolved once from the config and the instance's tags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    /// (stack, logical resource id).
    pub stack: Option<(String, String)>,
    /// (Auto Scaling group, hook name).
    pub hook: Option<(String, String)>,
    /// The failure tag is on the instance now (a success removes it).
    pub failure_tagged: bool,
}

/// Who is told, from `[signal]` first and the instance's tags second. Pure.
pub fn targets(signal: &SignalSettings, tags: &BTreeMap<String, String>) -> Targets {
    let pick = |configured: &Option<String>, tag: &str| {
        configured
            .clone()
            .or_else(|| tags.get(tag).filter(|v| !v.is_empty()).cloned())
    };
    let stack = pick(&signal.stack, STACK_TAG).zip(pick(&signal.logical_id, LOGICAL_ID_TAG));
    let hook = signal
        .lifecycle_hook
        .clone()
        .and_then(|h| Some((pick(&signal.auto_scaling_group, GROUP_TAG)?, h)));
    Targets {
        stack,
        hook,
        failure_tagged: !signal.failure_tag.is_empty() && tags.contains_key(&signal.failure_tag),
    }
}

/// A failure as one line for the failure tag: `kind: message`, control characters as spaces,
/// cut to [`TAG_VALUE_MAX`] characters (never inside a character) ending in `...` when cut.
pub fn reason(kind: &str, message: &str) -> String {
    let line: String = format!("{kind}: {message}")
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.chars().count() <= TAG_VALUE_MAX {
        return line;
    }
    let mut cut: String = line.chars().take(TAG_VALUE_MAX - 3).collect();
    cut.push_str("...");
    cut
}

/// Reads the instance's tags when the config leaves something to them, and resolves whom to
/// tell. A failed read is logged; what the config names is still told.
pub async fn resolve(
    settings: &Settings,
    clients: &Clients,
    me: &Identity,
    deadline: Instant,
) -> Targets {
    let s = &settings.signal;
    let needs_tags = s.stack.is_none()
        || s.logical_id.is_none()
        || (s.lifecycle_hook.is_some() && s.auto_scaling_group.is_none())
        || !s.failure_tag.is_empty();
    let tags = if needs_tags {
        match retry_transient(deadline, || clients.ec2.tags_of(&me.instance_id)).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "reading the instance's tags; telling only whom the config names");
                BTreeMap::new()
            }
        }
    } else {
        BTreeMap::new()
    };
    targets(s, &tags)
}

/// CloudFormation SignalResource (SUCCESS/FAILURE, UniqueId = instance id; the API takes no
/// reason: a failure's kind and message go to the instance's failure tag, cut to the tag
/// value limit), the lifecycle hook CONTINUE/ABANDON when configured, and on failure
/// SetInstanceHealth Unhealthy when `[signal] mark_unhealthy_on_failure` (unless ABANDON was
/// accepted: the group replaces the instance then anyway). Each part is best-effort within
/// the deadline: a stack that "cannot be signaled" (no longer creating/updating) is logged and
/// fine; nothing configured and no stack tags = nothing sent (logged). Returns what was sent;
/// an error names every part that failed, after all were tried.
pub async fn send(
    settings: &Settings,
    clients: &Clients,
    me: &Identity,
    outcome: &Outcome,
    deadline: Instant,
) -> Result<Sent> {
    let targets = resolve(settings, clients, me, deadline).await;
    deliver(settings, clients, me, &targets, outcome, deadline).await
}

/// [`send`] to targets already resolved.
pub async fn deliver(
    settings: &Settings,
    clients: &Clients,
    me: &Identity,
    targets: &Targets,
    outcome: &Outcome,
    deadline: Instant,
) -> Result<Sent> {
    let success = matches!(outcome, Outcome::Success);
    let instance = me.instance_id.as_str();
    if targets.stack.is_none() && targets.hook.is_none() {
        tracing::info!(
            "no stack (no [signal] stack/logical_id, no {STACK_TAG} tags) and no lifecycle hook: nothing to signal"
        );
    }
    let tag = async {
        let key = &settings.signal.failure_tag;
        match outcome {
            _ if key.is_empty() => Ok(()),
            Outcome::Failure { kind, message } => {
                let value = reason(kind, message);
                let tags = [(key.clone(), value)];
                retry_transient(deadline, || clients.ec2.tag(instance, &tags)).await
            }
            Outcome::Success if targets.failure_tagged => {
                let keys = [key.clone()];
                retry_transient(deadline, || clients.ec2.untag(instance, &keys)).await
            }
            Outcome::Success => Ok(()),
        }
    };
    let cloudformation = async {
        let Some((stack, logical_id)) = &targets.stack else {
            return Ok(None);
        };
        let signaled = retry_transient(deadline, || {
            cfn::signal(
                &clients.cloudformation,
                stack,
                logical_id,
                instance,
                success,
            )
        })
        .await?;
        Ok::<_, anyhow::Error>(Some(match signaled {
            Signaled::Accepted => {
                let status = if success { "SUCCESS" } else { "FAILURE" };
                tracing::info!(stack = %stack, logical_id = %logical_id, instance, status, "signalled CloudFormation");
                status.to_string()
            }
            Signaled::NotWaiting(why) => {
                tracing::info!(stack = %stack, logical_id = %logical_id, reason = %why, "the stack takes no signal now; nothing to tell it");
                "not_waiting".to_string()
            }
        }))
    };
    let lifecycle = async {
        let Some((group, hook)) = &targets.hook else {
            return Ok(None);
        };
        let result = if success {
            LifecycleResult::Continue
        } else {
            LifecycleResult::Abandon
        };
        let hooked = retry_transient(deadline, || {
            asg::complete(&clients.autoscaling, group, hook, instance, result)
        })
        .await?;
        Ok::<_, anyhow::Error>(Some(match hooked {
            Hooked::Accepted => {
                tracing::info!(group = %group, hook = %hook, result = result.as_str(), "completed the lifecycle action");
                result.as_str().to_string()
            }
            Hooked::NoActiveAction(why) => {
                tracing::info!(group = %group, hook = %hook, reason = %why, "the hook waits for no answer from this instance");
                "no_active_action".to_string()
            }
        }))
    };
    let (tag, cloudformation, lifecycle) = tokio::join!(tag, cloudformation, lifecycle);
    let mut errors = Vec::new();
    let mut sent = Sent::default();
    if let Err(e) = tag {
        errors.push(e);
    }
    match cloudformation {
        Ok(c) => sent.cloudformation = c,
        Err(e) => errors.push(e),
    }
    match lifecycle {
        Ok(l) => sent.lifecycle = l,
        Err(e) => errors.push(e),
    }
    let abandoned = sent.lifecycle.as_deref() == Some("ABANDON");
    if !success && settings.signal.mark_unhealthy_on_failure && !abandoned {
        match retry_transient(deadline, || {
            asg::set_unhealthy(&clients.autoscaling, instance, false)
        })
        .await
        {
            Ok(()) => {
                tracing::info!(
                    instance,
                    "marked Unhealthy: the group replaces this instance"
                );
                sent.unhealthy = true;
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        return Ok(sent);
    }
    let text: Vec<String> = errors.iter().map(|e| format!("{e:#}")).collect();
    Err(anyhow!("telling the outcome: {}", text.join("; ")))
}

/// The host names a registration may advertise for this node: its address, and the
/// `[kafka] advertised_host` pattern's name when set.
pub(crate) fn advertised_hosts(settings: &Settings, id: u32, address: IpAddr) -> Vec<String> {
    let mut hosts = vec![address.to_string()];
    if let Some(pattern) = settings
        .kafka
        .as_ref()
        .and_then(|k| k.advertised_host.as_ref())
    {
        hosts.push(pattern.replace("{id}", &id.to_string()));
    }
    hosts
}

/// Whether a `/brokers/ids/<id>` registration advertises one of `hosts`; Err says what it
/// advertises instead. Pure.
pub fn registration_serves(data: &[u8], hosts: &[String]) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_slice(data).map_err(|e| format!("the registration is not JSON: {e}"))?;
    let endpoints: Vec<&str> = v["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str())
        .collect();
    let host_of = |endpoint: &str| {
        let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
        let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h);
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string()
    };
    let same = |a: &str, b: &str| {
        a.eq_ignore_ascii_case(b)
            || matches!((a.parse::<IpAddr>(), b.parse::<IpAddr>()), (Ok(x), Ok(y)) if x == y)
    };
    if endpoints
        .iter()
        .any(|e| hosts.iter().any(|h| same(&host_of(e), h)))
    {
        return Ok(());
    }
    Err(format!(
        "the registration advertises {}, not {}",
        if endpoints.is_empty() {
            "no endpoint".to_string()
        } else {
            endpoints.join(",")
        },
        hosts.join(" or ")
    ))
}

/// How much earlier than this boot's start a registration may say it was made and still be
/// taken for this boot's broker: the boot's start is journalled in whole seconds, and a clock
/// stepped back by the time service after boot began moves the broker's stamps back with it.
const REGISTRATION_SLACK_MS: u64 = 2_000;

/// Whether a `/brokers/ids/<id>` registration was made by a broker started after `not_before`
/// (Unix ms): Kafka stamps it with its clock (`"timestamp"`, ms as a string), the clock of
/// this host. An older one is a predecessor's whose session has not expired yet (a killed
/// broker's lasts its session timeout), advertising the same address (the ENI came over with
/// the id); this node's broker cannot register until it is gone (NodeExists). A registration
/// without a readable stamp is not held against the broker. Pure.
pub fn registration_is_since(data: &[u8], not_before: u64) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_slice(data).map_err(|e| format!("the registration is not JSON: {e}"))?;
    let stamp = match &v["timestamp"] {
        serde_json::Value::String(s) => s.parse::<u64>().ok(),
        serde_json::Value::Number(n) => n.as_u64(),
        _ => None,
    };
    match stamp {
        Some(t) if t.saturating_add(REGISTRATION_SLACK_MS) < not_before => Err(format!(
            "the registration dates from {:.1} s before this boot began: a predecessor's, \
             whose session has not expired yet (this broker registers once it is gone)",
            (not_before - t) as f64 / 1000.0
        )),
        _ => Ok(()),
    }
}

/// The port of the listener other nodes reach this one on: the inter-broker listener's, or a
/// controller-only node's controller listener's (kraft's readiness, the watchdog's probe).
pub(crate) fn peer_port(settings: &Settings) -> Option<u16> {
    let k = settings.kafka.as_ref()?;
    let name = k
        .inter_broker_listener
        .as_ref()
        .or(k.kraft.as_ref().map(|r| &r.controller_listener))?;
    k.listeners.get(name).map(|l| l.port)
}

/// One look: None when serving, else what was seen.
async fn serving(
    settings: &Settings,
    zk: &mut Option<zookeeper_client::Client>,
    joining: &mut crate::ensemble::step::Joining,
    id: u32,
    address: IpAddr,
    not_before: Option<u64>,
    until: Instant,
) -> Option<String> {
    let within = |t: Duration| until.saturating_duration_since(Instant::now()).min(t);
    let builtin = match (
        settings.cluster.role,
        settings.kafka.as_ref().map(|k| k.mode),
    ) {
        (Role::Zookeeper, _) => Some(
            match crate::ensemble::step::voting_member(settings, joining, address).await {
                None => Ok(()),
                Some(why) => Err(why),
            },
        ),
        (Role::Kafka, Some(KafkaMode::Kraft)) => {
            let Some(port) = peer_port(settings) else {
                return Some("[kafka] names no listener to connect to".into());
            };
            let at = std::net::SocketAddr::new(address, port);
            Some(
                match tokio::time::timeout(
                    within(Duration::from_secs(2)),
                    tokio::net::TcpStream::connect(at),
                )
                .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("connecting to {at}: {e}")),
                    Err(_) => Err(format!("connecting to {at}: no answer")),
                },
            )
        }
        (Role::Kafka, _) => {
            if zk.is_none() {
                match tokio::time::timeout(
                    within(Duration::from_secs(5)),
                    crate::claim::zookeeper::connect(settings),
                )
                .await
                {
                    Ok(Ok(c)) => *zk = Some(c),
                    Ok(Err(e)) => return Some(format!("{e:#}")),
                    Err(_) => return Some("connecting to ZooKeeper: no answer".into()),
                }
            }
            let path = format!("/brokers/ids/{id}");
            let client = zk.as_ref().expect("connected above");
            Some(
                match tokio::time::timeout(within(Duration::from_secs(5)), client.get_data(&path))
                    .await
                {
                    Ok(Ok((data, _))) => {
                        registration_serves(&data, &advertised_hosts(settings, id, address))
                            .and_then(|()| {
                                not_before.map_or(Ok(()), |t| registration_is_since(&data, t))
                            })
                    }
                    Ok(Err(zookeeper_client::Error::NoNode)) => {
                        Err(format!("{path} does not exist"))
                    }
                    Ok(Err(e)) => {
                        *zk = None;
                        Err(format!("reading {path}: {e}"))
                    }
                    Err(_) => {
                        *zk = None;
                        Err(format!("reading {path}: no answer"))
                    }
                },
            )
        }
    };
    if let Some(Err(why)) = builtin {
        return Some(why);
    }
    if let Some(argv) = &settings.signal.ready_command {
        let run = tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .env("KAFKA_AGENT_ID", id.to_string())
            .env("KAFKA_AGENT_ADDRESS", address.to_string())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        return match tokio::time::timeout(within(Duration::from_secs(30)), run).await {
            Ok(Ok(o)) if o.status.success() => None,
            Ok(Ok(o)) => Some(format!(
                "ready_command {} exited with {}: {}",
                argv[0],
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Ok(Err(e)) => Some(format!("ready_command {}: {e}", argv[0])),
            Err(_) => Some(format!("ready_command {}: still running", argv[0])),
        };
    }
    None
}

/// Waits (bounded by `[signal] ready_timeout_seconds` and the deadline) until the broker
/// serves: zookeeper mode, `/brokers/ids/<id>` exists and its endpoints include this node's
/// advertised address; kraft, the advertised listener accepts TCP connections (plus the
/// optional `[signal] ready_command`). A ZooKeeper node serves once it is a voting member in
/// sync ([`crate::ensemble::step::voting_member`], which adds it by reconfig when its boot's
/// plan says so). A registration stamped before `not_before` (Unix ms: this boot's start) is
/// a predecessor's ([`registration_is_since`]), not this broker serving. Err of
/// [`NotReady`] (kind `not_ready`) on timeout.
pub async fn wait_ready(
    settings: &Settings,
    id: u32,
    address: IpAddr,
    not_before: Option<u64>,
    deadline: Instant,
) -> Result<()> {
    let started = Instant::now();
    let until = deadline.min(started + settings.signal.ready_timeout);
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(2), until);
    let mut zk = None;
    let mut joining = crate::ensemble::step::Joining::default();
    let mut last = String::new();
    loop {
        match serving(
            settings,
            &mut zk,
            &mut joining,
            id,
            address,
            not_before,
            until,
        )
        .await
        {
            None => {
                tracing::info!(broker_id = id, address = %address, waited_ms = started.elapsed().as_millis() as u64, "serving");
                return Ok(());
            }
            Some(why) => {
                if why != last {
                    tracing::info!(broker_id = id, reason = %why, "not serving yet");
                }
                crate::deadline::waiting_for(format!("readiness: {why}"));
                last = why;
            }
        }
        if !backoff.wait().await {
            return Err(NotReady {
                id,
                address,
                waited: started.elapsed(),
                last,
            }
            .into());
        }
    }
}

/// Runs `work` while heartbeating the lifecycle hook every `[signal] heartbeat_seconds`.
async fn with_heartbeats<T>(
    settings: &Settings,
    clients: &Clients,
    me: &Identity,
    targets: &Targets,
    work: impl std::future::Future<Output = T>,
) -> T {
    let Some((group, hook)) = &targets.hook else {
        return work.await;
    };
    let beats = async {
        let mut tick = tokio::time::interval(settings.signal.heartbeat);
        tick.tick().await; // the first tick is immediate
        loop {
            tick.tick().await;
            match asg::heartbeat(&clients.autoscaling, group, hook, &me.instance_id).await {
                Ok(Hooked::Accepted) => tracing::debug!(group = %group, hook = %hook, "heartbeat"),
                Ok(Hooked::NoActiveAction(why)) => {
                    tracing::info!(group = %group, hook = %hook, reason = %why, "no heartbeats needed");
                    return std::future::pending().await;
                }
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "heartbeat"),
            }
        }
    };
    tokio::select! {
        out = work => out,
        never = beats => never,
    }
}

/// This node's address: the attached ENI's (the attach journal), or the instance's primary
/// address (IMDS) for a cluster without ENIs.
async fn address(settings: &Settings, deadline: Instant) -> Result<IpAddr> {
    if settings.resources.eni {
        let attached: serde_json::Value =
            crate::journal::read(&settings.paths.state_dir, "attach")?;
        let ip = attached["eni"]["ips"][0]
            .as_str()
            .context("the attach journal names no ENI address")?;
        return ip
            .parse()
            .with_context(|| format!("the attach journal's ENI address {ip:?}"));
    }
    crate::aws::imds::Imds::new().local_ipv4(deadline).await
}

/// The kind a readiness failure is reported with.
fn kind_of(e: &anyhow::Error) -> String {
    match e.chain().find_map(|c| c.downcast_ref::<NotReady>()) {
        Some(n) => n.kind().to_string(),
        None => crate::exit::kind_for(e).to_string(),
    }
}

/// `kafka-agent signal`: reads the claimed id and this node's address, waits until the
/// broker serves (heartbeating the hook), then tells SUCCESS; or tells FAILURE with the
/// kind and returns the error (`not_ready` when it never served).
pub async fn run(
    settings: &Settings,
    clients: &Clients,
    me: &Identity,
    deadline: Instant,
) -> Result<Sent> {
    let claim: crate::claim::Claim = crate::journal::read(&settings.paths.state_dir, "claim")?;
    if claim.instance_id != me.instance_id {
        bail!(
            "{} holds a claim of {}, not of this instance {}: run `kafka-agent boot`",
            settings.paths.state_dir.join("claim.json").display(),
            claim.instance_id,
            me.instance_id
        );
    }
    let targets = resolve(settings, clients, me, deadline).await;
    // Keep time to tell the outcome: a quarter of what is left, at most 10 s.
    let remaining = deadline.saturating_duration_since(Instant::now());
    let ready_by = deadline - (remaining / 4).min(Duration::from_secs(10));
    // This boot's start (its journal), before which no registration is this boot's broker's.
    let not_before =
        crate::journal::read::<crate::boot::BootJournal>(&settings.paths.state_dir, "boot")
            .ok()
            .map(|b| b.started_unix * 1000);
    let ready = with_heartbeats(settings, clients, me, &targets, async {
        let address = address(settings, ready_by).await?;
        wait_ready(settings, claim.id, address, not_before, ready_by).await
    })
    .await;
    match ready {
        Ok(()) => {
            if settings.cluster.role == Role::Zookeeper {
                crate::ensemble::step::mark_member(settings, clients, deadline).await;
            }
            deliver(settings, clients, me, &targets, &Outcome::Success, deadline).await
        }
        Err(e) => {
            let outcome = Outcome::Failure {
                kind: kind_of(&e),
                message: format!("{e:#}"),
            };
            match deliver(settings, clients, me, &targets, &outcome, deadline).await {
                Ok(sent) => {
                    tracing::info!(sent = %serde_json::to_string(&sent).unwrap_or_default(), "told the failure")
                }
                Err(told) => tracing::error!(error = %format!("{told:#}"), "telling the failure"),
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra: &str) -> Settings {
        let text = format!(
            "[cluster]\nname = \"orders\"\nrole = \"kafka\"\nsize = 3\n\
             [zookeeper]\nconnect = \"zk1:2181/kafka\"\n{extra}"
        );
        crate::config::parse(&[(std::path::PathBuf::from("/etc/a.toml"), text)]).unwrap()
    }

    fn tags(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn targets_come_from_the_config_first_then_the_tags() {
        let s = settings("");
        let t = tags(&[
            (STACK_TAG, "orders"),
            (LOGICAL_ID_TAG, "Brokers"),
            (GROUP_TAG, "orders-asg"),
        ]);
        let got = targets(&s.signal, &t);
        assert_eq!(got.stack, Some(("orders".into(), "Brokers".into())));
        assert_eq!(got.hook, None, "no hook configured");

        let s = settings("[signal]\nstack = \"other\"\nlifecycle_hook = \"launch\"\n");
        let got = targets(&s.signal, &t);
        assert_eq!(got.stack, Some(("other".into(), "Brokers".into())));
        assert_eq!(got.hook, Some(("orders-asg".into(), "launch".into())));

        let got = targets(&s.signal, &tags(&[(STACK_TAG, "orders")]));
        assert_eq!(
            got.stack, None,
            "a stack without a logical id is not signalled"
        );
        assert_eq!(got.hook, None, "a hook without a group is not completed");
    }

    #[test]
    fn the_reason_fits_a_tag_value() {
        assert_eq!(
            reason("not_ready", "no\nregistration"),
            "not_ready: no registration"
        );
        let long = "é".repeat(1000);
        let r = reason("identity_mismatch", &long);
        assert_eq!(r.chars().count(), TAG_VALUE_MAX);
        assert!(
            r.starts_with("identity_mismatch: é") && r.ends_with("..."),
            "{r}"
        );
    }

    #[test]
    fn a_registration_from_before_this_boot_is_a_predecessors() {
        let reg =
            |t: &str| format!(r#"{{"endpoints":["PLAINTEXT://10.0.1.7:9092"],"timestamp":{t}}}"#);
        let boot = 1_800_000_000_000u64;
        // Kafka writes the stamp as a string of ms.
        assert!(registration_is_since(reg(r#""1800000000500""#).as_bytes(), boot).is_ok());
        let e = registration_is_since(reg(r#""1799999940000""#).as_bytes(), boot).unwrap_err();
        assert!(e.contains("60.0 s before this boot"), "{e}");
        // Within the slack (whole-second start, a clock stepped back a little): this broker's.
        assert!(registration_is_since(reg(r#""1799999999000""#).as_bytes(), boot).is_ok());
        assert!(registration_is_since(reg(r#""1799999997000""#).as_bytes(), boot).is_err());
        // A number is read too; no stamp, or an unreadable one, is not held against it.
        assert!(registration_is_since(reg("1799999940000").as_bytes(), boot).is_err());
        assert!(registration_is_since(br#"{"endpoints":[]}"#, boot).is_ok());
        assert!(registration_is_since(reg(r#""soon""#).as_bytes(), boot).is_ok());
    }

    #[test]
    fn a_registration_serves_when_an_endpoint_is_this_node() {
        let hosts = vec!["10.0.1.7".to_string(), "kafka-1.internal".to_string()];
        let reg = |eps: &str| format!(r#"{{"endpoints":[{eps}],"host":"x","port":9092}}"#);
        assert!(
            registration_serves(reg(r#""PLAINTEXT://10.0.1.7:9092""#).as_bytes(), &hosts).is_ok()
        );
        assert!(
            registration_serves(
                reg(r#""SSL://10.0.1.8:9093","SASL_SSL://KAFKA-1.internal:9094""#).as_bytes(),
                &hosts
            )
            .is_ok()
        );
        let e = registration_serves(reg(r#""PLAINTEXT://10.0.1.8:9092""#).as_bytes(), &hosts)
            .unwrap_err();
        assert!(e.contains("10.0.1.8") && e.contains("10.0.1.7"), "{e}");
        assert!(registration_serves(b"{}", &hosts).is_err());
        assert!(registration_serves(b"not json", &hosts).is_err());
        let v6 = vec!["fd00::7".to_string()];
        assert!(
            registration_serves(reg(r#""PLAINTEXT://[fd00:0::7]:9092""#).as_bytes(), &v6).is_ok()
        );
    }

    #[test]
    fn signal_settings_are_checked() {
        let s = settings("");
        assert_eq!(s.signal.ready_timeout, Duration::from_secs(300));
        assert_eq!(s.signal.failure_tag, "kafka-agent:failure");
        assert!(!s.signal.mark_unhealthy_on_failure);
        for (bad, key) in [
            ("stack = \"1abc\"", "signal.stack"),
            ("logical_id = \"a-b\"", "signal.logical_id"),
            ("ready_timeout_seconds = 0", "signal.ready_timeout_seconds"),
            ("ready_command = [\"curl\"]", "signal.ready_command"),
            ("failure_tag = \"aws:x\"", "signal.failure_tag"),
            ("readiness = 1", "signal.readiness"),
        ] {
            let text = format!(
                "[cluster]\nname = \"o\"\nrole = \"kafka\"\nsize = 1\n\
                 [zookeeper]\nconnect = \"zk1:2181\"\n[signal]\n{bad}\n"
            );
            let e = crate::config::parse(&[(std::path::PathBuf::from("/etc/a.toml"), text)])
                .unwrap_err();
            assert!(e.to_string().contains(key), "{bad}: {e}");
        }
    }
}
