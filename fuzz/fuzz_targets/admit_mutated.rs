//! Admission of the sample manifests (Secrets, ConfigMap, Environment, Migration, Release)
//! after structure-aware mutations (fields dropped or added, types swapped, extreme numbers,
//! odd strings, nulls), as a create or as an update of the sample itself, one admission
//! path per input (see `tether_fuzz::Way`).

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tether_fuzz::{Mutation, SAMPLES, Way, admit};

#[derive(Debug, Arbitrary)]
struct Input {
    sample: u8,
    update: bool,
    way: Way,
    mutations: Vec<Mutation>,
}

fuzz_target!(|input: Input| {
    let base = &SAMPLES[usize::from(input.sample) % SAMPLES.len()];
    let mut doc = base.clone();
    for mutation in &input.mutations {
        mutation.apply(&mut doc);
    }
    admit(&doc, input.update.then_some(base), input.way);
});
