//! The resource table: which REST resources the local API serves, built from the built-in
//! kinds Tether needs and the configured CustomResourceDefinitions.
//!
//! Every request is resolved here first (group, version, plural → [`ResourceDef`]); discovery
//! documents are rendered from the same table, so what is listed is exactly what is served.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

/// Where the objects of a resource live in storage: two API resources can share one
/// storage (core/v1 and events.k8s.io/v1 Events are stored once).
pub type StorageKey = Arc<str>;

/// The storage key of Events (both API groups).
pub const EVENTS_STORAGE: &str = "events";
/// The storage key of Namespaces.
pub const NAMESPACES_STORAGE: &str = "namespaces";
/// The storage key of the read-only CRDs.
pub const CRDS_STORAGE: &str = "customresourcedefinitions.apiextensions.k8s.io";

/// How a resource's objects are represented on the wire relative to their storage form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Representation {
    /// Stored as served.
    Plain,
    /// events.k8s.io/v1 Event, stored as core/v1 Event and converted on read and write.
    EventsV1,
}

/// One servable REST resource (one group/version/plural).
#[derive(Clone, Debug)]
pub struct ResourceDef {
    /// API group, empty for the core group.
    pub group: String,
    /// API version, e.g. `v1alpha1`.
    pub version: String,
    /// Kind, e.g. `Environment`.
    pub kind: String,
    /// List kind, e.g. `EnvironmentList`.
    pub list_kind: String,
    /// Plural resource name, e.g. `environments`.
    pub plural: String,
    /// Singular name, e.g. `environment`.
    pub singular: String,
    /// Short names for kubectl (`env`).
    pub short_names: Vec<String>,
    /// Categories for kubectl (`all`).
    pub categories: Vec<String>,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Whether the `status` subresource exists.
    pub status_subresource: bool,
    /// Custom resource (admission, generation) or built-in kind.
    pub custom: bool,
    /// Only get/list/watch are allowed.
    pub read_only: bool,
    /// Storage shared by every representation of the kind.
    pub storage: StorageKey,
    /// Wire representation relative to storage.
    pub representation: Representation,
    /// The OpenAPI v3 schema of this version (custom resources only), for SSA list types.
    pub schema: Option<Arc<Value>>,
}

impl ResourceDef {
    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The group-qualified resource name used in error messages: `environments.tether.dev`.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The verbs advertised in discovery.
    pub fn verbs(&self) -> Vec<&'static str> {
        if self.read_only {
            vec!["get", "list", "watch"]
        } else {
            vec![
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ]
        }
    }
}

/// Every resource the server knows, indexed for request routing.
#[derive(Debug, Default)]
pub struct ResourceTable {
    defs: Vec<Arc<ResourceDef>>,
    by_path: HashMap<(String, String, String), Arc<ResourceDef>>,
}

/// A configured CRD that cannot be served.
#[derive(Debug, thiserror::Error)]
#[error("failed to serve CustomResourceDefinition {name}: {reason}")]
pub struct CrdError {
    /// The CRD's name.
    pub name: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ResourceTable {
    /// The built-in resources plus every served version of `crds`.
    pub fn new(crds: &[CustomResourceDefinition]) -> Result<Self, CrdError> {
        let mut table = ResourceTable::default();
        for def in builtins() {
            table.insert(def);
        }
        for crd in crds {
            for def in crd_resources(crd)? {
                table.insert(def);
            }
        }
        Ok(table)
    }

    fn insert(&mut self, def: ResourceDef) {
        let def = Arc::new(def);
        self.by_path.insert(
            (def.group.clone(), def.version.clone(), def.plural.clone()),
            def.clone(),
        );
        self.defs.push(def);
    }

    /// The resource served at `group/version/plural`.
    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        self.by_path
            .get(&(group.to_owned(), version.to_owned(), plural.to_owned()))
            .cloned()
    }

    /// Every resource, in registration order.
    pub fn all(&self) -> &[Arc<ResourceDef>] {
        &self.defs
    }

