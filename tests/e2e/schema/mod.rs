//! The CRDs, their structural and CEL validation, and `tether validate`.

mod admission_properties;
mod cel_rules;
mod crds;
mod e2e;
mod fuzz_corpus;
mod kubectl;
mod messages;
mod nulls;
mod validate_cli;
