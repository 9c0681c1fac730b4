//! References from a spec to other objects in its namespace (Secrets and their keys,
//! ConfigMaps, Environments, Migrations): what a spec needs ([`Reference`]), a snapshot of
//! what exists ([`Snapshot`], the only step that talks to the API), and the pure check that
//! names everything missing ([`Snapshot::missing`]).
//!
//! A Secret is read for its key *names* only; values are never copied out of the API
//! response.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};

use crate::api::{Environment, Migration, SecretKeyRef};
use crate::controller::error::ReconcileError;
use crate::platform::Token;
use crate::sync::SecretValues;

/// The kind of a referenced object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RefKind {
    /// A core/v1 Secret.
    Secret,
    /// A core/v1 ConfigMap.
    ConfigMap,
    /// A tether.dev Environment.
    Environment,
    /// A tether.dev Migration.
    Migration,
}

impl fmt::Display for RefKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RefKind::Secret => "Secret",
            RefKind::ConfigMap => "ConfigMap",
            RefKind::Environment => "Environment",
            RefKind::Migration => "Migration",
        })
    }
}

/// One object (and optionally one key of it) a spec names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Reference {
    /// Kind of the referenced object.
    pub kind: RefKind,
    /// Its name, in the referencing object's namespace.
    pub name: String,
    /// The key that must exist in it (Secrets).
    pub key: Option<String>,
    /// The spec field that names it, e.g. `spec.credentials.render`.
    pub field: String,
}

impl Reference {
    /// A reference to a Secret key.
    pub fn secret_key(r: &SecretKeyRef, field: impl Into<String>) -> Self {
        Self::secret(&r.name, &r.key, field)
    }

    /// A reference to key `key` of Secret `name`.
    pub fn secret(name: &str, key: &str, field: impl Into<String>) -> Self {
        Self {
            kind: RefKind::Secret,
            name: name.to_string(),
            key: Some(key.to_string()),
            field: field.into(),
        }
    }

    /// A reference to a whole object.
    pub fn object(kind: RefKind, name: &str, field: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.to_string(),
            key: None,
            field: field.into(),
        }
    }
}

/// A reference that did not resolve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    /// Kind of the referenced object.
    pub kind: RefKind,
    /// Its name.
    pub name: String,
    /// `Some(key)` when the object exists but lacks this key.
    pub key: Option<String>,
    /// The spec field that names it.
    pub field: String,
}

impl Missing {
    /// The PascalCase reason for `Stalled` and events.
    pub fn reason(&self) -> &'static str {
        match (self.kind, &self.key) {
            (RefKind::Secret, Some(_)) => "SecretKeyNotFound",
            (RefKind::Secret, None) => "SecretNotFound",
            (RefKind::ConfigMap, _) => "ConfigMapNotFound",
            (RefKind::Environment, _) => "EnvironmentNotFound",
            (RefKind::Migration, _) => "MigrationNotFound",
        }
    }
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(
                f,
                "{} {:?} has no key {:?} ({})",
                self.kind, self.name, key, self.field
            ),
            None => write!(
                f,
                "{} {:?} not found ({})",
                self.kind, self.name, self.field
            ),
        }
    }
}

/// What exists of the referenced objects, read once per reconcile.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Secret name → its key names (`None`: the Secret does not exist).
    pub secrets: BTreeMap<String, Option<BTreeSet<String>>>,
    /// ConfigMap name → its data (`None`: it does not exist).
    pub config_maps: BTreeMap<String, Option<BTreeMap<String, String>>>,
    /// Environment name → the Environment (`None`: it does not exist).
    pub environments: BTreeMap<String, Option<Environment>>,
    /// Migration name → whether it exists.
    pub migrations: BTreeMap<String, bool>,
    /// The values of the Secrets read (in memory only; Debug prints key names).
    pub values: SecretValues,
}

