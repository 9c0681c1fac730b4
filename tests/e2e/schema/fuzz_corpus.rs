//! Every input committed in `fuzz/corpus/` replayed through the fuzz targets' own code, on
//! every `make test`: the instrumented fuzz build is too long for each CI run (`make fuzz`
//! fuzzes for real), but an input that once crashed or found a bug stays fixed.

use std::path::Path;

use super::fuzz_targets as targets;

/// A fuzz target's body.
type Target = fn(&[u8]);

#[test]
fn every_committed_fuzz_input_is_handled_by_its_target() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let runs: [(&str, Target); 3] = [
        ("manifest_stream", targets::manifest_stream),
        ("admit_json", targets::admit_json),
        ("admit_mutated", targets::admit_mutated),
    ];
    for (target, run) in runs {
        let mut replayed = 0;
        for entry in std::fs::read_dir(corpus.join(target)).expect("the committed corpus") {
            let path = entry.expect("a corpus entry").path();
            let data = std::fs::read(&path).expect("a corpus file");
            // A panic names the file, so `cargo fuzz run <target> <file>` reproduces it.
            eprintln!("{target}: {}", path.display());
            run(&data);
            replayed += 1;
        }
        assert!(replayed > 0, "{target}: no committed inputs");
    }
}
