//! Field ownership for server-side apply: field sets in the `FieldsV1` format, the
//! `metadata.managedFields` entries, and the apply merge with conflict detection.
//!
//! The flow for a write (called by `storage` after the request body is decoded):
//! - **update / patch** ([`track_update`]): the writer takes the fields whose value it changed;
//!   every other manager loses them; removed fields leave every set. Never conflicts.
//! - **apply** ([`server_side_apply`]): the applied configuration's fields are compared with
//!   the live values owned by other managers (a differing value is a conflict unless `force`,
//!   which moves ownership); the configuration is merged into the live object; fields the
//!   manager applied before but no longer applies are removed unless another manager owns them.
//!
//! Lists follow the schema's `x-kubernetes-list-type` (`map` keyed by
//! `x-kubernetes-list-map-keys`, `set`, default `atomic`); `metadata.finalizers` is a set and
//! `metadata.ownerReferences` a map keyed by `uid`, as in `ObjectMeta`.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

/// One element of a field path in `FieldsV1` notation: `f:name`, `k:{"type":"Ready"}`,
/// `v:"value"` or `i:3`.
pub type PathElement = String;
/// A path from the object root.
pub type FieldPath = Vec<PathElement>;

/// A set of field paths (what one manager owns).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet(BTreeSet<FieldPath>);

/// Top-level and metadata fields that identify an object or are set by the server; they are
/// never owned by a manager.
const UNTRACKED_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
    "generateName",
];

#[derive(Clone, Copy)]
enum ListType<'a> {
    Atomic,
    Set,
    Map(&'a [Value]),
}

/// The schema node for a child field, when the schema knows it.
fn child_schema<'a>(schema: Option<&'a Value>, field: &str) -> Option<&'a Value> {
    let schema = schema?;
    if let Some(p) = schema.get("properties").and_then(|p| p.get(field)) {
        return Some(p);
    }
    schema.get("additionalProperties").filter(|a| a.is_object())
}

fn list_type<'a>(schema: Option<&'a Value>, parent_path: &[PathElement]) -> ListType<'a> {
    // ObjectMeta's list types (the CRD schema does not describe metadata).
    match parent_path {
        [m, f] if m == "f:metadata" && f == "f:finalizers" => return ListType::Set,
        [m, f] if m == "f:metadata" && f == "f:ownerReferences" => {
            return ListType::Map(OWNER_REF_KEYS);
        }
        _ => {}
    }
    let Some(schema) = schema else {
        return ListType::Atomic;
    };
    match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => ListType::Set,
        Some("map") => match schema
            .get("x-kubernetes-list-map-keys")
            .and_then(Value::as_array)
        {
            Some(keys) if !keys.is_empty() => ListType::Map(keys.as_slice()),
            _ => ListType::Atomic,
        },
        _ => ListType::Atomic,
    }
}

static OWNER_REF_KEYS: &[Value] = &[Value::Null];

fn map_key_names(keys: &[Value]) -> Vec<&str> {
    if std::ptr::eq(keys, OWNER_REF_KEYS) {
        return vec!["uid"];
    }
    keys.iter().filter_map(Value::as_str).collect()
}

/// The `k:{…}` element of a list-map item, or None when a key field is missing.
fn item_key(item: &Value, keys: &[Value]) -> Option<PathElement> {
    let mut key = Map::new();
    for name in map_key_names(keys) {
        key.insert(name.to_owned(), item.get(name)?.clone());
    }
    Some(format!("k:{}", Value::Object(key)))
}

impl FieldSet {
    /// The empty set.
    pub fn new() -> Self {
        FieldSet::default()
    }

    /// The fields set in `obj` (an object in its wire form; identity and server-set metadata
    /// are skipped). `schema` is the version's OpenAPI v3 schema, if any.
    pub fn from_object(obj: &Value, schema: Option<&Value>) -> Self {
        let mut set = FieldSet::new();
        if let Value::Object(map) = obj {
            for (k, v) in map {
                if k == "apiVersion" || k == "kind" {
                    continue;
                }
                let path = vec![format!("f:{k}")];
                if k == "metadata" {
                    if let Value::Object(meta) = v {
                        for (mk, mv) in meta {
                            if UNTRACKED_METADATA.contains(&mk.as_str()) {
                                continue;
                            }
                            let mut p = path.clone();
                            p.push(format!("f:{mk}"));
                            collect(mv, None, &mut p, &mut set);
                        }
                    }
                    continue;
                }
                let mut p = path;
                collect(v, child_schema(schema, k), &mut p, &mut set);
            }
        }
        set
    }

