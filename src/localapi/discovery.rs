//! Discovery documents in the legacy (non-aggregated) form: `/api`, `/api/v1`, `/apis`,
//! `/apis/<group>`, `/apis/<group>/<version>`, and `/version`. kubectl 1.32 asks for
//! aggregated discovery (`as=APIGroupDiscoveryList`) first and falls back to these when the
//! answer is plain `application/json`.

use serde_json::{Value, json};

use super::resources::ResourceTable;

/// The Kubernetes version whose behaviour this server imitates (its error texts, its CEL
/// cost budget): the newest Tether supports.
pub const KUBERNETES_MINOR: &str = "36";

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": KUBERNETES_MINOR,
        "gitVersion": format!("v1.{KUBERNETES_MINOR}.0-tether.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    })
}

/// `/api`.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_doc(group: &str, versions: &[String]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({
        "name": group,
        "versions": versions,
        "preferredVersion": versions.first().cloned().unwrap_or(Value::Null),
    })
}

/// `/apis`.
pub fn group_list(table: &ResourceTable) -> Value {
    let groups: Vec<Value> = table
        .groups()
        .iter()
        .map(|(g, versions)| group_doc(g, versions))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`, or None when the group is not served.
pub fn group(table: &ResourceTable, name: &str) -> Option<Value> {
    let (g, versions) = table.groups().into_iter().find(|(g, _)| g == name)?;
    let mut doc = group_doc(&g, &versions);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

/// `/api/v1` or `/apis/<group>/<version>`, or None when not served.
pub fn resource_list(table: &ResourceTable, group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for def in table.in_group_version(group, version) {
        let mut entry = json!({
            "name": def.plural,
            "singularName": def.singular,
            "namespaced": def.namespaced,
            "kind": def.kind,
            "verbs": def.verbs(),
        });
        if !def.short_names.is_empty() {
            entry["shortNames"] = json!(def.short_names);
        }
        if !def.categories.is_empty() {
            entry["categories"] = json!(def.categories);
        }
        resources.push(entry);
        if def.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", def.plural),
                "singularName": "",
                "namespaced": def.namespaced,
                "kind": def.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_discovery_lists_the_builtin_kinds_with_short_names_and_verbs() {
        let table = ResourceTable::new(&[]).unwrap();
        let doc = resource_list(&table, "", "v1").unwrap();
        let names: Vec<&str> = doc["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"configmaps"));
        assert!(names.contains(&"namespaces/status"));
        let cm = doc["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "configmaps")
            .unwrap();
        assert_eq!(cm["shortNames"], json!(["cm"]));
        assert!(cm["verbs"].as_array().unwrap().contains(&json!("watch")));
    }

    #[test]
    fn group_discovery_lists_groups_and_unknown_groups_are_absent() {
        let table = ResourceTable::new(&[]).unwrap();
        let list = group_list(&table);
        let groups: Vec<&str> = list["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap())
            .collect();
        assert!(groups.contains(&"coordination.k8s.io"));
        assert!(groups.contains(&"events.k8s.io"));
        assert!(group(&table, "nope.example.com").is_none());
        assert!(resource_list(&table, "nope.example.com", "v1").is_none());
    }
}
