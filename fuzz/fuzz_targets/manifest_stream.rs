//! Manifest decoding: any text through the YAML stream parsers of `tether validate` and
//! `tether run`, and each decoded document through `tether validate`'s admission.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tether_fuzz::manifest_stream(data));
