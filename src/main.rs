//! kafka-agent's entry point: parse arguments, set up logging, run, map the error to an exit code.

// The whole command is one future (boot's steps nest deeply); computing its layout needs more
// than the default query depth.
#![recursion_limit = "256"]

use clap::Parser;
use kafka_agent::{cli, exit};

#[tokio::main]
async fn main() {
    let cli = cli::Cli::parse();
    kafka_agent::aws::warm_tls();
    // The agent's own lines at info; its libraries' (the ZooKeeper client's session chatter,
    // the SDK's) only when they warn, unless asked for with -v / -vv.
    let filter = match cli.verbose {
        0 => "warn,kafka_agent=info",
        1 => "info,kafka_agent=debug",
        _ => "debug,kafka_agent=trace",
    };
    let log = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KAFKA_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // journald stamps each line itself; KAFKA_AGENT_LOG_UPTIME=1 stamps the time since the
    // process started (to read where a boot's time goes).
    if std::env::var_os("KAFKA_AGENT_LOG_UPTIME").is_some() {
        log.with_timer(tracing_subscriber::fmt::time::uptime())
            .init();
    } else {
        log.without_time().init();
    }
    if let Err(err) = cli::run(cli).await {
        let chain: Vec<String> = err.chain().map(ToString::to_string).collect();
        eprintln!(
            "kafka-agent: {} [{}]",
            chain.join(": "),
            exit::kind_for(&err)
        );
        std::process::exit(exit::code_for(&err));
    }
}
