//! `kafka-agent boot`: one process makes the node whole. Claim, attach, then mount and route
//! side by side (the volume and the ENI are independent), then render, all under one boot
//! deadline, with one set of AWS clients and one IMDS read.
//!
//! Every step journals what it did as before; the boot itself journals `boot.json` (when it
//! started, each step's duration and outcome, how it ended and why), which `status` reads. A
//! rerun after a crash anywhere does only what is missing: each step is idempotent.

use std::net::IpAddr;
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::aws::Clients;
use crate::config::{Role, Settings};
use crate::deadline::Deadline;
use crate::{attach, claim, journal, network, render, storage};

/// The boot journal's schema version.
pub const VERSION: u32 = 1;

/// `<state_dir>/boot.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootJournal {
    pub version: u32,
    pub started_unix: u64,
    pub finished_unix: Option<u64>,
    /// running | success | failure
    pub outcome: String,
    pub steps: Vec<StepRecord>,
    pub error: Option<ErrorRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: String,
    pub ms: u64,
    /// ok | failed
    pub outcome: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorRecord {
    pub kind: String,
    pub message: String,
}

/// What a boot did, step by step (printed as JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Booted {
    pub claim: claim::Claim,
    pub attach: attach::Attachment,
    pub mount: Option<serde_json::Value>,
    pub route: Option<serde_json::Value>,
    pub render: Option<RenderRecord>,
    /// The ZooKeeper role's plan and files (`ensemble.json`).
    pub ensemble: Option<crate::ensemble::step::Prepared>,
}

/// What the render step did (journalled as `render.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenderRecord {
    pub path: std::path::PathBuf,
    pub changed: bool,
    /// SHA-256 of the file as rendered (`status` tells a hand edit from it).
    pub sha256: String,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl BootJournal {
    fn started() -> BootJournal {
        BootJournal {
            version: VERSION,
            started_unix: now_unix(),
            finished_unix: None,
            outcome: "running".into(),
            steps: Vec::new(),
            error: None,
        }
    }

    fn step<T>(&mut self, step: &str, started: Instant, result: &Result<T>) {
        self.step_took(step, started.elapsed(), result);
    }

    fn step_took<T>(&mut self, step: &str, took: std::time::Duration, result: &Result<T>) {
        self.step_outcome(step, took, result.is_ok());
    }

    fn step_outcome(&mut self, step: &str, took: std::time::Duration, ok: bool) {
        self.steps.push(StepRecord {
            step: step.to_string(),
            ms: took.as_millis() as u64,
            outcome: if ok { "ok" } else { "failed" }.into(),
        });
    }

    fn save(&self, settings: &Settings) -> Result<()> {
        journal::record(&settings.paths.state_dir, "boot", self)
    }
}

/// Runs one step, recording its duration and outcome.
async fn timed<T>(
    j: &mut BootJournal,
    step: &str,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let started = Instant::now();
    let result = fut.await;
    j.step(step, started, &result);
    result
}

/// Runs the boot; journals `boot.json` before the first step and after the last (or the
/// failure). A failure is reported to CloudFormation and the lifecycle hook (when the boot got
/// far enough to have clients and an identity) and returned unchanged for the exit code.
pub async fn run(settings: &Settings, deadline: &Deadline) -> Result<Booted> {
    let mut j = BootJournal::started();
    j.save(settings)?;
    let mut ctx = None;
    let result = steps(settings, deadline, &mut j, &mut ctx).await;
    j.finished_unix = Some(now_unix());
    j.outcome = if result.is_ok() { "success" } else { "failure" }.into();
    j.error = result.as_ref().err().map(|e| ErrorRecord {
        kind: crate::exit::kind_for(e).to_string(),
        message: format!("{e:#}"),
    });
    // Journalled before anyone is told: an ABANDON ends the launch, and the group may
    // terminate the instance (and this process with it) as soon as the hook has the answer.
    if let Err(e) = j.save(settings) {
        tracing::warn!(error = %format!("{e:#}"), "cannot journal the boot's outcome");
    }
    if let (Some(error), Some(ctx)) = (&j.error, &ctx) {
        report(settings, ctx, error).await;
    }
    result
}

/// How long a failed boot may spend reporting its failure, past its deadline if need be.
const REPORT_BUDGET: std::time::Duration = std::time::Duration::from_secs(15);

