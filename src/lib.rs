//! Tether: a GitOps operator that makes Render, Vercel, Fly.io and Supabase match
//! Kubernetes manifests, and keeps them matching.
//!
//! A tour of the crate, in the order data flows through it:
//!
//! - [`api`]: the three custom resources (`Environment`, `Release`, `Migration`) as typed
//!   Rust structs. The CRD YAML in `crds/` and in the chart is generated from them.
//! - [`schema`]: what the API server does with a CRD's structural schema — pruning,
//!   defaulting, validation and CEL rules, Table output, OpenAPI v3 — used by the embedded API
//!   server and by `tether validate`.
//! - [`localapi`]: a small Kubernetes-compatible API server that runs in process, so the
//!   controllers run without a cluster (`tether run`) and in every end-to-end test.
//! - [`standalone`]: `tether run` — the embedded API, the manifests of a folder applied and
//!   pruned as it changes, the controllers, progress lines for a person.
//! - [`controller`]: one reconciler per resource on `kube::runtime::Controller`
//!   (observe → plan → act → report), the shared runtime (finalizers, status by server-side
//!   apply, events, metrics, leader election) and `tether controller`.
//! - [`platform`]: clients for the four vendor APIs behind small traits, with one shared
//!   HTTP layer (auth, rate limits, retries, metrics).
//! - [`sandbox`]: stateful imitations of the four vendor APIs for tests and `tether sandbox`.
//! - [`migrate`]: the Postgres migration engine (lint, dry-run, lock, apply, record, verify)
//!   and `tether migrate`.
//! - [`telemetry`]: the metrics registry and the tracing subscriber.
//! - [`client`]: Kubernetes clients that name themselves (User-Agent `tether/<version>
//!   (<component>)`).
#![forbid(unsafe_code)]

pub mod api;
pub mod client;
pub mod controller;
pub mod localapi;
pub mod migrate;
pub mod platform;
pub mod sandbox;
pub mod schema;
pub mod standalone;
pub mod sync;
pub mod telemetry;

/// Writes a command's output to stdout. A reader that went away (`tether crds | head`) is not
/// an error: the output is simply no longer wanted, so the command ends normally instead of
/// panicking on a broken pipe as `println!` does.
pub fn print_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Installs the process-wide rustls crypto provider (ring).
///
/// kube and reqwest both use rustls; with no provider chosen explicitly the first TLS
/// connection panics. Call this once at the start of `main` and of every test binary.
/// Calling it again is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
