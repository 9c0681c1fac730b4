//! `tether sandbox`: serves the imitations on loopback ports, prints one line per platform
//! (`<platform> <base-url> <token>`), and serves until Ctrl-C.

use std::io::Write;

use tokio_util::sync::CancellationToken;

use super::{SandboxConfig, SandboxError, start};
use crate::platform::Platform;

/// Flags of `tether sandbox`.
#[derive(Clone, Debug, clap::Args)]
pub struct SandboxArgs {
    /// Simulated seconds per wall-clock second (deploys finish and rate-limit windows pass
    /// this many times faster).
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
}

/// Runs the sandbox until Ctrl-C (or SIGTERM).
pub async fn serve(args: SandboxArgs) -> Result<(), SandboxError> {
    let shutdown = CancellationToken::new();
    let handle = start(
        SandboxConfig {
            time_scale: args.time_scale,
            record: false,
            platforms: Platform::ALL.to_vec(),
            ..SandboxConfig::default()
        },
        shutdown.clone(),
    )
    .await?;
    let mut out = std::io::stdout().lock();
    for (platform, url, token) in handle.endpoints() {
        // The token is printed on purpose: it is the sandbox's own, made up at start, and
        // printing it is how a user points clients at the sandbox.
        let _ = writeln!(out, "{platform} {url} {}", token.expose());
    }
    let _ = out.flush();
    drop(out);
    let _ = tokio::signal::ctrl_c().await;
    shutdown.cancel();
    handle.stopped().await;
    Ok(())
}
