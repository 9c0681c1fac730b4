//! `tether validate [PATHS...]`: offline admission of manifests.
//!
//! Every YAML (or JSON) file named, or found under a named directory, is read as a
//! multi-document stream; each Tether object is admitted against the generated CRDs
//! exactly as the embedded API server would admit it with kubectl's default
//! `fieldValidation=Strict`; CustomResourceDefinitions are checked as the API server checks
//! them on create (CEL rules within the cost budget, schemas that compile); Secrets,
//! ConfigMaps, Namespaces and other kinds get the basic checks every object gets
//! (apiVersion, kind, metadata). Each problem is one line:
//! `file:document: Kind/name: field: message`.

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

use super::errors::{BadValue, Cause};
use super::{FieldValidation, SchemaRegistry};
use super::{builtin, meta};

/// Why validation could not run at all (as opposed to finding problems).
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// A path could not be read.
    #[error("failed to read {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The CRDs could not be compiled.
    #[error("failed to compile the Tether CRDs: {0}")]
    Schema(#[from] super::SchemaError),
    /// Stdout could not be written.
    #[error("failed to write the problems to stdout: {0}")]
    Output(#[source] std::io::Error),
}

/// A YAML stream that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{column}: invalid YAML: {message}")]
pub struct YamlError {
    /// 1-based line of the problem (0 when unknown).
    pub line: u64,
    /// 1-based column of the problem (0 when unknown).
    pub column: u64,
    /// The parser's message.
    pub message: String,
}

/// Parses a multi-document YAML (or JSON) stream into JSON values. Empty documents are
/// skipped, as kubectl skips them.
pub fn parse_stream(text: &str) -> Result<Vec<Value>, YamlError> {
    serde_saphyr::from_multiple::<Value>(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        YamlError {
            line,
            column,
            message: e.to_string(),
        }
    })
}

/// Where in a file a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// The 1-based index of a document in the stream (when no line is known).
    Document(usize),
    /// A line and column: of the offending field (or its nearest parent in the document), or
    /// of the YAML that does not parse.
    Line {
        /// 1-based line.
        line: u64,
        /// 1-based column.
        column: u64,
    },
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Position::Document(n) => write!(f, "document {n}"),
            Position::Line { line, column } => write!(f, "{line}:{column}"),
        }
    }
}

/// One problem found in one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub file: PathBuf,
    /// The document (or, for YAML that does not parse, the line).
    pub position: Position,
    /// `Kind/name` of the object (empty when unknown).
    pub object: String,
    /// The problem, `field: message` as the API server words it.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: ", self.file.display(), self.position)?;
        if !self.object.is_empty() {
            write!(f, "{}: ", self.object)?;
        }
        f.write_str(&self.message)
    }
}

/// The outcome of validating a set of paths.
#[derive(Debug, Default)]
pub struct Report {
    /// Documents checked.
    pub documents: usize,
    /// Every problem found, in file and document order.
    pub problems: Vec<Problem>,
    /// Warnings the API server would return (e.g. ratcheted rules), as problems.
    pub warnings: Vec<Problem>,
}

/// The kinds `tether validate` knows outside the Tether group: only the basic checks apply.
const BUILT_IN_KINDS: &[(&str, &str)] =
    &[("v1", "Secret"), ("v1", "ConfigMap"), ("v1", "Namespace")];

/// Admits every document of every file under `paths` (files, or directories searched
/// recursively for `.yaml`, `.yml` and `.json`).
pub fn validate_paths(
    paths: &[PathBuf],
    registry: &SchemaRegistry,
) -> Result<Report, ValidateError> {
    let mut files = Vec::new();
    for path in paths {
        collect_files(path, &mut files)?;
    }
    let mut report = Report::default();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|source| ValidateError::Read {
            path: file.clone(),
            source,
        })?;
        validate_text(&file, &text, registry, &mut report);
    }
    Ok(report)
}