impl Snapshot {
    /// Reads every object `references` name from namespace `namespace`, all at once (a
    /// reconcile waits for one round trip, not one per reference).
    pub async fn read(
        client: &Client,
        namespace: &str,
        references: &[Reference],
    ) -> Result<Self, ReconcileError> {
        let mut seen = BTreeSet::new();
        let distinct: Vec<&Reference> = references
            .iter()
            .filter(|r| seen.insert((r.kind, r.name.as_str())))
            .collect();
        let reads = futures::future::try_join_all(
            distinct
                .iter()
                .map(|reference| read_one(client, namespace, reference)),
        )
        .await?;
        let mut snapshot = Snapshot::default();
        for (reference, read) in distinct.into_iter().zip(reads) {
            let name = reference.name.clone();
            match read {
                Read::Secret(secret) => {
                    if let Some(secret) = &secret {
                        keep_values(&mut snapshot.values, &name, secret);
                    }
                    snapshot
                        .secrets
                        .insert(name, secret.map(|secret| secret_keys(*secret)));
                }
                Read::ConfigMap(data) => {
                    snapshot.config_maps.insert(name, data);
                }
                Read::Environment(environment) => {
                    snapshot.environments.insert(name, environment.map(|e| *e));
                }
                Read::Migration(exists) => {
                    snapshot.migrations.insert(name, exists);
                }
            }
        }
        Ok(snapshot)
    }

    /// Every reference in `references` that does not resolve, in spec order.
    pub fn missing(&self, references: &[Reference]) -> Vec<Missing> {
        let mut missing: Vec<Missing> = Vec::new();
        for r in references {
            let absent = |key: Option<String>| Missing {
                kind: r.kind,
                name: r.name.clone(),
                key,
                field: r.field.clone(),
            };
            let problem = match r.kind {
                RefKind::Secret => match self.secrets.get(&r.name) {
                    Some(Some(keys)) => r
                        .key
                        .as_ref()
                        .filter(|k| !keys.contains(*k))
                        .map(|k| absent(Some(k.clone()))),
                    _ => Some(absent(None)),
                },
                RefKind::ConfigMap => {
                    matches!(self.config_maps.get(&r.name), None | Some(None)).then(|| absent(None))
                }
                RefKind::Environment => matches!(self.environments.get(&r.name), None | Some(None))
                    .then(|| absent(None)),
                RefKind::Migration => {
                    (!self.migrations.get(&r.name).copied().unwrap_or(false)).then(|| absent(None))
                }
            };
            if let Some(problem) = problem
                && !missing.iter().any(|m| {
                    m.kind == problem.kind && m.name == problem.name && m.key == problem.key
                })
            {
                missing.push(problem);
            }
        }
        missing
    }

    /// The Environment named `name`, if it was read and exists.
    pub fn environment(&self, name: &str) -> Option<&Environment> {
        self.environments.get(name).and_then(Option::as_ref)
    }

    /// The data of ConfigMap `name`, if it was read and exists.
    pub fn config_map(&self, name: &str) -> Option<&BTreeMap<String, String>> {
        self.config_maps.get(name).and_then(Option::as_ref)
    }
}

/// Keeps the text values of `secret`, as they are (tokens are trimmed where they are used).
/// One referenced object as read (`None`: it does not exist).
enum Read {
    Secret(Option<Box<Secret>>),
    ConfigMap(Option<BTreeMap<String, String>>),
    Environment(Option<Box<Environment>>),
    /// Whether the Migration exists (metadata is enough: a Release only needs that).
    Migration(bool),
}

