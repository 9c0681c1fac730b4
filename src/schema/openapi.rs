//! The OpenAPI v3 documents the API server serves under `/openapi/v3`.
//!
//! - the index: `{"paths": {"apis/tether.dev/v1alpha1": {"serverRelativeURL":
//!   "/openapi/v3/apis/tether.dev/v1alpha1?hash=<SHA512>"}, "api/v1": ...}}`;
//! - one document per group-version: `components.schemas` (each CRD version's schema
//!   wrapped as the apiextensions OpenAPI builder wraps it: standard `apiVersion`/`kind`,
//!   `metadata` referencing ObjectMeta, `x-kubernetes-group-version-kind`; a `<Kind>List`;
//!   the meta types they reference; for built-in kinds the k8s-openapi schemas) and `paths`
//!   with every operation of each resource, carrying `x-kubernetes-group-version-kind` and,
//!   on POST/PUT/PATCH, the `dryRun`, `fieldManager` and `fieldValidation` query parameters.
//!
//! `kubectl explain` reads the schemas; kubectl's `QueryParamVerifierV3` looks for
//! `fieldValidation` among the parameters of the PATCH operation tagged with the object's
//! GVK to decide that the server validates fields itself (`kubectl apply`'s default
//! `--validate=strict`).

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use schemars::JsonSchema;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha512};

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
const LIST_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";
const STATUS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Status";
const DELETE_OPTIONS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions";
const PATCH: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch";
const WATCH_EVENT: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.WatchEvent";

const API_VERSION_DESCRIPTION: &str = "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources";
const KIND_DESCRIPTION: &str = "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";
const METADATA_DESCRIPTION: &str = "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";
const LIST_METADATA_DESCRIPTION: &str = "Standard list metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";

/// Why the documents could not be built.
#[derive(Debug, thiserror::Error)]
pub enum OpenApiError {
    /// A CRD's schema could not be serialised.
    #[error("failed to build the OpenAPI document of CRD {crd}: {source}")]
    Serialize {
        /// The CRD's name.
        crd: String,
        /// The serialisation error.
        source: serde_json::Error,
    },
}

/// One REST resource as the documents describe it.
struct Resource {
    group: String,
    version: String,
    kind: String,
    plural: String,
    namespaced: bool,
    status: bool,
    /// The `components.schemas` key of the kind.
    schema: String,
    /// PATCH content types the resource accepts.
    strategic_merge: bool,
}

impl Resource {
    fn gvk(&self, kind: &str) -> Value {
        json!({"group": self.group, "kind": kind, "version": self.version})
    }

    fn prefix(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }

    /// The operationId suffix the API server uses, e.g. `TetherDevV1alpha1NamespacedEnvironment`.
    fn op_suffix(&self, namespaced: bool) -> String {
        let mut out = String::new();
        let group = self.group.strip_suffix(".k8s.io").unwrap_or(&self.group);
        let words = group
            .split(['.', '-'])
            .chain(std::iter::once(self.version.as_str()));
        for word in words.filter(|w| !w.is_empty()) {
            out.push_str(&capitalise(word));
        }
        if namespaced {
            out.push_str("Namespaced");
        }
        out.push_str(&self.kind);
        out
    }
}

fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// A served document and the hash in its URL.
struct Document {
    value: Value,
    hash: String,
}

/// Every OpenAPI v3 document the embedded API server serves, built once.
pub struct OpenApi {
    documents: BTreeMap<String, Document>,
}

