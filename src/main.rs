//! The `tether` binary: one subcommand per way of running Tether (see `tether --help`).
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

// jemalloc instead of glibc malloc: the controller allocates small, short-lived objects by the
// million (JSON from the API and the platforms). Measured with `cargo bench --bench sync` at
// 2,000 Environments: glibc spent about a third of the controller's CPU in malloc/free and
// kept freed memory fragmented; jemalloc took 40% less CPU and the lowest peak RSS of the
// three allocators tried (mimalloc's was a third higher). Its settings are built in from
// `JEMALLOC_SYS_WITH_MALLOC_CONF` in `.cargo/config.toml`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Tether keeps Render, Vercel, Fly.io and Supabase matching your Kubernetes manifests.
#[derive(Parser)]
#[command(name = "tether", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML, or write one file per CRD into each
    /// `--out-dir` (what `make crds` does for crds/ and the Helm chart).
    Crds {
        /// Write `<plural>.<group>.yaml` files into this directory (repeatable).
        #[arg(long = "out-dir")]
        out_dirs: Vec<std::path::PathBuf>,
    },
    /// Lint, plan and apply Postgres/Supabase migrations (`tether migrate --help`).
    Migrate {
        #[command(subcommand)]
        command: tether::migrate::cli::MigrateCommand,
    },
    /// Preview what the Environment controller would create, change or delete on the
    /// platforms for a folder of manifests, without changing anything. Exits 0 when nothing
    /// would change, 2 when something would, 1 on any error.
    Plan(tether::sync::plan::PlanArgs),
    /// Run the Environment, Release and Migration controllers against a Kubernetes API.
    Controller(Box<tether::controller::cli::ControllerArgs>),
    /// Print every metric name the binary registers, one per line.
    #[command(hide = true)]
    MetricsNames,
    /// Print the Kubernetes API calls the controllers make, as JSON.
    #[command(hide = true)]
    Rbac,
    /// Check manifests offline as the API server would admit them: every Tether object
    /// against the CRD schemas and CEL rules, other kinds for apiVersion/kind/metadata.
    /// Prints `file:line:column: Kind/name: field: message` per problem (at the offending
    /// field); exits 1 if any.
    Validate {
        /// Files or directories of YAML manifests (multi-document streams).
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
    },
    /// Standalone mode: run the embedded API and the controllers against a folder of manifests.
    Run(tether::standalone::RunArgs),
    /// Serve imitations of the Render, Vercel, Fly.io and Supabase APIs (on loopback unless
    /// `--addr`); prints `<platform> <base-url> <token>` per platform, serves until Ctrl-C or
    /// SIGTERM.
    Sandbox(tether::sandbox::cli::SandboxArgs),
}

fn main() -> anyhow::Result<()> {
    tether::install_crypto_provider();
    let cli = Cli::parse();
    match cli.command {
        Command::Crds { out_dirs } => {
            // What a real API server would refuse (CEL rules over the cost budget, schemas
            // that do not compile) is never written.
            if let Err(e) = tether::schema::SchemaRegistry::new(&tether::api::crds()) {
                eprintln!("{e}");
                std::process::exit(1);
            }
            if out_dirs.is_empty() {
                tether::print_stdout(&tether::api::crds_yaml()?)?;
            }
            for dir in out_dirs {
                tether::api::write_crds(&dir)?;
            }
            Ok(())
        }
        Command::Migrate { command } => std::process::exit(tether::migrate::cli::main(command)?),
        Command::Plan(args) => std::process::exit(tether::sync::plan::main(args)?),
        Command::Controller(args) => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(tether::controller::cli::run_cli(*args))?;
            Ok(())
        }
        Command::MetricsNames => {
            tether::print_stdout(&tether::controller::cli::metric_names()?)?;
            Ok(())
        }
        Command::Rbac => {
            tether::print_stdout(&format!("{}\n", tether::controller::rbac::to_json()))?;
            Ok(())
        }
        Command::Validate { paths } => {
            if !tether::schema::validate::run(&paths)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Run(args) => Ok(tether::standalone::run(args)?),
        Command::Sandbox(args) => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(tether::sandbox::cli::serve(args))?;
            Ok(())
        }
    }
}
