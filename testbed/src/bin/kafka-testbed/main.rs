//! kafka-testbed: brings up the agent's simulated world (demo), and checks or sweeps what
//! testbeds left behind.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
mod bench;
mod chaos;
mod demo;
mod demo_ensemble;
mod heal;
mod leave;

use kafka_testbed::{self as testbed, cleanup};

#[derive(Parser)]
#[command(
    name = "kafka-testbed",
    about = "The simulated AWS + ZooKeeper world kafka-agent runs in"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A 3-broker cluster in three AZs through an Auto Scaling Group; broker 1 dies and the
    /// group heals it while the demo prints a timeline.
    Demo {
        /// Cluster name used in tags.
        #[arg(long, default_value = "demo")]
        cluster: String,
        /// The claim backend: zookeeper or cloudwatch-logs.
        #[arg(long, default_value = "zookeeper")]
        backend: String,
        /// Keep the world up until Ctrl-C.
        #[arg(long)]
        hold: bool,
        /// Deploy from cloudformation/kafka-cluster.yaml through moto's CloudFormation
        /// (kafka_testbed::stack) instead of the testbed's own deployment.
        #[arg(long)]
        from_stack: bool,
        /// Run the cluster on a self-healing ZooKeeper ensemble deployed in the VPC through
        /// its own group (the agent in role zookeeper), and heal a terminated member of it too.
        #[arg(long, conflicts_with = "from_stack")]
        zookeeper_ensemble: bool,
    },
    /// Benchmark the claim step per backend: latency of one claim, and the time for N agents
    /// booting at once to all hold distinct ids. Build the agent with --release first.
    BenchClaim {
        /// The kafka-agent binary to run (default: beside this one).
        #[arg(long)]
        agent: Option<std::path::PathBuf>,
        /// Agents booting at once.
        #[arg(long, default_value_t = 64)]
        agents: usize,
        /// Sequential claims measured for latency.
        #[arg(long, default_value_t = 100)]
        samples: usize,
        /// Herds of simultaneous agents measured.
        #[arg(long, default_value_t = 5)]
        herds: usize,
        /// Meter the agents' calls as AWS does (token buckets per API: EC2 Describe* 20/s,
        /// burst 100; CreateLogStream 50/s; DescribeLogStreams 5/s; see bench.rs).
        #[arg(long)]
        aws_quotas: bool,
    },
    /// Benchmark the attach step with EC2's attach/detach taking `--delay` seconds: the phase
    /// time (ENI and volume go concurrently) and the API calls it makes.
    BenchAttach {
        /// The kafka-agent binary to run (default: beside this one).
        #[arg(long)]
        agent: Option<std::path::PathBuf>,
        #[arg(long, default_value_t = 1.0)]
        delay: f64,
        #[arg(long, default_value_t = 10)]
        samples: usize,
    },
    /// Benchmark a replacement boot (`kafka-agent boot` on a new instance taking over a
    /// terminated broker's id, ENI and formatted volume; no added delays): p50/p99 wall time,
    /// AWS API calls per boot, peak RSS. Build the agent with --release first.
    BenchBoot {
        /// The kafka-agent binary to run (default: beside this one).
        #[arg(long)]
        agent: Option<std::path::PathBuf>,
        /// A second kafka-agent binary: every other replacement boot runs it instead, in the
        /// same world (an A/B comparison that this machine's drift between runs cannot skew).
        #[arg(long)]
        against: Option<std::path::PathBuf>,
        #[arg(long, default_value_t = 20)]
        samples: usize,
    },
    /// Time to heal: broker 1 terminated `samples` times in a cluster deployed through the
    /// Auto Scaling Group; terminate call until its replacement's broker registers.
    BenchHeal {
        /// The claim backend: zookeeper or cloudwatch-logs.
        #[arg(long, default_value = "zookeeper")]
        backend: String,
        #[arg(long, default_value_t = 10)]
        samples: usize,
        /// Wedge the broker's process (the watchdog replaces it) instead of terminating its
        /// instance.
        #[arg(long)]
        wedge: bool,
    },
    /// A replacement through the group with the termination hook against one without.
    BenchLeave {
        /// The claim backend: zookeeper or cloudwatch-logs.
        #[arg(long, default_value = "zookeeper")]
        backend: String,
        #[arg(long, default_value_t = 5)]
        samples: usize,
        /// How long EC2 keeps a terminated instance's volumes and ENIs (seconds).
        #[arg(long, default_value_t = 10.0)]
        release_delay: f64,
    },
    /// A chaos run against the demo's cluster: random terminations, wedged and exited brokers,
    /// ZooKeeper restarts and AWS fault windows from a seeded schedule (the same seed, the same
    /// schedule), invariants checked every second and at the end; exits non-zero on a violation.
    Chaos {
        /// How long faults are injected (the heal and the end checks come after).
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Seeds the fault schedule.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The claim backend: zookeeper or cloudwatch-logs.
        #[arg(long, default_value = "zookeeper")]
        backend: String,
        #[arg(long, default_value_t = 0.5)]
        terminate_per_minute: f64,
        #[arg(long, default_value_t = 0.5)]
        wedge_per_minute: f64,
        #[arg(long, default_value_t = 0.5)]
        exit_per_minute: f64,
        #[arg(long, default_value_t = 0.3)]
        zk_restart_per_minute: f64,
        /// AWS fault windows (throttling, 5xx, faults after the mutation, eventual
        /// consistency) per minute, 10 to 30 s each, on the agents' calls.
        #[arg(long, default_value_t = 0.5)]
        aws_faults_per_minute: f64,
        /// The share of the agents' AWS calls a fault window hits.
        #[arg(long, default_value_t = 0.2)]
        aws_fault_rate: f64,
        /// The group's termination hook; the watchdogs leave cleanly on it.
        #[arg(long)]
        termination_hook: bool,
        /// How long the end waits for the cluster to heal.
        #[arg(long, default_value_t = 300)]
        heal_seconds: u64,
        /// Print the fault schedule and stop.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check a release binary (scripts/release): static, stripped, at most 25 MB, runs in an
    /// empty root and resolves its AWS endpoint through DNS there; prints size and start-up time.
    CheckRelease { binary: std::path::PathBuf },
    /// Exit non-zero if any testbed left namespaces, loop devices, mounts or processes.
    Check,
    /// Remove everything testbeds left behind (of dead owners; --all: of every testbed).
    Sweep {
        #[arg(long)]
        all: bool,
    },
}