impl std::fmt::Debug for OpenApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenApi")
            .field("paths", &self.documents.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl OpenApi {
    /// Builds the documents for the served versions of `crds` plus the built-in kinds
    /// Tether serves: `api/v1` (Namespace, Secret, ConfigMap, Event),
    /// `apis/coordination.k8s.io/v1` (Lease) and `apis/events.k8s.io/v1` (Event).
    pub fn new(crds: &[CustomResourceDefinition]) -> Result<Self, OpenApiError> {
        let mut builders: BTreeMap<String, Builder> = BTreeMap::new();
        builtins(&mut builders);
        for crd in crds {
            for version in crd.spec.versions.iter().filter(|v| v.served) {
                let schema = version
                    .schema
                    .as_ref()
                    .and_then(|s| s.open_api_v3_schema.as_ref())
                    .map(serde_json::to_value)
                    .transpose()
                    .map_err(|source| OpenApiError::Serialize {
                        crd: crd.metadata.name.clone().unwrap_or_default(),
                        source,
                    })?
                    .unwrap_or_else(
                        || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
                    );
                let group = crd.spec.group.clone();
                let reversed: Vec<&str> = group.split('.').rev().collect();
                let resource = Resource {
                    group: group.clone(),
                    version: version.name.clone(),
                    kind: crd.spec.names.kind.clone(),
                    plural: crd.spec.names.plural.clone(),
                    namespaced: crd.spec.scope == "Namespaced",
                    status: version
                        .subresources
                        .as_ref()
                        .is_some_and(|s| s.status.is_some()),
                    schema: format!(
                        "{}.{}.{}",
                        reversed.join("."),
                        version.name,
                        crd.spec.names.kind
                    ),
                    strategic_merge: false,
                };
                let list_kind = crd
                    .spec
                    .names
                    .list_kind
                    .clone()
                    .unwrap_or_else(|| format!("{}List", crd.spec.names.kind));
                let builder = builders
                    .entry(format!("apis/{group}/{}", version.name))
                    .or_insert_with(Builder::new);
                builder.add_crd_schema(&resource, schema, &list_kind);
                builder.add_paths(&resource);
            }
        }
        let documents = builders
            .into_iter()
            .map(|(path, builder)| {
                let value = builder.finish();
                let hash = hex_upper(&Sha512::digest(value.to_string().as_bytes()));
                (path, Document { value, hash })
            })
            .collect();
        Ok(Self { documents })
    }

    /// The `/openapi/v3` index.
    pub fn index(&self) -> Value {
        let paths: Map<String, Value> = self
            .documents
            .iter()
            .map(|(path, doc)| {
                (
                    path.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", doc.hash)}),
                )
            })
            .collect();
        json!({"paths": paths})
    }

    /// The document for a group-version path as the index names it (`api/v1`,
    /// `apis/tether.dev/v1alpha1`; a leading `/openapi/v3/` is accepted too).
    pub fn document(&self, path: &str) -> Option<&Value> {
        let path = path.trim_start_matches('/');
        let path = path.strip_prefix("openapi/v3/").unwrap_or(path);
        self.documents.get(path).map(|d| &d.value)
    }

    /// The hash the index puts in the document's URL (uppercase hex SHA-512 of its JSON).
    pub fn hash(&self, path: &str) -> Option<&str> {
        self.documents
            .get(path.trim_start_matches('/'))
            .map(|d| d.hash.as_str())
    }

    /// The group-version paths served.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.documents.keys().map(String::as_str)
    }
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// Collects the schemas and paths of one group-version document.
struct Builder {
    generator: schemars::SchemaGenerator,
    schemas: Map<String, Value>,
    paths: Map<String, Value>,
}

impl Builder {
    fn new() -> Self {
        let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
        // The meta types every resource's operations reference.
        // (subschema_for registers the definition; the returned $ref is not needed here.)
        use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
        let _ = generator.subschema_for::<meta::ObjectMeta>();
        let _ = generator.subschema_for::<meta::ListMeta>();
        let _ = generator.subschema_for::<meta::Status>();
        let _ = generator.subschema_for::<meta::DeleteOptions>();
        let _ = generator.subschema_for::<meta::Patch>();
        let _ = generator.subschema_for::<meta::WatchEvent<()>>();
        Self {
            generator,
            schemas: Map::new(),
            paths: Map::new(),
        }
    }

    /// Adds a built-in kind from its k8s-openapi schema.
    fn add_builtin<T: JsonSchema>(&mut self, resource: &Resource, list_kind: &str) {
        let _ = self.generator.subschema_for::<T>();
        let list_name = format!("{}List", resource.schema);
        self.schemas
            .insert(list_name, list_schema(resource, list_kind));
        self.add_paths(resource);
    }

    /// Adds a CRD version's schema wrapped as the apiextensions OpenAPI builder does.
    fn add_crd_schema(&mut self, resource: &Resource, mut schema: Value, list_kind: &str) {
        if let Value::Object(map) = &mut schema {
            let props = map.entry("properties").or_insert_with(|| json!({}));
            if let Value::Object(props) = props {
                props.insert(
                    "apiVersion".into(),
                    json!({"type": "string", "description": API_VERSION_DESCRIPTION}),
                );
                props.insert(
                    "kind".into(),
                    json!({"type": "string", "description": KIND_DESCRIPTION}),
                );
                props.insert(
                    "metadata".into(),
                    json!({"description": METADATA_DESCRIPTION, "default": {}, "allOf": [schema_ref(OBJECT_META)]}),
                );
            }
            map.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([resource.gvk(&resource.kind)]),
            );
        }
        self.schemas.insert(resource.schema.clone(), schema);
        self.schemas.insert(
            format!("{}List", resource.schema),
            list_schema(resource, list_kind),
        );
    }

    /// Adds every operation of `resource`.
    fn add_paths(&mut self, resource: &Resource) {
        let prefix = resource.prefix();
        let scope = if resource.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}", resource.plural)
        } else {
            format!("{prefix}/{}", resource.plural)
        };
        let item = format!("{scope}/{{name}}");
        let path_params = |with_name: bool| {
            let mut params = Vec::new();
            if with_name {
                params.push(param(
                    "name",
                    "path",
                    &format!("name of the {}", resource.kind),
                    true,
                ));
            }
            if resource.namespaced {
                params.push(param(
                    "namespace",
                    "path",
                    "object name and auth scope, such as for teams and projects",
                    true,
                ));
            }
            params.push(param(
                "pretty",
                "query",
                "If 'true', then the output is pretty printed. Defaults to 'false' unless the user-agent indicates a browser or command-line HTTP tool (curl and wget).",
                false,
            ));
            Value::Array(params)
        };
        let object = schema_ref(&resource.schema);
        let list = schema_ref(&format!("{}List", resource.schema));
        let ns = resource.namespaced;
        let op = |verb: &str, action: &str, kind: &str| OperationSpec {
            id: format!("{verb}{}", resource.op_suffix(ns)),
            action: action.to_string(),
            gvk: resource.gvk(kind),
            tag: tag(resource),
        };

        let mut collection = Map::new();
        collection.insert(
            "get".into(),
            op("list", "list", &resource.kind).build(
                list_params(),
                None,
                responses(&list, &["200"]),
            ),
        );
        collection.insert(
            "post".into(),
            op("create", "post", &resource.kind).build(
                write_params(false),
                Some(body(&object)),
                responses(&object, &["200", "201", "202"]),
            ),
        );
        collection.insert(
            "delete".into(),
            op("deletecollection", "deletecollection", &resource.kind).build(
                delete_params(true),
                Some(body(&schema_ref(DELETE_OPTIONS))),
                responses(&schema_ref(STATUS), &["200"]),
            ),
        );
        collection.insert("parameters".into(), path_params(false));
        self.paths.insert(scope.clone(), Value::Object(collection));

        let patch_types = patch_types(resource.strategic_merge);
        let mut single = Map::new();
        single.insert(
            "get".into(),
            op("read", "get", &resource.kind).build(vec![], None, responses(&object, &["200"])),
        );
        single.insert(
            "put".into(),
            op("replace", "put", &resource.kind).build(
                write_params(false),
                Some(body(&object)),
                responses(&object, &["200", "201"]),
            ),
        );
        single.insert(
            "patch".into(),
            op("patch", "patch", &resource.kind).build(
                write_params(true),
                Some(patch_body(&patch_types)),
                responses(&object, &["200", "201"]),
            ),
        );
        single.insert(
            "delete".into(),
            op("delete", "delete", &resource.kind).build(
                delete_params(false),
                Some(body(&schema_ref(DELETE_OPTIONS))),
                responses(&schema_ref(STATUS), &["200", "202"]),
            ),
        );
        single.insert("parameters".into(), path_params(true));
        self.paths.insert(item.clone(), Value::Object(single));

        if resource.status {
            let status_op = |verb: &str, action: &str| OperationSpec {
                id: format!("{verb}{}Status", resource.op_suffix(ns)),
                action: action.to_string(),
                gvk: resource.gvk(&resource.kind),
                tag: tag(resource),
            };
            let mut status = Map::new();
            status.insert(
                "get".into(),
                status_op("read", "get").build(vec![], None, responses(&object, &["200"])),
            );
            status.insert(
                "put".into(),
                status_op("replace", "put").build(
                    write_params(false),
                    Some(body(&object)),
                    responses(&object, &["200", "201"]),
                ),
            );
            status.insert(
                "patch".into(),
                status_op("patch", "patch").build(
                    write_params(true),
                    Some(patch_body(&patch_types)),
                    responses(&object, &["200", "201"]),
                ),
            );
            status.insert("parameters".into(), path_params(true));
            self.paths
                .insert(format!("{item}/status"), Value::Object(status));
        }

        if resource.namespaced {
            let mut all = Map::new();
            let all_op = OperationSpec {
                id: format!("list{}ForAllNamespaces", resource.op_suffix(false)),
                action: "list".into(),
                gvk: resource.gvk(&resource.kind),
                tag: tag(resource),
            };
            all.insert(
                "get".into(),
                all_op.build(list_params(), None, responses(&list, &["200"])),
            );
            all.insert(
                "parameters".into(),
                Value::Array(vec![param(
                    "pretty",
                    "query",
                    "If 'true', then the output is pretty printed.",
                    false,
                )]),
            );
            self.paths
                .insert(format!("{prefix}/{}", resource.plural), Value::Object(all));
        }
    }

    fn finish(mut self) -> Value {
        let mut schemas = self.generator.take_definitions(true);
        // kube-openapi names Kubernetes' own types by their Go package; k8s-openapi does too.
        for (name, schema) in std::mem::take(&mut self.schemas) {
            schemas.insert(name, schema);
        }
        let mut schemas = Value::Object(schemas);
        tag_builtin_gvks(&mut schemas);
        json!({
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": "v1.32.0"},
            "paths": self.paths,
            "components": {"schemas": schemas},
        })
    }
}

