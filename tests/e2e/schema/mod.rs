//! The CRDs, their structural and CEL validation, and `tether validate`.

mod admission_properties;
mod cel_rules;
mod crds;
mod e2e;
mod fuzz_corpus;
/// The fuzz targets' code (`fuzz/src/lib.rs`): the admission paths and the checks every
/// admitted object must pass, shared by `fuzz_corpus` and `admission_properties`.
#[path = "../../../fuzz/src/lib.rs"]
#[allow(dead_code, unreachable_pub)]
mod fuzz_targets;
mod kubectl;
mod messages;
mod nulls;
mod validate_cli;
