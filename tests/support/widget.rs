//! A test kind, `Widget` (`test.tether.dev/v1`, namespaced, status subresource, conditions as
//! a list-map keyed by `type`), and a builder for its objects.

use kube::CustomResource;
use kube::api::ObjectMeta;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The desired state of a widget.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "test.tether.dev",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus",
    shortname = "wd",
    category = "all"
)]
pub struct WidgetSpec {
    /// How big.
    pub size: i64,
    /// Optional colour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
}

/// What a controller observed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct WidgetStatus {
    /// A phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The generation the phase is for.
    #[serde(
        default,
        rename = "observedGeneration",
        skip_serializing_if = "Option::is_none"
    )]
    pub observed_generation: Option<i64>,
}

/// A widget named `name` in `default` with `size`.
pub fn widget(name: &str, size: i64) -> Widget {
    Widget {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some("default".to_owned()),
            ..ObjectMeta::default()
        },
        spec: WidgetSpec { size, color: None },
        status: None,
    }
}

/// A cluster-scoped test kind, `Gadget` (`test.tether.dev/v1`, no status subresource).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(group = "test.tether.dev", version = "v1", kind = "Gadget")]
pub struct GadgetSpec {
    /// A label.
    pub label: String,
}
