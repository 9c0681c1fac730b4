//! `tether <command> | head`: a reader that goes away before the output is written ends the
//! command quietly, never with a "Broken pipe" panic (exit 101).

use std::process::{Command, Stdio};

const TETHER: &str = env!("CARGO_BIN_EXE_tether");

/// Runs `tether args` with its stdout closed before it writes, and returns its exit code
/// and stderr.
fn with_closed_stdout(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(TETHER)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tether");
    // The reader leaves at once, as `head` does once it has its lines.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn commands_writing_to_a_closed_pipe_end_without_a_panic() {
    let invalid = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/invalid");
    for (args, code) in [
        (vec!["crds"], 0),
        (vec!["rbac"], 0),
        (vec!["metrics-names"], 0),
        // Problems found: exit 1, as with an open stdout.
        (vec!["validate", invalid], 1),
    ] {
        let (status, stderr) = with_closed_stdout(&args);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "tether {args:?}: {stderr}"
        );
        assert_eq!(status, Some(code), "tether {args:?}: {stderr}");
    }
}