/// Admits every document of one YAML stream, adding what it finds to `report`.
pub fn validate_text(file: &Path, text: &str, registry: &SchemaRegistry, report: &mut Report) {
    let documents = match parse_stream(text) {
        Ok(docs) => docs,
        Err(e) => {
            report.problems.push(Problem {
                file: file.to_path_buf(),
                position: Position::Line {
                    line: e.line,
                    column: e.column,
                },
                object: String::new(),
                message: format!("invalid YAML: {}", e.message),
            });
            return;
        }
    };
    let fields = super::positions::positions(text);
    for (i, mut doc) in documents.into_iter().enumerate() {
        report.documents += 1;
        let position = |field: &str| {
            fields
                .get(i)
                .and_then(|f| f.find(field))
                .map_or(Position::Document(i + 1), |at| Position::Line {
                    line: at.line as u64,
                    column: at.column as u64,
                })
        };
        let problem = |object: &str, field: &str, message: String| Problem {
            file: file.to_path_buf(),
            position: position(field),
            object: object.to_string(),
            message,
        };
        let (object, result) = admit_document(registry, &mut doc);
        match result {
            Ok(warnings) => report
                .warnings
                .extend(warnings.into_iter().map(|w| problem(&object, "", w))),
            Err(causes) => {
                for cause in causes {
                    let line = problem(&object, &cause.field, cause.to_string());
                    // "Some rules were not checked": a note on the problems above, not one
                    // more problem.
                    if cause == Cause::cel_skipped() {
                        report.warnings.push(line);
                    } else {
                        report.problems.push(line);
                    }
                }
            }
        }
    }
}

/// Admits one document: `Kind/name` and either the warnings or the causes.
pub fn admit_document(
    registry: &SchemaRegistry,
    doc: &mut Value,
) -> (String, Result<Vec<String>, Vec<Cause>>) {
    admit_document_with_old(registry, None, doc)
}

/// [`admit_document`] as an update of `old` (transition rules run).
pub fn admit_document_with_old(
    registry: &SchemaRegistry,
    old: Option<&Value>,
    doc: &mut Value,
) -> (String, Result<Vec<String>, Vec<Cause>>) {
    if !doc.is_object() {
        return (
            String::new(),
            Err(vec![Cause::type_invalid(
                "<nil>",
                BadValue::Str(meta::json_type(doc)),
                "a Kubernetes object must be a mapping",
            )]),
        );
    }
    let api_version = doc
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let object = if kind.is_empty() {
        name.clone()
    } else {
        format!("{kind}/{name}")
    };

    let mut causes = Vec::new();
    if api_version.is_empty() {
        causes.push(Cause::required("apiVersion", ""));
    }
    if kind.is_empty() {
        causes.push(Cause::required("kind", ""));
    }
    if !causes.is_empty() {
        return (object, Err(causes));
    }
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version.as_str()),
    };
    if group == "apiextensions.k8s.io" && kind == "CustomResourceDefinition" {
        return (object, check_crd(doc));
    }
    // Kinds are matched exactly, as kubectl maps them (plural or lower-case kinds are names
    // of the resource, not kinds).
    if registry
        .crds()
        .any(|c| c.spec.group == group && c.spec.names.kind == kind)
    {
        let result = registry
            .admit(group, version, &kind, old, doc, FieldValidation::Strict)
            .map_err(|e| e.causes);
        return (object, result);
    }
    if let Some(causes) = misplaced_kind(registry, &api_version, &kind) {
        return (object, Err(causes));
    }
    if registry.crds().any(|c| c.spec.group == group) {
        return (
            object,
            Err(vec![Cause::not_supported(
                "kind",
                &Value::String(kind.clone()),
                &registry
                    .crds()
                    .filter(|c| c.spec.group == group)
                    .map(|c| c.spec.names.kind.clone())
                    .collect::<Vec<_>>(),
            )]),
        );
    }
    if let Some((expected_version, _)) = BUILT_IN_KINDS.iter().find(|(_, k)| *k == kind)
        && api_version != *expected_version
    {
        causes.push(Cause::not_supported(
            "apiVersion",
            &Value::String(api_version.clone()),
            &[expected_version.to_string()],
        ));
    }
    if api_version == "v1"
        && let Some(message) = builtin::decode_error(&kind, doc)
    {
        return (object, Err(vec![Cause::bad_request(&message)]));
    }
    meta::validate(doc.get("metadata"), "metadata", true, &mut causes);
    if api_version == "v1" {
        causes.extend(builtin::validate(&kind, doc, old));
    }
    if causes.is_empty() {
        (object, Ok(Vec::new()))
    } else {
        (object, Err(causes))
    }
}

