//! The object registry: per-storage indexes of live objects, the global resourceVersion
//! counter, and every write path (create, update, patch, apply, delete) with the semantics the
//! real API server guarantees (optimistic concurrency, generation, status subresource,
//! managed fields, finalizers, admission). Each write is persisted through the [`Store`] and
//! published to the watch [`Hub`] under one lock, so watchers see commit order exactly.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::admission::{Admission, FieldValidation};
use super::events;
use super::managedfields::{self, ManagedEntry, Writer};
use super::meta;
use super::patch::{self, PatchType};
use super::resources::{
    CRDS_STORAGE, NAMESPACES_STORAGE, Representation, ResourceDef, ResourceTable, StorageKey,
};
use super::selector::{FieldSelector, LabelSelector};
use super::status::{ApiError, StatusCause};
use super::store::{Store, StoreError, StoreOp};
use super::watch::{EventType, Hub, WatchEvent};
use crate::schema::builtin;

/// Who writes and how (from the request's query parameters).
#[derive(Debug, Clone)]
pub struct WriteCtx {
    /// `?fieldManager=`, else derived from the User-Agent.
    pub manager: String,
    /// `?dryRun=All`.
    pub dry_run: bool,
    /// `?force=true` (server-side apply).
    pub force: bool,
    /// `?fieldValidation=`.
    pub validation: FieldValidation,
}

/// The result of a write.
#[derive(Debug)]
pub struct WriteOutcome {
    /// The object as stored (storage form).
    pub object: Arc<Value>,
    /// 201 instead of 200.
    pub created: bool,
    /// Admission warnings, sent as `Warning` headers.
    pub warnings: Vec<String>,
}

/// The body of an update-like request.
#[derive(Debug)]
pub enum Input {
    /// PUT: the full object (wire form).
    Replace(Value),
    /// PATCH with a merge, strategic or JSON patch.
    Patch(PatchType, bytes::Bytes),
    /// PATCH with `application/apply-patch+yaml`: the applied configuration.
    Apply(Value),
}

/// `DeleteOptions` that matter here.
#[derive(Debug, Default, Clone)]
pub struct DeleteOpts {
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
}

/// List parameters.
#[derive(Debug, Default)]
pub struct ListOpts {
    /// `?labelSelector=`.
    pub labels: LabelSelector,
    /// `?fieldSelector=` (in storage field names).
    pub fields: FieldSelector,
    /// `?limit=`.
    pub limit: Option<usize>,
    /// `?continue=`.
    pub continue_token: Option<String>,
    /// `?resourceVersion=`.
    pub resource_version: Option<u64>,
    /// `?resourceVersionMatch=Exact`.
    pub exact: bool,
}

/// One page of a list.
#[derive(Debug)]
pub struct ListPage {
    /// Matching objects (storage form), in key order.
    pub items: Vec<Arc<Value>>,
    /// The list's resourceVersion.
    pub resource_version: u64,
    /// Token for the next page.
    pub continue_token: Option<String>,
    /// Objects after this page (when paging).
    pub remaining: Option<usize>,
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy)]
pub enum WatchFrom {
    /// Send the current objects as ADDED first (`resourceVersion` unset or `0`, or
    /// `sendInitialEvents=true`).
    Current,
    /// Replay the changes after this resourceVersion.
    After(u64),
    /// Only changes from now on.
    Now,
}

/// An opened watch: what to send first, then the live receiver.
#[derive(Debug)]
pub struct WatchStart {
    /// Objects to send as synthetic ADDED events.
    pub initial: Vec<Arc<Value>>,
    /// Retained events to replay.
    pub replay: Vec<Arc<WatchEvent>>,
    /// The resourceVersion everything above is consistent with.
    pub resource_version: u64,
    /// Live events after `resource_version`.
    pub receiver: broadcast::Receiver<Arc<WatchEvent>>,
}

struct Bucket {
    namespaced: bool,
    objects: BTreeMap<Arc<str>, Arc<Value>>,
    hub: Hub,
}

struct Inner {
    resource_version: u64,
    buckets: HashMap<StorageKey, Bucket>,
}

/// All objects of the server.
pub struct Storage {
    inner: Mutex<Inner>,
    store: Box<dyn Store>,
    table: Arc<ResourceTable>,
    admission: Admission,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").finish_non_exhaustive()
    }
}

fn object_key(namespace: Option<&str>, name: &str) -> Arc<str> {
    match namespace {
        Some(ns) => Arc::from(format!("{ns}/{name}")),
        None => Arc::from(name),
    }
}

fn store_key(storage: &str, key: &str) -> String {
    format!("{storage}\u{0}{key}")
}

fn storage_err(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "local API store write failed");
    ApiError::internal(format!("{e}"))
}

/// The object in its wire form for `def` (Events converted, apiVersion of the request).
pub fn present(def: &ResourceDef, obj: &Value) -> Value {
    match def.representation {
        Representation::EventsV1 => events::core_to_v1(obj),
        Representation::Plain => {
            let api_version = def.api_version();
            if obj.get("apiVersion").and_then(Value::as_str) == Some(api_version.as_str()) {
                obj.clone()
            } else {
                let mut out = obj.clone();
                if let Some(map) = out.as_object_mut() {
                    map.insert("apiVersion".into(), Value::String(api_version));
                    map.insert("kind".into(), Value::String(def.kind.clone()));
                }
                out
            }
        }
    }
}