async fn read_one(
    client: &Client,
    namespace: &str,
    reference: &Reference,
) -> Result<Read, ReconcileError> {
    let name = reference.name.as_str();
    let read_error = |source| ReconcileError::ReadReference {
        what: format!("{} {:?}", reference.kind, name),
        source,
    };
    Ok(match reference.kind {
        RefKind::Secret => Read::Secret(
            crate::platform::credentials::read_secret(client, namespace, name)
                .await
                .map_err(|e| ReconcileError::from_secret_read(name, e))?
                .map(Box::new),
        ),
        RefKind::ConfigMap => Read::ConfigMap(
            Api::<ConfigMap>::namespaced(client.clone(), namespace)
                .get_opt(name)
                .await
                .map_err(read_error)?
                .map(|c| c.data.unwrap_or_default()),
        ),
        RefKind::Environment => Read::Environment(
            Api::<Environment>::namespaced(client.clone(), namespace)
                .get_opt(name)
                .await
                .map_err(read_error)?
                .map(Box::new),
        ),
        RefKind::Migration => Read::Migration(
            Api::<Migration>::namespaced(client.clone(), namespace)
                .get_metadata_opt(name)
                .await
                .map_err(read_error)?
                .is_some(),
        ),
    })
}

fn keep_values(values: &mut SecretValues, name: &str, secret: &Secret) {
    let data = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k, v.0.as_slice()));
    let string_data = secret
        .string_data
        .iter()
        .flatten()
        .map(|(k, v)| (k, v.as_bytes()));
    for (key, bytes) in data.chain(string_data) {
        if let Ok(text) = std::str::from_utf8(bytes) {
            values.insert(name, key, Token::new(text));
        }
    }
}

/// The key names of a Secret (`data` and `stringData`); the values are dropped here.
fn secret_keys(secret: Secret) -> BTreeSet<String> {
    let mut keys: BTreeSet<String> = secret.data.unwrap_or_default().into_keys().collect();
    keys.extend(secret.string_data.unwrap_or_default().into_keys());
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let mut s = Snapshot::default();
        s.secrets
            .insert("tokens".into(), Some(["render".to_string()].into()));
        s.secrets.insert("gone".into(), None);
        s.config_maps.insert("sql".into(), Some(BTreeMap::new()));
        s.migrations.insert("init".into(), true);
        s
    }

    #[test]
    fn present_objects_and_keys_resolve() {
        let refs = [
            Reference::secret("tokens", "render", "spec.credentials.render"),
            Reference::object(RefKind::ConfigMap, "sql", "spec.source.configMapRef"),
            Reference::object(RefKind::Migration, "init", "spec.migrations[0]"),
        ];
        assert_eq!(snapshot().missing(&refs), vec![]);
    }

    #[test]
    fn a_missing_secret_is_named_with_the_field_that_references_it() {
        let refs = [Reference::secret("gone", "token", "spec.credentials.fly")];
        let missing = snapshot().missing(&refs);
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].reason(), "SecretNotFound");
        assert_eq!(
            missing[0].to_string(),
            "Secret \"gone\" not found (spec.credentials.fly)"
        );
    }

    #[test]
    fn a_missing_key_names_the_key_but_never_a_value() {
        let refs = [Reference::secret(
            "tokens",
            "vercel",
            "spec.credentials.vercel",
        )];
        let missing = snapshot().missing(&refs);
        assert_eq!(missing[0].reason(), "SecretKeyNotFound");
        assert_eq!(
            missing[0].to_string(),
            "Secret \"tokens\" has no key \"vercel\" (spec.credentials.vercel)"
        );
    }

    #[test]
    fn every_missing_object_is_reported_once() {
        let refs = [
            Reference::secret("absent", "a", "spec.x"),
            Reference::secret("absent", "a", "spec.y"),
            Reference::object(RefKind::Environment, "prod", "spec.environmentRef"),
            Reference::object(RefKind::Migration, "later", "spec.migrations[1]"),
        ];
        let reasons: Vec<_> = snapshot()
            .missing(&refs)
            .iter()
            .map(Missing::reason)
            .collect();
        assert_eq!(
            reasons,
            ["SecretNotFound", "EnvironmentNotFound", "MigrationNotFound"]
        );
    }
}
