//! The `tether` binary: one subcommand per way of running Tether (see `tether --help`).
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

/// Tether keeps Render, Vercel, Fly.io and Supabase matching your Kubernetes manifests.
#[derive(Parser)]
#[command(name = "tether", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML (what `make crds` writes to crds/).
    Crds,
    /// Lint, plan and apply Postgres/Supabase migrations (`tether migrate --help`).
    Migrate {
        #[command(subcommand)]
        command: tether::migrate::cli::MigrateCommand,
    },
}

fn main() -> anyhow::Result<()> {
    tether::install_crypto_provider();
    let cli = Cli::parse();
    match cli.command {
        Command::Crds => {
            print!("{}", tether::api::crds_yaml()?);
            Ok(())
        }
        Command::Migrate { command } => std::process::exit(tether::migrate::cli::main(command)?),
    }
}
