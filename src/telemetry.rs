//! Process-wide observability plumbing: the Prometheus registry every component registers
//! its own metrics into, and the tracing subscriber (JSON logs in production).
//!
//! Components never touch a global registry: `main` (or a test) creates one
//! [`MetricsRegistry`] and hands it to each component's `register` function, so every
//! metric name the process can export is known up front ([`MetricsRegistry::names`]) —
//! the Helm chart's alert rules are checked against that list.

use std::sync::{Arc, Mutex};

use prometheus::core::Collector;
use prometheus::{Encoder, Registry, TextEncoder};

/// The registry of every metric the process exports.
#[derive(Clone, Default)]
pub struct MetricsRegistry {
    registry: Registry,
    names: Arc<Mutex<Vec<String>>>,
}

impl MetricsRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `collector` and returns it, so a component can write
    /// `let requests = registry.register(IntCounterVec::new(...)?)?;`.
    ///
    /// Fails when a metric of the same name is already registered.
    pub fn register<C: Collector + Clone + 'static>(
        &self,
        collector: C,
    ) -> Result<C, prometheus::Error> {
        let names: Vec<String> = collector.desc().iter().map(|d| d.fq_name.clone()).collect();
        self.registry.register(Box::new(collector.clone()))?;
        self.names
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .extend(names);
        Ok(collector)
    }

    /// Every registered metric name, sorted, whether or not it has samples yet.
    pub fn names(&self) -> Vec<String> {
        let mut names = self
            .names
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        names.sort();
        names.dedup();
        names
    }

    /// The sum of every sample of the counter `name` (0 when it has none): e.g. all
    /// platform requests made, over every label value.
    pub fn counter_total(&self, name: &str) -> u64 {
        self.registry
            .gather()
            .iter()
            .filter(|family| family.name() == name)
            .flat_map(|family| family.get_metric())
            .map(|metric| metric.get_counter().get_value())
            .sum::<f64>() as u64
    }

    /// The Prometheus text exposition of every metric with samples.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on invalid metric families, which `register` rejects.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for log collectors).
    #[default]
    Json,
    /// Human-readable lines (for a terminal).
    Text,
}

/// Installs the global tracing subscriber. `filter` uses `RUST_LOG` syntax (`info`,
/// `tether=debug,kube=warn`). Calling it twice keeps the first subscriber.
pub fn init_tracing(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.compact().try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{IntCounterVec, Opts};

    #[test]
    fn names_lists_metrics_that_have_no_samples_yet() {
        let registry = MetricsRegistry::new();
        registry
            .register(
                IntCounterVec::new(Opts::new("tether_example_total", "help"), &["kind"]).unwrap(),
            )
            .unwrap();
        assert_eq!(registry.names(), vec!["tether_example_total".to_string()]);
        assert!(!registry.render().contains("tether_example_total"));
    }

    #[test]
    fn counter_total_sums_every_label_value() {
        let registry = MetricsRegistry::new();
        let counter = registry
            .register(IntCounterVec::new(Opts::new("tether_sum_total", "help"), &["kind"]).unwrap())
            .unwrap();
        assert_eq!(registry.counter_total("tether_sum_total"), 0);
        counter.with_label_values(&["a"]).inc_by(3);
        counter.with_label_values(&["b"]).inc();
        assert_eq!(registry.counter_total("tether_sum_total"), 4);
        assert_eq!(registry.counter_total("tether_other_total"), 0);
    }

    #[test]
    fn registering_a_name_twice_fails() {
        let registry = MetricsRegistry::new();
        let opts = Opts::new("tether_twice_total", "help");
        registry
            .register(prometheus::IntCounter::with_opts(opts.clone()).unwrap())
            .unwrap();
        assert!(
            registry
                .register(prometheus::IntCounter::with_opts(opts).unwrap())
                .is_err()
        );
    }
}
