//! A Release's metric analysis: one Prometheus instant query per metric ([`Prometheus::query`]),
//! what a measurement is worth against its threshold ([`judge`], pure), and what the
//! measurements add up to ([`record`], pure). The counts live in the Release's status, so an
//! analysis resumes where it was after a restart.

use std::time::Duration;

use crate::api::common::parse_duration;
use crate::api::release::{Analysis, AnalysisMetric, AnalysisStatus, MetricStatus};

/// The analysis' state while measurements go on.
pub const RUNNING: &str = "Running";
/// Every metric measured with data `count` times, within its limits.
pub const PASSED: &str = "Passed";
/// A metric failed more than `failureLimit` times.
pub const FAILED: &str = "Failed";
/// A metric had no data more than `inconclusiveLimit` times.
pub const INCONCLUSIVE: &str = "Inconclusive";

/// The longest a query may take before the measurement counts as inconclusive.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks Prometheus HTTP APIs.
#[derive(Clone, Debug)]
pub struct Prometheus {
    client: reqwest::Client,
}

impl Default for Prometheus {
    fn default() -> Self {
        let client = reqwest::Client::builder()
            .user_agent(concat!("tether-analysis/", env!("CARGO_PKG_VERSION")))
            .timeout(QUERY_TIMEOUT)
            .build()
            .unwrap_or_default();
        Prometheus { client }
    }
}

/// What one query of one metric returned.
#[derive(Clone, Debug, PartialEq)]
pub enum Sample {
    /// One number.
    Value(f64),
    /// No data: an empty result, or NaN (such as `0/0` while nothing is requested).
    NoData(String),
    /// The query could not be answered (Prometheus unreachable, a bad query, several series).
    Error(String),
}

impl Prometheus {
    /// An instant query of `query` at `base`'s `/api/v1/query`.
    pub async fn query(&self, base: &str, query: &str) -> Sample {
        let Ok(mut url) =
            reqwest::Url::parse(&format!("{}/api/v1/query", base.trim_end_matches('/')))
        else {
            return Sample::Error("prometheusUrl is not a URL".into());
        };
        url.query_pairs_mut().append_pair("query", query);
        let response = match self.client.get(url).send().await {
            Ok(response) => response,
            Err(e) if e.is_timeout() => {
                return Sample::Error(format!(
                    "Prometheus did not answer within {}s",
                    QUERY_TIMEOUT.as_secs()
                ));
            }
            Err(e) => {
                return Sample::Error(format!("cannot ask Prometheus: {}", e.without_url()));
            }
        };
        let status = response.status();
        let body: serde_json::Value = match response.json().await {
            Ok(body) => body,
            Err(_) => {
                return Sample::Error(format!(
                    "Prometheus answered {status} without a query result"
                ));
            }
        };
        parse(&body)
    }
}

/// The number in a `/api/v1/query` answer (pure).
pub fn parse(body: &serde_json::Value) -> Sample {
    if body["status"] != "success" {
        return Sample::Error(format!(
            "the query failed: {}: {}",
            body["errorType"].as_str().unwrap_or("error"),
            body["error"].as_str().unwrap_or("no reason given")
        ));
    }
    let data = &body["data"];
    let value = match data["resultType"].as_str() {
        Some("scalar") => &data["result"][1],
        Some("vector") => {
            let series = data["result"].as_array().map_or(0, Vec::len);
            match series {
                0 => return Sample::NoData("the query returned no data".into()),
                1 => &data["result"][0]["value"][1],
                n => {
                    return Sample::Error(format!(
                        "the query returned {n} series; it must return one number (aggregate it, e.g. with sum())"
                    ));
                }
            }
        }
        other => {
            return Sample::Error(format!(
                "the query returned a {}; it must return one number (a scalar or one series)",
                other.unwrap_or("result of no type")
            ));
        }
    };
    match value.as_str().and_then(|v| v.parse::<f64>().ok()) {
        Some(v) if v.is_nan() => Sample::NoData("the query returned NaN (no data)".into()),
        Some(v) => Sample::Value(v),
        None => Sample::Error("the query's result is not a number".into()),
    }
}

/// What one measurement of `metric` is worth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// On the right side of the threshold.
    Successful,
    /// On the wrong side.
    Failed,
    /// No number to compare.
    Inconclusive,
}

