//! A real Prometheus server (Debian's `prometheus` package, or `$PROMETHEUS_BIN`) scraping the
//! sandbox's per-app request metrics every second, for the Release analysis tests.
//!
//! Where the binary is missing the tests that need it skip and say so, except in CI:
//! `.ci/run` installs the package and sets `TETHER_REQUIRE_PROMETHEUS=1`, and there a missing
//! Prometheus fails the test.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tether::platform::Platform;
use tether::sandbox::SandboxHandle;

use crate::support::eventually;

/// A Prometheus process, killed when dropped.
pub struct PrometheusServer {
    child: Child,
    url: String,
    _data: tempfile::TempDir,
}

impl PrometheusServer {
    /// Starts Prometheus scraping `/_sandbox/metrics` of the sandbox's Render, Vercel and
    /// Fly listeners every second, and waits until it has scraped them. `None` (after saying
    /// why on stderr) where no Prometheus binary is installed, outside CI.
    pub async fn start(sandbox: &SandboxHandle) -> Option<PrometheusServer> {
        let bin = std::env::var("PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".into());
        if Command::new(&bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            assert!(
                std::env::var_os("TETHER_REQUIRE_PROMETHEUS").is_none(),
                "TETHER_REQUIRE_PROMETHEUS is set but {bin:?} cannot be run"
            );
            eprintln!(
                "SKIPPED: no Prometheus server ({bin:?} cannot be run): install Debian's `prometheus` package or set PROMETHEUS_BIN"
            );
            return None;
        }
        let targets: Vec<String> = [Platform::Render, Platform::Vercel, Platform::Fly]
            .into_iter()
            .filter_map(|p| sandbox.admin_url(p))
            .map(|url| {
                url.trim_start_matches("http://")
                    .trim_end_matches("/_sandbox")
                    .to_string()
            })
            .collect();
        let data = tempfile::tempdir().expect("a temporary directory");
        let config = data.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: sandbox\n    metrics_path: /_sandbox/metrics\n    static_configs:\n      - targets: {targets:?}\n"
            ),
        )
        .expect("the Prometheus configuration is written");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                data.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("Prometheus starts");
        let server = PrometheusServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _data: data,
        };
        let expected = targets.len();
        eventually(Duration::from_secs(60), || async {
            let up = server.query("sum(up{job=\"sandbox\"})").await?;
            (up == expected as f64).then_some(())
        })
        .await;
        Some(server)
    }

    /// The base URL of its HTTP API.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The value of an instant query returning one number, if it does.
    pub async fn query(&self, query: &str) -> Option<f64> {
        let mut url = reqwest::Url::parse(&format!("{}/api/v1/query", self.url)).ok()?;
        url.query_pairs_mut().append_pair("query", query);
        let body: serde_json::Value = reqwest::Client::new()
            .get(url)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