/// A kind in the core group (`apiVersion: v1`) or a Tether group that is not served there:
/// a Tether kind (or one of its names in another case, plural or short form) in the wrong
/// group, or a built-in kind spelled in another case. The causes name what was expected;
/// `None` when the document is not such a mix-up (kinds of other groups cannot be known
/// here: they get the basic checks only).
fn misplaced_kind(registry: &SchemaRegistry, api_version: &str, kind: &str) -> Option<Vec<Cause>> {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    if !group.is_empty() && !registry.crds().any(|c| c.spec.group == group) {
        return None;
    }
    let lower = kind.to_ascii_lowercase();
    let crd = registry.crds().find(|c| {
        let names = &c.spec.names;
        names.kind.to_ascii_lowercase() == lower
            || names.plural == lower
            || names.singular.as_deref() == Some(lower.as_str())
            || names
                .short_names
                .as_ref()
                .is_some_and(|s| s.contains(&lower))
    });
    let (expected_versions, expected_kind) = match crd {
        Some(crd) => (
            crd.spec
                .versions
                .iter()
                .filter(|v| v.served)
                .map(|v| format!("{}/{}", crd.spec.group, v.name))
                .collect::<Vec<_>>(),
            crd.spec.names.kind.clone(),
        ),
        None => {
            let (version, builtin) = BUILT_IN_KINDS
                .iter()
                .find(|(_, k)| k.to_ascii_lowercase() == lower && *k != kind)?;
            (vec![version.to_string()], builtin.to_string())
        }
    };
    let mut causes = Vec::new();
    if !expected_versions.iter().any(|v| v == api_version) {
        causes.push(Cause::not_supported(
            "apiVersion",
            &Value::String(api_version.to_string()),
            &expected_versions,
        ));
    }
    if kind != expected_kind {
        causes.push(Cause::not_supported(
            "kind",
            &Value::String(kind.to_string()),
            &[expected_kind],
        ));
    }
    Some(causes)
}

/// A CRD as the API server checks it on create: it must decode, its CEL rules must be
/// within the cost budget, and its schemas must compile.
fn check_crd(doc: &Value) -> Result<Vec<String>, Vec<Cause>> {
    let crd: CustomResourceDefinition = serde_json::from_value(doc.clone()).map_err(|e| {
        vec![Cause::invalid(
            "<nil>",
            BadValue::Omit,
            &format!("not a CustomResourceDefinition: {e}"),
        )]
    })?;
    let violations = super::cost::check_crd(&crd);
    if !violations.is_empty() {
        return Err(violations
            .iter()
            .map(|v| Cause::forbidden(&v.field, &v.detail))
            .collect());
    }
    SchemaRegistry::new(std::slice::from_ref(&crd))
        .map(|_| Vec::new())
        .map_err(|e| vec![Cause::invalid("spec", BadValue::Omit, &e.to_string())])
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), ValidateError> {
    let read_err = |source| ValidateError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if meta.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(read_err)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(read_err)?;
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            collect_files(&entry, out)?;
        } else if entry
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        {
            out.push(entry);
        }
    }
    Ok(())
}

