//! Applying one manifest object as `kubectl apply --server-side --force-conflicts` does, and
//! deleting a pruned one.
//!
//! Middle steps of a sync: scan → parse → **resolve → apply** → prune.
//!
//! - *resolve*: `apiVersion` + `kind` → the REST resource and its scope, through the API
//!   server's discovery documents (cached per group-version-kind for the life of the process;
//!   the embedded API serves a fixed set of kinds). An unknown kind is an error of that
//!   document only.
//! - *apply*: a namespaced object without a namespace goes to `default` (as kubectl does);
//!   the object gets the inventory label and source annotation; the request is a server-side
//!   apply with field manager `tether-run`, `force=true` and `fieldValidation=Strict` (what
//!   kubectl 1.32 sends), so an unknown field is an error naming the field instead of being
//!   silently dropped. A 4xx answer is reported with the field and reason of each cause.

use std::collections::HashMap;
use std::fmt;

use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
    ValidationDirective,
};
use kube::core::response::Status;
use kube::discovery::Scope;
use serde_json::Value;

use super::inventory::{FIELD_MANAGER, MANAGED_BY_LABEL, ObjectId, SOURCE_ANNOTATION};
use super::manifests::ManifestObject;

/// Why an object could not be applied or deleted.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The API server does not serve this `apiVersion`/`kind`.
    #[error("failed to find kind {kind} in apiVersion {api_version}: the server does not serve it")]
    UnknownKind {
        /// The manifest's `apiVersion`.
        api_version: String,
        /// The manifest's `kind`.
        kind: String,
    },
    /// The API server rejected the object (validation, CEL rule, conflict…).
    #[error("{}", describe_status(.0))]
    Rejected(Box<Status>),
    /// The request failed for another reason (connection, server error).
    #[error("failed to reach the API server: {0}")]
    Request(#[source] kube::Error),
}

impl From<kube::Error> for ApplyError {
    fn from(err: kube::Error) -> Self {
        match err {
            kube::Error::Api(status) if (400..500).contains(&status.code) => {
                ApplyError::Rejected(status)
            }
            other => ApplyError::Request(other),
        }
    }
}

/// The reason a rejected request gives, field by field when the server names fields
/// (`spec.render.services[0]: Invalid value: <CEL message>`), else its message.
pub fn describe_status(status: &Status) -> String {
    let causes: Vec<String> = status
        .details
        .iter()
        .flat_map(|d| d.causes.iter())
        .map(|c| match (c.field.is_empty(), c.message.is_empty()) {
            (false, false) => format!("{}: {}", c.field, c.message),
            (false, true) => format!("{}: {}", c.field, c.reason),
            (true, _) => c.message.clone(),
        })
        .collect();
    if causes.is_empty() {
        if status.message.is_empty() {
            format!("rejected with HTTP {} {}", status.code, status.reason)
        } else {
            status.message.clone()
        }
    } else {
        causes.join("; ")
    }
}

/// A kind the API server serves: its REST resource and whether it is namespaced.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The REST resource (plural, group, version).
    pub resource: ApiResource,
    /// Whether objects of the kind live in a namespace.
    pub namespaced: bool,
}

/// Applies objects through a `kube::Client`, resolving kinds through discovery.
pub struct Applier {
    client: kube::Client,
    resolved: HashMap<GroupVersionKind, Resolved>,
}

