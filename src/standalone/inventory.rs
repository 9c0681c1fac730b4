//! The inventory: which objects `tether run` applied, from which file, so that objects whose
//! manifests are removed can be pruned — also when they were removed while `tether run` was
//! stopped.
//!
//! Last step of a sync: scan → parse → resolve → apply → **prune**.
//!
//! Design (and why): Flux's kustomize-controller keeps an explicit list of every object it
//! applied (in the Kustomization's status) and prunes the difference between the previous and
//! the new list; kubectl's ApplySet (KEP-3659) keeps a parent object and labels members, and
//! must then list every group-kind it ever touched to find members. The explicit list is exact
//! (it never needs to list a kind to find stale objects, so a kind removed from every manifest
//! is still pruned), survives restarts, and never deletes an object that `tether run` did not
//! apply itself (objects made with `kubectl apply`, or by the controllers). So the inventory
//! is Flux-style: a list of entries stored in the embedded API itself, in the ConfigMap
//! `default/tether-run-inventory` (like an ApplySet parent, `kubectl get` shows it and it is
//! durable in the same store as the objects). Members also carry the label
//! `app.kubernetes.io/managed-by: tether-run` and the annotation `tether.dev/source: <file>`
//! so a person can see where an object came from; an object whose label was removed by
//! someone else is treated as taken over and is not pruned.
//!
//! Crash safety: before applying, the inventory is written as old ∪ about-to-apply (an intent
//! record), so an object created just before a crash is still known and pruned later.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, Patch, PatchParams};
use serde::{Deserialize, Serialize};

/// Field manager of every write `tether run` makes.
pub const FIELD_MANAGER: &str = "tether-run";
/// Label set on every applied object.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Annotation naming the manifest file (relative to the manifest directory).
pub const SOURCE_ANNOTATION: &str = "tether.dev/source";
/// Namespace of the inventory ConfigMap.
pub const INVENTORY_NAMESPACE: &str = "default";
/// Name of the inventory ConfigMap.
pub const INVENTORY_NAME: &str = "tether-run-inventory";
const INVENTORY_KEY: &str = "entries.json";

/// A failure to read or write the inventory.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The inventory ConfigMap could not be read.
    #[error("failed to read the inventory {INVENTORY_NAMESPACE}/{INVENTORY_NAME}: {0}")]
    Read(#[source] kube::Error),
    /// The inventory ConfigMap holds something that is not an inventory.
    #[error("failed to decode the inventory {INVENTORY_NAMESPACE}/{INVENTORY_NAME}: {0}")]
    Decode(#[source] serde_json::Error),
    /// The inventory ConfigMap could not be written.
    #[error("failed to write the inventory {INVENTORY_NAMESPACE}/{INVENTORY_NAME}: {0}")]
    Write(#[source] kube::Error),
}

/// An object's identity across versions: group, kind, namespace, name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectId {
    /// API group (`""` for core).
    pub group: String,
    /// Kind (`Environment`).
    pub kind: String,
    /// Namespace, `None` for cluster-scoped objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl fmt::Display for ObjectId {
    /// `environment staging/web`, `namespace staging`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.kind.to_ascii_lowercase();
        match &self.namespace {
            Some(ns) => write!(f, "{kind} {ns}/{}", self.name),
            None => write!(f, "{kind} {}", self.name),
        }
    }
}

/// One applied object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// Who it is.
    #[serde(flatten)]
    pub id: ObjectId,
    /// The `apiVersion` it was last applied with (needed to delete it).
    pub api_version: String,
    /// The manifest file it came from.
    pub source: String,
}

/// The set of objects `tether run` applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    entries: BTreeMap<ObjectId, Entry>,
}

impl Inventory {
    /// Adds or replaces the entry for `entry.id`.
    pub fn insert(&mut self, entry: Entry) {
        self.entries.insert(entry.id.clone(), entry);
    }

    /// Whether `id` is in the inventory.
    pub fn contains(&self, id: &ObjectId) -> bool {
        self.entries.contains_key(id)
    }

    /// All entries, ordered by identity.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `self ∪ other`; `other` wins for entries in both.
    pub fn union(&self, other: &Inventory) -> Inventory {
        let mut merged = self.clone();
        for entry in other.entries() {
            merged.insert(entry.clone());
        }
        merged
    }

    /// The entries of the previous inventory (`self`) to prune now: not `desired`, and not
    /// from a file in `held` (a file with errors prunes nothing until it is fixed, so a typo
    /// never deletes what the file used to hold).
    pub fn stale(&self, desired: &Inventory, held: &BTreeSet<String>) -> Vec<Entry> {
        self.entries()
            .filter(|e| !desired.contains(&e.id) && !held.contains(&e.source))
            .cloned()
            .collect()
    }

