//! `keel`: the operator's command line over Keel's public API (`keel --help`).

mod api;
mod args;
mod commands;
mod dev;
mod output;
mod redrive;

use api::{Api, CliError};
use args::{Cli, Command};
use clap::Parser;
use std::process::ExitCode;

fn key(cli: &Cli) -> Result<String, CliError> {
    match &cli.key_file {
        Some(path) => std::fs::read_to_string(path).map(|k| k.trim().to_string()).map_err(|e| CliError::Usage(format!("--key-file {}: {e}", path.display()))),
        None => Ok(std::env::var("KEEL_KEY").unwrap_or_default().trim().to_string()),
    }
}

async fn run(cli: Cli) -> Result<output::Printed, CliError> {
    match cli.command {
        Command::Dlq(args::Dlq::Redrive(r)) => return redrive::redrive(r).await,
        Command::Dev { endpoint, prefix } => return dev::provision(&endpoint, &prefix).await,
        Command::Audit(args::Audit::Verify { offline: Some(file) }) => return commands::verify_offline(&file),
        _ => {}
    }
    let api = Api::new(&cli.url, key(&cli)?);
    commands::run(&api, cli.command).await
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    match run(cli).await {
        Ok(out) if json => {
            println!("{}", serde_json::to_string_pretty(&out.json).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(out) => {
            println!("{}", out.text);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("keel: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
