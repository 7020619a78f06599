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
        self.steps.push(StepRecord {
            step: step.to_string(),
            ms: took.as_millis() as u64,
            outcome: if result.is_ok() { "ok" } else { "failed" }.into(),
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
    if let Err(e) = &result {
        let error = ErrorRecord {
            kind: crate::exit::kind_for(e).to_string(),
            message: format!("{e:#}"),
        };
        if let Some(ctx) = &ctx {
            report(settings, ctx, &error).await;
        }
        j.error = Some(error);
    }
    if let Err(e) = j.save(settings) {
        tracing::warn!(error = %format!("{e:#}"), "cannot journal the boot's outcome");
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

async fn steps(
    settings: &Settings,
    deadline: &Deadline,
    j: &mut BootJournal,
    ctx: &mut Option<Ctx>,
) -> Result<Booted> {
    let (clients, me) = timed(
        j,
        "start",
        deadline.run("start", Clients::connect(deadline.at())),
    )
    .await?;
    *ctx = Some(Ctx {
        clients: clients.clone(),
        me: me.clone(),
    });
    let at = deadline.at();
    let claim = timed(
        j,
        "claim",
        deadline.run("claim", claim::run(settings, &clients, &me, at)),
    )
    .await?;
    let attach = timed(
        j,
        "attach",
        deadline.run(
            "attach",
            attach::run(settings, &clients, &me, Some(&claim), false, at),
        ),
    )
    .await?;
    // The volume and the ENI are independent: mount and route side by side.
    // Each side records its own duration (they end at different times).
    let mount = async {
        let started = Instant::now();
        let r = if settings.resources.volume {
            let step = storage::mount::run_step(settings, &clients, Some(&attach), at);
            deadline
                .run("mount", step)
                .await
                .and_then(|m| Ok(Some(serde_json::to_value(m)?)))
        } else {
            Ok(None)
        };
        (started.elapsed(), r)
    };
    let route = async {
        let started = Instant::now();
        let r = if settings.resources.eni {
            let step = network::run_step(settings, Some(&attach), at);
            deadline
                .run("route", step)
                .await
                .and_then(|r| Ok(Some(serde_json::to_value(r)?)))
        } else {
            Ok(None)
        };
        (started.elapsed(), r)
    };
    let ((m_took, mount), (r_took, route)) = tokio::join!(mount, route);
    if settings.resources.volume {
        j.step_took("mount", m_took, &mount);
    }
    if settings.resources.eni {
        j.step_took("route", r_took, &route);
    }
    let (mount, route) = (mount?, route?);
    let render = if settings.kafka.is_some() && settings.cluster.role == Role::Kafka {
        let address = match attach.eni.as_ref().and_then(|e| e.ips.first()) {
            Some(ip) => ip
                .parse::<IpAddr>()
                .with_context(|| format!("the ENI's address {ip}"))?,
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
    Ok(Booted {
        claim,
        attach,
        mount,
        route,
        render,
    })
}
