//! The CRDs, their structural and CEL validation, and `tether validate`.

mod cel_rules;
mod crds;
mod e2e;
mod kubectl;
mod messages;
mod nulls;
mod validate_cli;
