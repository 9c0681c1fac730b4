//! `crate::schema` end to end through the embedded API server and the real kubectl v1.32:
//! server-side apply of every sample (Tether objects and Secrets) with kubectl's default
//! validation, `explain --recursive`, unknown fields rejected by `fieldValidation=Strict`,
//! defaults visible on the stored object, and an immutability (transition) rule on update.

use crate::support::{KubectlOutput, TestCluster};

fn ok(out: KubectlOutput) -> String {
    assert!(
        out.success,
        "kubectl failed: {}\n{}",
        out.stderr, out.stdout
    );
    out.stdout
}

#[tokio::test]
async fn server_side_apply_of_the_samples_passes_server_validation_cleanly() {
    let cluster = TestCluster::start().await;
    let out = cluster
        .kubectl(&["apply", "--server-side", "-f", "config/samples/"])
        .await;
    assert!(out.success, "{}\n{}", out.stderr, out.stdout);
    assert!(
        out.stdout
            .contains("environment.tether.dev/staging serverside-applied"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("secret/platform-tokens serverside-applied"),
        "{}",
        out.stdout
    );
    // No pruned-field warnings: the samples match the schemas exactly.
    assert!(!out.stderr.contains("unknown field"), "{}", out.stderr);

    let recursive = ok(cluster
        .kubectl(&["explain", "environment.spec.render", "--recursive"])
        .await);
    assert!(recursive.contains("services\t<[]Object>"), "{recursive}");
    assert!(
        recursive.contains("healthCheckPath\t<string>"),
        "{recursive}"
    );
}

#[tokio::test]
async fn unknown_fields_are_rejected_and_transition_rules_run_on_update() {
    let cluster = TestCluster::start().await;
    let base = std::fs::read_to_string("tests/fixtures/invalid/release-old.yaml.base")
        .unwrap_or_else(|e| panic!("{e}"));
    ok(cluster
        .kubectl_with_stdin(&["apply", "-f", "-"], Some(&base))
        .await);

    let with_unknown = base.replace("  version: 1.0.0\n", "  version: 1.0.0\n  colour: red\n");
    let rejected = cluster
        .kubectl_with_stdin(&["apply", "--server-side", "-f", "-"], Some(&with_unknown))
        .await;
    assert!(!rejected.success);
    assert!(
        rejected.stderr.contains(r#"unknown field "spec.colour""#),
        "{}",
        rejected.stderr
    );

    let changed = std::fs::read_to_string("tests/fixtures/invalid/release-version-changed.yaml")
        .unwrap_or_else(|e| panic!("{e}"));
    let rejected = cluster
        .kubectl_with_stdin(&["apply", "-f", "-"], Some(&changed))
        .await;
    assert!(!rejected.success);
    assert!(
        rejected
            .stderr
            .contains("version is immutable; create a new Release"),
        "{}",
        rejected.stderr
    );
}
