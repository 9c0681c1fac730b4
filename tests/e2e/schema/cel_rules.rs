//! Every CEL rule of the Tether CRDs has a test (issue 2): the valid samples in
//! `config/samples/` admit cleanly; each violating example in `tests/fixtures/invalid/`
//! is rejected with a cause containing its `# expect:` line (updates of the object in its
//! `# old:` line, for transition rules); and every `x-kubernetes-validations` message in
//! the generated CRDs is expected by at least one fixture.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tether::schema::SchemaRegistry;
use tether::schema::validate::{admit_document, admit_document_with_old, parse_stream};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn registry() -> SchemaRegistry {
    tether::install_crypto_provider();
    SchemaRegistry::new(&tether::api::crds())
        .unwrap_or_else(|e| panic!("the Tether CRDs must compile: {e}"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// A violating example: its documents, the messages it expects, and the old object.
struct Fixture {
    path: PathBuf,
    expects: Vec<String>,
    old: Option<Value>,
    documents: Vec<Value>,
}

fn fixtures() -> Vec<Fixture> {
    let dir = root().join("tests/fixtures/invalid");
    yaml_files(&dir)
        .into_iter()
        .map(|path| {
            let text = read(&path);
            let comment = |prefix: &str| -> Vec<String> {
                text.lines()
                    .filter_map(|l| l.strip_prefix(prefix))
                    .map(|s| s.trim().to_string())
                    .collect()
            };
            let expects = comment("# expect:");
            assert!(
                !expects.is_empty(),
                "{} has no `# expect:` line",
                path.display()
            );
            let old = comment("# old:").first().map(|file| {
                let docs =
                    parse_stream(&read(&dir.join(file))).unwrap_or_else(|e| panic!("{file}: {e}"));
                docs.into_iter()
                    .next()
                    .unwrap_or_else(|| panic!("{file} is empty"))
            });
            let documents =
                parse_stream(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            Fixture {
                path,
                expects,
                old,
                documents,
            }
        })
        .collect()
}

#[test]
fn every_sample_admits_cleanly() {
    let registry = registry();
    let mut checked = 0;
    for path in yaml_files(&root().join("config/samples")) {
        let docs = parse_stream(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for (i, mut doc) in docs.into_iter().enumerate() {
            let (object, result) = admit_document(&registry, &mut doc);
            match result {
                Ok(warnings) => assert!(
                    warnings.is_empty(),
                    "{}:{} {object}: warnings {warnings:?}",
                    path.display(),
                    i + 1
                ),
                Err(causes) => panic!(
                    "{}:{} {object} must be valid, got: {}",
                    path.display(),
                    i + 1,
                    causes
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "expected samples of every kind, found {checked} documents"
    );
}

#[test]
fn every_invalid_fixture_is_rejected_with_its_message() {
    let registry = registry();
    let fixtures = fixtures();
    assert!(!fixtures.is_empty());
    for fixture in &fixtures {
        for doc in &fixture.documents {
            if let Some(old) = &fixture.old {
                // The old object itself must be valid, or the test proves nothing.
                let mut old_doc = old.clone();
                let (object, result) = admit_document(&registry, &mut old_doc);
                assert!(
                    result.is_ok(),
                    "{}: old object {object} is invalid: {result:?}",
                    fixture.path.display()
                );
            }
            let mut new_doc = doc.clone();
            let (object, result) =
                admit_document_with_old(&registry, fixture.old.as_ref(), &mut new_doc);
            let causes = match result {
                Ok(_) => panic!(
                    "{}: {object} was admitted but must be rejected",
                    fixture.path.display()
                ),
                Err(causes) => causes,
            };
            let messages: Vec<String> = causes.iter().map(ToString::to_string).collect();
            for expected in &fixture.expects {
                assert!(
                    messages.iter().any(|m| m.contains(expected.as_str())),
                    "{}: expected a cause containing {expected:?}, got {messages:?}",
                    fixture.path.display()
                );
            }
        }
    }
}

#[test]
fn transition_fixtures_are_accepted_on_create() {
    // Immutability rules only apply to updates: the same object created fresh is fine.
    let registry = registry();
    let transition: Vec<Fixture> = fixtures().into_iter().filter(|f| f.old.is_some()).collect();
    assert!(
        !transition.is_empty(),
        "expected fixtures for the immutability rules"
    );
    for fixture in transition {
        for doc in &fixture.documents {
            let mut doc = doc.clone();
            let (object, result) = admit_document(&registry, &mut doc);
            assert!(
                result.is_ok(),
                "{}: {object} on create: {result:?}",
                fixture.path.display()
            );
        }
    }
}

fn collect_rule_messages(schema: &Value, out: &mut Vec<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Array(rules)) = map.get("x-kubernetes-validations") {
                for rule in rules {
                    let message = rule
                        .get("message")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .unwrap_or_else(|| {
                            format!("failed rule: {}", rule["rule"].as_str().unwrap_or_default())
                        });
                    out.push(message);
                }
            }
            for value in map.values() {
                collect_rule_messages(value, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_rule_messages(v, out)),
        _ => {}
    }
}

#[test]
fn every_cel_rule_has_a_violating_fixture() {
    let mut messages = Vec::new();
    for crd in tether::api::crds() {
        let value = serde_json::to_value(&crd).unwrap_or_else(|e| panic!("{e}"));
        collect_rule_messages(&value["spec"]["versions"], &mut messages);
    }
    assert!(!messages.is_empty(), "the CRDs carry CEL rules");
    let expected: Vec<String> = fixtures().into_iter().flat_map(|f| f.expects).collect();
    let untested: Vec<&String> = messages
        .iter()
        .filter(|m| {
            !expected
                .iter()
                .any(|e| e.contains(m.as_str()) || m.contains(e.as_str()))
        })
        .collect();
    assert!(
        untested.is_empty(),
        "CEL rules without a violating fixture: {untested:#?}"
    );
}