/// The `apiVersion` and `kind` of a custom resource's create or update body (POST, PUT) as
/// the real server checks them: another group/version is a 400 while decoding, another kind
/// a 422 from the custom resource's validation. (Missing ones take the URL's.)
fn check_body_type(def: &ResourceDef, body: &Value) -> Result<(), ApiError> {
    if !def.custom {
        return Ok(());
    }
    let expected = def.api_version();
    if let Some(api_version) = body.get("apiVersion").and_then(Value::as_str)
        && !api_version.is_empty()
        && api_version != expected
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API \
             version ({expected})"
        )));
    }
    if let Some(kind) = body.get("kind").and_then(Value::as_str)
        && !kind.is_empty()
        && kind != def.kind
    {
        let name = meta::meta_str(body, "name").unwrap_or_default();
        return Err(ApiError::invalid(
            kind,
            &def.group,
            name,
            &[StatusCause {
                reason: "FieldValueInvalid".into(),
                field: "kind".into(),
                message: format!("Invalid value: {kind:?}: must be {}", def.kind),
            }],
        ));
    }
    Ok(())
}

/// The `apiVersion` and `kind` of a server-side apply body: both must be the endpoint's
/// (400 `invalid object type: <group>/<version>, Kind=<kind>` otherwise, from the real
/// server's field manager).
fn check_apply_type(def: &ResourceDef, config: &Value) -> Result<(), ApiError> {
    let field = |name: &str| config.get(name).and_then(Value::as_str).unwrap_or_default();
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    if api_version == def.api_version() && kind == def.kind {
        return Ok(());
    }
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    Err(ApiError::bad_request(format!(
        "invalid object type: {group}/{version}, Kind={kind}"
    )))
}

/// A request body in storage form (Events converted, apiVersion and kind set).
fn accept(def: &ResourceDef, mut obj: Value) -> Result<Value, ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    if let Some(kind) = obj.get("kind").and_then(Value::as_str)
        && !kind.is_empty()
        && kind != def.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind of the object ({kind}) does not match the resource ({})",
            def.kind
        )));
    }
    if def.representation == Representation::EventsV1 {
        return Ok(events::v1_to_core(&obj));
    }
    if let Some(map) = obj.as_object_mut() {
        map.insert("apiVersion".into(), Value::String(def.api_version()));
        map.insert("kind".into(), Value::String(def.kind.clone()));
    }
    Ok(obj)
}

impl Storage {
    /// Loads the store's objects into memory and seeds the CRDs and the `default` namespace.
    pub fn open(
        store: Box<dyn Store>,
        table: Arc<ResourceTable>,
        admission: Admission,
        crds: &[Value],
        history_limit: usize,
    ) -> Result<Self, StoreError> {
        let loaded = store.load()?;
        let floor = loaded.resource_version;
        let mut buckets = HashMap::new();
        for (key, namespaced) in table.storages() {
            buckets.insert(
                key,
                Bucket {
                    namespaced,
                    objects: BTreeMap::new(),
                    hub: Hub::new(history_limit, floor),
                },
            );
        }
        for (full_key, obj) in loaded.objects {
            let Some((storage, key)) = full_key.split_once('\u{0}') else {
                continue;
            };
            match buckets.get_mut(storage) {
                Some(bucket) => {
                    bucket.objects.insert(Arc::from(key), Arc::new(obj));
                }
                None => tracing::warn!(
                    storage,
                    key,
                    "ignoring a stored object of a resource that is no longer served"
                ),
            }
        }
        if let Some(bucket) = buckets.get_mut(CRDS_STORAGE) {
            for crd in crds {
                let mut crd = crd.clone();
                let name = meta::meta_str(&crd, "name").unwrap_or_default().to_owned();
                let m = meta::meta_mut(&mut crd);
                m.insert("resourceVersion".into(), json!(floor.to_string()));
                m.entry("uid").or_insert_with(|| json!(meta::new_uid()));
                m.entry("creationTimestamp")
                    .or_insert_with(|| json!(meta::now()));
                bucket.objects.insert(Arc::from(name), Arc::new(crd));
            }
        }
        let storage = Storage {
            inner: Mutex::new(Inner {
                resource_version: floor,
                buckets,
            }),
            store,
            table,
            admission,
        };
        storage.ensure_default_namespace()?;
        Ok(storage)
    }

