//! The single source of truth of the Kubernetes API calls the controllers make. The Helm
//! chart's RBAC is checked against it (`tether rbac` prints it as JSON).

use serde::Serialize;

/// Permission to use `verbs` on `resource` of `api_group` (`""` is the core group).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiAccess {
    /// API group.
    pub api_group: &'static str,
    /// Resource (plural, with `/subresource` where one is used).
    pub resource: &'static str,
    /// Verbs used.
    pub verbs: &'static [&'static str],
}

// Finalizers are added and removed with JSON patches (kube-runtime's finalizer helper), so
// `update` on the kinds themselves is never needed.
const KIND_VERBS: &[&str] = &["get", "list", "watch", "patch"];
const READ_VERBS: &[&str] = &["get", "list", "watch"];

/// Every API call the controllers (and leader election) make.
pub const API_ACCESS: &[ApiAccess] = &[
    ApiAccess {
        api_group: "tether.dev",
        resource: "environments",
        verbs: KIND_VERBS,
    },
    ApiAccess {
        api_group: "tether.dev",
        resource: "environments/status",
        verbs: &["patch"],
    },
    ApiAccess {
        api_group: "tether.dev",
        resource: "environments/finalizers",
        verbs: &["update"],
    },
    ApiAccess {
        api_group: "tether.dev",
        resource: "releases",
        verbs: KIND_VERBS,
    },
    ApiAccess {
        api_group: "tether.dev",
        resource: "releases/status",
        verbs: &["patch"],
    },
    ApiAccess {
        api_group: "tether.dev",
        resource: "releases/finalizers",
        verbs: &["update"],
    },
    ApiAccess {
        api_group: "tether.dev",
        resource: "migrations",
        verbs: KIND_VERBS,
    },
    ApiAccess {
        api_group: "tether.dev",
        resource: "migrations/status",
        verbs: &["patch"],
    },
    ApiAccess {
        api_group: "tether.dev",
        resource: "migrations/finalizers",
        verbs: &["update"],
    },
    ApiAccess {
        api_group: "",
        resource: "secrets",
        verbs: READ_VERBS,
    },
    ApiAccess {
        api_group: "",
        resource: "configmaps",
        verbs: READ_VERBS,
    },
    ApiAccess {
        api_group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
    },
    ApiAccess {
        api_group: "coordination.k8s.io",
        resource: "leases",
        // kube-lease-manager gets, creates and patches its Lease; it never replaces it.
        verbs: &["get", "create", "patch"],
    },
];

/// [`API_ACCESS`] as the JSON `tether rbac` prints.
pub fn to_json() -> String {
    serde_json::to_string_pretty(API_ACCESS).unwrap_or_else(|_| "[]".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_status_and_finalizers_subresources() {
        for kind in ["environments", "releases", "migrations"] {
            for resource in [
                kind.to_string(),
                format!("{kind}/status"),
                format!("{kind}/finalizers"),
            ] {
                assert!(
                    API_ACCESS.iter().any(|a| a.resource == resource),
                    "{resource}"
                );
            }
        }
    }

    #[test]
    fn the_json_uses_the_chart_test_field_names() {
        let json: serde_json::Value = serde_json::from_str(&to_json()).unwrap();
        assert_eq!(
            json[0],
            serde_json::json!({"apiGroup": "tether.dev", "resource": "environments",
                "verbs": ["get", "list", "watch", "patch"]})
        );
    }
}