/// Judges a sample against its metric's threshold (pure): the verdict and what a person is
/// shown.
pub fn judge(metric: &AnalysisMetric, sample: &Sample) -> (Verdict, String) {
    match sample {
        Sample::Value(v) => {
            let ok = metric.operator.passes(*v, metric.threshold);
            let verdict = if ok {
                Verdict::Successful
            } else {
                Verdict::Failed
            };
            let symbol = metric.operator.symbol();
            let shown = if ok {
                format!("{v} {symbol} {}", metric.threshold)
            } else {
                format!("{v}, not {symbol} {}", metric.threshold)
            };
            (verdict, shown)
        }
        Sample::NoData(why) | Sample::Error(why) => (Verdict::Inconclusive, why.clone()),
    }
}

/// Adds one measurement of every metric (`samples`, in `analysis.metrics` order) made at
/// `stamp` to `status`, and settles its state (pure).
pub fn record(
    analysis: &Analysis,
    mut status: AnalysisStatus,
    samples: &[Sample],
    stamp: &str,
) -> AnalysisStatus {
    for (metric, sample) in analysis.metrics.iter().zip(samples) {
        let entry = match status.metrics.iter().position(|m| m.name == metric.name) {
            Some(i) => &mut status.metrics[i],
            None => {
                status.metrics.push(MetricStatus {
                    name: metric.name.clone(),
                    ..MetricStatus::default()
                });
                status.metrics.last_mut().expect("just pushed")
            }
        };
        let (verdict, message) = judge(metric, sample);
        match verdict {
            Verdict::Successful => entry.successful += 1,
            Verdict::Failed => entry.failed += 1,
            Verdict::Inconclusive => entry.inconclusive += 1,
        }
        entry.last_value = match sample {
            Sample::Value(v) => Some(*v),
            _ => None,
        };
        entry.message = Some(message);
    }
    status.measurements += 1;
    status.last_measured_at = Some(stamp.to_string());
    status.state = settle(analysis, &status).into();
    status
}

/// The state `status`'s counts add up to (pure).
fn settle(analysis: &Analysis, status: &AnalysisStatus) -> &'static str {
    if status
        .metrics
        .iter()
        .any(|m| m.failed > analysis.failure_limit.max(0))
    {
        FAILED
    } else if status
        .metrics
        .iter()
        .any(|m| m.inconclusive > analysis.inconclusive_limit.max(0))
    {
        INCONCLUSIVE
    } else if analysis.metrics.iter().all(|metric| {
        status
            .metrics
            .iter()
            .find(|m| m.name == metric.name)
            .is_some_and(|m| m.successful + m.failed >= analysis.count.max(1))
    }) {
        PASSED
    } else {
        RUNNING
    }
}

/// How long until the next measurement is due (zero: now).
pub fn due_in(analysis: &Analysis, status: &AnalysisStatus, now: jiff::Timestamp) -> Duration {
    let interval = parse_duration(&analysis.interval).unwrap_or(Duration::from_secs(60));
    let Some(last) = status
        .last_measured_at
        .as_deref()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
    else {
        return Duration::ZERO;
    };
    let since: Duration = now
        .duration_since(last)
        .try_into()
        .unwrap_or(Duration::ZERO);
    interval.saturating_sub(since)
}

