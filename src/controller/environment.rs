//! The Environment reconciler: observe (resolve every credentials Secret, env var Secret
//! and the Supabase password Secret) → plan (the platform objects the spec declares, a pure
//! value) → act (the platform layer executes the plan: it plugs in here in a later issue;
//! today nothing is created) → report (status lists the declared objects as `Pending`).

use std::fmt;

use crate::api::common::{LocalObjectRef, parse_duration};
use crate::api::environment::{EnvironmentSpec, ManagedObject};
use crate::api::{EnvVar, Environment};
use crate::controller::conditions::{REASON_REFERENCES_RESOLVED, Verdict};
use crate::controller::error::ReconcileError;
use crate::controller::reconcile::{Context, Reconciled, Report};
use crate::controller::references::{RefKind, Reference, Snapshot};
use kube::ResourceExt;

/// Every Secret key an Environment spec names, with the field that names it.
pub fn references(spec: &EnvironmentSpec) -> Vec<Reference> {
    let mut refs = Vec::new();
    let credentials = [
        ("render", &spec.credentials.render),
        ("vercel", &spec.credentials.vercel),
        ("fly", &spec.credentials.fly),
        ("supabase", &spec.credentials.supabase),
    ];
    for (platform, token) in credentials {
        if let Some(token) = token {
            refs.push(Reference::secret(
                &token.name,
                &token.key,
                format!("spec.credentials.{platform}"),
            ));
        }
    }
    let env_var_refs = |refs: &mut Vec<Reference>, vars: &[EnvVar], field: &str| {
        for (i, var) in vars.iter().enumerate() {
            if let Some(from) = &var.value_from {
                refs.push(Reference::secret_key(
                    &from.secret_key_ref,
                    format!("{field}.envVars[{i}].valueFrom.secretKeyRef"),
                ));
            }
        }
    };
    if let Some(render) = &spec.render {
        for (i, service) in render.services.iter().enumerate() {
            env_var_refs(
                &mut refs,
                &service.env_vars,
                &format!("spec.render.services[{i}]"),
            );
        }
    }
    if let Some(vercel) = &spec.vercel {
        for (i, project) in vercel.projects.iter().enumerate() {
            for (j, var) in project.env_vars.iter().enumerate() {
                if let Some(from) = &var.value_from {
                    refs.push(Reference::secret_key(
                        &from.secret_key_ref,
                        format!("spec.vercel.projects[{i}].envVars[{j}].valueFrom.secretKeyRef"),
                    ));
                }
            }
        }
    }
    if let Some(fly) = &spec.fly {
        for (i, app) in fly.apps.iter().enumerate() {
            for (j, secret) in app.secrets.iter().enumerate() {
                refs.push(Reference::secret_key(
                    &secret.secret_key_ref,
                    format!("spec.fly.apps[{i}].secrets[{j}].secretKeyRef"),
                ));
            }
        }
    }
    if let Some(supabase) = &spec.supabase {
        refs.push(Reference::secret_key(
            &supabase.database_password_secret_ref,
            "spec.supabase.databasePasswordSecretRef",
        ));
    }
    refs
}

/// One platform object the spec declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredObject {
    /// `render`, `vercel`, `fly` or `supabase`.
    pub platform: &'static str,
    /// The object's kind on that platform, e.g. `web`, `project`, `app`.
    pub kind: String,
    /// Its name.
    pub name: String,
}

/// What the spec asks the platforms to hold: the input of the platform layer's actions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnvironmentPlan {
    /// Every declared platform object, in spec order.
    pub objects: Vec<DeclaredObject>,
}

impl fmt::Display for EnvironmentPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} platform objects declared", self.objects.len())?;
        for o in &self.objects {
            writeln!(f, "  ensure {} {} {:?}", o.platform, o.kind, o.name)?;
        }
        Ok(())
    }
}

/// Plans the platform objects of `spec` (pure).
pub fn plan(spec: &EnvironmentSpec) -> EnvironmentPlan {
    let mut objects = Vec::new();
    let mut push = |platform, kind: &str, name: &str| {
        objects.push(DeclaredObject {
            platform,
            kind: kind.to_string(),
            name: name.to_string(),
        })
    };
    if let Some(render) = &spec.render {
        for s in &render.services {
            let kind = serde_json::to_value(s.type_)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| "service".into());
            push("render", &kind, &s.name);
        }
        for kv in &render.key_values {
            push("render", "keyvalue", &kv.name);
        }
        for pg in &render.postgres {
            push("render", "postgres", &pg.name);
        }
    }
    if let Some(vercel) = &spec.vercel {
        for p in &vercel.projects {
            push("vercel", "project", &p.name);
        }
    }
    if let Some(fly) = &spec.fly {
        for a in &fly.apps {
            push("fly", "app", &a.name);
        }
    }
    if let Some(supabase) = &spec.supabase {
        push("supabase", "project", &supabase.name);
    }
    EnvironmentPlan { objects }
}