/// Tells CloudFormation and the lifecycle hook the truth before exiting, with a few seconds of
/// its own (the boot's deadline may be spent).
async fn report(settings: &Settings, ctx: &Ctx, error: &ErrorRecord) {
    let outcome = crate::signal::Outcome::Failure {
        kind: error.kind.clone(),
        message: error.message.clone(),
    };
    let until = Instant::now() + REPORT_BUDGET;
    match crate::signal::send(settings, &ctx.clients, &ctx.me, &outcome, until).await {
        Ok(sent) => tracing::info!(?sent, "reported the failure"),
        Err(r) => tracing::warn!(error = %format!("{r:#}"), "could not report the failure"),
    }
}

/// The clients and identity of a boot that got past its start.
struct Ctx {
    clients: Clients,
    me: crate::aws::imds::Identity,
}

/// `fut`, unless the attach step fails first: then the step it waits on will not come.
async fn unless_failed<T>(
    step: &'static str,
    fut: impl std::future::Future<Output = Result<T>>,
    mut attach_failed: tokio::sync::watch::Receiver<bool>,
) -> Result<T> {
    tokio::select! {
        r = fut => r,
        _ = attach_failed.wait_for(|failed| *failed) => {
            Err(anyhow::anyhow!("{step} stopped: the attach step failed"))
        }
    }
}

/// One side of a `join!`, with its own duration (the sides end at different times).
async fn timed_side<T>(
    fut: impl std::future::Future<Output = Result<T>>,
) -> (std::time::Duration, Result<T>) {
    let started = Instant::now();
    let r = fut.await;
    (started.elapsed(), r)
}

/// The mount step, when the volume is the agent's to mount.
async fn mount_step(
    settings: &Settings,
    clients: &Clients,
    handed: &attach::Attachment,
    arrived: Option<&tokio::sync::Notify>,
    at: Instant,
    deadline: &Deadline,
) -> Result<Option<serde_json::Value>> {
    if !settings.resources.volume {
        return Ok(None);
    }
    let step = storage::mount::run_step(settings, clients, Some(handed), arrived, at);
    Ok(Some(serde_json::to_value(
        deadline.run("mount", step).await?,
    )?))
}

/// The route step, when the ENI is the agent's to route.
async fn route_step(
    settings: &Settings,
    handed: &attach::Attachment,
    arrived: Option<&tokio::sync::Notify>,
    at: Instant,
    deadline: &Deadline,
) -> Result<Option<serde_json::Value>> {
    if !settings.resources.eni {
        return Ok(None);
    }
    let step = network::run_step(settings, Some(handed), arrived, at);
    Ok(Some(serde_json::to_value(
        deadline.run("route", step).await?,
    )?))
}

