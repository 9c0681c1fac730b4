//! The controllers' runtime: finalizers, conditions, leader election, Migrations, the CLI.

mod cli;
mod e2e;
mod leader;
mod migration;