    /// Whether the set owns nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `path` is in the set.
    pub fn contains(&self, path: &FieldPath) -> bool {
        self.0.contains(path)
    }

    /// Whether `path` or anything below it is in the set.
    pub fn covers(&self, path: &FieldPath) -> bool {
        self.0
            .range(path.clone()..)
            .next()
            .is_some_and(|p| p.starts_with(path))
    }

    /// Adds a path.
    pub fn insert(&mut self, path: FieldPath) {
        self.0.insert(path);
    }

    /// Removes a path.
    pub fn remove(&mut self, path: &FieldPath) {
        self.0.remove(path);
    }

    /// The paths in `self` and not in `other`.
    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        FieldSet(self.0.difference(&other.0).cloned().collect())
    }

    /// The paths in both sets.
    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        FieldSet(self.0.intersection(&other.0).cloned().collect())
    }

    /// The paths in either set.
    pub fn union(&self, other: &FieldSet) -> FieldSet {
        FieldSet(self.0.union(&other.0).cloned().collect())
    }

    /// Iterates the paths in order.
    pub fn iter(&self) -> impl Iterator<Item = &FieldPath> {
        self.0.iter()
    }

    /// Renders the set in the `FieldsV1` JSON format.
    pub fn to_fields_v1(&self) -> Value {
        let mut root = Map::new();
        for path in &self.0 {
            let mut node = &mut root;
            for element in path {
                node = node
                    .entry(element.clone())
                    .or_insert_with(|| Value::Object(Map::new()))
                    .as_object_mut()
                    .unwrap_or_else(|| unreachable!("fieldsV1 nodes are objects"));
            }
            if !node.is_empty() {
                node.insert(".".into(), json!({}));
            }
        }
        // A path that gained descendants after it was inserted needs its "." marker too.
        let mut out = Value::Object(root);
        mark_owned_inner_nodes(&mut out, &mut Vec::new(), self);
        out
    }

    /// Parses the `FieldsV1` JSON format.
    pub fn from_fields_v1(value: &Value) -> Self {
        fn walk(node: &Value, path: &mut FieldPath, set: &mut FieldSet) {
            let Some(map) = node.as_object() else { return };
            if map.is_empty() && !path.is_empty() {
                set.insert(path.clone());
                return;
            }
            for (k, v) in map {
                if k == "." {
                    set.insert(path.clone());
                    continue;
                }
                path.push(k.clone());
                walk(v, path, set);
                path.pop();
            }
        }
        let mut set = FieldSet::new();
        walk(value, &mut Vec::new(), &mut set);
        set
    }
}

fn mark_owned_inner_nodes(node: &mut Value, path: &mut FieldPath, set: &FieldSet) {
    let Some(map) = node.as_object_mut() else {
        return;
    };
    let has_children = map.keys().any(|k| k != ".");
    if has_children && !path.is_empty() && set.contains(path) {
        map.insert(".".into(), json!({}));
    }
    for (k, v) in map.iter_mut() {
        if k == "." {
            continue;
        }
        path.push(k.clone());
        mark_owned_inner_nodes(v, path, set);
        path.pop();
    }
}