    fn ensure_default_namespace(&self) -> Result<(), StoreError> {
        let Some(def) = self.table.get("", "v1", "namespaces") else {
            return Ok(());
        };
        let mut inner = self.lock();
        let exists = inner
            .buckets
            .get(NAMESPACES_STORAGE)
            .is_some_and(|b| b.objects.contains_key("default"));
        if exists {
            return Ok(());
        }
        let mut ns = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "default", "uid": meta::new_uid(),
                "creationTimestamp": meta::now(),
                "labels": {"kubernetes.io/metadata.name": "default"}},
            "spec": {}, "status": {"phase": "Active"}});
        let mut entries = Vec::new();
        managedfields::track_update(
            &mut entries,
            None,
            &ns,
            None,
            &Writer {
                manager: "tether-localapi",
                subresource: None,
                api_version: "v1",
                time: &meta::now(),
            },
        );
        meta::meta_mut(&mut ns).insert(
            "managedFields".into(),
            managedfields::render_entries(&entries),
        );
        match self.commit(
            &mut inner,
            &def,
            Arc::from("default"),
            None,
            Change::Put(ns),
        ) {
            Ok(_) => Ok(()),
            Err(CommitError::Store(e)) => Err(e),
            Err(CommitError::Api(e)) => Err(StoreError::Decode {
                key: "default".into(),
                source: serde_json::Error::io(std::io::Error::other(e.message)),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every mutation is applied
        // after its last fallible step), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether writes hit the disk (the server then runs them on blocking threads).
    pub fn is_durable(&self) -> bool {
        self.store.is_durable()
    }

    /// Admission (and through it the compiled CRD schemas).
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// The resource table.
    pub fn table(&self) -> &Arc<ResourceTable> {
        &self.table
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().resource_version
    }

    /// Reads one object.
    pub fn get(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Arc<Value>, ApiError> {
        let inner = self.lock();
        inner
            .buckets
            .get(&def.storage)
            .and_then(|b| b.objects.get(&*object_key(namespace, name)))
            .cloned()
            .ok_or_else(|| not_found(def, name))
    }

    /// Lists objects, optionally at a past resourceVersion and paged.
    pub fn list(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        opts: &ListOpts,
    ) -> Result<ListPage, ApiError> {
        let (mut at, mut start): (Option<u64>, Option<String>) = (None, None);
        if let Some(token) = &opts.continue_token {
            let (rv, key) = decode_continue(token)?;
            at = Some(rv);
            start = Some(key);
        } else if opts.exact {
            at = opts.resource_version;
        }
        let inner = self.lock();
        let current = inner.resource_version;
        let bucket = inner
            .buckets
            .get(&def.storage)
            .ok_or_else(|| ApiError::internal("resource without storage"))?;
        let list_rv = at.unwrap_or(current);
        let past;
        let objects: &BTreeMap<Arc<str>, Arc<Value>> = match at {
            Some(rv) if rv < current => {
                if rv < bucket.hub.floor() {
                    return Err(ApiError::expired(rv, bucket.hub.floor()));
                }
                past = rollback(bucket, rv);
                &past
            }
            _ => &bucket.objects,
        };
        // `metadata.name=<n>` in one namespace (kubectl wait/delete --wait): one lookup.
        if let (Some(name), Some(ns), None, None) = (
            opts.fields.required_value("metadata.name"),
            namespace,
            at,
            &start,
        ) {
            let items: Vec<Arc<Value>> = objects
                .get(&*object_key(Some(ns), name))
                .filter(|o| opts.labels.matches_object(o) && opts.fields.matches_object(o))
                .cloned()
                .into_iter()
                .collect();
            return Ok(ListPage {
                items,
                resource_version: list_rv,
                continue_token: None,
                remaining: None,
            });
        }
        let prefix = namespace.map(|ns| format!("{ns}/"));
        let lower = match (&start, &prefix) {
            (Some(s), _) => Bound::Excluded(s.clone()),
            (None, Some(p)) => Bound::Included(p.clone()),
            (None, None) => Bound::Unbounded,
        };
        let limit = opts.limit.filter(|l| *l > 0);
        let mut items = Vec::new();
        let mut last_key: Option<Arc<str>> = None;
        let mut remaining = 0usize;
        let range = objects.range::<str, _>((lower.as_ref().map(String::as_str), Bound::Unbounded));
        for (key, obj) in range {
            if let Some(p) = &prefix
                && !key.starts_with(p.as_str())
            {
                break;
            }
            if !opts.labels.matches_object(obj) || !opts.fields.matches_object(obj) {
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                remaining += 1;
                continue;
            }
            items.push(obj.clone());
            last_key = Some(key.clone());
        }
        let continue_token = if remaining > 0 {
            last_key.map(|k| encode_continue(list_rv, &k))
        } else {
            None
        };
        Ok(ListPage {
            items,
            resource_version: list_rv,
            remaining: continue_token.as_ref().map(|_| remaining),
            continue_token,
        })
    }

    /// Opens a watch: the initial state or replay, then live events.
    pub fn watch(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        from: WatchFrom,
    ) -> Result<WatchStart, ApiError> {
        let inner = self.lock();
        let current = inner.resource_version;
        let bucket = inner
            .buckets
            .get(&def.storage)
            .ok_or_else(|| ApiError::internal("resource without storage"))?;
        let receiver = bucket.hub.subscribe();
        let mut start = WatchStart {
            initial: Vec::new(),
            replay: Vec::new(),
            resource_version: current,
            receiver,
        };
        match from {
            WatchFrom::Current => {
                let prefix = namespace.map(|ns| format!("{ns}/"));
                start.initial = bucket
                    .objects
                    .iter()
                    .filter(|(k, _)| prefix.as_ref().is_none_or(|p| k.starts_with(p.as_str())))
                    .map(|(_, v)| v.clone())
                    .collect();
            }
            WatchFrom::After(rv) => {
                if rv > current {
                    return Err(ApiError::expired(rv, bucket.hub.floor()));
                }
                start.replay = bucket
                    .hub
                    .since(rv)
                    .ok_or_else(|| ApiError::expired(rv, bucket.hub.floor()))?;
            }
            WatchFrom::Now => {}
        }
        Ok(start)
    }

    /// POST: creates an object.
    pub fn create(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        body: Value,
        ctx: &WriteCtx,
    ) -> Result<WriteOutcome, ApiError> {
        check_body_type(def, &body)?;
        let mut obj = accept(def, body)?;
        if def.namespaced {
            let ns = namespace.ok_or_else(|| {
                ApiError::bad_request("a namespaced resource must be created in a namespace")
            })?;
            match meta::meta_str(&obj, "namespace") {
                Some(body_ns) if !body_ns.is_empty() && body_ns != ns => {
                    return Err(ApiError::bad_request(format!(
                        "the namespace of the provided object ({body_ns}) does not match the \
                         namespace sent on the request ({ns})"
                    )));
                }
                _ => {
                    meta::meta_mut(&mut obj).insert("namespace".into(), json!(ns));
                }
            }
        } else {
            meta::meta_mut(&mut obj).remove("namespace");
        }
        let mut inner = self.lock();
        self.finish_create(&mut inner, def, namespace, obj, None, ctx)
    }

    fn finish_create(
        &self,
        inner: &mut Inner,
        def: &ResourceDef,
        namespace: Option<&str>,
        mut obj: Value,
        entries: Option<Vec<ManagedEntry>>,
        ctx: &WriteCtx,
    ) -> Result<WriteOutcome, ApiError> {
        if def.read_only {
            return Err(read_only(def));
        }
        check_decodes(def, &obj)?;
        let mut name = meta::meta_str(&obj, "name").unwrap_or_default().to_owned();
        if name.is_empty() {
            let prefix = meta::meta_str(&obj, "generateName")
                .unwrap_or_default()
                .to_owned();
            if prefix.is_empty() {
                return Err(ApiError::invalid(
                    &def.kind,
                    &def.group,
                    "",
                    &[StatusCause {
                        reason: "FieldValueRequired".into(),
                        field: "metadata.name".into(),
                        message: "Required value: name or generateName is required".into(),
                    }],
                ));
            }
            let bucket = bucket(inner, def)?;
            name = meta::generate_name(&prefix);
            while bucket.objects.contains_key(&*object_key(namespace, &name)) {
                name = meta::generate_name(&prefix);
            }
        }
        meta::validate_name(&name)
            .map_err(|cause| ApiError::invalid(&def.kind, &def.group, &name, &[cause]))?;
        if let Some(ns) = namespace.filter(|_| def.namespaced) {
            let ns_exists = inner
                .buckets
                .get(NAMESPACES_STORAGE)
                .is_some_and(|b| b.objects.contains_key(ns));
            if !ns_exists {
                return Err(ApiError::not_found("namespaces", ns, "", "namespaces"));
            }
        }
        let key = object_key(namespace.filter(|_| def.namespaced), &name);
        if bucket(inner, def)?.objects.contains_key(&key) {
            return Err(ApiError::already_exists(
                &def.qualified(),
                &name,
                &def.group,
                &def.plural,
            ));
        }
        {
            let m = meta::meta_mut(&mut obj);
            m.insert("name".into(), json!(name));
            m.insert("uid".into(), json!(meta::new_uid()));
            m.insert("creationTimestamp".into(), json!(meta::now()));
            for field in [
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "managedFields",
                "selfLink",
            ] {
                m.remove(field);
            }
            if def.custom {
                m.insert("generation".into(), json!(1));
            } else {
                m.remove("generation");
            }
        }
        if def.status_subresource
            && def.custom
            && let Some(map) = obj.as_object_mut()
        {
            map.remove("status");
        }
        prepare_builtin(def, &mut obj);
        let warnings = self.admit(def, None, &mut obj, ctx)?;
        let time = meta::now();
        let writer = Writer {
            manager: &ctx.manager,
            subresource: None,
            api_version: &def.api_version(),
            time: &time,
        };
        let entries = match entries {
            Some(e) => e,
            None => {
                let mut e = Vec::new();
                managedfields::track_update(&mut e, None, &obj, schema(def), &writer);
                e
            }
        };
        set_managed_fields(&mut obj, &entries);
        if ctx.dry_run {
            return Ok(WriteOutcome {
                object: Arc::new(obj),
                created: true,
                warnings,
            });
        }
        let object = self
            .commit(inner, def, key, None, Change::Put(obj))
            .map_err(CommitError::into_api)?;
        Ok(WriteOutcome {
            object,
            created: true,
            warnings,
        })
    }

    /// PUT or PATCH (including server-side apply) of an object or its status.
    pub fn modify(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        status: bool,
        input: Input,
        ctx: &WriteCtx,
    ) -> Result<WriteOutcome, ApiError> {
        if def.read_only {
            return Err(read_only(def));
        }
        if status && !def.status_subresource {
            return Err(ApiError::path_not_found(&format!(
                "{}/{name}/status",
                def.plural
            )));
        }
        let namespace = namespace.filter(|_| def.namespaced);
        let key = object_key(namespace, name);
        let mut inner = self.lock();
        let old = bucket(&inner, def)?.objects.get(&key).cloned();
        let api_version = def.api_version();
        let time = meta::now();
        let subresource = status.then_some("status");
        let writer = Writer {
            manager: &ctx.manager,
            subresource,
            api_version: &api_version,
            time: &time,
        };
        let Some(old) = old else {
            // Only server-side apply creates a missing object.
            let Input::Apply(config) = input else {
                return Err(not_found(def, name));
            };
            if status {
                return Err(not_found(def, name));
            }
            check_apply_type(def, &config)?;
            let mut config = accept(def, config)?;
            check_identity(def, &config, namespace, name)?;
            identify(&mut config, namespace, name);
            strip_for_apply(def, &mut config, false);
            let mut entries = Vec::new();
            let merged = managedfields::server_side_apply(
                None,
                &config,
                &mut entries,
                schema(def),
                &writer,
                ctx.force,
            )
            .map_err(|c| conflicts(def, name, c))?;
            return self.finish_create(&mut inner, def, namespace, merged, Some(entries), ctx);
        };

        let mut entries = managedfields::parse_entries(&old);
        let mut applied = false;
        let mut new = match input {
            Input::Replace(body) => {
                check_body_type(def, &body)?;
                let body = accept(def, body)?;
                check_identity(def, &body, namespace, name)?;
                body
            }
            Input::Patch(patch_type, bytes) => {
                let mut wire = present(def, &old);
                patch::apply_patch(&mut wire, patch_type, &bytes)?;
                let patched = accept(def, wire)?;
                check_identity(def, &patched, namespace, name)?;
                patched
            }
            Input::Apply(config) => {
                check_apply_type(def, &config)?;
                let mut config = accept(def, config)?;
                check_identity(def, &config, namespace, name)?;
                check_rv(def, &old, &config, name)?;
                identify(&mut config, namespace, name);
                strip_for_apply(def, &mut config, status);
                applied = true;
                managedfields::server_side_apply(
                    Some(&old),
                    &config,
                    &mut entries,
                    schema(def),
                    &writer,
                    ctx.force,
                )
                .map_err(|c| conflicts(def, name, c))?
            }
        };
        check_decodes(def, &new)?;
        check_rv(def, &old, &new, name)?;

        if def.status_subresource {
            if status {
                let status_value = new.get("status").cloned();
                new = (*old).clone();
                if let Some(map) = new.as_object_mut() {
                    match status_value {
                        Some(s) => map.insert("status".into(), s),
                        None => map.remove("status"),
                    };
                }
            } else if let Some(map) = new.as_object_mut() {
                match old.get("status") {
                    Some(s) => map.insert("status".into(), s.clone()),
                    None => map.remove("status"),
                };
            }
        }
        copy_system_metadata(&old, &mut new);
        if let Some(map) = new.as_object_mut() {
            let (api_version, kind) = match def.representation {
                Representation::EventsV1 => ("v1".to_owned(), "Event".to_owned()),
                Representation::Plain => (def.api_version(), def.kind.clone()),
            };
            map.insert("apiVersion".into(), json!(api_version));
            map.insert("kind".into(), json!(kind));
        }
        if meta::meta_str(&old, "deletionTimestamp").is_some() {
            let added = meta::added_finalizers(&old, &new);
            if !added.is_empty() {
                return Err(ApiError::invalid(
                    &def.kind,
                    &def.group,
                    name,
                    &[meta::finalizers_forbidden(&added)],
                ));
            }
        }
        prepare_builtin(def, &mut new);
        let warnings = self.admit(def, Some(&old), &mut new, ctx)?;
        if def.custom && meta::spec_changed(&old, &new, def.status_subresource) {
            let generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta::meta_mut(&mut new).insert("generation".into(), json!(generation + 1));
        }
        if !applied {
            managedfields::track_update(&mut entries, Some(&old), &new, schema(def), &writer);
        }
        keep_unchanged_times(&old, &mut entries);
        set_managed_fields(&mut new, &entries);
        meta::meta_mut(&mut new).insert(
            "resourceVersion".into(),
            old.pointer("/metadata/resourceVersion")
                .cloned()
                .unwrap_or(Value::Null),
        );
        if new == *old {
            return Ok(WriteOutcome {
                object: old,
                created: false,
                warnings,
            });
        }
        let finished = meta::meta_str(&new, "deletionTimestamp").is_some()
            && meta::finalizers(&new).is_empty();
        if ctx.dry_run {
            return Ok(WriteOutcome {
                object: Arc::new(new),
                created: false,
                warnings,
            });
        }
        let change = if finished {
            Change::Remove(Some(new))
        } else {
            Change::Put(new)
        };
        let object = self
            .commit(&mut inner, def, key, Some(old), change)
            .map_err(CommitError::into_api)?;
        Ok(WriteOutcome {
            object,
            created: false,
            warnings,
        })
    }

    /// DELETE of one object: immediate without finalizers, else marks it deleting.
    pub fn delete(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        opts: &DeleteOpts,
        ctx: &WriteCtx,
    ) -> Result<WriteOutcome, ApiError> {
        if def.read_only {
            return Err(read_only(def));
        }
        let namespace = namespace.filter(|_| def.namespaced);
        let key = object_key(namespace, name);
        let mut inner = self.lock();
        self.delete_locked(&mut inner, def, key, name, opts, ctx)
    }

    fn delete_locked(
        &self,
        inner: &mut Inner,
        def: &ResourceDef,
        key: Arc<str>,
        name: &str,
        opts: &DeleteOpts,
        ctx: &WriteCtx,
    ) -> Result<WriteOutcome, ApiError> {
        let old = bucket(inner, def)?
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| not_found(def, name))?;
        if let Some(uid) = &opts.uid {
            let actual = meta::meta_str(&old, "uid").unwrap_or_default();
            if uid != actual {
                return Err(ApiError::conflict_message(
                    &def.qualified(),
                    name,
                    &def.group,
                    &def.plural,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: \
                         {actual}"
                    ),
                ));
            }
        }
        if let Some(rv) = &opts.resource_version {
            let actual = meta::meta_str(&old, "resourceVersion").unwrap_or_default();
            if rv != actual {
                return Err(ApiError::conflict_message(
                    &def.qualified(),
                    name,
                    &def.group,
                    &def.plural,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, \
                         ResourceVersion in object meta: {actual}"
                    ),
                ));
            }
        }
        if def.storage.as_ref() == NAMESPACES_STORAGE {
            return self.delete_namespace(inner, def, key, old, ctx);
        }
        if !meta::finalizers(&old).is_empty() {
            if meta::meta_str(&old, "deletionTimestamp").is_some() {
                return Ok(WriteOutcome {
                    object: old,
                    created: false,
                    warnings: Vec::new(),
                });
            }
            let mut new = (*old).clone();
            mark_deleting(&mut new);
            if ctx.dry_run {
                return Ok(WriteOutcome {
                    object: Arc::new(new),
                    created: false,
                    warnings: Vec::new(),
                });
            }
            let object = self
                .commit(inner, def, key, Some(old), Change::Put(new))
                .map_err(CommitError::into_api)?;
            return Ok(WriteOutcome {
                object,
                created: false,
                warnings: Vec::new(),
            });
        }
        if ctx.dry_run {
            return Ok(WriteOutcome {
                object: old,
                created: false,
                warnings: Vec::new(),
            });
        }
        let object = self
            .commit(inner, def, key, Some(old), Change::Remove(None))
            .map_err(CommitError::into_api)?;
        Ok(WriteOutcome {
            object,
            created: false,
            warnings: Vec::new(),
        })
    }

    /// Deleting a namespace deletes its contents (finalizers respected); the namespace goes
    /// once it is empty, until then it is `Terminating`.
    fn delete_namespace(
        &self,
        inner: &mut Inner,
        def: &ResourceDef,
        key: Arc<str>,
        old: Arc<Value>,
        ctx: &WriteCtx,
    ) -> Result<WriteOutcome, ApiError> {
        let ns = key.to_string();
        if ctx.dry_run {
            return Ok(WriteOutcome {
                object: old,
                created: false,
                warnings: Vec::new(),
            });
        }
        let table = self.table.clone();
        for content in table.all() {
            if !content.namespaced || content.representation != Representation::Plain {
                continue;
            }
            let prefix = format!("{ns}/");
            let keys: Vec<Arc<str>> = bucket(inner, content)?
                .objects
                .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(k, _)| k.clone())
                .collect();
            for k in keys {
                let name = k
                    .split_once('/')
                    .map(|(_, n)| n.to_owned())
                    .unwrap_or_default();
                self.delete_locked(inner, content, k, &name, &DeleteOpts::default(), ctx)?;
            }
        }
        if namespace_is_empty(inner, &self.table, &ns) {
            let object = self
                .commit(inner, def, key, Some(old), Change::Remove(None))
                .map_err(CommitError::into_api)?;
            return Ok(WriteOutcome {
                object,
                created: false,
                warnings: Vec::new(),
            });
        }
        let mut new = (*old).clone();
        mark_deleting(&mut new);
        new["status"] = json!({"phase": "Terminating"});
        let object = self
            .commit(inner, def, key, Some(old), Change::Put(new))
            .map_err(CommitError::into_api)?;
        Ok(WriteOutcome {
            object,
            created: false,
            warnings: Vec::new(),
        })
    }

    /// DELETE of a collection: deletes every matching object; returns what was deleted.
    pub fn delete_collection(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        opts: &ListOpts,
        ctx: &WriteCtx,
    ) -> Result<Vec<Arc<Value>>, ApiError> {
        let page = self.list(
            def,
            namespace,
            &ListOpts {
                labels: opts.labels.clone(),
                fields: opts.fields.clone(),
                ..ListOpts::default()
            },
        )?;
        let mut deleted = Vec::new();
        for obj in page.items {
            let name = meta::meta_str(&obj, "name").unwrap_or_default().to_owned();
            let ns = meta::meta_str(&obj, "namespace").map(str::to_owned);
            match self.delete(def, ns.as_deref(), &name, &DeleteOpts::default(), ctx) {
                Ok(outcome) => deleted.push(outcome.object),
                // Deleted concurrently: nothing left to do for it.
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }

    fn admit(
        &self,
        def: &ResourceDef,
        old: Option<&Value>,
        obj: &mut Value,
        ctx: &WriteCtx,
    ) -> Result<Vec<String>, ApiError> {
        if !def.custom {
            return check_builtin(def, old, obj).map(|()| Vec::new());
        }
        self.admission
            .admit_custom_resource(def, old, obj, ctx.validation)
    }

    /// Persists and publishes one change; returns the stored object.
    fn commit(
        &self,
        inner: &mut Inner,
        def: &ResourceDef,
        key: Arc<str>,
        old: Option<Arc<Value>>,
        change: Change,
    ) -> Result<Arc<Value>, CommitError> {
        let rv = inner.resource_version + 1;
        let full_key = store_key(&def.storage, &key);
        let (event_type, object) = match change {
            Change::Put(mut obj) => {
                meta::meta_mut(&mut obj).insert("resourceVersion".into(), json!(rv.to_string()));
                let json = serde_json::to_vec(&obj)
                    .map_err(|e| CommitError::Api(ApiError::internal(e.to_string())))?;
                self.store
                    .commit(
                        &[StoreOp::Put {
                            key: &full_key,
                            json: &json,
                        }],
                        rv,
                    )
                    .map_err(CommitError::Store)?;
                let event_type = if old.is_some() {
                    EventType::Modified
                } else {
                    EventType::Added
                };
                (event_type, Arc::new(obj))
            }
            Change::Remove(last) => {
                let Some(old) = &old else {
                    return Err(CommitError::Api(ApiError::internal("nothing to delete")));
                };
                self.store
                    .commit(&[StoreOp::Delete { key: &full_key }], rv)
                    .map_err(CommitError::Store)?;
                let mut last = last.unwrap_or_else(|| (**old).clone());
                meta::meta_mut(&mut last).insert("resourceVersion".into(), json!(rv.to_string()));
                (EventType::Deleted, Arc::new(last))
            }
        };
        inner.resource_version = rv;
        let bucket = inner
            .buckets
            .get_mut(&def.storage)
            .ok_or_else(|| CommitError::Api(ApiError::internal("resource without storage")))?;
        match event_type {
            EventType::Deleted => {
                bucket.objects.remove(&key);
            }
            _ => {
                bucket.objects.insert(key.clone(), object.clone());
            }
        }
        bucket.hub.publish(Arc::new(WatchEvent::new(
            rv,
            event_type,
            key.clone(),
            object.clone(),
            old,
        )));
        if event_type == EventType::Deleted && bucket.namespaced {
            self.finish_terminating_namespace(inner, &key)?;
        }
        Ok(object)
    }

    /// Removes a `Terminating` namespace once its last object is gone.
    fn finish_terminating_namespace(
        &self,
        inner: &mut Inner,
        key: &str,
    ) -> Result<(), CommitError> {
        let Some((ns, _)) = key.split_once('/') else {
            return Ok(());
        };
        let Some(ns_obj) = inner
            .buckets
            .get(NAMESPACES_STORAGE)
            .and_then(|b| b.objects.get(ns))
            .cloned()
        else {
            return Ok(());
        };
        if meta::meta_str(&ns_obj, "deletionTimestamp").is_none()
            || !namespace_is_empty(inner, &self.table, ns)
        {
            return Ok(());
        }
        let Some(def) = self.table.get("", "v1", "namespaces") else {
            return Ok(());
        };
        self.commit(
            inner,
            &def,
            Arc::from(ns),
            Some(ns_obj),
            Change::Remove(None),
        )
        .map(|_| ())
    }
}

/// What a commit does to one object.
enum Change {
    /// Create or replace it with this content.
    Put(Value),
    /// Remove it; its last state is this content (None: as stored).
    Remove(Option<Value>),
}

enum CommitError {
    Store(StoreError),
    Api(ApiError),
}

impl CommitError {
    fn into_api(self) -> ApiError {
        match self {
            CommitError::Store(e) => storage_err(e),
            CommitError::Api(e) => e,
        }
    }
}

fn namespace_is_empty(inner: &Inner, table: &ResourceTable, ns: &str) -> bool {
    let prefix = format!("{ns}/");
    table.storages().iter().all(|(storage, namespaced)| {
        !namespaced
            || inner.buckets.get(storage).is_none_or(|b| {
                b.objects
                    .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
                    .next()
                    .is_none_or(|(k, _)| !k.starts_with(&prefix))
            })
    })
}

fn bucket<'a>(inner: &'a Inner, def: &ResourceDef) -> Result<&'a Bucket, ApiError> {
    inner
        .buckets
        .get(&def.storage)
        .ok_or_else(|| ApiError::internal("resource without storage"))
}