fn main() -> ExitCode {
    // The testbed's own lines; its libraries' (a ZooKeeper session's INFO chatter) only when
    // asked for through RUST_LOG.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,kafka_testbed=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Demo {
            cluster,
            backend,
            hold,
            from_stack,
            zookeeper_ensemble,
        } => {
            if from_stack {
                testbed::stack::demo(&cluster, &backend, hold)
            } else {
                demo::run(&cluster, &backend, hold, zookeeper_ensemble)
            }
        }
        Cmd::BenchClaim {
            agent,
            agents,
            samples,
            herds,
            aws_quotas,
        } => bench::claim(agent, agents, samples, herds, aws_quotas),
        Cmd::BenchAttach {
            agent,
            delay,
            samples,
        } => bench::attach(agent, delay, samples),
        Cmd::BenchBoot {
            agent,
            against,
            samples,
        } => bench::boot(agent, against, samples),
        Cmd::BenchHeal {
            backend,
            samples,
            wedge,
        } => heal::run(&backend, samples, wedge),
        Cmd::BenchLeave {
            backend,
            samples,
            release_delay,
        } => leave::run(&backend, samples, release_delay),
        Cmd::Chaos {
            minutes,
            seed,
            backend,
            terminate_per_minute,
            wedge_per_minute,
            exit_per_minute,
            zk_restart_per_minute,
            aws_faults_per_minute,
            aws_fault_rate,
            termination_hook,
            heal_seconds,
            dry_run,
        } => chaos::run(chaos::Options {
            minutes,
            seed,
            rates: chaos::Rates {
                terminate: terminate_per_minute,
                wedge: wedge_per_minute,
                exit: exit_per_minute,
                zk_restart: zk_restart_per_minute,
                aws_faults: aws_faults_per_minute,
            },
            aws_fault_rate,
            backend,
            termination_hook,
            heal_timeout: std::time::Duration::from_secs(heal_seconds),
            dry_run,
        }),
        Cmd::CheckRelease { binary } => {
            testbed::release::check(&binary).map(|r| testbed::release::print(&binary, &r))
        }
        Cmd::Check => {
            let left = cleanup::leftovers(&testbed::root());
            if left.is_empty() {
                println!("testbed check: nothing left behind");
                Ok(())
            } else {
                print!("{left}");
                Err(anyhow::anyhow!("testbed check: the above was left behind"))
            }
        }
        Cmd::Sweep { all } => {
            if all {
                cleanup::sweep(&testbed::root())
            } else {
                cleanup::sweep_dead()
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kafka-testbed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
