//! The command line: what each subcommand does, and the shared flags.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::aws::{self, Clients};
use crate::deadline::Deadline;
use crate::{attach, claim, config, network, storage};

#[derive(Debug, Parser)]
#[command(
    name = "kafka-agent",
    version,
    about = "Gives a Kafka broker or ZooKeeper node its id, ENI, volume and configuration back on every boot"
)]
pub struct Cli {
    /// The main configuration file; drop-ins are read from config.d/ beside it.
    #[arg(long, global = true, env = "KAFKA_AGENT_CONFIG", default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the boot steps in order (claim, attach, mount, route) under one boot deadline,
    /// each step getting what the earlier ones left; prints what each did.
    Boot,
    /// Claim this instance's broker id / myid (step 1); prints the claim.
    Claim {
        /// Say what would be claimed and why, writing nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the claim as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Attach the claimed id's ENI and volume to this instance (step 2); prints what it did.
    Attach {
        /// Say what would be done, changing nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Mount the attached volume at the data directory, formatting only a volume tagged new
    /// and checking the data belongs to this id (step 3); prints what it did.
    Mount,
    /// Route the attached ENI: address, table 10000+device-number, rules (step 4).
    Route,
    /// Wait until the broker serves (bounded by `[signal] ready_timeout_seconds`), then
    /// signal SUCCESS to CloudFormation and CONTINUE to the lifecycle hook; FAILURE and
    /// ABANDON with kind `not_ready` when it never does. Prints what was sent.
    Signal,
    /// Watch the local broker until stopped (`[watch]`): after `unhealthy_after_seconds` of
    /// continuous failure mark the instance Unhealthy so the group replaces it; never within
    /// the grace period after boot, never while ZooKeeper is unreachable, one replacement per
    /// cluster at a time (a lease). Journals what it sees as `watch.json`.
    Watch,
    /// Report the node's health from the journal and local live checks; exits 0 healthy,
    /// 1 degraded, 2 failed, 3 unknown (never booted, journal unreadable).
    Status {
        /// Print the report as JSON (schema version 1, see the README).
        #[arg(long)]
        json: bool,
    },
    /// Print the effective configuration (all files merged, defaults filled, secrets redacted).
    Config {
        /// Also list the files read, in the order they apply.
        #[arg(long)]
        files: bool,
    },
}

/// Runs the command; output goes to stdout, logs to stderr. Each command but `config` has
/// one boot deadline (`boot.deadline_seconds` from its start) that all its steps share.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Boot => {
            let (settings, deadline) = load(&cli.config)?;
            let done = crate::boot::run(&settings, &deadline).await?;
            println!("{}", serde_json::to_string(&done)?);
            Ok(())
        }
        Command::Claim { dry_run, json } => {
            let (settings, deadline) = load(&cli.config)?;
            let (clients, me) = deadline
                .run("start", Clients::connect(deadline.at()))
                .await?;
            if dry_run {
                let plan = deadline
                    .run(
                        "claim",
                        claim::dry_run(&settings, &clients, &me, deadline.at()),
                    )
                    .await?;
                println!("{plan}");
                return Ok(());
            }
            let claim = deadline
                .run("claim", claim::run(&settings, &clients, &me, deadline.at()))
                .await?;
            if json {
                println!("{}", serde_json::to_string(&claim)?);
            } else {
                println!(
                    "claimed id {} (epoch {}, {}) for {} in {}",
                    claim.id, claim.epoch, claim.how, claim.instance_id, claim.az
                );
            }
            Ok(())
        }
        Command::Attach { dry_run } => {
            let (settings, deadline) = load(&cli.config)?;
            let (clients, me) = deadline
                .run("start", Clients::connect(deadline.at()))
                .await?;
            let step = attach::run(&settings, &clients, &me, None, None, dry_run, deadline.at());
            let done = deadline.run("attach", step).await?;
            println!("{}", serde_json::to_string(&done)?);
            Ok(())
        }
        Command::Mount => {
            let (settings, deadline) = load(&cli.config)?;
            let (clients, _) = deadline
                .run("start", Clients::connect(deadline.at()))
                .await?;
            let step = storage::mount::run_step(&settings, &clients, None, None, deadline.at());
            let done = deadline.run("mount", step).await?;
            println!("{}", serde_json::to_string(&done)?);
            Ok(())
        }
        Command::Route => {
            let (settings, deadline) = load(&cli.config)?;
            aws::region::log_imds_endpoint();
            let done = deadline
                .run(
                    "route",
                    network::run_step(&settings, None, None, deadline.at()),
                )
                .await?;
            println!("{}", serde_json::to_string(&done)?);
            Ok(())
        }
        Command::Status { json } => {
            let settings = config::load(&cli.config)?;
            let report = crate::status::collect(&settings).await;
            crate::status::print(&report, json)?;
            std::process::exit(report.exit_code);
        }
        Command::Signal => {
            let (settings, deadline) = load(&cli.config)?;
            let (clients, me) = deadline
                .run("start", Clients::connect(deadline.at()))
                .await?;
            let step = crate::signal::run(&settings, &clients, &me, deadline.at());
            let sent = deadline.run("signal", step).await?;
            println!("{}", serde_json::to_string(&sent)?);
            Ok(())
        }
        Command::Watch => {
            let settings = config::load(&cli.config)?;
            if let Some(zk) = &settings.zookeeper {
                tracing::info!(service = %"zookeeper", connect = %zk.connect, "endpoint");
            }
            crate::watch::run(&settings).await
        }
        Command::Config { files } => {
            let settings = config::load(&cli.config)?;
            if files {
                for f in config::files(&cli.config)? {
                    println!("# {}", f.display());
                }
            }
            print!("{}", settings.to_toml());
            Ok(())
        }
    }
}

/// Loads the settings and starts the command's boot deadline; logs where the coordination
/// service's address came from.
fn load(path: &Path) -> Result<(config::Settings, Deadline)> {
    let settings = config::load(path)?;
    let deadline = Deadline::after(settings.boot.deadline);
    if let Some(zk) = &settings.zookeeper {
        let files = config::files(path)?
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        tracing::info!(service = %"zookeeper", connect = %zk.connect, source = %format!("[zookeeper] connect in {files}"), "endpoint");
    }
    Ok((settings, deadline))
}
