//! What the Kubernetes API server does with a CRD's structural schema, as a library.
//!
//! The embedded API server (`localapi`) and the offline `tether validate` command both call
//! into this module; neither knows about schemas themselves.
//!
//! - [`SchemaRegistry`]: compiles every served version's `openAPIV3Schema` once (patterns,
//!   CEL programs) and admits objects in the real server's order: prune unknown fields
//!   (or report them, per [`FieldValidation`]) → apply defaults → validate `metadata` as
//!   ObjectMeta → validate the schema (types, enums, bounds, patterns, formats, list types)
//!   → evaluate CEL `x-kubernetes-validations`. Failures are an [`Invalid`] whose
//!   [`Invalid::to_status`] is the body the API server returns.
//! - [`table`]: the `meta.k8s.io/v1` `Table` for `kubectl get`.
//! - [`openapi`]: the `/openapi/v3` documents for `kubectl explain` and kubectl's
//!   server-side field validation check.
//! - [`builtin`]: Secrets and ConfigMaps decoded and validated as kube-apiserver does.
//! - [`validate`]: the `tether validate` command (offline admission of YAML files).

pub mod builtin;
mod cel;
pub mod cost;
mod errors;
mod jsonpath;
mod meta;
pub mod openapi;
pub mod positions;
mod structural;
pub mod table;
pub mod validate;

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionVersion,
};
use serde_json::Value;

pub use errors::{Cause, Invalid};
pub use jsonpath::{JsonPath, JsonPathError, print_value};

use structural::Node;

/// How the API server treats fields the schema does not know (`?fieldValidation=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop unknown fields silently.
    Ignore,
    /// Drop unknown fields and return a warning for each (the server's default).
    #[default]
    Warn,
    /// Reject the request when it carries unknown fields (kubectl's default).
    Strict,
}

impl FieldValidation {
    /// Parses the `fieldValidation` query parameter value as the API server does
    /// (`Ignore`, `Warn`, `Strict`; case-sensitive). `None` for anything else.
    pub fn from_query(value: &str) -> Option<Self> {
        match value {
            "Ignore" => Some(Self::Ignore),
            "Warn" => Some(Self::Warn),
            "Strict" => Some(Self::Strict),
            _ => None,
        }
    }
}

/// Why a set of CRDs could not be compiled into a [`SchemaRegistry`].
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A served version has no `openAPIV3Schema` (the API server requires one).
    #[error("failed to compile CRD {crd}: version {version} has no openAPIV3Schema")]
    MissingSchema {
        /// The CRD's name.
        crd: String,
        /// The version without a schema.
        version: String,
    },
    /// The schema could not be serialised to JSON for compilation.
    #[error("failed to compile CRD {crd} version {version}: {source}")]
    Serialize {
        /// The CRD's name.
        crd: String,
        /// The version being compiled.
        version: String,
        /// The serialisation error.
        source: serde_json::Error,
    },
    /// A `pattern` is not a valid regular expression.
    #[error(
        "failed to compile CRD {crd} version {version}: {path}: invalid pattern {pattern:?}: {message}"
    )]
    Pattern {
        /// The CRD's name.
        crd: String,
        /// The version being compiled.
        version: String,
        /// Where in the schema the pattern sits.
        path: String,
        /// The pattern.
        pattern: String,
        /// The regex compiler's message.
        message: String,
    },
    /// An additionalPrinterColumn's JSONPath does not parse.
    #[error("failed to compile CRD {crd} version {version}: printer column: {source}")]
    PrinterColumn {
        /// The CRD's name.
        crd: String,
        /// The version being compiled.
        version: String,
        /// The JSONPath error.
        source: JsonPathError,
    },
    /// The CRD's CEL rules are estimated over the API server's cost budget: a real cluster
    /// refuses to create it. Worded as kubectl prints the API server's answer.
    #[error("The CustomResourceDefinition {crd:?} is invalid:\n* {}", violations.join("\n* "))]
    CostBudget {
        /// The CRD's name.
        crd: String,
        /// One `field: Forbidden: detail` line per violation.
        violations: Vec<String>,
    },
    /// A CEL rule or messageExpression does not compile.
    #[error("failed to compile CRD {crd} version {version}: {path}: {message}")]
    Rule {
        /// The CRD's name.
        crd: String,
        /// The version being compiled.
        version: String,
        /// Where in the schema the rule sits.
        path: String,
        /// The compiler's message.
        message: String,
    },
}

/// One served version of a CRD, compiled.
struct CompiledVersion {
    root: Node,
    table: table::TableConvertor,
}

/// One CRD with its compiled versions.
struct CompiledCrd {
    crd: CustomResourceDefinition,
    versions: BTreeMap<String, CompiledVersion>,
}

/// Every CRD's schemas compiled once, ready to admit objects.
pub struct SchemaRegistry {
    crds: Vec<CompiledCrd>,
}