    /// The resources of one group version.
    pub fn in_group_version<'a>(
        &'a self,
        group: &'a str,
        version: &'a str,
    ) -> impl Iterator<Item = &'a Arc<ResourceDef>> + 'a {
        self.defs
            .iter()
            .filter(move |d| d.group == group && d.version == version)
    }

    /// The served groups (non-core), each with its versions, in registration order.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for def in &self.defs {
            if def.group.is_empty() {
                continue;
            }
            match groups.iter_mut().find(|(g, _)| *g == def.group) {
                Some((_, versions)) => {
                    if !versions.contains(&def.version) {
                        versions.push(def.version.clone());
                    }
                }
                None => groups.push((def.group.clone(), vec![def.version.clone()])),
            }
        }
        groups
    }

    /// The distinct storages and whether their objects are namespaced.
    pub fn storages(&self) -> Vec<(StorageKey, bool)> {
        let mut out: Vec<(StorageKey, bool)> = Vec::new();
        for def in &self.defs {
            if !out.iter().any(|(k, _)| *k == def.storage) {
                out.push((def.storage.clone(), def.namespaced));
            }
        }
        out
    }
}

fn builtin(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    short: &[&str],
    namespaced: bool,
) -> ResourceDef {
    ResourceDef {
        group: group.into(),
        version: version.into(),
        kind: kind.into(),
        list_kind: format!("{kind}List"),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        short_names: short.iter().map(|s| (*s).to_owned()).collect(),
        categories: Vec::new(),
        namespaced,
        status_subresource: false,
        custom: false,
        read_only: false,
        storage: Arc::from(plural),
        representation: Representation::Plain,
        schema: None,
    }
}

fn builtins() -> Vec<ResourceDef> {
    let mut namespaces = builtin("", "v1", "Namespace", "namespaces", &["ns"], false);
    namespaces.status_subresource = true;
    let mut leases = builtin("coordination.k8s.io", "v1", "Lease", "leases", &[], true);
    leases.storage = Arc::from("leases.coordination.k8s.io");
    let mut events_v1 = builtin("events.k8s.io", "v1", "Event", "events", &["ev"], true);
    events_v1.representation = Representation::EventsV1;
    let mut crds = builtin(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        &["crd", "crds"],
        false,
    );
    crds.read_only = true;
    crds.storage = Arc::from(CRDS_STORAGE);
    vec![
        namespaces,
        builtin("", "v1", "ConfigMap", "configmaps", &["cm"], true),
        builtin("", "v1", "Secret", "secrets", &[], true),
        builtin("", "v1", "Event", "events", &["ev"], true),
        events_v1,
        leases,
        crds,
    ]
}

fn crd_resources(crd: &CustomResourceDefinition) -> Result<Vec<ResourceDef>, CrdError> {
    let name = crd.metadata.name.clone().unwrap_or_default();
    let spec = &crd.spec;
    let names = &spec.names;
    let namespaced = match spec.scope.as_str() {
        "Namespaced" => true,
        "Cluster" => false,
        other => {
            return Err(CrdError {
                name,
                reason: format!("unknown scope {other:?}"),
            });
        }
    };
    let storage: StorageKey = Arc::from(format!("{}.{}", names.plural, spec.group));
    let mut out = Vec::new();
    for version in spec.versions.iter().filter(|v| v.served) {
        let schema = match version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
        {
            Some(schema) => Some(Arc::new(serde_json::to_value(schema).map_err(|e| {
                CrdError {
                    name: name.clone(),
                    reason: format!("schema does not serialize: {e}"),
                }
            })?)),
            None => None,
        };
        out.push(ResourceDef {
            group: spec.group.clone(),
            version: version.name.clone(),
            kind: names.kind.clone(),
            list_kind: names
                .list_kind
                .clone()
                .unwrap_or_else(|| format!("{}List", names.kind)),
            plural: names.plural.clone(),
            singular: names
                .singular
                .clone()
                .unwrap_or_else(|| names.kind.to_lowercase()),
            short_names: names.short_names.clone().unwrap_or_default(),
            categories: names.categories.clone().unwrap_or_default(),
            namespaced,
            status_subresource: version
                .subresources
                .as_ref()
                .is_some_and(|s| s.status.is_some()),
            custom: true,
            read_only: false,
            storage: storage.clone(),
            representation: Representation::Plain,
            schema,
        });
    }
    Ok(out)
}