impl Applier {
    /// An applier talking to the API server behind `client`.
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            resolved: HashMap::new(),
        }
    }

    /// Looks up how the server serves `gvk`.
    pub async fn resolve(&mut self, gvk: &GroupVersionKind) -> Result<Resolved, ApplyError> {
        if let Some(found) = self.resolved.get(gvk) {
            return Ok(found.clone());
        }
        let unknown = || ApplyError::UnknownKind {
            api_version: gvk.api_version(),
            kind: gvk.kind.clone(),
        };
        let (resource, caps) = match kube::discovery::pinned_kind(&self.client, gvk).await {
            Ok(found) => found,
            Err(kube::Error::Discovery(_)) => return Err(unknown()),
            Err(kube::Error::Api(status)) if status.code == 404 => return Err(unknown()),
            Err(other) => return Err(ApplyError::Request(other)),
        };
        let resolved = Resolved {
            resource,
            namespaced: caps.scope == Scope::Namespaced,
        };
        self.resolved.insert(gvk.clone(), resolved.clone());
        Ok(resolved)
    }

    /// Applies `object` (from manifest file `source`) and returns the object the server stored.
    pub async fn apply(
        &self,
        object: &ManifestObject,
        resolved: &Resolved,
        source: &str,
    ) -> Result<DynamicObject, ApplyError> {
        let id = object_id(object, resolved);
        let body = prepared_body(object, &id, source);
        let api = self.api(resolved, id.namespace.as_deref());
        let mut params = PatchParams::apply(FIELD_MANAGER).force();
        params.field_validation = Some(ValidationDirective::Strict);
        Ok(api.patch(&id.name, &params, &Patch::Apply(&body)).await?)
    }

    /// Deletes the object `id` (last applied as `api_version`) if it still carries the
    /// `tether-run` label. Returns whether a delete was issued; an object already gone or
    /// taken over by someone else (label removed) counts as done.
    pub async fn delete(&mut self, id: &ObjectId, api_version: &str) -> Result<bool, ApplyError> {
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        let resolved = self
            .resolve(&GroupVersionKind::gvk(group, version, &id.kind))
            .await?;
        let api = self.api(&resolved, id.namespace.as_deref());
        let Some(live) = api.get_opt(&id.name).await? else {
            return Ok(false);
        };
        let ours = live
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(MANAGED_BY_LABEL))
            .is_some_and(|v| v == FIELD_MANAGER);
        if !ours || live.metadata.deletion_timestamp.is_some() {
            return Ok(false);
        }
        match api.delete(&id.name, &DeleteParams::background()).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    fn api(&self, resolved: &Resolved, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(ns) if resolved.namespaced => {
                Api::namespaced_with(self.client.clone(), ns, &resolved.resource)
            }
            _ => Api::all_with(self.client.clone(), &resolved.resource),
        }
    }
}

/// The identity `object` has once applied: a namespaced object without a namespace goes to
/// `default`; a cluster-scoped object has none.
pub fn object_id(object: &ManifestObject, resolved: &Resolved) -> ObjectId {
    ObjectId {
        group: object.gvk.group.clone(),
        kind: object.gvk.kind.clone(),
        namespace: resolved
            .namespaced
            .then(|| object.namespace.clone().unwrap_or_else(|| "default".into())),
        name: object.name.clone(),
    }
}

/// The body sent to the server: the manifest with its namespace settled and the inventory
/// label and source annotation added.
fn prepared_body(object: &ManifestObject, id: &ObjectId, source: &str) -> Value {
    let mut body = object.body.clone();
    if let Some(metadata) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        match &id.namespace {
            Some(ns) => {
                metadata.insert("namespace".into(), Value::String(ns.clone()));
            }
            None => {
                metadata.remove("namespace");
            }
        }
        for (key, name, value) in [
            ("labels", MANAGED_BY_LABEL, FIELD_MANAGER),
            ("annotations", SOURCE_ANNOTATION, source),
        ] {
            let map = metadata
                .entry(key)
                .or_insert_with(|| Value::Object(Default::default()));
            if !map.is_object() {
                *map = Value::Object(Default::default());
            }
            if let Some(map) = map.as_object_mut() {
                map.insert(name.into(), Value::String(value.into()));
            }
        }
    }
    body
}

/// Apply order: Namespaces first, then other kinds the Tether kinds may depend on (Secrets,
/// ConfigMaps, …), then the Tether kinds (whose groups are `tether_groups`).
pub fn rank(gvk: &GroupVersionKind, tether_groups: &[String]) -> u8 {
    if gvk.group.is_empty() && gvk.kind == "Namespace" {
        0
    } else if tether_groups.contains(&gvk.group) {
        2
    } else {
        1
    }
}

