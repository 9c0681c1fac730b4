//! Admission of custom resources: the single place where the server hands a candidate object
//! to the CRD structural-schema and CEL validation of [`crate::schema`], after patches are
//! applied and before anything is stored.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

pub use crate::schema::FieldValidation;
use crate::schema::{SchemaError, SchemaRegistry};

use super::meta;
use super::resources::ResourceDef;
use super::status::ApiError;

/// Parses `?fieldValidation=` (`Ignore`, `Warn`, `Strict`; absent means `Warn`).
pub fn parse_field_validation(value: Option<&str>) -> Result<FieldValidation, ApiError> {
    match value {
        None | Some("") => Ok(FieldValidation::default()),
        Some(v) => FieldValidation::from_query(v).ok_or_else(|| {
            ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn or Strict, got {v:?}"
            ))
        }),
    }
}

/// Admission for custom resources: the compiled schemas of the served CRDs.
#[derive(Debug)]
pub struct Admission {
    registry: SchemaRegistry,
}

impl Admission {
    /// Compiles the schemas (and CEL rules) of `crds` once.
    pub fn new(crds: &[CustomResourceDefinition]) -> Result<Self, SchemaError> {
        Ok(Admission {
            registry: SchemaRegistry::new(crds)?,
        })
    }

    /// The compiled schemas (Table output, OpenAPI).
    pub fn registry(&self) -> &SchemaRegistry {
        &self.registry
    }

    /// Validates (and defaults/prunes) a custom resource about to be stored; returns the
    /// warnings to send back, or the 422 (400 for strict decoding) `Status`.
    pub fn admit_custom_resource(
        &self,
        def: &ResourceDef,
        old: Option<&Value>,
        obj: &mut Value,
        validation: FieldValidation,
    ) -> Result<Vec<String>, ApiError> {
        self.registry
            .admit(&def.group, &def.version, &def.kind, old, obj, validation)
            .map_err(|invalid| {
                let name = meta::meta_str(obj, "name").unwrap_or_default().to_owned();
                ApiError::from_status(invalid.to_status(&def.kind, &def.group, &name))
            })
    }
}