/// Adds `x-kubernetes-group-version-kind` to the built-in kinds' schemas (k8s-openapi's
/// schemars output does not carry it; kubectl explain looks schemas up by it).
fn tag_builtin_gvks(schemas: &mut Value) {
    let known: &[(&str, &str, &str, &str)] = &[
        ("io.k8s.api.core.v1.Namespace", "", "v1", "Namespace"),
        ("io.k8s.api.core.v1.Secret", "", "v1", "Secret"),
        ("io.k8s.api.core.v1.ConfigMap", "", "v1", "ConfigMap"),
        ("io.k8s.api.core.v1.Event", "", "v1", "Event"),
        (
            "io.k8s.api.coordination.v1.Lease",
            "coordination.k8s.io",
            "v1",
            "Lease",
        ),
        ("io.k8s.api.events.v1.Event", "events.k8s.io", "v1", "Event"),
        (STATUS, "", "v1", "Status"),
        (DELETE_OPTIONS, "", "v1", "DeleteOptions"),
        (WATCH_EVENT, "", "v1", "WatchEvent"),
    ];
    for (name, group, version, kind) in known {
        if let Some(Value::Object(schema)) = schemas.get_mut(*name) {
            schema.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": group, "kind": kind, "version": version}]),
            );
        }
    }
}