/// A manifest object that could not be applied, located for a person to fix.
#[derive(Debug)]
pub struct Located<'a> {
    /// Manifest file, relative to the manifest directory.
    pub file: &'a str,
    /// 1-based index of the document in the file.
    pub index: usize,
    /// 1-based line where the document starts.
    pub line: usize,
}

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (document {}, line {})",
            self.file, self.index, self.line
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::response::{StatusCause, StatusDetails};

    fn object(yaml: &str) -> ManifestObject {
        let value: Value = serde_saphyr::from_str(yaml).unwrap();
        ManifestObject::from_document(1, 1, value).unwrap()
    }

    fn resolved(namespaced: bool) -> Resolved {
        Resolved {
            resource: ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", "ConfigMap")),
            namespaced,
        }
    }

    #[test]
    fn a_namespaced_object_without_a_namespace_goes_to_default() {
        let obj = object("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n");
        let id = object_id(&obj, &resolved(true));
        assert_eq!(id.namespace.as_deref(), Some("default"));
        let body = prepared_body(&obj, &id, "a.yaml");
        assert_eq!(body["metadata"]["namespace"], "default");
    }

    #[test]
    fn a_cluster_scoped_object_has_no_namespace() {
        let obj = object("apiVersion: v1\nkind: Namespace\nmetadata: {name: a, namespace: x}\n");
        let id = object_id(&obj, &resolved(false));
        assert_eq!(id.namespace, None);
        assert!(
            prepared_body(&obj, &id, "a.yaml")["metadata"]
                .get("namespace")
                .is_none()
        );
    }

    #[test]
    fn applied_objects_carry_the_inventory_label_and_their_source_file() {
        let obj = object(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  labels: {team: web}\n",
        );
        let id = object_id(&obj, &resolved(true));
        let body = prepared_body(&obj, &id, "envs/a.yaml");
        assert_eq!(body["metadata"]["labels"]["team"], "web");
        assert_eq!(body["metadata"]["labels"][MANAGED_BY_LABEL], "tether-run");
        assert_eq!(
            body["metadata"]["annotations"][SOURCE_ANNOTATION],
            "envs/a.yaml"
        );
    }

    #[test]
    fn namespaces_apply_before_secrets_and_secrets_before_tether_kinds() {
        let groups = vec!["tether.dev".to_string()];
        let ns = rank(&GroupVersionKind::gvk("", "v1", "Namespace"), &groups);
        let secret = rank(&GroupVersionKind::gvk("", "v1", "Secret"), &groups);
        let env = rank(
            &GroupVersionKind::gvk("tether.dev", "v1alpha1", "Environment"),
            &groups,
        );
        assert!(ns < secret && secret < env);
    }

    #[test]
    fn a_rejection_is_described_field_by_field() {
        let status = Status {
            code: 422,
            message: "Environment.tether.dev \"web\" is invalid: ...".into(),
            reason: "Invalid".into(),
            details: Some(StatusDetails {
                causes: vec![StatusCause {
                    reason: "FieldValueInvalid".into(),
                    message: "Invalid value: region must be set".into(),
                    field: "spec.render.services[0]".into(),
                }],
                name: "web".into(),
                group: "tether.dev".into(),
                kind: "Environment".into(),
                uid: String::new(),
                retry_after_seconds: 0,
            }),
            ..Default::default()
        };
        assert_eq!(
            describe_status(&status),
            "spec.render.services[0]: Invalid value: region must be set"
        );
    }

    #[test]
    fn a_rejection_without_causes_uses_the_message() {
        let status = Status {
            code: 409,
            message: "conflict".into(),
            ..Default::default()
        };
        assert_eq!(describe_status(&status), "conflict");
    }
}