fn schema(def: &ResourceDef) -> Option<&Value> {
    def.schema.as_deref()
}

fn not_found(def: &ResourceDef, name: &str) -> ApiError {
    ApiError::not_found(&def.qualified(), name, &def.group, &def.plural)
}

fn read_only(def: &ResourceDef) -> ApiError {
    ApiError::method_not_allowed(format!(
        "{} are read-only on this server: they come from the configuration",
        def.qualified()
    ))
}

fn conflicts(def: &ResourceDef, name: &str, c: Vec<managedfields::Conflict>) -> ApiError {
    let list: Vec<(String, String, String)> = c
        .into_iter()
        .map(|c| (c.manager, c.api_version, c.field))
        .collect();
    ApiError::apply_conflict(name, &def.group, &def.plural, &list)
}

/// A body's name and namespace must match the URL's.
fn check_identity(
    def: &ResourceDef,
    body: &Value,
    namespace: Option<&str>,
    name: &str,
) -> Result<(), ApiError> {
    if let Some(body_name) = meta::meta_str(body, "name")
        && !body_name.is_empty()
        && body_name != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    if let (Some(ns), Some(body_ns)) = (namespace, meta::meta_str(body, "namespace"))
        && !body_ns.is_empty()
        && body_ns != ns
        && def.namespaced
    {
        return Err(ApiError::bad_request(format!(
            "the namespace of the provided object ({body_ns}) does not match the namespace \
             sent on the request ({ns})"
        )));
    }
    Ok(())
}

