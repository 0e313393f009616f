//! `chat-bench`: group fan-out through real `chat-gateway` processes, measured the way
//! `../shared/peers` measure theirs — same workload, scenarios and JSON schema — and put
//! beside them in one table.
//!
//! ```text
//! chat-bench run --members 1000 --messages 2000 [--rate 0] [--variant embedded]
//! chat-bench compare [SCENARIO...] [--variants ...] [--runs 3] [--peers DIR]
//! ```
//!
//! Build both binaries in release mode first (`scripts/bench.sh` does): the gateway is
//! started from the directory this binary lives in.

mod deployment;
mod load;
mod procfs;
mod report;
mod run;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use anyhow::Context;
use deployment::{Launch, Variant};
use report::Scenario;
use run::Workload;

#[derive(Parser)]
#[command(
    name = "chat-bench",
    about = "Group fan-out benchmark of chat-gateway beside its peers"
)]
struct Cli {
    /// The `chat-gateway` binary [default: next to this one].
    #[arg(long, global = true)]
    gateway: Option<PathBuf>,
    /// A TOML file appended to every gateway's generated config, e.g. a `[[plugins]]`
    /// chain with another ACK policy (tables only: it comes last).
    #[arg(long, global = true)]
    gateway_config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One run of one variant: prints one JSON line.
    Run {
        #[command(flatten)]
        workload: Workload,
        #[arg(long, value_enum, default_value = "embedded")]
        variant: Variant,
    },
    /// Named scenarios on the gateway's variants and on the peers, one run after another:
    /// prints every JSON line, then a table of medians and ratios, then the bar.
    Compare {
        /// Scenarios [default: all five].
        #[arg(value_enum)]
        scenarios: Vec<Scenario>,
        /// Variants on every scenario [default: embedded, the row compared with the ceiling].
        #[arg(long, value_enum, value_delimiter = ',')]
        variants: Vec<Variant>,
        /// Variants run on saturate-10k only [default: default, no-plugins, redis,
        /// three-gateways].
        #[arg(long, value_enum, value_delimiter = ',')]
        extra_variants: Option<Vec<Variant>>,
        /// Runs of each; the table shows medians.
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// Where the peers are (`compare.sh`) [default: ../shared/peers].
        #[arg(long, default_value = "../shared/peers")]
        peers: PathBuf,
        /// Leave the peers out.
        #[arg(long)]
        no_peers: bool,
        /// Also append every JSON line to this file.
        #[arg(long)]
        jsonl: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let gateway = Launch {
        binary: match cli.gateway {
            Some(path) => path,
            None => std::env::current_exe()?.with_file_name("chat-gateway"),
        },
        extra_config: match &cli.gateway_config {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
            None => String::new(),
        },
    };
    // One worker, as the ceiling's load: the machine has two cores and the gateway one.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    match cli.command {
        Command::Run { workload, variant } => {
            let line = runtime.block_on(run::run(&workload, variant, &gateway))?;
            println!("{line}");
            Ok(())
        }
        Command::Compare {
            scenarios,
            variants,
            extra_variants,
            runs,
            peers,
            no_peers,
            jsonl,
        } => {
            let plan = report::Plan {
                scenarios: if scenarios.is_empty() {
                    Scenario::ALL.to_vec()
                } else {
                    scenarios
                },
                variants: if variants.is_empty() {
                    vec![Variant::Embedded]
                } else {
                    variants
                },
                extra_variants: extra_variants.unwrap_or_else(|| {
                    vec![
                        Variant::Default,
                        Variant::NoPlugins,
                        Variant::Redis,
                        Variant::ThreeGateways,
                    ]
                }),
                runs,
                peers: (!no_peers).then_some(peers),
                jsonl,
            };
            runtime.block_on(report::compare(&plan, &gateway))
        }
    }
}
