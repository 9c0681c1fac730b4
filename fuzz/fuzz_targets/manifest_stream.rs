//! Manifest decoding: any text through the YAML stream parsers of `tether validate` and
//! `tether run`, and each decoded document through `tether validate`'s admission.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tether::schema::validate::{Report, parse_stream, validate_text};
use tether::standalone::manifests::SourceFile;
use tether_fuzz::REGISTRY;

fuzz_target!(|text: &str| {
    let _ = parse_stream(text);
    let _ = SourceFile::parse("fuzz.yaml".to_string(), text.to_string());
    let mut report = Report::default();
    validate_text(Path::new("fuzz.yaml"), text, &REGISTRY, &mut report);
});