fn identify(obj: &mut Value, namespace: Option<&str>, name: &str) {
    let m = meta::meta_mut(obj);
    m.insert("name".into(), json!(name));
    match namespace {
        Some(ns) => m.insert("namespace".into(), json!(ns)),
        None => m.remove("namespace"),
    };
}

/// Optimistic concurrency: a resourceVersion in the request must be the live one.
fn check_rv(def: &ResourceDef, old: &Value, new: &Value, name: &str) -> Result<(), ApiError> {
    match meta::meta_str(new, "resourceVersion") {
        Some(rv) if !rv.is_empty() && Some(rv) != meta::meta_str(old, "resourceVersion") => Err(
            ApiError::conflict(&def.qualified(), name, &def.group, &def.plural),
        ),
        _ => Ok(()),
    }
}

/// What an apply through one endpoint may touch: the main endpoint ignores `status` (when it
/// is a subresource), the status endpoint everything but `status`.
fn strip_for_apply(def: &ResourceDef, config: &mut Value, status: bool) {
    let Some(map) = config.as_object_mut() else {
        return;
    };
    if status {
        map.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status"));
        if let Some(Value::Object(m)) = map.get_mut("metadata") {
            m.retain(|k, _| matches!(k.as_str(), "name" | "namespace"));
        }
    } else if def.status_subresource {
        map.remove("status");
    }
    if let Some(Value::Object(m)) = map.get_mut("metadata") {
        m.remove("managedFields");
        m.remove("resourceVersion");
    }
}

