//! `tether validate` as a user runs it: one line per problem, exit status 1 on problems,
//! 0 for the valid samples, YAML syntax errors with file and line.

use std::process::Command;

fn tether_validate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tether"))
        .arg("validate")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("tether runs: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_samples_validate_cleanly() {
    let (code, out, err) = tether_validate(&["config/samples/"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("problem(s)"), "{err}");
}

#[test]
fn a_violating_manifest_prints_file_line_column_object_field_and_message_and_fails() {
    let (code, out, _) =
        tether_validate(&["tests/fixtures/invalid/render-cron-without-schedule.yaml"]);
    assert_eq!(code, 1);
    assert_eq!(
        out.trim(),
        r#"tests/fixtures/invalid/render-cron-without-schedule.yaml:24:7: Environment/bad: spec.render.services[0]: Invalid value: schedule is required for cron services and not allowed for other types"#
    );
}

#[test]
fn yaml_syntax_errors_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("broken.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: [unclosed\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let path = file.display().to_string();
    let (code, out, _) = tether_validate(&[&path]);
    assert_eq!(code, 1);
    assert!(out.starts_with(&format!("{path}:3:18: ")), "{out}");
    assert!(out.contains("invalid YAML"), "{out}");
}

#[test]
fn a_missing_path_is_an_error() {
    let (code, _, err) = tether_validate(&["does/not/exist"]);
    assert_ne!(code, 0);
    assert!(err.contains("failed to read does/not/exist"), "{err}");
}

#[test]
fn crds_are_checked_against_the_api_servers_cel_cost_budget() {
    let (code, out, err) = tether_validate(&["crds/", "charts/tether/crds/"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = tether_validate(&["tests/fixtures/crds/environments-over-budget.yaml"]);
    assert_eq!(code, 1);
    let prefix = "tests/fixtures/crds/environments-over-budget.yaml:6:1: CustomResourceDefinition/environments.tether.dev: ";
    assert!(
        out.lines().any(|l| l == format!(
            "{prefix}spec.validation.openAPIV3Schema.properties[spec].properties[render].properties[services].items.properties[envVars].x-kubernetes-validations[0].rule: Forbidden: estimated rule cost exceeds budget by factor of 21.8x (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"
        )),
        "{out}"
    );
    assert!(
        out.lines().last().is_some_and(|l| l.starts_with(&format!(
            "{prefix}spec.validation.openAPIV3Schema: Forbidden: x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema exceeds budget by factor of more than 100x"
        ))),
        "{out}"
    );
}
