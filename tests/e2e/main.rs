//! Tether's integration tests, as one test crate: one executable to link instead of one per
//! file (each linked the whole `tether` library), with a module per area. nextest still runs
//! every test in its own process; `cargo nextest run -E 'test(/^sync::/)'` runs one area.
//!
//! - `localapi`: the embedded Kubernetes API (CRUD, watches, the file store, kubectl);
//! - `schema`: CRD generation, structural and CEL validation, `tether validate`;
//! - `platform`: the four platform clients against their sandboxes and spec subsets;
//! - `sync`: the Environment sync per platform, driver and controller;
//! - `controller`: the controllers' runtime (finalizers, leases, Migrations, the CLI);
//! - `migrate`: the migration engine against PostgreSQL;
//! - `cli`: `tether plan` and `tether run` as a user runs them.

#[path = "../contract/mod.rs"]
pub mod contract;
#[path = "../support/mod.rs"]
pub mod support;

mod cli;
mod controller;
mod localapi;
mod migrate;
mod platform;
mod schema;
mod sync;
