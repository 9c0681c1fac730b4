//! The controllers' event recorder: kube-runtime's [`Recorder`], which folds a repeated
//! event of an object into one Event with a series count, with the memory that folding
//! takes bounded.
//!
//! A `Recorder` remembers every event it published for six minutes (its folding window),
//! whole `events.k8s.io/v1` objects in one map: 2,000 Environments coming up publish some
//! 15,000 events in that window, tens of MiB held for nothing but folding. Here a recorder
//! folds at most [`EVENTS_PER_RECORDER`] events; the next publish starts a fresh one (the old
//! one goes once its last publish ends). The price: an event repeated across that boundary
//! starts a new Event object instead of counting up the old one's series.

use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, Recorder, Reporter};

/// How many events one recorder folds before the next publish starts a fresh one.
pub const EVENTS_PER_RECORDER: usize = 1024;

/// The shared event recorder (cheap to share behind the controllers' context).
pub struct Events {
    client: Client,
    reporter: Reporter,
    current: Mutex<Current>,
}

struct Current {
    recorder: Recorder,
    published: usize,
    /// How many recorders came before this one.
    generation: u64,
}

impl Events {
    /// Events published as `reporter`.
    pub fn new(client: Client, reporter: Reporter) -> Self {
        let recorder = Recorder::new(client.clone(), reporter.clone());
        Self {
            client,
            reporter,
            current: Mutex::new(Current {
                recorder,
                published: 0,
                generation: 0,
            }),
        }
    }

    /// The recorder the next publish goes through, and its generation.
    fn recorder(&self) -> (Recorder, u64) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.published >= EVENTS_PER_RECORDER {
            *current = Current {
                recorder: Recorder::new(self.client.clone(), self.reporter.clone()),
                published: 0,
                generation: current.generation + 1,
            };
        }
        current.published += 1;
        (current.recorder.clone(), current.generation)
    }

    /// Publishes `event` about `reference` (folded into the series of the same event of the
    /// same object published recently, see the module docs).
    pub async fn publish(
        &self,
        event: &Event,
        reference: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let (recorder, _) = self.recorder();
        recorder.publish(event, reference).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_recorder_folds_a_bounded_number_of_events_then_a_fresh_one_takes_over() {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = Client::try_from(config).unwrap();
        let events = Events::new(
            client,
            Reporter {
                controller: "tether-controller".into(),
                instance: None,
            },
        );
        let generations: Vec<u64> = (0..EVENTS_PER_RECORDER * 2 + 1)
            .map(|_| events.recorder().1)
            .collect();
        assert!(generations[..EVENTS_PER_RECORDER].iter().all(|g| *g == 0));
        assert!(
            generations[EVENTS_PER_RECORDER..EVENTS_PER_RECORDER * 2]
                .iter()
                .all(|g| *g == 1)
        );
        assert_eq!(generations[EVENTS_PER_RECORDER * 2], 2);
    }
}
