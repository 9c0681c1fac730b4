//! `tether plan` and `tether run` as a user runs them.

mod closed_pipe;
mod plan;
mod run_harness;
mod run_platforms;
mod run_standalone;
mod walkthrough;