fn builtins(builders: &mut BTreeMap<String, Builder>) {
    use k8s_openapi::api::{coordination, core, events};
    let core_resource = |kind: &str, plural: &str, namespaced: bool, status: bool| Resource {
        group: String::new(),
        version: "v1".into(),
        kind: kind.into(),
        plural: plural.into(),
        namespaced,
        status,
        schema: format!("io.k8s.api.core.v1.{kind}"),
        strategic_merge: true,
    };
    let core_v1 = builders.entry("api/v1".into()).or_insert_with(Builder::new);
    core_v1.add_builtin::<core::v1::Namespace>(
        &core_resource("Namespace", "namespaces", false, true),
        "NamespaceList",
    );
    core_v1.add_builtin::<core::v1::Secret>(
        &core_resource("Secret", "secrets", true, false),
        "SecretList",
    );
    core_v1.add_builtin::<core::v1::ConfigMap>(
        &core_resource("ConfigMap", "configmaps", true, false),
        "ConfigMapList",
    );
    core_v1.add_builtin::<core::v1::Event>(
        &core_resource("Event", "events", true, false),
        "EventList",
    );

    let lease = Resource {
        group: "coordination.k8s.io".into(),
        version: "v1".into(),
        kind: "Lease".into(),
        plural: "leases".into(),
        namespaced: true,
        status: false,
        schema: "io.k8s.api.coordination.v1.Lease".into(),
        strategic_merge: true,
    };
    builders
        .entry("apis/coordination.k8s.io/v1".into())
        .or_insert_with(Builder::new)
        .add_builtin::<coordination::v1::Lease>(&lease, "LeaseList");

    let event = Resource {
        group: "events.k8s.io".into(),
        version: "v1".into(),
        kind: "Event".into(),
        plural: "events".into(),
        namespaced: true,
        status: false,
        schema: "io.k8s.api.events.v1.Event".into(),
        strategic_merge: true,
    };
    builders
        .entry("apis/events.k8s.io/v1".into())
        .or_insert_with(Builder::new)
        .add_builtin::<events::v1::Event>(&event, "EventList");
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn tag(resource: &Resource) -> String {
    let group = if resource.group.is_empty() {
        "core"
    } else {
        resource.group.as_str()
    };
    let group = group.strip_suffix(".k8s.io").unwrap_or(group);
    let mut words = group.split(['.', '-']).filter(|w| !w.is_empty());
    let mut out = words.next().unwrap_or_default().to_string();
    for word in words {
        out.push_str(&capitalise(word));
    }
    format!("{out}_{}", resource.version)
}

fn list_schema(resource: &Resource, list_kind: &str) -> Value {
    json!({
        "description": format!("{list_kind} is a list of {}", resource.kind),
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string", "description": API_VERSION_DESCRIPTION},
            "items": {
                "type": "array",
                "description": format!("List of {}. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md", resource.plural),
                "items": {"default": {}, "allOf": [schema_ref(&resource.schema)]},
            },
            "kind": {"type": "string", "description": KIND_DESCRIPTION},
            "metadata": {"description": LIST_METADATA_DESCRIPTION, "default": {}, "allOf": [schema_ref(LIST_META)]},
        },
        "x-kubernetes-group-version-kind": [resource.gvk(list_kind)],
    })
}