/// The `tether validate` command: validates `paths` against the Tether CRDs, prints one
/// line per problem to stdout and a summary to stderr. Returns whether everything passed.
pub fn run(paths: &[PathBuf]) -> Result<bool, ValidateError> {
    let registry = SchemaRegistry::new(&crate::api::crds())?;
    let report = validate_paths(paths, &registry)?;
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    let lines: String = report.problems.iter().map(|p| format!("{p}\n")).collect();
    crate::print_stdout(&lines).map_err(ValidateError::Output)?;
    eprintln!(
        "{} document(s) checked, {} problem(s)",
        report.documents,
        report.problems.len()
    );
    Ok(report.problems.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn registry() -> SchemaRegistry {
        SchemaRegistry::new(&[crate::schema::tests::test_crd()]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn lines(text: &str) -> Vec<String> {
        let mut report = Report::default();
        validate_text(Path::new("m.yaml"), text, &registry(), &mut report);
        report.problems.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_type_error_is_one_problem_at_its_field_and_skipped_rules_are_a_note() {
        let text = "# an Environment\napiVersion: tether.dev/v1alpha1\nkind: Environment\nmetadata:\n  name: web\nspec:\n  interval: 5\n";
        let mut report = Report::default();
        let registry = SchemaRegistry::new(&crate::api::crds()).unwrap_or_else(|e| panic!("{e}"));
        validate_text(Path::new("m.yaml"), text, &registry, &mut report);
        let problems: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            problems,
            [
                r#"m.yaml:7:3: Environment/web: spec.interval: Invalid value: "integer": spec.interval in body must be of type string: "integer""#
            ]
        );
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.message.contains("some validation rules were not checked")),
            "{:?}",
            report.warnings
        );
    }

    #[test]
    fn multi_document_streams_are_read_in_order() {
        let docs = parse_stream("a: 1\n---\nb: [x, z]\n---\n").unwrap_or_default();
        assert_eq!(docs, vec![json!({"a": 1}), json!({"b": ["x", "z"]})]);
    }

    #[test]
    fn plain_scalars_resolve_like_kubectl_yaml_1_1() {
        // kubectl parses manifests with YAML 1.1 rules (go-yaml v2): `n` and `yes` are
        // booleans there too, so a name written as `n` is rejected by the server as well.
        let docs = parse_stream("a: yes\nb: n\nc: '5'\nd: 5\n").unwrap_or_default();
        assert_eq!(docs, vec![json!({"a": true, "b": false, "c": "5", "d": 5})]);
    }

    #[test]
    fn yaml_syntax_errors_name_the_line() {
        let err = parse_stream("a: 1\nb: [unclosed\n").err();
        assert!(err.as_ref().is_some_and(|e| e.line >= 2), "{err:?}");
        let problems = lines("a: 1\nb: [unclosed\n");
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("m.yaml:2:"), "{problems:?}");
        assert!(problems[0].contains("invalid YAML"), "{problems:?}");
    }

    #[test]
    fn each_problem_names_file_document_object_and_field() {
        let text = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: ok\n---\n\
apiVersion: tether.dev/v1alpha1\nkind: Environment\nmetadata:\n  name: web\nspec:\n  kind: cron\n  foo: 1\n";
        assert_eq!(
            lines(text),
            vec![r#"m.yaml:12:3: Environment/web: unknown field "spec.foo""#.to_string(),]
        );
        let text = "apiVersion: tether.dev/v1alpha1\nkind: Environment\nmetadata:\n  name: web\nspec:\n  region: eu\n  kind: cron\n";
        assert_eq!(
            lines(text),
            vec![
                r#"m.yaml:5:1: Environment/web: spec: Invalid value: cron services need a schedule"#
                    .to_string()
            ]
        );
    }

    #[test]
    fn built_in_kinds_get_basic_checks_only() {
        assert!(
            lines("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  k: v\n")
                .is_empty()
        );
        assert_eq!(
            lines("apiVersion: v1\nkind: Secret\nmetadata: {}\n"),
            vec![
                "m.yaml:3:1: Secret/: metadata.name: Required value: name or generateName is required"
            ]
        );
        assert_eq!(
            lines("kind: Namespace\nmetadata:\n  name: x\n"),
            vec!["m.yaml:1:1: Namespace/x: apiVersion: Required value"]
        );
        assert_eq!(
            lines(
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\ndata:\n  k: 'not base64!'\n"
            ),
            vec![
                r#"m.yaml:1:1: Secret/s: Secret in version "v1" cannot be handled as a Secret: illegal base64 data at input byte 3"#
            ]
        );
        assert_eq!(
            lines("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  a/b: v\n"),
            vec![
                "m.yaml:5:1: ConfigMap/c: data[a/b]: Invalid value: \"a/b\": a valid config key must \
                 consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or \
                 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"
            ]
        );
        assert_eq!(
            lines("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata: [x]\n"),
            vec![
                "m.yaml:1:1: ConfigMap/c: ConfigMap in version \"v1\" cannot be handled as a \
                 ConfigMap: json: cannot unmarshal array into Go struct field ConfigMap.data of \
                 type map[string]string"
            ]
        );
    }

    #[test]
    fn tether_kinds_under_another_api_version_or_name_are_problems_naming_the_expected_one() {
        let doc = |api_version: &str, kind: &str| {
            format!(
                "apiVersion: {api_version}\nkind: {kind}\nmetadata:\n  name: web\nspec:\n  region: eu\n  kind: web\n"
            )
        };
        assert_eq!(
            lines(&doc("v1", "Environment")),
            vec![
                r#"m.yaml:1:1: Environment/web: apiVersion: Unsupported value: "v1": supported values: "tether.dev/v1alpha1""#
            ]
        );
        assert_eq!(
            lines(&doc("v1", "environment")),
            vec![
                r#"m.yaml:1:1: environment/web: apiVersion: Unsupported value: "v1": supported values: "tether.dev/v1alpha1""#,
                r#"m.yaml:2:1: environment/web: kind: Unsupported value: "environment": supported values: "Environment""#,
            ]
        );
        for kind in ["environment", "Environments", "env"] {
            assert_eq!(
                lines(&doc("tether.dev/v1alpha1", kind)),
                vec![format!(
                    r#"m.yaml:2:1: {kind}/web: kind: Unsupported value: "{kind}": supported values: "Environment""#
                )]
            );
        }
        assert_eq!(
            lines("apiVersion: v1\nkind: secret\nmetadata:\n  name: s\n"),
            vec![
                r#"m.yaml:2:1: secret/s: kind: Unsupported value: "secret": supported values: "Secret""#
            ]
        );
        // Kinds of groups Tether does not serve cannot be checked offline.
        assert!(lines(&doc("example.com/v1", "Environment")).is_empty());
        assert_eq!(
            lines(&doc("tether.dev/v1alpha1", "Environment")),
            Vec::<String>::new()
        );
    }

    #[test]
    fn unknown_tether_kinds_are_rejected() {
        assert_eq!(
            lines("apiVersion: tether.dev/v1alpha1\nkind: Nope\nmetadata:\n  name: x\n"),
            vec![
                r#"m.yaml:2:1: Nope/x: kind: Unsupported value: "Nope": supported values: "Environment""#
            ]
        );
    }

    #[test]
    fn directories_are_searched_for_manifests() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let sub = dir.path().join("nested");
        std::fs::create_dir(&sub).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            sub.join("a.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("notes.txt"), "not yaml: [")
            .unwrap_or_else(|e| panic!("{e}"));
        let report = validate_paths(&[dir.path().to_path_buf()], &registry())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(report.documents, 1);
        assert_eq!(report.problems.len(), 1);
        assert!(
            report.problems[0]
                .to_string()
                .contains("a.yaml:4:3: ConfigMap/Bad_Name: metadata.name: Invalid value")
        );
    }
}