fn collect(value: &Value, schema: Option<&Value>, path: &mut FieldPath, set: &mut FieldSet) {
    match value {
        Value::Null => {}
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                path.push(format!("f:{k}"));
                collect(v, child_schema(schema, k), path, set);
                path.pop();
            }
        }
        Value::Array(items) => match list_type(schema, path) {
            ListType::Atomic => set.insert(path.clone()),
            ListType::Set => {
                if items.is_empty() {
                    set.insert(path.clone());
                }
                for item in items {
                    path.push(format!("v:{item}"));
                    set.insert(path.clone());
                    path.pop();
                }
            }
            ListType::Map(keys) => {
                if items.is_empty() {
                    set.insert(path.clone());
                }
                let item_schema = schema.and_then(|s| s.get("items"));
                for item in items {
                    let Some(key) = item_key(item, keys) else {
                        // An item without its keys cannot be addressed; own the whole list.
                        set.insert(path.clone());
                        continue;
                    };
                    path.push(key);
                    set.insert(path.clone());
                    if let Value::Object(fields) = item {
                        for (k, v) in fields {
                            path.push(format!("f:{k}"));
                            collect(v, child_schema(item_schema, k), path, set);
                            path.pop();
                        }
                    }
                    path.pop();
                }
            }
        },
        _ => set.insert(path.clone()),
    }
}

/// The value at `path` in `obj`.
pub fn value_at<'a>(obj: &'a Value, path: &[PathElement]) -> Option<&'a Value> {
    let mut cur = obj;
    for element in path {
        cur = step(cur, element)?;
    }
    Some(cur)
}

fn step<'a>(cur: &'a Value, element: &str) -> Option<&'a Value> {
    if let Some(field) = element.strip_prefix("f:") {
        return cur.get(field);
    }
    let items = cur.as_array()?;
    if let Some(key) = element.strip_prefix("k:") {
        let key: Map<String, Value> = serde_json::from_str(key).ok()?;
        return items
            .iter()
            .find(|item| key.iter().all(|(k, v)| item.get(k) == Some(v)));
    }
    if let Some(v) = element.strip_prefix("v:") {
        let v: Value = serde_json::from_str(v).ok()?;
        return items.iter().find(|item| **item == v);
    }
    let index: usize = element.strip_prefix("i:")?.parse().ok()?;
    items.get(index)
}

/// Removes the field at `path` from `obj` (no-op when absent).
pub fn remove_at(obj: &mut Value, path: &[PathElement]) {
    let Some((last, parent_path)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for element in parent_path {
        cur = match find_mut(cur, element) {
            Some(v) => v,
            None => return,
        };
    }
    if let Some(field) = last.strip_prefix("f:") {
        if let Some(map) = cur.as_object_mut() {
            map.remove(field);
        }
        return;
    }
    let Some(index) = index_of(cur, last) else {
        return;
    };
    if let Some(items) = cur.as_array_mut() {
        items.remove(index);
    }
}

fn index_of(cur: &Value, element: &str) -> Option<usize> {
    let target = step(cur, element)?;
    cur.as_array()?.iter().position(|v| std::ptr::eq(v, target))
}

fn find_mut<'a>(cur: &'a mut Value, element: &str) -> Option<&'a mut Value> {
    if let Some(field) = element.strip_prefix("f:") {
        return cur.get_mut(field);
    }
    let index = index_of(cur, element)?;
    cur.as_array_mut()?.get_mut(index)
}

/// `managedFields[].operation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Server-side apply.
    Apply,
    /// Any other write (create, update, patch).
    Update,
}

/// One `metadata.managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagedEntry {
    /// The field manager's name.
    pub manager: String,
    /// Apply or Update.
    pub operation: Operation,
    /// `status` for writes through the status subresource.
    pub subresource: Option<String>,
    /// The apiVersion the manager wrote with.
    pub api_version: String,
    /// When the manager last wrote.
    pub time: String,
    /// The owned fields.
    pub fields: FieldSet,
}

/// Parses `metadata.managedFields` of a stored object (unknown shapes are skipped).
pub fn parse_entries(obj: &Value) -> Vec<ManagedEntry> {
    let Some(entries) = obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|e| {
            Some(ManagedEntry {
                manager: e.get("manager")?.as_str()?.to_owned(),
                operation: match e.get("operation")?.as_str()? {
                    "Apply" => Operation::Apply,
                    _ => Operation::Update,
                },
                subresource: e
                    .get("subresource")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                api_version: e
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                time: e
                    .get("time")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                fields: FieldSet::from_fields_v1(e.get("fieldsV1").unwrap_or(&Value::Null)),
            })
        })
        .collect()
}