fn copy_system_metadata(old: &Value, new: &mut Value) {
    let old_meta = old.get("metadata").and_then(Value::as_object);
    let m = meta::meta_mut(new);
    for field in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "generateName",
    ] {
        match old_meta.and_then(|o| o.get(field)) {
            Some(v) => m.insert(field.into(), v.clone()),
            None => m.remove(field),
        };
    }
    m.remove("managedFields");
    m.remove("selfLink");
}

fn mark_deleting(obj: &mut Value) {
    let m = meta::meta_mut(obj);
    m.insert("deletionTimestamp".into(), json!(meta::now()));
    m.insert("deletionGracePeriodSeconds".into(), json!(0));
    if let Some(generation) = m.get("generation").and_then(Value::as_i64) {
        m.insert("generation".into(), json!(generation + 1));
    }
}

/// Whether a core (`v1`) object's body decodes as kube-apiserver's Go types would decode it
/// (Secrets, ConfigMaps): 400 otherwise, as the real server answers a decoding failure.
fn check_decodes(def: &ResourceDef, obj: &Value) -> Result<(), ApiError> {
    if def.custom || !def.group.is_empty() {
        return Ok(());
    }
    match builtin::decode_error(&def.kind, obj) {
        Some(message) => Err(ApiError::bad_request(message)),
        None => Ok(()),
    }
}

