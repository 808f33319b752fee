//! `anchorage`: see `anchorage --help`.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = anchorage::cli::Cli::parse();
    // The terminal client owns the terminal: no log lines across its screen.
    if !matches!(cli.command, anchorage::cli::Command::Chat { .. }) {
        anchorage::telemetry::init(&anchorage::telemetry::log_config(cli.config.as_deref()));
    }
    match anchorage::cli::run(cli).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
