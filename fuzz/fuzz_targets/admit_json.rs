//! Admission of any JSON document (the body of a create, or a document of a manifest):
//! `tether validate`'s path and the embedded API's, in every `fieldValidation` mode; what is
//! admitted must round-trip and, for Tether kinds, deserialize into the Rust type.
//! An input of two JSON values separated by a NUL byte is an update (old, then new).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tether_fuzz::admit_json(data));