    /// The entries of `self` that come from a file in `sources`.
    pub fn from_sources(&self, sources: &BTreeSet<String>) -> Inventory {
        Inventory {
            entries: self
                .entries
                .iter()
                .filter(|(_, e)| sources.contains(&e.source))
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect(),
        }
    }

    fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(&self.entries.values().collect::<Vec<_>>())
    }

    fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        let entries: Vec<Entry> = serde_json::from_str(text)?;
        let mut inventory = Inventory::default();
        for entry in entries {
            inventory.insert(entry);
        }
        Ok(inventory)
    }
}

/// Reads and writes the inventory ConfigMap.
#[derive(Clone)]
pub struct InventoryStore {
    client: kube::Client,
}

impl InventoryStore {
    /// The inventory in the API server `client` talks to.
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }

    /// The stored inventory (empty when there is none yet).
    pub async fn load(&self) -> Result<Inventory, InventoryError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), INVENTORY_NAMESPACE);
        let Some(cm) = api
            .get_opt(INVENTORY_NAME)
            .await
            .map_err(InventoryError::Read)?
        else {
            return Ok(Inventory::default());
        };
        match cm.data.as_ref().and_then(|d| d.get(INVENTORY_KEY)) {
            Some(text) => Inventory::from_json(text).map_err(InventoryError::Decode),
            None => Ok(Inventory::default()),
        }
    }

    /// Replaces the stored inventory with `inventory`.
    pub async fn save(&self, inventory: &Inventory) -> Result<(), InventoryError> {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        // The inventory's namespace must exist, as on a real API server.
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let ns = serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": INVENTORY_NAMESPACE}
        });
        namespaces
            .patch(INVENTORY_NAMESPACE, &params, &Patch::Apply(&ns))
            .await
            .map_err(InventoryError::Write)?;
        let text = inventory.to_json().map_err(InventoryError::Decode)?;
        let cm = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": INVENTORY_NAME, "namespace": INVENTORY_NAMESPACE},
            "data": {INVENTORY_KEY: text},
        });
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), INVENTORY_NAMESPACE);
        api.patch(INVENTORY_NAME, &params, &Patch::Apply(&cm))
            .await
            .map_err(InventoryError::Write)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: &str, name: &str, source: &str) -> Entry {
        Entry {
            id: ObjectId {
                group: String::new(),
                kind: kind.into(),
                namespace: Some("default".into()),
                name: name.into(),
            },
            api_version: "v1".into(),
            source: source.into(),
        }
    }

    fn inventory(entries: &[Entry]) -> Inventory {
        let mut inv = Inventory::default();
        for e in entries {
            inv.insert(e.clone());
        }
        inv
    }

    #[test]
    fn objects_no_longer_in_any_manifest_are_stale() {
        let old = inventory(&[
            entry("ConfigMap", "a", "a.yaml"),
            entry("ConfigMap", "b", "b.yaml"),
        ]);
        let desired = inventory(&[entry("ConfigMap", "a", "a.yaml")]);
        let stale = old.stale(&desired, &BTreeSet::new());
        assert_eq!(stale, vec![entry("ConfigMap", "b", "b.yaml")]);
    }

    #[test]
    fn an_object_moved_to_another_file_is_not_stale() {
        let old = inventory(&[entry("ConfigMap", "a", "old.yaml")]);
        let desired = inventory(&[entry("ConfigMap", "a", "new.yaml")]);
        assert!(old.stale(&desired, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn a_file_with_errors_prunes_nothing_it_applied_before() {
        let old = inventory(&[entry("ConfigMap", "a", "broken.yaml")]);
        let held = BTreeSet::from(["broken.yaml".to_string()]);
        assert!(old.stale(&Inventory::default(), &held).is_empty());
    }

    #[test]
    fn the_same_name_in_another_kind_is_another_object() {
        let old = inventory(&[entry("Secret", "a", "a.yaml")]);
        let desired = inventory(&[entry("ConfigMap", "a", "a.yaml")]);
        assert_eq!(old.stale(&desired, &BTreeSet::new()).len(), 1);
    }

    #[test]
    fn the_inventory_round_trips_through_json() {
        let inv = inventory(&[
            entry("ConfigMap", "a", "a.yaml"),
            entry("Secret", "s", "s.yaml"),
        ]);
        assert_eq!(Inventory::from_json(&inv.to_json().unwrap()).unwrap(), inv);
    }

    #[test]
    fn object_ids_read_like_kubectl_output() {
        assert_eq!(
            entry("Environment", "web", "x").id.to_string(),
            "environment default/web"
        );
        let ns = ObjectId {
            group: String::new(),
            kind: "Namespace".into(),
            namespace: None,
            name: "staging".into(),
        };
        assert_eq!(ns.to_string(), "namespace staging");
    }
}