async fn steps(
    settings: &Settings,
    deadline: &Deadline,
    j: &mut BootJournal,
    ctx: &mut Option<Ctx>,
) -> Result<Booted> {
    // A ZooKeeper ledger needs neither the identity nor the clients: its session opens on a
    // task of its own while the start step reads IMDS, and the claim takes it where it needs
    // it (the claim's look at EC2 does not wait for it).
    let ledger = claim::open_early(settings, deadline.at());
    let started = timed(
        j,
        "start",
        deadline.run("start", Clients::connect(deadline.at())),
    )
    .await;
    let (clients, me) = match started {
        Ok(s) => s,
        Err(e) => {
            if let Some(opening) = &ledger {
                opening.abort();
            }
            return Err(e);
        }
    };
    *ctx = Some(Ctx {
        clients: clients.clone(),
        me: me.clone(),
    });
    let at = deadline.at();
    let claim = timed(
        j,
        "claim",
        deadline.run(
            "claim",
            claim::hold_with(settings, &clients, &me, at, ledger),
        ),
    )
    .await?;
    // The attach (then the instance tag), the mount and the route go side by side: mount and route
    // wait for the volume's device and the ENI to arrive here (the proof that they are
    // attached), and their arrival ends the attach step's wait for EC2 to say so. When the
    // claim did not find every resource, the attach step looks for them first.
    let arrivals = attach::Arrivals::default();
    let (attach_failed, attach_failure) = tokio::sync::watch::channel(false);
    let early = attach::expected(settings, &claim);
    let attaching = async {
        let started = Instant::now();
        let step = attach::run(
            settings,
            &clients,
            &me,
            Some(&claim),
            Some(&arrivals),
            false,
            at,
        );
        let r = deadline.run("attach", step).await;
        let took = started.elapsed();
        if r.is_err() {
            attach_failed.send_replace(true);
        }
        // The instance tag comes after the attach: the attach calls start what takes EC2 time,
        // and no step waits for the tag.
        claim::tag_instance(settings, &clients, &me, claim.id, at).await;
        (took, r)
    };
    let ((a_took, attach), (m_took, mount), (r_took, route)) = match &early {
        Some(handed) => {
            let mount = mount_step(
                settings,
                &clients,
                handed,
                Some(&arrivals.volume),
                at,
                deadline,
            );
            let route = route_step(settings, handed, Some(&arrivals.eni), at, deadline);
            tokio::join!(
                attaching,
                timed_side(unless_failed("mount", mount, attach_failure.clone())),
                timed_side(unless_failed("route", route, attach_failure)),
            )
        }
        None => {
            let (took, attached) = attaching.await;
            let handed = match attached {
                Ok(a) => a,
                Err(e) => {
                    j.step_outcome("attach", took, false);
                    return Err(e);
                }
            };
            let (m, r) = tokio::join!(
                timed_side(mount_step(settings, &clients, &handed, None, at, deadline)),
                timed_side(route_step(settings, &handed, None, at, deadline)),
            );
            ((took, Ok(handed)), m, r)
        }
    };
    j.step_took("attach", a_took, &attach);
    if settings.resources.volume {
        j.step_took("mount", m_took, &mount);
    }
    if settings.resources.eni {
        j.step_took("route", r_took, &route);
    }
    let attach = attach?;
    let (mount, route) = (mount?, route?);
    let render = if settings.kafka.is_some() && settings.cluster.role == Role::Kafka {
        // The ENI's primary address (it moves with the id); the instance's own only when no
        // ENI is managed: never the instance's when an ENI is, as it would not follow the id.
        let address = match attach.eni.as_ref() {
            Some(e) => {
                let ip = e.ips.first().with_context(|| {
                    format!("EC2 describes no private address on the ENI {}", e.id)
                })?;
                ip.parse::<IpAddr>()
                    .with_context(|| format!("the ENI's address {ip}"))?
            }
            None => crate::aws::imds::Imds::new().local_ipv4(at).await?,
        };
        let started = Instant::now();
        let inputs = render::Inputs {
            id: claim.id,
            az: &me.az,
            address,
            mount: &settings.storage.data_dir,
            settings,
        };
        let result = render::apply(&inputs).and_then(|r| {
            let text = std::fs::read(&r.path)
                .with_context(|| format!("reading back {}", r.path.display()))?;
            Ok(RenderRecord {
                sha256: crate::status::sha256_hex(&text),
                path: r.path,
                changed: r.changed,
            })
        });
        j.step("render", started, &result);
        let done = result?;
        journal::record(&settings.paths.state_dir, "render", &done)?;
        tracing::info!(path = %done.path.display(), changed = done.changed, "rendered");
        // KRaft: a new log directory is formatted with the rendered file.
        if let Some(kraft) = settings.kafka.as_ref().and_then(|k| k.kraft.as_ref()) {
            let volume = attach
                .volume
                .as_ref()
                .map_or("the instance's disk", |v| v.id.as_str());
            let started = Instant::now();
            let result = storage::kraft::run(settings, kraft, &done.path, volume, claim.id);
            j.step("format", started, &result);
            let f = result?;
            tracing::info!(log_dir = %f.log_dir.display(), state = %f.state, "KRaft log directory");
        }
        Some(done)
    } else {
        None
    };
    let ensemble = if settings.cluster.role == Role::Zookeeper {
        let volume = attach.volume.as_ref().map(|v| v.id.as_str());
        let step = crate::ensemble::step::run(settings, &clients, &me, claim.id, volume, deadline);
        Some(timed(j, "ensemble", step).await?)
    } else {
        None
    };
    Ok(Booted {
        claim,
        attach,
        mount,
        route,
        render,
        ensemble,
    })
}
