//! Admission of the sample manifests (Secrets, ConfigMap, Environment, Migration, Release)
//! after structure-aware mutations (fields dropped or added, types swapped, extreme numbers,
//! odd strings, nulls), as a create or as an update of the sample itself, one admission
//! path per input (see `tether_fuzz::Way`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_fuzz::{MutatedInput, admit_mutated_input};

fuzz_target!(|input: MutatedInput| admit_mutated_input(&input));
