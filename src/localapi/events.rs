//! Events are stored once, in their core/v1 form, and converted for events.k8s.io/v1:
//! kube's `Recorder` writes events.k8s.io/v1, while `kubectl describe` lists core/v1 Events
//! with `involvedObject.*` field selectors. The mapping is a renaming of fields both ways, so a
//! round trip is lossless.

use serde_json::{Map, Value};

/// (core/v1 field, events.k8s.io/v1 field) pairs that differ only in name.
const RENAMES: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("reportingComponent", "reportingController"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];

fn rename(obj: &Value, from_core: bool, api_version: &str) -> Value {
    let Value::Object(map) = obj else {
        return obj.clone();
    };
    let mut out = Map::with_capacity(map.len());
    for (k, v) in map {
        let key = RENAMES
            .iter()
            .find_map(|(core, v1)| {
                if from_core && k == core {
                    Some(*v1)
                } else if !from_core && k == v1 {
                    Some(*core)
                } else {
                    None
                }
            })
            .unwrap_or(k.as_str());
        out.insert(key.to_owned(), v.clone());
    }
    out.insert("apiVersion".into(), Value::String(api_version.to_owned()));
    out.insert("kind".into(), Value::String("Event".into()));
    Value::Object(out)
}

/// core/v1 Event → events.k8s.io/v1 Event.
pub fn core_to_v1(obj: &Value) -> Value {
    rename(obj, true, "events.k8s.io/v1")
}

/// events.k8s.io/v1 Event → core/v1 Event.
pub fn v1_to_core(obj: &Value) -> Value {
    rename(obj, false, "v1")
}

/// Field labels the Event field selector supports (in core/v1 names).
pub fn supported_field(field: &str) -> bool {
    matches!(
        field,
        "involvedObject.kind"
            | "involvedObject.namespace"
            | "involvedObject.name"
            | "involvedObject.uid"
            | "involvedObject.apiVersion"
            | "involvedObject.resourceVersion"
            | "involvedObject.fieldPath"
            | "reason"
            | "reportingComponent"
            | "source"
            | "type"
    )
}

/// An events.k8s.io/v1 field label in its core/v1 name (`regarding.name` → `involvedObject.name`).
pub fn v1_field_to_core(field: &str) -> String {
    for (core, v1) in RENAMES {
        if field == *v1 {
            return (*core).to_owned();
        }
        if let Some(rest) = field.strip_prefix(v1).and_then(|r| r.strip_prefix('.')) {
            return format!("{core}.{rest}");
        }
    }
    field.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_round_trip_between_the_two_api_groups() {
        let v1 = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e", "namespace": "default"},
            "regarding": {"kind": "Environment", "name": "web"}, "note": "Deployed",
            "reason": "DeploySucceeded", "reportingController": "tether", "type": "Normal",
            "series": {"count": 2, "lastObservedTime": "2026-01-01T00:00:00.000000Z"}});
        let core = v1_to_core(&v1);
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["involvedObject"]["name"], "web");
        assert_eq!(core["message"], "Deployed");
        assert_eq!(core["reportingComponent"], "tether");
        assert_eq!(core_to_v1(&core), v1);
    }

    #[test]
    fn v1_field_labels_map_to_core_names() {
        assert_eq!(v1_field_to_core("regarding.name"), "involvedObject.name");
        assert_eq!(v1_field_to_core("reason"), "reason");
        assert_eq!(v1_field_to_core("metadata.name"), "metadata.name");
    }
}
