//! The custom resources Tether serves: group `tether.dev`, version `v1alpha1`, namespaced.
//!
//! Types only (serde + schemars, no I/O). Every field's `///` doc becomes `kubectl explain`
//! text; cross-field rules and immutability are CEL rules (`x-kubernetes-validations`) in the
//! generated schema, each with a message. The YAML in `crds/` and in the Helm chart is
//! generated from these types by `make crds` (`tether crds`) and never edited by hand.

pub mod common;
pub mod environment;
pub mod migration;
pub mod release;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use common::{Condition, ConditionStatus, DeletionPolicy, DriftPolicy, EnvVar, SecretKeyRef};
pub use environment::{Environment, EnvironmentSpec, EnvironmentStatus};
pub use migration::{Migration, MigrationSpec, MigrationStatus};
pub use release::{Release, ReleaseSpec, ReleaseStatus};

/// The API group of every Tether kind.
pub const GROUP: &str = "tether.dev";
/// The served (and stored) version.
pub const VERSION: &str = "v1alpha1";

/// Every CRD Tether serves, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![Environment::crd(), Release::crd(), Migration::crd()]
}

/// The CRDs as one multi-document YAML stream, as `tether crds` prints them.
pub fn crds_yaml() -> Result<String, serde_saphyr::ser::Error> {
    crds().iter().map(crd_yaml).collect()
}

/// One CRD as the YAML document `make crds` writes.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::ser::Error> {
    Ok(format!("---\n{}", serde_saphyr::to_string(crd)?))
}

/// The file name `make crds` writes a CRD to, e.g. `environments.tether.dev.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// Writes every CRD into `dir` as `<plural>.<group>.yaml`, creating `dir` if needed.
pub fn write_crds(dir: &std::path::Path) -> Result<(), WriteCrdsError> {
    std::fs::create_dir_all(dir).map_err(|source| WriteCrdsError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for crd in crds() {
        let path = dir.join(crd_file_name(&crd));
        std::fs::write(&path, crd_yaml(&crd)?)
            .map_err(|source| WriteCrdsError::Io { path, source })?;
    }
    Ok(())
}

/// Why `write_crds` failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteCrdsError {
    /// Serialising a CRD to YAML failed.
    #[error("failed to serialise a CRD to YAML: {0}")]
    Yaml(#[from] serde_saphyr::ser::Error),
    /// Writing a file failed.
    #[error("failed to write {path}: {source}")]
    Io {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}
