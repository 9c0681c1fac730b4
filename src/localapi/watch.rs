//! Watch events and their fan-out: every committed change becomes one [`WatchEvent`], kept in
//! a bounded per-storage history (for resuming from a resourceVersion) and broadcast to live
//! watchers as a shared `Arc`, with its JSON line serialized at most once.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// `ADDED`, `MODIFIED` or `DELETED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// The object was created.
    Added,
    /// The object changed.
    Modified,
    /// The object is gone.
    Deleted,
}

impl EventType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change of one object.
#[derive(Debug)]
pub struct WatchEvent {
    /// The resourceVersion of the change.
    pub rv: u64,
    /// What happened.
    pub event_type: EventType,
    /// `namespace/name` (or `name`) of the object.
    pub key: Arc<str>,
    /// The object after the change (for DELETED: its last state).
    pub object: Arc<Value>,
    /// The object before the change (None for ADDED), for selector transitions and
    /// reconstructing past lists.
    pub old: Option<Arc<Value>>,
    json: OnceLock<Bytes>,
}

impl WatchEvent {
    /// A new event.
    pub fn new(
        rv: u64,
        event_type: EventType,
        key: Arc<str>,
        object: Arc<Value>,
        old: Option<Arc<Value>>,
    ) -> Self {
        WatchEvent {
            rv,
            event_type,
            key,
            object,
            old,
            json: OnceLock::new(),
        }
    }

    /// The event's JSON line as stored (shared by every watcher that sees the stored form).
    pub fn json_line(&self) -> Bytes {
        self.json
            .get_or_init(|| event_line(self.event_type.as_str(), &self.object))
            .clone()
    }
}

/// One JSON line of a watch stream.
pub fn event_line(event_type: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": event_type, "object": object}))
        .unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    Bytes::from(line)
}

/// The change history of one storage plus its live fan-out.
#[derive(Debug)]
pub struct Hub {
    history: VecDeque<Arc<WatchEvent>>,
    limit: usize,
    /// Events with a resourceVersion at or below this may be missing from the history.
    floor: u64,
    sender: broadcast::Sender<Arc<WatchEvent>>,
}

impl Hub {
    /// An empty hub whose history starts after `floor`.
    pub fn new(limit: usize, floor: u64) -> Self {
        let (sender, _) = broadcast::channel(limit.max(16));
        Hub {
            history: VecDeque::new(),
            limit: limit.max(1),
            floor,
            sender,
        }
    }

    /// Records and broadcasts an event (called under the storage lock, in commit order).
    pub fn publish(&mut self, event: Arc<WatchEvent>) {
        if self.history.len() == self.limit
            && let Some(evicted) = self.history.pop_front()
        {
            self.floor = evicted.rv;
        }
        self.history.push_back(event.clone());
        // No receivers is fine: nobody is watching.
        let _ = self.sender.send(event);
    }

    /// The oldest resourceVersion a watch may resume from.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// The events after `rv`, or None when some of them are no longer retained.
    pub fn since(&self, rv: u64) -> Option<Vec<Arc<WatchEvent>>> {
        if rv < self.floor {
            return None;
        }
        let start = self.history.partition_point(|e| e.rv <= rv);
        Some(self.history.range(start..).cloned().collect())
    }

    /// A receiver of every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<WatchEvent>> {
        self.sender.subscribe()
    }

    /// The retained events after `rv`, newest first (for rolling a list back in time).
    pub fn newer_than_rev(&self, rv: u64) -> impl Iterator<Item = &Arc<WatchEvent>> {
        self.history.iter().rev().take_while(move |e| e.rv > rv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(rv: u64) -> Arc<WatchEvent> {
        Arc::new(WatchEvent::new(
            rv,
            EventType::Added,
            Arc::from("default/a"),
            Arc::new(json!({"metadata": {"name": "a"}})),
            None,
        ))
    }

    #[test]
    fn history_replays_events_after_a_version_and_expires_evicted_ones() {
        let mut hub = Hub::new(3, 0);
        for rv in 1..=5 {
            hub.publish(event(rv));
        }
        assert_eq!(hub.floor(), 2);
        let after: Vec<u64> = hub.since(3).unwrap().iter().map(|e| e.rv).collect();
        assert_eq!(after, vec![4, 5]);
        assert!(hub.since(1).is_none());
        assert_eq!(hub.since(2).unwrap().len(), 3);
    }

    #[test]
    fn an_event_line_is_serialized_once_and_ends_with_a_newline() {
        let e = event(1);
        let a = e.json_line();
        let b = e.json_line();
        assert_eq!(a.as_ptr(), b.as_ptr());
        assert!(a.ends_with(b"\n"));
        let v: Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["type"], "ADDED");
    }
}
