//! Tether: a GitOps operator that makes Render, Vercel, Fly.io and Supabase match
//! Kubernetes manifests, and keeps them matching.
//!
//! A tour of the crate, in the order data flows through it:
//!
//! - [`api`]: the three custom resources (`Environment`, `Release`, `Migration`) as typed
//!   Rust structs. The CRD YAML in `crds/` and in the chart is generated from them.
//! - `localapi`: a small Kubernetes-compatible API server that runs in process, so the
//!   controllers run without a cluster (`tether run`) and in every end-to-end test.
//! - `controller`: one reconciler per resource on `kube::runtime::Controller`
//!   (observe → plan → act → report), plus the shared runtime (metrics, leader election).
//! - `platform`: clients for the four vendor APIs behind small traits, with one shared
//!   HTTP layer (auth, rate limits, retries, metrics).
//! - `sandbox`: stateful imitations of the four vendor APIs for tests and `make run`.
//! - `migrate`: the Postgres migration engine (lint, dry-run, lock, apply, record, verify).
#![forbid(unsafe_code)]

pub mod api;
pub mod controller;
pub mod localapi;
pub mod migrate;
pub mod platform;
pub mod sandbox;
pub mod schema;
pub mod standalone;
pub mod telemetry;

/// Installs the process-wide rustls crypto provider (ring).
///
/// kube and reqwest both use rustls; with no provider chosen explicitly the first TLS
/// connection panics. Call this once at the start of `main` and of every test binary.
/// Calling it again is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
