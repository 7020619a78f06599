//! The command line: what each subcommand does, and the shared flags.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::config;

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
    /// Print the effective configuration (all files merged, defaults filled, secrets redacted).
    Config {
        /// Also list the files read, in the order they apply.
        #[arg(long)]
        files: bool,
    },
}

/// Runs the command; output goes to stdout, logs to stderr.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Claim { dry_run, json } => {
            let settings = config::load(&cli.config)?;
            let clients = crate::aws::Clients::from_env().await;
            let me = crate::aws::imds::Identity::from_imds().await?;
            if dry_run {
                let plan = crate::claim::dry_run(&settings, &clients, &me).await?;
                println!("{plan}");
                return Ok(());
            }
            let claim = crate::claim::run(&settings, &clients, &me).await?;
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
            let settings = config::load(&cli.config)?;
            let clients = crate::aws::Clients::from_env().await;
            let me = crate::aws::imds::Identity::from_imds().await?;
            let done = crate::attach::run(&settings, &clients, &me, dry_run).await?;
            println!("{}", serde_json::to_string(&done)?);
            Ok(())
        }
        Command::Mount => {
            let settings = config::load(&cli.config)?;
            let clients = crate::aws::Clients::from_env().await;
            let done = crate::storage::mount::run_step(&settings, &clients).await?;
            println!("{}", serde_json::to_string(&done)?);
            Ok(())
        }
        Command::Route => {
            let settings = config::load(&cli.config)?;
            let done = crate::network::run_step(&settings).await?;
            println!("{}", serde_json::to_string(&done)?);
            Ok(())
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
