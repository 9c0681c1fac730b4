//! Test support shared by the end-to-end tests: [`TestCluster`] starts the in-process
//! Kubernetes API (memory store, random loopback port, the Tether CRDs plus any test CRDs)
//! and hands out a `kube::Client`, a kubeconfig file and a `kubectl` runner.
//!
//! It is a builder so that more parts (controllers) can be switched on per test:
//! `TestCluster::builder().crd(Widget::crd()).start().await`.

pub mod prometheus;
pub mod sync;
pub mod widget;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use tether::localapi::security::ApiSecurity;
use tether::localapi::{self, LocalApiConfig, LocalApiHandle, ServerOptions, StoreConfig};
use tokio_util::sync::CancellationToken;

/// How to start a [`TestCluster`].
pub struct TestClusterBuilder {
    crds: Vec<CustomResourceDefinition>,
    store: StoreConfig,
    options: ServerOptions,
    addr: SocketAddr,
    security: Option<ApiSecurity>,
}

impl TestClusterBuilder {
    /// Serves one more CRD (a test kind).
    pub fn crd(mut self, crd: CustomResourceDefinition) -> Self {
        self.crds.push(crd);
        self
    }

    /// Persists into a redb file instead of memory.
    pub fn file_store(mut self, path: &Path) -> Self {
        self.store = StoreConfig::File(path.to_owned());
        self
    }

    /// Keeps only `n` changes per resource for resuming watches (older ones get 410).
    pub fn watch_history(mut self, n: usize) -> Self {
        self.options.watch_history = n;
        self
    }

    /// Sends bookmarks this often on watches that allow them.
    pub fn bookmark_interval(mut self, interval: Duration) -> Self {
        self.options.bookmark_interval = interval;
        self
    }

    /// Listens on this address (to restart a server on the same port).
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Serves HTTPS and requires a token, as `tether run` does (a new token and certificate).
    pub fn secured(mut self) -> Self {
        self.security = Some(ApiSecurity::generate().expect("a token and a certificate"));
        self
    }

    /// Starts the server and writes the kubeconfig.
    pub async fn start(self) -> TestCluster {
        tether::install_crypto_provider();
        let shutdown = CancellationToken::new();
        let handle = localapi::start_with(
            LocalApiConfig {
                addr: self.addr,
                store: self.store,
                crds: self.crds,
                security: self.security.clone(),
            },
            self.options,
            shutdown.clone(),
        )
        .await
        .expect("the local API starts");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let kubeconfig_path = dir.path().join("kubeconfig");
        let yaml = serde_saphyr::to_string(&handle.kubeconfig()).expect("kubeconfig serializes");
        std::fs::write(&kubeconfig_path, yaml).expect("kubeconfig is written");
        TestCluster {
            handle: Some(handle),
            shutdown,
            _dir: dir,
            kubeconfig_path,
            security: self.security,
        }
    }
}

/// A running in-process API server for one test.
pub struct TestCluster {
    handle: Option<LocalApiHandle>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
    kubeconfig_path: PathBuf,
    security: Option<ApiSecurity>,
}

/// What a `kubectl` run printed.
#[derive(Debug)]
pub struct KubectlOutput {
    /// Exit status was 0.
    pub success: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl TestCluster {
    /// A builder with the Tether CRDs, memory store, random port.
    pub fn builder() -> TestClusterBuilder {
        TestClusterBuilder {
            crds: tether::api::crds(),
            store: StoreConfig::Memory,
            options: ServerOptions::default(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            security: None,
        }
    }

    /// Starts a cluster with the defaults.
    pub async fn start() -> TestCluster {
        Self::builder().start().await
    }

    fn handle(&self) -> &LocalApiHandle {
        self.handle.as_ref().expect("the cluster is running")
    }

    /// A client for the cluster (default namespace `default`).
    pub fn client(&self) -> kube::Client {
        self.handle().client()
    }

    /// The listen address.
    pub fn addr(&self) -> SocketAddr {
        self.handle().addr()
    }

    /// `http://127.0.0.1:<port>` (`https://` when secured).
    pub fn url(&self) -> String {
        self.handle().url()
    }

    /// The token and certificate of a secured cluster.
    pub fn security(&self) -> Option<&ApiSecurity> {
        self.security.as_ref()
    }

    /// A kubeconfig file pointing at the cluster.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// Runs the real `kubectl` against the cluster.
    pub async fn kubectl(&self, args: &[&str]) -> KubectlOutput {
        self.kubectl_with_stdin(args, None).await
    }

    /// Runs `kubectl` with `stdin` piped in (for `apply -f -`).
    pub async fn kubectl_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> KubectlOutput {
        let mut command = std::process::Command::new("kubectl");
        command
            .arg("--kubeconfig")
            .arg(&self.kubeconfig_path)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .env("KUBECACHEDIR", self._dir.path().join("cache"));
        let input = stdin.map(str::to_owned);
        let run = tokio::task::spawn_blocking(move || {
            use std::io::Write as _;
            let mut child = command.spawn().expect("kubectl runs");
            let mut pipe = child.stdin.take().expect("stdin is piped");
            if let Some(input) = input {
                pipe.write_all(input.as_bytes()).expect("stdin is written");
            }
            drop(pipe);
            child.wait_with_output().expect("kubectl output is read")
        });
        let out = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("kubectl finishes within a minute")
            .expect("kubectl task completes");
        KubectlOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Shuts the server down and waits until it stopped.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            handle.stopped().await;
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// What the sandbox app serving `host` answers to `GET /healthz` on the sandbox's app edge
/// (`edge`, [`tether::sandbox::SandboxHandle::edge_url`]): status and body.
pub async fn app_answer(edge: &str, host: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(format!("{edge}/healthz"))
        .header("host", host)
        .send()
        .await
        .expect("the sandbox's app edge answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// The host of an absolute URL (`https://api-x.onrender.com/` → `api-x.onrender.com`).
pub fn host_of(url: &str) -> &str {
    url.split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default()
}

/// Polls `check` until it returns Some, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