impl std::fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistry")
            .field(
                "crds",
                &self
                    .crds
                    .iter()
                    .map(|c| c.crd.metadata.name.clone().unwrap_or_default())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl SchemaRegistry {
    /// Compiles the `openAPIV3Schema` of every served version of every CRD: patterns and
    /// CEL programs are compiled here once, so [`admit`](Self::admit) only evaluates.
    pub fn new(crds: &[CustomResourceDefinition]) -> Result<Self, SchemaError> {
        let mut compiled = Vec::with_capacity(crds.len());
        for crd in crds {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let violations = cost::check_crd(crd);
            if !violations.is_empty() {
                return Err(SchemaError::CostBudget {
                    crd: name,
                    violations: violations.iter().map(ToString::to_string).collect(),
                });
            }
            let mut versions = BTreeMap::new();
            for version in crd.spec.versions.iter().filter(|v| v.served) {
                let schema = version_schema(&name, version)?;
                let root = Node::compile(&schema, true, "")
                    .map_err(|e| e.into_schema_error(&name, &version.name))?;
                let printer_error = |source| SchemaError::PrinterColumn {
                    crd: name.clone(),
                    version: version.name.clone(),
                    source,
                };
                let table = table::TableConvertor::for_crd(crd, &version.name)
                    .map_err(printer_error)?
                    .ok_or_else(|| SchemaError::MissingSchema {
                        crd: name.clone(),
                        version: version.name.clone(),
                    })?;
                versions.insert(version.name.clone(), CompiledVersion { root, table });
            }
            compiled.push(CompiledCrd {
                crd: crd.clone(),
                versions,
            });
        }
        Ok(Self { crds: compiled })
    }

    /// The CRD serving `group` whose kind, plural, singular or short name is `kind_or_plural`
    /// (kinds compare exactly, the rest case-insensitively).
    pub fn crd(&self, group: &str, kind_or_plural: &str) -> Option<&CustomResourceDefinition> {
        self.find(group, kind_or_plural).map(|c| &c.crd)
    }

    /// Every CRD in the registry, in the order given to [`new`](Self::new).
    pub fn crds(&self) -> impl Iterator<Item = &CustomResourceDefinition> {
        self.crds.iter().map(|c| &c.crd)
    }

    /// The `Table` convertor of a served CRD version (see [`table`]).
    pub fn table(
        &self,
        group: &str,
        version: &str,
        kind_or_plural: &str,
    ) -> Option<&table::TableConvertor> {
        self.find(group, kind_or_plural)
            .and_then(|c| c.versions.get(version))
            .map(|v| &v.table)
    }

    fn find(&self, group: &str, kind_or_plural: &str) -> Option<&CompiledCrd> {
        let lower = kind_or_plural.to_ascii_lowercase();
        self.crds.iter().find(|c| {
            let names = &c.crd.spec.names;
            c.crd.spec.group == group
                && (names.kind == kind_or_plural
                    || names.plural == lower
                    || names.singular.as_deref() == Some(lower.as_str())
                    || names
                        .short_names
                        .as_ref()
                        .is_some_and(|s| s.contains(&lower)))
        })
    }

    /// Admission of a custom resource as the real API server does it: prune unknown fields
    /// (or report them, per `validation`), apply defaults, validate `metadata`, check
    /// types/formats/enums/required/bounds/patterns/list types, then evaluate CEL
    /// `x-kubernetes-validations` (transition rules only when `old` is given and holds a
    /// value at the rule's path). Mutates `obj` (defaults, pruning). Returns the warnings
    /// on success.
    ///
    /// An unknown group/kind/version is an `Invalid` with one `FieldValueNotSupported`
    /// cause on `apiVersion`/`kind`.
    pub fn admit(
        &self,
        group: &str,
        version: &str,
        kind: &str,
        old: Option<&Value>,
        obj: &mut Value,
        validation: FieldValidation,
    ) -> Result<Vec<String>, Invalid> {
        let Some(crd) = self.find(group, kind) else {
            return Err(Invalid::single(
                errors::Cause::not_supported("kind", &Value::String(kind.to_string()), &[]),
                version,
            ));
        };
        let Some(compiled) = crd.versions.get(version) else {
            let served: Vec<String> = crd.versions.keys().cloned().collect();
            return Err(Invalid::single(
                errors::Cause::not_supported(
                    "apiVersion",
                    &Value::String(format!("{group}/{version}")),
                    &served
                        .iter()
                        .map(|v| format!("{group}/{v}"))
                        .collect::<Vec<_>>(),
                ),
                version,
            ));
        };
        structural::admit(&compiled.root, old, obj, validation, version)
    }
}

fn version_schema(
    crd: &str,
    version: &CustomResourceDefinitionVersion,
) -> Result<Value, SchemaError> {
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .ok_or_else(|| SchemaError::MissingSchema {
            crd: crd.to_string(),
            version: version.name.clone(),
        })?;
    serde_json::to_value(schema).map_err(|source| SchemaError::Serialize {
        crd: crd.to_string(),
        version: version.name.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A CRD like the generated ones, built from JSON for the tests of this module.
    pub(crate) fn test_crd() -> CustomResourceDefinition {
        serde_json::from_value(json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "environments.tether.dev"},
            "spec": {
                "group": "tether.dev",
                "names": {"kind": "Environment", "plural": "environments", "singular": "environment", "shortNames": ["env"], "listKind": "EnvironmentList"},
                "scope": "Namespaced",
                "versions": [{
                    "name": "v1alpha1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
                            "spec": {"type": "object", "required": ["region"], "properties": {
                                "region": {"type": "string"},
                                "suspend": {"type": "boolean", "default": false},
                                "schedule": {"type": "string"},
                                "kind": {"type": "string", "enum": ["web", "cron"]}
                            }, "x-kubernetes-validations": [{"rule": "self.kind != 'cron' || has(self.schedule)", "message": "cron services need a schedule"}]}
                        }
                    }}
                }]
            }
        }))
        .unwrap_or_else(|e| panic!("test CRD: {e}"))
    }

    fn registry() -> SchemaRegistry {
        SchemaRegistry::new(&[test_crd()]).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_registry_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SchemaRegistry>();
    }

    #[test]
    fn crds_are_found_by_kind_plural_singular_and_short_name() {
        let r = registry();
        for name in ["Environment", "environments", "environment", "env", "ENV"] {
            assert!(r.crd("tether.dev", name).is_some(), "{name}");
        }
        assert!(r.crd("other.dev", "Environment").is_none());
    }

    #[test]
    fn admit_defaults_and_runs_cel_and_builds_the_status() {
        let r = registry();
        let mut ok = json!({"apiVersion": "tether.dev/v1alpha1", "kind": "Environment", "metadata": {"name": "web"}, "spec": {"region": "eu", "kind": "web"}});
        assert_eq!(
            r.admit(
                "tether.dev",
                "v1alpha1",
                "Environment",
                None,
                &mut ok,
                FieldValidation::Strict
            ),
            Ok(vec![])
        );
        assert_eq!(ok["spec"]["suspend"], json!(false));

        let mut bad = json!({"apiVersion": "tether.dev/v1alpha1", "kind": "Environment", "metadata": {"name": "web"}, "spec": {"region": "eu", "kind": "cron"}});
        let err = r
            .admit(
                "tether.dev",
                "v1alpha1",
                "Environment",
                None,
                &mut bad,
                FieldValidation::Strict,
            )
            .err()
            .unwrap_or_else(|| panic!("must be rejected"));
        assert_eq!(
            err.to_status("Environment", "tether.dev", "web")["message"],
            r#"Environment.tether.dev "web" is invalid: spec: Invalid value: cron services need a schedule"#
        );
    }

    #[test]
    fn served_versions_have_a_table_convertor() {
        let r = registry();
        let conv = r.table("tether.dev", "v1alpha1", "environments");
        assert_eq!(conv.map(|c| c.column_definitions().len()), Some(2));
        assert!(r.table("tether.dev", "v2", "environments").is_none());
    }

    #[test]
    fn a_bad_printer_column_fails_the_registry() {
        let mut crd = test_crd();
        crd.spec.versions[0].additional_printer_columns = serde_json::from_value(
            json!([{"name": "X", "type": "string", "jsonPath": ".status[?("}]),
        )
        .ok();
        assert!(matches!(
            SchemaRegistry::new(&[crd]),
            Err(SchemaError::PrinterColumn { .. })
        ));
    }

    #[test]
    fn unknown_versions_and_kinds_are_rejected() {
        let r = registry();
        let mut obj = json!({"metadata": {"name": "a"}});
        let err = r
            .admit(
                "tether.dev",
                "v9",
                "Environment",
                None,
                &mut obj,
                FieldValidation::Warn,
            )
            .err();
        assert_eq!(
            err.map(|e| e.causes[0].to_string()),
            Some(r#"apiVersion: Unsupported value: "tether.dev/v9": supported values: "tether.dev/v1alpha1""#.to_string())
        );
        assert!(
            r.admit(
                "tether.dev",
                "v1alpha1",
                "Nope",
                None,
                &mut obj,
                FieldValidation::Warn
            )
            .is_err()
        );
    }

    #[test]
    fn a_rule_that_does_not_compile_fails_the_registry() {
        let mut crd = test_crd();
        let mut schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap_or_default();
        schema["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"][0]["rule"] =
            json!("self.kind ==");
        crd.spec.versions[0].schema = serde_json::from_value(schema).ok();
        let err = SchemaRegistry::new(&[crd])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with(
                "failed to compile CRD environments.tether.dev version v1alpha1: spec:"
            ),
            "{err}"
        );
    }
}