/// The status fields of a resolved Environment (pure).
pub fn report(spec: &EnvironmentSpec, plan: &EnvironmentPlan) -> Report {
    let n = plan.objects.len();
    let objects: Vec<ManagedObject> = plan
        .objects
        .iter()
        .map(|o| ManagedObject {
            platform: o.platform.to_string(),
            kind: o.kind.clone(),
            name: o.name.clone(),
            state: Some("Pending".into()),
            ..ManagedObject::default()
        })
        .collect();
    let mut secret_refs: Vec<String> = references(spec).into_iter().map(|r| r.name).collect();
    secret_refs.sort();
    secret_refs.dedup();
    let secret_refs: Vec<LocalObjectRef> = secret_refs
        .into_iter()
        .map(|name| LocalObjectRef { name })
        .collect();
    let mut status = serde_json::Map::new();
    status.insert("summary".into(), serde_json::json!(format!("0/{n}")));
    status.insert("objects".into(), serde_json::json!(objects));
    status.insert("secretRefs".into(), serde_json::json!(secret_refs));
    Report {
        verdict: Verdict::Ready {
            reason: REASON_REFERENCES_RESOLVED.into(),
            message: format!(
                "All references resolved; {n} platform object{} declared (platform sync not yet enabled)",
                if n == 1 { "" } else { "s" }
            ),
        },
        status,
        requeue_after: None,
    }
}

/// Checks what the CRD schema cannot: the interval parses.
pub fn validate(spec: &EnvironmentSpec) -> Result<std::time::Duration, ReconcileError> {
    parse_duration(&spec.interval).map_err(|e| ReconcileError::ValidateSpec {
        reason: "InvalidInterval",
        message: format!("spec.interval: {e}"),
    })
}

impl Reconciled for Environment {
    const CONTROLLER: &'static str = "environment";

    async fn apply(&self, ctx: &Context) -> Result<Report, ReconcileError> {
        if self.spec.suspend {
            return Ok(Report::suspended());
        }
        let interval = validate(&self.spec)?;
        // Observe.
        let namespace = self.namespace().ok_or(ReconcileError::Unidentified)?;
        let refs = references(&self.spec);
        let snapshot = Snapshot::read(&ctx.client, &namespace, &refs).await?;
        let missing = snapshot.missing(&refs);
        if !missing.is_empty() {
            return Err(ReconcileError::ResolveReferences(missing));
        }
        // Plan (pure). Act: the platform layer executes `plan` here once it lands.
        let plan = plan(&self.spec);
        tracing::debug!(%plan, "planned");
        // Report.
        let mut report = report(&self.spec, &plan);
        report.requeue_after = Some(interval);
        Ok(report)
    }

    async fn cleanup(&self, _ctx: &Context) -> Result<(), ReconcileError> {
        // Nothing was created on any platform yet, so there is nothing to delete; the
        // platform layer's deletion (honouring `deletionPolicy`) plugs in here.
        Ok(())
    }
}

/// Whether `env` references Secret `name` (used to map Secret changes to Environments).
pub fn references_secret(env: &Environment, name: &str) -> bool {
    references(&env.spec)
        .iter()
        .any(|r| r.kind == RefKind::Secret && r.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> EnvironmentSpec {
        serde_json::from_value(serde_json::json!({
            "credentials": {"render": {"name": "tokens", "key": "render"},
                            "supabase": {"name": "tokens"}},
            "render": {"ownerId": "own", "services": [
                {"name": "api", "type": "web", "image": "img", "envVars": [
                    {"name": "DB", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}},
                    {"name": "MODE", "value": "prod"}]}],
                "postgres": [{"name": "main", "plan": "basic"}]},
            "supabase": {"name": "proj", "organizationId": "org", "region": "us-east-1",
                "databasePasswordSecretRef": {"name": "supa", "key": "password"}}
        }))
        .unwrap()
    }

    #[test]
    fn every_secret_the_spec_names_is_a_reference_with_its_field() {
        let refs = references(&spec());
        let described: Vec<_> = refs
            .iter()
            .map(|r| {
                format!(
                    "{}:{}:{}",
                    r.name,
                    r.key.clone().unwrap_or_default(),
                    r.field
                )
            })
            .collect();
        assert_eq!(
            described,
            [
                "tokens:render:spec.credentials.render",
                "tokens:token:spec.credentials.supabase",
                "db:url:spec.render.services[0].envVars[0].valueFrom.secretKeyRef",
                "supa:password:spec.supabase.databasePasswordSecretRef",
            ]
        );
    }

    #[test]
    fn the_plan_lists_every_declared_platform_object() {
        let plan = plan(&spec());
        let names: Vec<_> = plan
            .objects
            .iter()
            .map(|o| format!("{}/{}/{}", o.platform, o.kind, o.name))
            .collect();
        assert_eq!(
            names,
            [
                "render/web/api",
                "render/postgres/main",
                "supabase/project/proj"
            ]
        );
        assert!(plan.to_string().starts_with("3 platform objects declared"));
    }

    #[test]
    fn the_report_is_ready_and_honest_about_pending_platform_work() {
        let spec = spec();
        let report = report(&spec, &plan(&spec));
        match &report.verdict {
            Verdict::Ready { reason, message } => {
                assert_eq!(reason, "ReferencesResolved");
                assert!(
                    message.starts_with("All references resolved; 3 platform objects declared")
                );
            }
            other => panic!("unexpected verdict {other:?}"),
        }
        assert_eq!(report.status["summary"], "0/3");
        assert_eq!(report.status["objects"][0]["state"], "Pending");
        assert_eq!(
            report.status["secretRefs"],
            serde_json::json!([{"name": "db"}, {"name": "supa"}, {"name": "tokens"}])
        );
    }

    #[test]
    fn an_unparseable_interval_is_an_invalid_spec() {
        let mut spec = spec();
        spec.interval = "soon".into();
        let err = validate(&spec).unwrap_err();
        assert!(err.is_permanent());
        assert_eq!(err.kind(), "InvalidInterval");
    }

    #[test]
    fn secret_changes_map_to_the_environments_that_name_them() {
        let env = Environment::new("web", spec());
        assert!(references_secret(&env, "supa"));
        assert!(!references_secret(&env, "unrelated"));
    }
}
