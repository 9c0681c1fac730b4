//! Lenient views of watched objects, so one bad object never blocks a controller.
//!
//! - [`Decoded<K>`]: what the controllers watch instead of `K`. A list or watch response
//!   with one object that does not match `K` (stored bypassing admission, or by an older
//!   schema) would otherwise fail the whole list and stop every object of the kind; here
//!   that object decodes to `Err(message)` and is reported on its own while the others
//!   reconcile. `metadata.managedFields` is dropped while parsing (nothing reads it).

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::api::Condition;

/// An object of kind `K` as read from the API: the typed object when it decodes, otherwise
/// its metadata and current conditions (read leniently) with why it does not decode. The
/// metadata and conditions of a decoded object are its own, not copies: the Environment
/// store holds one of these per Environment.
#[derive(Clone, Debug)]
pub struct Decoded<K>(Inner<K>);

#[derive(Clone, Debug)]
enum Inner<K> {
    Ok(K),
    Err(Box<Malformed>),
}

/// What is kept of an object that does not decode.
#[derive(Clone, Debug)]
struct Malformed {
    meta: ObjectMeta,
    conditions: Vec<Condition>,
    message: String,
}

/// A kind whose status carries conditions.
pub trait Conditioned {
    /// The conditions in the object's status (empty when it has none).
    fn conditions(&self) -> &[Condition];
}

macro_rules! conditioned {
    ($($kind:ty),*) => {$(
        impl Conditioned for $kind {
            fn conditions(&self) -> &[Condition] {
                self.status.as_ref().map_or(&[], |s| s.conditions.as_slice())
            }
        }
    )*};
}
conditioned!(
    crate::api::Environment,
    crate::api::Release,
    crate::api::Migration
);

impl<K> Decoded<K> {
    /// The typed object, or why it does not decode.
    pub fn object(&self) -> Result<&K, &str> {
        match &self.0 {
            Inner::Ok(object) => Ok(object),
            Inner::Err(malformed) => Err(&malformed.message),
        }
    }
}

impl<K: Conditioned> Decoded<K> {
    /// The conditions in the object's status (empty when absent or unreadable).
    pub fn conditions(&self) -> &[Condition] {
        match &self.0 {
            Inner::Ok(object) => object.conditions(),
            Inner::Err(malformed) => &malformed.conditions,
        }
    }
}

impl<K> From<K> for Decoded<K> {
    fn from(object: K) -> Self {
        Self(Inner::Ok(object))
    }
}

impl<'de, K: DeserializeOwned> Deserialize<'de> for Decoded<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut value = serde_json::Value::deserialize(deserializer)?;
        // Server-side apply bookkeeping: the controllers never read it, and it is the
        // largest part of an object's metadata.
        if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            meta.remove("managedFields");
        }
        let error = match K::deserialize(&value) {
            Ok(object) => return Ok(Self(Inner::Ok(object))),
            Err(error) => error.to_string(),
        };
        let meta: ObjectMeta = value
            .get("metadata")
            .map(ObjectMeta::deserialize)
            .transpose()
            .map_err(D::Error::custom)?
            .unwrap_or_default();
        let conditions = value
            .pointer("/status/conditions")
            .and_then(|c| Vec::<Condition>::deserialize(c).ok())
            .unwrap_or_default();
        Ok(Self(Inner::Err(Box::new(Malformed {
            meta,
            conditions,
            message: error,
        }))))
    }
}

impl<K: Serialize + Resource<DynamicType = ()>> Serialize for Decoded<K> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Inner::Ok(object) => object.serialize(serializer),
            Inner::Err(malformed) => serde_json::json!({
                "apiVersion": K::api_version(&()),
                "kind": K::kind(&()),
                "metadata": malformed.meta,
            })
            .serialize(serializer),
        }
    }
}

impl<K: Resource<DynamicType = ()>> Resource for Decoded<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        match &self.0 {
            Inner::Ok(object) => object.meta(),
            Inner::Err(malformed) => &malformed.meta,
        }
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match &mut self.0 {
            Inner::Ok(object) => object.meta_mut(),
            Inner::Err(malformed) => &mut malformed.meta,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Environment;

    #[test]
    fn a_valid_object_decodes_with_its_conditions_and_without_managed_fields() {
        let value = serde_json::json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "Environment",
            "metadata": {"name": "web", "namespace": "ns", "managedFields": [{
                "manager": "tether", "operation": "Apply", "subresource": "status",
                "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {}}}]},
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True",
                "lastTransitionTime": "t", "reason": "R", "message": ""}]}
        });
        let decoded: Decoded<Environment> = serde_json::from_value(value).unwrap();
        assert!(decoded.object().is_ok());
        assert_eq!(decoded.conditions().len(), 1);
        assert!(decoded.meta().managed_fields.is_none());
        assert!(decoded.object().unwrap().metadata.managed_fields.is_none());
        assert_eq!(decoded.meta().name.as_deref(), Some("web"));
    }

    #[test]
    fn a_malformed_object_keeps_its_metadata_and_reports_why() {
        let value = serde_json::json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "Environment",
            "metadata": {"name": "bad", "namespace": "ns"},
            "spec": {"suspend": "not-a-bool"}
        });
        let decoded: Decoded<Environment> = serde_json::from_value(value).unwrap();
        assert_eq!(decoded.meta().name.as_deref(), Some("bad"));
        assert!(decoded.object().unwrap_err().contains("invalid type"));
    }

    #[test]
    fn a_list_with_one_malformed_item_still_yields_the_others() {
        let list = serde_json::json!([
            {"metadata": {"name": "good"}, "spec": {}},
            {"metadata": {"name": "bad"}, "spec": {"interval": 5}},
        ]);
        let items: Vec<Decoded<Environment>> = serde_json::from_value(list).unwrap();
        assert!(items[0].object().is_ok());
        assert!(items[1].object().is_err());
    }
}