fn param(name: &str, location: &str, description: &str, required: bool) -> Value {
    let mut p = json!({
        "name": name,
        "in": location,
        "description": description,
        "schema": {"type": "string", "uniqueItems": true},
    });
    if required {
        p["required"] = json!(true);
    }
    p
}

fn typed_param(name: &str, ty: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": ty, "uniqueItems": true}})
}

/// Query parameters of POST, PUT and PATCH: what kubectl checks before relying on the
/// server for field validation.
fn write_params(patch: bool) -> Vec<Value> {
    let mut params = vec![
        param(
            "dryRun",
            "query",
            "When present, indicates that modifications should not be persisted. An invalid or unrecognized dryRun directive will result in an error response and no further processing of the request. Valid values are: - All: all dry run stages will be processed",
            false,
        ),
        param(
            "fieldManager",
            "query",
            "fieldManager is a name associated with the actor or entity that is making these changes. The value must be less than or 128 characters long, and only contain printable characters, as defined by https://golang.org/pkg/unicode/#IsPrint.",
            false,
        ),
        param(
            "fieldValidation",
            "query",
            "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore: This will ignore any unknown fields that are silently dropped from the object, and will ignore all but the last duplicate field that the decoder encounters. This is the default behavior prior to v1.23. - Warn: This will send a warning via the standard warning response header for each unknown field that is dropped from the object, and for each duplicate field that is encountered. The request will still succeed if there are no other errors, and will only persist the last of any duplicate fields. This is the default in v1.23+ - Strict: This will fail the request with a BadRequest error if any unknown fields would be dropped from the object, or if any duplicate fields are present. The error returned from the server will contain all unknown and duplicate fields encountered.",
            false,
        ),
    ];
    if patch {
        params.push(typed_param("force", "boolean", "Force is going to \"force\" Apply requests. It means user will re-acquire conflicting fields owned by other people. Force flag must be unset for non-apply patch requests."));
    }
    params
}