/// Renders entries as `metadata.managedFields` (entries owning nothing are dropped).
pub fn render_entries(entries: &[ManagedEntry]) -> Value {
    Value::Array(
        entries
            .iter()
            .filter(|e| !e.fields.is_empty())
            .map(|e| {
                let mut v = json!({
                    "manager": e.manager,
                    "operation": match e.operation { Operation::Apply => "Apply", Operation::Update => "Update" },
                    "apiVersion": e.api_version,
                    "time": e.time,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": e.fields.to_fields_v1(),
                });
                if let Some(sub) = &e.subresource {
                    v["subresource"] = json!(sub);
                }
                v
            })
            .collect(),
    )
}

/// Who is writing: the manager, its operation's subresource, apiVersion and the time.
#[derive(Debug, Clone)]
pub struct Writer<'a> {
    /// Field manager name.
    pub manager: &'a str,
    /// `Some("status")` for the status subresource.
    pub subresource: Option<&'a str>,
    /// The apiVersion of the request.
    pub api_version: &'a str,
    /// The write's timestamp.
    pub time: &'a str,
}

fn entry_mut<'e>(
    entries: &'e mut Vec<ManagedEntry>,
    writer: &Writer<'_>,
    operation: Operation,
) -> &'e mut ManagedEntry {
    let pos = entries.iter().position(|e| {
        e.manager == writer.manager
            && e.operation == operation
            && e.subresource.as_deref() == writer.subresource
    });
    let index = match pos {
        Some(i) => i,
        None => {
            entries.push(ManagedEntry {
                manager: writer.manager.to_owned(),
                operation,
                subresource: writer.subresource.map(str::to_owned),
                api_version: writer.api_version.to_owned(),
                time: writer.time.to_owned(),
                fields: FieldSet::new(),
            });
            entries.len() - 1
        }
    };
    let entry = &mut entries[index];
    entry.api_version = writer.api_version.to_owned();
    entry.time = writer.time.to_owned();
    entry
}

/// Whether a path's value is a leaf whose value is compared for conflicts (list-map item
/// markers are not).
fn is_item_marker(path: &[PathElement]) -> bool {
    path.last().is_some_and(|e| e.starts_with("k:"))
}

/// Records a non-apply write from `old` to `new`: the writer owns what it changed, others
/// lose it; removed fields leave every set.
pub fn track_update(
    entries: &mut Vec<ManagedEntry>,
    old: Option<&Value>,
    new: &Value,
    schema: Option<&Value>,
    writer: &Writer<'_>,
) {
    let new_set = FieldSet::from_object(new, schema);
    let old_set = old
        .map(|o| FieldSet::from_object(o, schema))
        .unwrap_or_default();
    let removed = old_set.difference(&new_set);
    let mut changed = FieldSet::new();
    for path in new_set.iter() {
        let before = old.and_then(|o| value_at(o, path));
        let differs = match before {
            None => true,
            Some(_) if is_item_marker(path) => false,
            Some(b) => Some(b) != value_at(new, path),
        };
        if differs {
            changed.insert(path.clone());
        }
    }
    for entry in entries.iter_mut() {
        entry.fields = entry.fields.difference(&changed).difference(&removed);
    }
    if !changed.is_empty() {
        let entry = entry_mut(entries, writer, Operation::Update);
        entry.fields = entry.fields.union(&changed);
    }
    entries.retain(|e| !e.fields.is_empty());
}

/// A server-side apply conflict: another manager owns `field` with a different value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The owning manager.
    pub manager: String,
    /// The apiVersion it wrote with.
    pub api_version: String,
    /// The field, as `.spec.replicas`.
    pub field: String,
}

/// Renders a path the way conflict messages do: `.spec.items[name="a"].value`.
pub fn display_path(path: &[PathElement]) -> String {
    let mut out = String::new();
    for element in path {
        if let Some(f) = element.strip_prefix("f:") {
            out.push('.');
            out.push_str(f);
        } else if let Some(k) = element.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = element.strip_prefix("v:") {
            out.push_str(&format!("[={v}]"));
        } else if let Some(i) = element.strip_prefix("i:") {
            out.push_str(&format!("[{i}]"));
        }
    }
    out
}