/// The metrics' standing, for a person: `error-rate 2/5 ok (0.01 < 0.05)`.
pub fn summary(analysis: &Analysis, status: &AnalysisStatus) -> String {
    status
        .metrics
        .iter()
        .map(|m| {
            let mut line = format!("{} {}/{} ok", m.name, m.successful, analysis.count.max(1));
            if m.failed > 0 {
                line.push_str(&format!(", {} failed", m.failed));
            }
            if m.inconclusive > 0 {
                line.push_str(&format!(", {} without data", m.inconclusive));
            }
            if let Some(message) = &m.message {
                line.push_str(&format!(" ({message})"));
            }
            line
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::release::AnalysisOperator;

    fn analysis() -> Analysis {
        serde_json::from_value(serde_json::json!({
            "prometheusUrl": "http://prometheus:9090",
            "interval": "10s",
            "count": 3,
            "failureLimit": 1,
            "inconclusiveLimit": 1,
            "metrics": [
                {"name": "errors", "query": "q1", "threshold": 0.05},
                {"name": "p99", "query": "q2", "threshold": 0.5, "operator": "LessThanOrEqual"}
            ]
        }))
        .unwrap()
    }

    fn vector(values: &[&str]) -> serde_json::Value {
        let result: Vec<_> = values
            .iter()
            .map(|v| serde_json::json!({"metric": {}, "value": [1.0, v]}))
            .collect();
        serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": result}})
    }

    #[test]
    fn a_query_result_is_one_number_no_data_or_an_error() {
        assert_eq!(parse(&vector(&["0.25"])), Sample::Value(0.25));
        assert!(matches!(parse(&vector(&[])), Sample::NoData(_)));
        assert!(matches!(parse(&vector(&["NaN"])), Sample::NoData(_)));
        let Sample::Error(why) = parse(&vector(&["1", "2"])) else {
            panic!("two series are an error")
        };
        assert!(why.contains("2 series"), "{why}");
        let scalar = serde_json::json!({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "3"]}});
        assert_eq!(parse(&scalar), Sample::Value(3.0));
        let bad = serde_json::json!({"status": "error", "errorType": "bad_data", "error": "parse error at char 4"});
        let Sample::Error(why) = parse(&bad) else {
            panic!("a failed query is an error")
        };
        assert_eq!(why, "the query failed: bad_data: parse error at char 4");
    }

    #[test]
    fn each_operator_compares_the_value_with_the_threshold() {
        assert!(AnalysisOperator::LessThan.passes(1.0, 2.0));
        assert!(!AnalysisOperator::LessThan.passes(2.0, 2.0));
        assert!(AnalysisOperator::LessThanOrEqual.passes(2.0, 2.0));
        assert!(AnalysisOperator::GreaterThan.passes(3.0, 2.0));
        assert!(!AnalysisOperator::GreaterThanOrEqual.passes(1.0, 2.0));
    }

    #[test]
    fn the_analysis_passes_after_count_measurements_within_the_limits() {
        let analysis = analysis();
        let mut status = AnalysisStatus::default();
        let ok = [Sample::Value(0.01), Sample::Value(0.5)];
        status = record(&analysis, status, &ok, "2026-12-06T10:00:00Z");
        assert_eq!(status.state, RUNNING);
        status = record(
            &analysis,
            status,
            &[Sample::Value(0.2), Sample::NoData("none".into())],
            "2026-12-06T10:00:10Z",
        );
        assert_eq!(
            status.state, RUNNING,
            "one failure and one gap are tolerated"
        );
        status = record(&analysis, status, &ok, "2026-12-06T10:00:20Z");
        assert_eq!(
            status.state, RUNNING,
            "a measurement without data does not count towards count"
        );
        status = record(&analysis, status, &ok, "2026-12-06T10:00:30Z");
        assert_eq!(status.state, PASSED);
        assert_eq!(status.measurements, 4);
        assert_eq!(status.metrics[0].failed, 1);
        assert_eq!(status.metrics[1].inconclusive, 1);
        assert_eq!(
            summary(&analysis, &status),
            "errors 3/3 ok, 1 failed (0.01 < 0.05), p99 3/3 ok, 1 without data (0.5 <= 0.5)"
        );
    }

    #[test]
    fn one_failure_more_than_the_limit_fails_and_missing_data_is_inconclusive() {
        let analysis = analysis();
        let bad = [Sample::Value(0.9), Sample::Value(0.1)];
        let mut status = record(&analysis, AnalysisStatus::default(), &bad, "t1");
        assert_eq!(status.state, RUNNING);
        status = record(&analysis, status, &bad, "t2");
        assert_eq!(status.state, FAILED);
        assert_eq!(
            status.metrics[0].message.as_deref(),
            Some("0.9, not < 0.05")
        );
        let gap = [
            Sample::Value(0.0),
            Sample::Error("cannot ask Prometheus".into()),
        ];
        let mut status = record(&analysis, AnalysisStatus::default(), &gap, "t1");
        status = record(&analysis, status, &gap, "t2");
        assert_eq!(status.state, INCONCLUSIVE);
        assert_eq!(status.metrics[1].last_value, None);
    }

    #[test]
    fn the_next_measurement_is_due_an_interval_after_the_last() {
        let analysis = analysis();
        let now: jiff::Timestamp = "2026-12-06T10:00:04Z".parse().unwrap();
        assert_eq!(
            due_in(&analysis, &AnalysisStatus::default(), now),
            Duration::ZERO
        );
        let status = AnalysisStatus {
            last_measured_at: Some("2026-12-06T10:00:00Z".into()),
            ..AnalysisStatus::default()
        };
        assert_eq!(due_in(&analysis, &status, now), Duration::from_secs(6));
    }
}
