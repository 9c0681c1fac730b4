//! Admission of any JSON document (the body of a create, or a document of a manifest):
//! `tether validate`'s path and the embedded API's, in every `fieldValidation` mode; what is
//! admitted must round-trip and, for Tether kinds, deserialize into the Rust type.
//! An input of two JSON values separated by a NUL byte is an update (old, then new).

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let (old, new) = match data.iter().position(|b| *b == 0) {
        Some(i) => (
            serde_json::from_slice::<Value>(&data[..i]).ok(),
            &data[i + 1..],
        ),
        None => (None, data),
    };
    if let Ok(doc) = serde_json::from_slice::<Value>(new) {
        tether_fuzz::admit_every_way(&doc, old.as_ref());
    }
});
