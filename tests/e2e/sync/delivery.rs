//! Delivery metrics from the Releases themselves: deployments per Environment and result
//! (`tether_release_total`), and the time to restore an Environment after failed Releases.

use serde_json::Value;
use tether::platform::Platform;
use tether::sandbox::Faults;

use super::release::{apply_release, environment, release, wait_release};
use crate::support::sync::SyncHarness;

/// The value of the sample `series` (name and labels, as exposed) in `metrics`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn finished_at(release: &Value) -> jiff::Timestamp {
    release["status"]["finishedAt"]
        .as_str()
        .unwrap_or_else(|| panic!("no finishedAt: {release}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_success_after_a_failed_release_counts_per_environment_and_observes_the_time_to_restore()
{
    let h = SyncHarness::start().await;
    h.apply(environment()).await;
    h.wait_ready("shop").await;
    h.sandbox.set_faults(
        Platform::Render,
        Faults {
            failing_sources: vec!["ghcr.io/acme/api:broken".into()],
            ..Faults::default()
        },
    );
    // No earlier Succeeded Release: the failed one stays Failed.
    apply_release(&h, release("broken", "ghcr.io/acme/api:broken")).await;
    let broken = wait_release(&h, "broken", |r| r["status"]["phase"] == "Failed").await;
    apply_release(&h, release("fixed", "ghcr.io/acme/api:fixed")).await;
    let fixed = wait_release(&h, "fixed", |r| r["status"]["phase"] == "Succeeded").await;
    // A success after a success restores nothing.
    apply_release(&h, release("next", "ghcr.io/acme/api:next")).await;
    wait_release(&h, "next", |r| r["status"]["phase"] == "Succeeded").await;

    let metrics = h.metrics().await;
    let labels = r#"environment="shop",namespace="default""#;
    let counted = |result: &str| {
        sample(
            &metrics,
            &format!(r#"tether_release_total{{{labels},result="{result}"}}"#),
        )
    };
    assert_eq!(counted("failed"), Some(1.0), "{metrics}");
    assert_eq!(counted("succeeded"), Some(2.0), "{metrics}");
    assert_eq!(counted("rolled_back"), None, "{metrics}");
    let restore = |suffix: &str| {
        sample(
            &metrics,
            &format!("tether_release_time_to_restore_seconds_{suffix}{{{labels}}}"),
        )
    };
    assert_eq!(
        restore("count"),
        Some(1.0),
        "exactly one restore:\n{metrics}"
    );
    let expected = finished_at(&fixed)
        .duration_since(finished_at(&broken))
        .as_secs_f64();
    let observed = restore("sum").unwrap();
    assert!(
        expected > 0.0 && (observed - expected).abs() < 0.001,
        "observed {observed}s, finishedAt apart {expected}s"
    );
    h.stop().await;
}