/// The validation of core (`v1`) Secrets and ConfigMaps beyond `metadata` (as an update of
/// `old` when given): 422 with the real server's causes.
fn check_builtin(def: &ResourceDef, old: Option<&Value>, obj: &Value) -> Result<(), ApiError> {
    if !def.group.is_empty() {
        return Ok(());
    }
    let causes: Vec<StatusCause> = builtin::validate(&def.kind, obj, old)
        .into_iter()
        .map(|c| StatusCause {
            reason: c.reason,
            message: c.message,
            field: c.field,
        })
        .collect();
    if causes.is_empty() {
        return Ok(());
    }
    let name = meta::meta_str(obj, "name").unwrap_or_default();
    Err(ApiError::invalid(&def.kind, &def.group, name, &causes))
}

fn prepare_builtin(def: &ResourceDef, obj: &mut Value) {
    match (def.group.as_str(), def.plural.as_str()) {
        ("", "secrets") => {
            meta::fold_string_data(obj);
            // `SetDefaults_Secret`: no type (or an empty one) is Opaque.
            if obj.get("type").is_none_or(|t| t.is_null() || t == "") {
                obj["type"] = json!("Opaque");
            }
        }
        ("", "namespaces") if obj.get("status").and_then(|s| s.get("phase")).is_none() => {
            obj["status"] = json!({"phase": "Active"});
        }
        _ => {}
    }
}

