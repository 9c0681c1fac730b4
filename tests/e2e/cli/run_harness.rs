//! Test harness for `tether run`: starts the real binary on a manifest directory and a state
//! directory (both temporary), collects its progress lines, and runs kubectl with the
//! kubeconfig it writes. Shared by tests/run_*.rs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a test waits for a progress line before failing.
pub const WAIT: Duration = Duration::from_secs(20);

/// A temporary manifest directory and state directory.
pub struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    /// Empty `manifests/` and no state yet.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("manifests")).expect("manifests dir");
        Self { dir }
    }

    /// The manifest directory.
    pub fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    /// The state directory (`.tether`).
    pub fn state(&self) -> PathBuf {
        self.dir.path().join(".tether")
    }

    /// Writes `manifests/<path>`, creating directories.
    pub fn write(&self, path: &str, content: &str) {
        let path = self.manifests().join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        // Write then rename, as editors do, so the watcher never reads half a file.
        let tmp = path.with_extension("partial");
        std::fs::write(&tmp, content).expect("write manifest");
        std::fs::rename(&tmp, &path).expect("rename manifest");
    }

    /// Writes `<name>` next to (not inside) the manifest directory and returns its path.
    pub fn scratch_file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).expect("write scratch file");
        path
    }

    /// Removes `manifests/<path>`.
    pub fn remove(&self, path: &str) {
        std::fs::remove_file(self.manifests().join(path)).expect("remove manifest");
    }

    /// Starts `tether run` on this workspace.
    pub fn start(&self) -> TetherRun {
        TetherRun::start(&self.manifests(), &self.state())
    }
}

/// A running `tether run` process.
pub struct TetherRun {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    cursor: usize,
    kubeconfig: PathBuf,
}

impl TetherRun {
    /// Spawns the binary and waits until its first sync pass is done.
    pub fn start(manifests: &Path, state: &Path) -> Self {
        // The platforms of the test manifests are the built-in sandbox's, sped up.
        Self::start_with(
            manifests,
            state,
            &["--sandbox", "--sandbox-time-scale", "100"],
        )
    }

    /// Spawns the binary with `args` and waits until its first sync pass is done.
    pub fn start_with(manifests: &Path, state: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
            .arg("run")
            .arg("--manifests")
            .arg(manifests)
            .arg("--state-dir")
            .arg(state)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tether run");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                eprintln!("[tether run] {line}");
                sink.lock().unwrap().push(line);
            }
        });
        let mut run = Self {
            child,
            lines,
            cursor: 0,
            kubeconfig: state.join("kubeconfig"),
        };
        run.wait_for("watching ");
        // Tests look for the first pass's lines too.
        run.cursor = 0;
        run
    }

    /// Waits for the next line (after the last one waited for) containing `needle`, and
    /// returns it.
    pub fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            {
                let lines = self.lines.lock().unwrap();
                if let Some(i) = lines[self.cursor..].iter().position(|l| l.contains(needle)) {
                    self.cursor += i + 1;
                    return lines[self.cursor - 1].clone();
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "tether run exited ({status}) before printing {needle:?}:\n{}",
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no line containing {needle:?} within {WAIT:?}; output:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Runs kubectl against the embedded API with the kubeconfig `tether run` wrote.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        kubectl(&self.kubeconfig, args)
    }

    /// Runs kubectl and returns its stdout, failing the test if kubectl fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Kills the process with SIGKILL (no shutdown code runs).
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// Sends SIGTERM and waits for a clean exit; returns whether it exited successfully.
    pub fn terminate(mut self) -> bool {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(sent.success());
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.success();
            }
            assert!(Instant::now() < deadline, "tether run ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TetherRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs kubectl with `kubeconfig`.
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl")
}