fn list_params() -> Vec<Value> {
    vec![
        typed_param(
            "allowWatchBookmarks",
            "boolean",
            "allowWatchBookmarks requests watch events with type \"BOOKMARK\". Servers that do not implement bookmarks may ignore this flag and bookmarks are sent at the server's discretion.",
        ),
        param(
            "continue",
            "query",
            "The continue option should be set when retrieving more results from the server.",
            false,
        ),
        param(
            "fieldSelector",
            "query",
            "A selector to restrict the list of returned objects by their fields. Defaults to everything.",
            false,
        ),
        param(
            "labelSelector",
            "query",
            "A selector to restrict the list of returned objects by their labels. Defaults to everything.",
            false,
        ),
        typed_param(
            "limit",
            "integer",
            "limit is a maximum number of responses to return for a list call.",
        ),
        param(
            "resourceVersion",
            "query",
            "resourceVersion sets a constraint on what resource versions a request may be served from.",
            false,
        ),
        param(
            "resourceVersionMatch",
            "query",
            "resourceVersionMatch determines how resourceVersion is applied to list calls.",
            false,
        ),
        typed_param(
            "sendInitialEvents",
            "boolean",
            "`sendInitialEvents=true` may be set together with `watch=true`.",
        ),
        typed_param(
            "timeoutSeconds",
            "integer",
            "Timeout for the list/watch call.",
        ),
        typed_param(
            "watch",
            "boolean",
            "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications.",
        ),
    ]
}

fn delete_params(collection: bool) -> Vec<Value> {
    let mut params = vec![
        param(
            "dryRun",
            "query",
            "When present, indicates that modifications should not be persisted.",
            false,
        ),
        typed_param(
            "gracePeriodSeconds",
            "integer",
            "The duration in seconds before the object should be deleted.",
        ),
        typed_param(
            "orphanDependents",
            "boolean",
            "Deprecated: please use the PropagationPolicy, this field will be deprecated in 1.7.",
        ),
        param(
            "propagationPolicy",
            "query",
            "Whether and how garbage collection will be performed.",
            false,
        ),
    ];
    if collection {
        params.extend(
            list_params()
                .into_iter()
                .filter(|p| p["name"] != "watch" && p["name"] != "allowWatchBookmarks"),
        );
    }
    params
}

fn patch_types(strategic_merge: bool) -> Vec<&'static str> {
    let mut types = vec![
        "application/apply-patch+yaml",
        "application/json-patch+json",
        "application/merge-patch+json",
    ];
    if strategic_merge {
        types.push("application/strategic-merge-patch+json");
    }
    types
}

fn body(schema: &Value) -> Value {
    json!({
        "content": {"*/*": {"schema": schema}},
        "required": true,
    })
}

