//! `anchorage-bench <scenario> [--quick] [--json]` (also run as `anchorage bench …`).

use std::process::ExitCode;

use anchorage_bench::clients::Mode;
use anchorage_bench::{Scenario, Sizes};
use clap::Parser;

/// mimalloc: the hot paths (decoding events, building rows and frames) make and drop many small
/// values across threads, where it spends a fraction of glibc's time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "anchorage bench",
    about = "Measure a scenario next to its raw baseline",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    clients: Option<Clients>,
    /// The scenario to measure.
    #[arg(value_enum, required = true)]
    scenario: Option<Scenario>,
    /// A small, fast run (a smoke test of the output, not of speed).
    #[arg(long)]
    quick: bool,
    /// Print the report on one line.
    #[arg(long)]
    json: bool,
    /// Spread the clients of `send` and `fanout` over this many edges, each with its own
    /// NATS connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8))]
    edges: u8,
}

#[derive(Debug, clap::Subcommand)]
enum Clients {
    /// The client side of the socket-heavy scenarios (a separate process).
    #[command(hide = true)]
    Clients {
        /// Edge addresses, comma-separated.
        #[arg(value_delimiter = ',', required = true)]
        addrs: Vec<std::net::SocketAddr>,
        count: usize,
        #[arg(long, value_enum, default_value = "idle")]
        mode: Mode,
        /// Users are <prefix><6 digits>.
        #[arg(long, default_value = "u")]
        prefix: String,
        /// Messages each socket waits for (fanout).
        #[arg(long, default_value_t = 0)]
        messages: usize,
    },
    /// The Rust SDK's side of `bench sdk`: a job on stdin, its report on stdout.
    #[command(hide = true)]
    SdkRunner,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match (cli.clients, cli.scenario) {
        (
            Some(Clients::Clients {
                addrs,
                count,
                mode,
                prefix,
                messages,
            }),
            _,
        ) => anchorage_bench::clients::run(&addrs, count, mode, &prefix, messages).await,
        (Some(Clients::SdkRunner), _) => anchorage_bench::sdk::run().await,
        (None, Some(scenario)) => {
            let sizes = Sizes {
                edges: usize::from(cli.edges),
                ..Sizes::new(cli.quick)
            };
            report(scenario, sizes, cli.json).await
        }
        (None, None) => Err(anyhow::anyhow!("name a scenario")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("anchorage bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn report(scenario: Scenario, sizes: Sizes, json: bool) -> anyhow::Result<()> {
    let report = anchorage_bench::run(scenario, sizes).await?;
    if json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