/// Applies `applied` (the manager's full intent) onto `live` (None on create).
///
/// Returns the merged object, or the conflicts when another manager owns a field with a
/// different value and `force` is false. With `force`, ownership of conflicting fields moves
/// to the applier. On success `entries` is updated.
pub fn server_side_apply(
    live: Option<&Value>,
    applied: &Value,
    entries: &mut Vec<ManagedEntry>,
    schema: Option<&Value>,
    writer: &Writer<'_>,
    force: bool,
) -> Result<Value, Vec<Conflict>> {
    let applied_set = FieldSet::from_object(applied, schema);
    let empty = Value::Object(Map::new());
    let live_obj = live.unwrap_or(&empty);

    let mut conflicts = Vec::new();
    let mut forced: Vec<(usize, FieldPath)> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        if entry.manager == writer.manager
            && entry.operation == Operation::Apply
            && entry.subresource.as_deref() == writer.subresource
        {
            continue;
        }
        for path in applied_set.intersection(&entry.fields).iter() {
            if is_item_marker(path) {
                continue;
            }
            if value_at(applied, path) != value_at(live_obj, path) {
                if force {
                    forced.push((i, path.clone()));
                } else {
                    conflicts.push(Conflict {
                        manager: entry.manager.clone(),
                        api_version: entry.api_version.clone(),
                        field: display_path(path),
                    });
                }
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(conflicts);
    }
    for (i, path) in forced {
        entries[i].fields.remove(&path);
    }

    let previous = entries
        .iter()
        .find(|e| {
            e.manager == writer.manager
                && e.operation == Operation::Apply
                && e.subresource.as_deref() == writer.subresource
        })
        .map(|e| e.fields.clone())
        .unwrap_or_default();

    let mut merged = live_obj.clone();
    merge_applied(&mut merged, applied, schema, &mut Vec::new());

    // Fields this manager stopped applying go, unless it still applies something below them
    // (an empty list it applied before now has items) or someone else still owns them.
    let dropped = previous.difference(&applied_set);
    let mut to_remove: Vec<&FieldPath> = dropped
        .iter()
        .filter(|path| {
            !applied_set.covers(path)
                && !entries.iter().any(|e| {
                    !(e.manager == writer.manager
                        && e.operation == Operation::Apply
                        && e.subresource.as_deref() == writer.subresource)
                        && e.fields.covers(path)
                })
        })
        .collect();
    // Shallowest first: removing a list-map item takes its fields along, while removing a
    // key field first would leave the item unaddressable.
    to_remove.sort_by_key(|p| p.len());
    for path in to_remove {
        remove_at(&mut merged, path);
    }

    let entry = entry_mut(entries, writer, Operation::Apply);
    entry.fields = applied_set;
    entries.retain(|e| !e.fields.is_empty() || e.operation == Operation::Apply);
    Ok(merged)
}

/// Merges an applied configuration into `target` (objects recursively, list-maps by key,
/// sets by value, everything else replaced). Nulls in the configuration are ignored.
fn merge_applied(
    target: &mut Value,
    applied: &Value,
    schema: Option<&Value>,
    path: &mut FieldPath,
) {
    match (target, applied) {
        (Value::Object(t), Value::Object(a)) => {
            for (k, v) in a {
                if v.is_null() {
                    continue;
                }
                let child = if path.is_empty() && k == "metadata" {
                    None
                } else {
                    child_schema(schema, k)
                };
                path.push(format!("f:{k}"));
                match t.get_mut(k) {
                    Some(existing) => merge_applied(existing, v, child, path),
                    None => {
                        t.insert(k.clone(), v.clone());
                    }
                }
                path.pop();
            }
        }
        (Value::Array(t), Value::Array(a)) => match list_type(schema, path) {
            ListType::Atomic => *t = a.clone(),
            ListType::Set => {
                for item in a {
                    if !t.contains(item) {
                        t.push(item.clone());
                    }
                }
            }
            ListType::Map(keys) => {
                let item_schema = schema.and_then(|s| s.get("items"));
                for item in a {
                    let Some(key) = item_key(item, keys) else {
                        t.push(item.clone());
                        continue;
                    };
                    let existing = t
                        .iter()
                        .position(|x| item_key(x, keys).as_deref() == Some(key.as_str()));
                    match existing {
                        Some(i) => {
                            path.push(key);
                            merge_applied(&mut t[i], item, item_schema, path);
                            path.pop();
                        }
                        None => t.push(item.clone()),
                    }
                }
            }
        },
        (t, a) => *t = a.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(manager: &str) -> Writer<'_> {
        Writer {
            manager,
            subresource: None,
            api_version: "v1",
            time: "2026-01-01T00:00:00Z",
        }
    }

    fn conditions_schema() -> Value {
        json!({"type": "object", "properties": {"status": {"type": "object", "properties": {
            "conditions": {"type": "array", "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
                "items": {"type": "object", "properties": {
                    "type": {"type": "string"}, "status": {"type": "string"}}}}}}}})
    }

    #[test]
    fn field_sets_skip_identity_metadata_and_round_trip_through_fields_v1() {
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "uid": "u", "labels": {"app": "x"}},
            "data": {"k": "v", "n": "m"}});
        let set = FieldSet::from_object(&obj, None);
        let paths: Vec<String> = set.iter().map(|p| display_path(p)).collect();
        assert_eq!(paths, vec![".data.k", ".data.n", ".metadata.labels.app"]);
        let v1 = set.to_fields_v1();
        assert_eq!(
            v1,
            json!({"f:data": {"f:k": {}, "f:n": {}}, "f:metadata": {"f:labels": {"f:app": {}}}})
        );
        assert_eq!(FieldSet::from_fields_v1(&v1), set);
    }

    #[test]
    fn list_map_items_are_owned_by_key_with_a_dot_marker() {
        let schema = conditions_schema();
        let obj = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        let set = FieldSet::from_object(&obj, Some(&schema));
        let v1 = set.to_fields_v1();
        assert_eq!(
            v1,
            json!({"f:status": {"f:conditions": {"k:{\"type\":\"Ready\"}": {
                ".": {}, "f:status": {}, "f:type": {}}}}})
        );
        assert_eq!(FieldSet::from_fields_v1(&v1), set);
    }

    #[test]
    fn set_arithmetic_behaves_like_sets() {
        let a = FieldSet::from_object(&json!({"data": {"x": "1", "y": "2"}}), None);
        let b = FieldSet::from_object(&json!({"data": {"y": "3", "z": "4"}}), None);
        assert_eq!(a.intersection(&b).iter().count(), 1);
        assert_eq!(a.union(&b).iter().count(), 3);
        assert_eq!(
            a.difference(&b)
                .iter()
                .map(|p| display_path(p))
                .collect::<Vec<_>>(),
            vec![".data.x"]
        );
        assert!(a.covers(&vec!["f:data".to_owned()]));
        assert!(!a.covers(&vec!["f:spec".to_owned()]));
    }

    #[test]
    fn apply_of_a_field_owned_by_another_manager_with_a_different_value_conflicts() {
        let mut entries = Vec::new();
        let live = server_side_apply(
            None,
            &json!({"data": {"a": "1"}}),
            &mut entries,
            None,
            &writer("alice"),
            false,
        )
        .unwrap();
        let err = server_side_apply(
            Some(&live),
            &json!({"data": {"a": "2"}}),
            &mut entries,
            None,
            &writer("bob"),
            false,
        )
        .unwrap_err();
        assert_eq!(
            err,
            vec![Conflict {
                manager: "alice".into(),
                api_version: "v1".into(),
                field: ".data.a".into()
            }]
        );
        // Same value: shared ownership, no conflict.
        let shared = server_side_apply(
            Some(&live),
            &json!({"data": {"a": "1"}}),
            &mut entries,
            None,
            &writer("bob"),
            false,
        )
        .unwrap();
        assert_eq!(shared["data"]["a"], "1");
        assert_eq!(entries.len(), 2);
    }

    #[test]
    fn forced_apply_moves_ownership_to_the_applier() {
        let mut entries = Vec::new();
        let live = server_side_apply(
            None,
            &json!({"data": {"a": "1", "b": "1"}}),
            &mut entries,
            None,
            &writer("alice"),
            false,
        )
        .unwrap();
        let live = server_side_apply(
            Some(&live),
            &json!({"data": {"a": "2"}}),
            &mut entries,
            None,
            &writer("bob"),
            true,
        )
        .unwrap();
        assert_eq!(live["data"], json!({"a": "2", "b": "1"}));
        let alice = entries.iter().find(|e| e.manager == "alice").unwrap();
        let fields: Vec<String> = alice.fields.iter().map(|p| display_path(p)).collect();
        assert_eq!(fields, vec![".data.b"]);
    }

    #[test]
    fn fields_a_manager_stops_applying_are_removed_unless_another_manager_owns_them() {
        let mut entries = Vec::new();
        let live = server_side_apply(
            None,
            &json!({"data": {"a": "1", "b": "1", "c": "1"}}),
            &mut entries,
            None,
            &writer("alice"),
            false,
        )
        .unwrap();
        // bob shares `c`.
        let live = server_side_apply(
            Some(&live),
            &json!({"data": {"c": "1"}}),
            &mut entries,
            None,
            &writer("bob"),
            false,
        )
        .unwrap();
        let live = server_side_apply(
            Some(&live),
            &json!({"data": {"a": "1"}}),
            &mut entries,
            None,
            &writer("alice"),
            false,
        )
        .unwrap();
        assert_eq!(live["data"], json!({"a": "1", "c": "1"}));
    }

    #[test]
    fn updates_take_changed_fields_from_other_managers_without_conflict() {
        let mut entries = Vec::new();
        let old = server_side_apply(
            None,
            &json!({"data": {"a": "1", "b": "1"}}),
            &mut entries,
            None,
            &writer("alice"),
            false,
        )
        .unwrap();
        let new = json!({"data": {"a": "9", "b": "1"}});
        track_update(&mut entries, Some(&old), &new, None, &writer("editor"));
        let owners: Vec<(String, Vec<String>)> = entries
            .iter()
            .map(|e| {
                (
                    e.manager.clone(),
                    e.fields.iter().map(|p| display_path(p)).collect(),
                )
            })
            .collect();
        assert_eq!(
            owners,
            vec![
                ("alice".to_owned(), vec![".data.b".to_owned()]),
                ("editor".to_owned(), vec![".data.a".to_owned()])
            ]
        );
    }

    #[test]
    fn apply_merges_list_map_items_by_key_and_removes_dropped_items() {
        let schema = conditions_schema();
        let mut entries = Vec::new();
        let live = server_side_apply(
            None,
            &json!({"status": {"conditions": [
                {"type": "Ready", "status": "False"}, {"type": "Synced", "status": "True"}]}}),
            &mut entries,
            Some(&schema),
            &writer("ctrl"),
            false,
        )
        .unwrap();
        let live = server_side_apply(
            Some(&live),
            &json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
            &mut entries,
            Some(&schema),
            &writer("ctrl"),
            false,
        )
        .unwrap();
        assert_eq!(
            live["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"}])
        );
    }

    #[test]
    fn items_applied_into_a_list_map_the_manager_applied_empty_before_are_kept() {
        let schema = conditions_schema();
        let mut entries = Vec::new();
        let live = server_side_apply(
            None,
            &json!({"status": {"conditions": []}}),
            &mut entries,
            Some(&schema),
            &writer("ctrl"),
            false,
        )
        .unwrap();
        let live = server_side_apply(
            Some(&live),
            &json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
            &mut entries,
            Some(&schema),
            &writer("ctrl"),
            false,
        )
        .unwrap();
        assert_eq!(
            live["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"}])
        );
    }

    #[test]
    fn finalizers_merge_as_a_set() {
        let mut entries = Vec::new();
        let live = server_side_apply(
            None,
            &json!({"metadata": {"finalizers": ["a"]}}),
            &mut entries,
            None,
            &writer("x"),
            false,
        )
        .unwrap();
        let live = server_side_apply(
            Some(&live),
            &json!({"metadata": {"finalizers": ["b"]}}),
            &mut entries,
            None,
            &writer("y"),
            false,
        )
        .unwrap();
        assert_eq!(live["metadata"]["finalizers"], json!(["a", "b"]));
    }
}