fn patch_body(types: &[&str]) -> Value {
    let content: Map<String, Value> = types
        .iter()
        .map(|t| (t.to_string(), json!({"schema": schema_ref(PATCH)})))
        .collect();
    json!({"content": content, "required": true})
}

fn responses(schema: &Value, codes: &[&str]) -> Value {
    let mut out = Map::new();
    for code in codes {
        let description = match *code {
            "200" => "OK",
            "201" => "Created",
            "202" => "Accepted",
            _ => "",
        };
        out.insert(
            code.to_string(),
            json!({
                "description": description,
                "content": {
                    "application/json": {"schema": schema},
                    "application/yaml": {"schema": schema},
                },
            }),
        );
    }
    out.insert("401".into(), json!({"description": "Unauthorized"}));
    Value::Object(out)
}

/// The parts of an operation object that vary.
struct OperationSpec {
    id: String,
    action: String,
    gvk: Value,
    tag: String,
}

impl OperationSpec {
    fn build(self, parameters: Vec<Value>, request_body: Option<Value>, responses: Value) -> Value {
        let mut op = json!({
            "tags": [self.tag],
            "operationId": self.id,
            "responses": responses,
            "x-kubernetes-action": self.action,
            "x-kubernetes-group-version-kind": self.gvk,
        });
        if !parameters.is_empty() {
            op["parameters"] = Value::Array(parameters);
        }
        if let Some(body) = request_body {
            op["requestBody"] = body;
        }
        op
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openapi() -> OpenApi {
        let mut crd = crate::schema::tests::test_crd();
        crd.spec.versions[0].subresources = serde_json::from_value(json!({"status": {}})).ok();
        OpenApi::new(&[crd]).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_index_links_every_group_version_with_its_hash() {
        let api = openapi();
        let index = api.index();
        let paths: Vec<&String> = index["paths"]
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        assert_eq!(
            paths,
            vec![
                "api/v1",
                "apis/coordination.k8s.io/v1",
                "apis/events.k8s.io/v1",
                "apis/tether.dev/v1alpha1"
            ]
        );
        let url = index["paths"]["apis/tether.dev/v1alpha1"]["serverRelativeURL"]
            .as_str()
            .unwrap_or_default();
        let hash = api.hash("apis/tether.dev/v1alpha1").unwrap_or_default();
        assert_eq!(hash.len(), 128);
        assert!(
            hash.chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        );
        assert_eq!(
            url,
            format!("/openapi/v3/apis/tether.dev/v1alpha1?hash={hash}")
        );
        assert!(
            api.document("/openapi/v3/apis/tether.dev/v1alpha1")
                .is_some()
        );
    }

    #[test]
    fn crd_schemas_are_wrapped_like_the_apiextensions_builder() {
        let api = openapi();
        let doc = api
            .document("apis/tether.dev/v1alpha1")
            .unwrap_or_else(|| panic!("doc"));
        let env = &doc["components"]["schemas"]["dev.tether.v1alpha1.Environment"];
        assert_eq!(
            env["x-kubernetes-group-version-kind"],
            json!([{"group": "tether.dev", "kind": "Environment", "version": "v1alpha1"}])
        );
        assert_eq!(
            env["properties"]["metadata"]["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
        );
        assert_eq!(
            env["properties"]["apiVersion"]["description"],
            API_VERSION_DESCRIPTION
        );
        assert_eq!(
            env["properties"]["spec"]["properties"]["region"]["type"],
            "string"
        );
        let list = &doc["components"]["schemas"]["dev.tether.v1alpha1.EnvironmentList"];
        assert_eq!(
            list["x-kubernetes-group-version-kind"][0]["kind"],
            "EnvironmentList"
        );
        // Every $ref resolves inside the document.
        assert_refs_resolve(doc);
    }

    fn assert_refs_resolve(doc: &Value) {
        fn walk(v: &Value, schemas: &Value) {
            match v {
                Value::Object(map) => {
                    if let Some(Value::String(r)) = map.get("$ref") {
                        let name = r.trim_start_matches("#/components/schemas/");
                        assert!(schemas.get(name).is_some(), "unresolved $ref {r}");
                    }
                    map.values().for_each(|v| walk(v, schemas));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(v, schemas)),
                _ => {}
            }
        }
        walk(doc, &doc["components"]["schemas"]);
    }

    #[test]
    fn patch_operations_carry_the_gvk_and_field_validation() {
        let api = openapi();
        let doc = api
            .document("apis/tether.dev/v1alpha1")
            .unwrap_or_else(|| panic!("doc"));
        let item =
            &doc["paths"]["/apis/tether.dev/v1alpha1/namespaces/{namespace}/environments/{name}"];
        let patch = &item["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"],
            json!({"group": "tether.dev", "kind": "Environment", "version": "v1alpha1"})
        );
        assert_eq!(
            patch["operationId"],
            "patchTetherDevV1alpha1NamespacedEnvironment"
        );
        let names: Vec<&str> = patch["parameters"]
            .as_array()
            .map(|p| p.iter().filter_map(|p| p["name"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(
            names,
            vec!["dryRun", "fieldManager", "fieldValidation", "force"]
        );
        assert!(
            patch["parameters"]
                .as_array()
                .is_some_and(|p| p.iter().all(|p| p["in"] == "query"))
        );
        assert!(
            item["put"]["parameters"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["name"] == "fieldValidation"))
        );
        let collection =
            &doc["paths"]["/apis/tether.dev/v1alpha1/namespaces/{namespace}/environments"];
        assert!(
            collection["post"]["parameters"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["name"] == "fieldValidation"))
        );
        assert!(
            collection["get"]["parameters"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["name"] == "watch"))
        );
        assert!(doc["paths"]["/apis/tether.dev/v1alpha1/namespaces/{namespace}/environments/{name}/status"]["patch"].is_object());
        assert!(doc["paths"]["/apis/tether.dev/v1alpha1/environments"]["get"].is_object());
        let patch_types: Vec<&String> = patch["requestBody"]["content"]
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        assert!(
            !patch_types.iter().any(|t| t.contains("strategic")),
            "CRDs take no strategic merge patch"
        );
    }

    #[test]
    fn the_core_document_covers_the_built_in_kinds() {
        let api = openapi();
        let core = api.document("api/v1").unwrap_or_else(|| panic!("doc"));
        for kind in ["Namespace", "Secret", "ConfigMap", "Event"] {
            let schema = &core["components"]["schemas"][format!("io.k8s.api.core.v1.{kind}")];
            assert_eq!(
                schema["x-kubernetes-group-version-kind"][0]["kind"], kind,
                "{kind}"
            );
            assert!(schema["properties"]["metadata"].is_object(), "{kind}");
        }
        assert!(
            core["paths"]["/api/v1/namespaces/{name}"]["patch"]["parameters"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["name"] == "fieldValidation"))
        );
        assert!(
            core["paths"]["/api/v1/namespaces/{namespace}/secrets/{name}"]["patch"]["requestBody"]
                ["content"]
                .get("application/strategic-merge-patch+json")
                .is_some()
        );
        assert_refs_resolve(core);
        let lease = api
            .document("apis/coordination.k8s.io/v1")
            .unwrap_or_else(|| panic!("doc"));
        assert_eq!(
            lease["components"]["schemas"]["io.k8s.api.coordination.v1.Lease"]["x-kubernetes-group-version-kind"]
                [0]["group"],
            "coordination.k8s.io"
        );
        assert_refs_resolve(lease);
        let events = api
            .document("apis/events.k8s.io/v1")
            .unwrap_or_else(|| panic!("doc"));
        assert!(
            events["components"]["schemas"]["io.k8s.api.events.v1.Event"]["properties"]["note"]
                .is_object()
        );
        assert_refs_resolve(events);
    }
}