fn set_managed_fields(obj: &mut Value, entries: &[ManagedEntry]) {
    let rendered = managedfields::render_entries(entries);
    let m = meta::meta_mut(obj);
    if rendered.as_array().is_some_and(Vec::is_empty) {
        m.remove("managedFields");
    } else {
        m.insert("managedFields".into(), rendered);
    }
}

/// A manager whose fields did not change keeps its old timestamp, so that a write that
/// changes nothing is recognized as a no-op (no new resourceVersion, no watch event).
fn keep_unchanged_times(old: &Value, entries: &mut [ManagedEntry]) {
    let before = managedfields::parse_entries(old);
    for entry in entries.iter_mut() {
        if let Some(prev) = before.iter().find(|p| {
            p.manager == entry.manager
                && p.operation == entry.operation
                && p.subresource == entry.subresource
                && p.api_version == entry.api_version
                && p.fields == entry.fields
        }) {
            entry.time.clone_from(&prev.time);
        }
    }
}

/// The bucket's objects as they were at `rv` (undoing the retained newer events).
fn rollback(bucket: &Bucket, rv: u64) -> BTreeMap<Arc<str>, Arc<Value>> {
    let mut objects = bucket.objects.clone();
    for event in bucket.hub.newer_than_rev(rv) {
        match &event.old {
            Some(old) => {
                objects.insert(event.key.clone(), old.clone());
            }
            None => {
                objects.remove(&event.key);
            }
        }
    }
    objects
}

fn encode_continue(rv: u64, key: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"rv": rv, "start": key}).to_string())
}

fn decode_continue(token: &str) -> Result<(u64, String), ApiError> {
    use base64::Engine as _;
    let invalid = || ApiError::bad_request(format!("invalid continue token {token:?}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| invalid())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    let rv = v.get("rv").and_then(Value::as_u64).ok_or_else(invalid)?;
    let start = v
        .get("start")
        .and_then(Value::as_str)
        .ok_or_else(invalid)?
        .to_owned();
    Ok((rv, start))
}

/// The `metadata` of a list response.
pub fn list_metadata(rv: u64, continue_token: Option<&str>, remaining: Option<usize>) -> Value {
    let mut m = Map::new();
    m.insert("resourceVersion".into(), json!(rv.to_string()));
    if let Some(c) = continue_token {
        m.insert("continue".into(), json!(c));
    }
    if let Some(r) = remaining {
        m.insert("remainingItemCount".into(), json!(r));
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_garbage_is_a_bad_request() {
        let token = encode_continue(42, "default/web");
        assert_eq!(
            decode_continue(&token).unwrap(),
            (42, "default/web".to_owned())
        );
        assert_eq!(decode_continue("not a token").unwrap_err().code, 400);
    }
}
