//! The Vercel driver end to end (embedded API + sandbox + controllers): projects created
//! from nothing to Ready, one changed field written alone, removal per deletion policy,
//! adoption of an existing project, drift corrected or reported, and a rotated Secret
//! re-applied without its value showing anywhere. Every exchange the driver made is checked
//! against Vercel's OpenAPI spec.

use crate::support::sync::{SyncHarness, condition_is, object};
use serde_json::{Value, json};
use tether::platform::{Platform, VercelClient, VercelProjectSpec, VercelProjects};
use tether::sandbox::Exchange;

const TEAM: &str = "team_sandbox";
const SECRET_V1: &str = "vercel-e2e-secret-value-one";
const SECRET_V2: &str = "vercel-e2e-secret-value-two";

fn project(name: &str) -> Value {
    json!({
        "name": name,
        "framework": "nextjs",
        "gitRepository": {"type": "github", "repo": format!("acme/{name}")},
        "buildCommand": "pnpm build",
        "nodeVersion": "20.x",
        "envVars": [
            {"name": "API_URL", "value": "https://api.example.com", "targets": ["production", "preview"]},
            {"name": "API_URL", "value": "https://feature.example.com", "targets": ["preview"], "gitBranch": "feature"},
            {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "vercel-keys", "key": "api"}}, "targets": ["production"]},
        ],
        "domains": [
            {"name": format!("www.{name}.example.com")},
            {"name": format!("{name}.example.com"), "redirect": format!("www.{name}.example.com")},
        ],
    })
}

fn manifest(name: &str, projects: Vec<Value>, extra: Value) -> Value {
    let mut spec = json!({
        "credentials": {"vercel": {"name": "tether-sandbox-vercel"}},
        "vercel": {"teamId": TEAM, "projects": projects},
        "interval": "1s",
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    json!({
        "apiVersion": "tether.dev/v1alpha1",
        "kind": "Environment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    })
}

async fn start() -> SyncHarness {
    let h = SyncHarness::start().await;
    h.put_secret("vercel-keys", &[("api", SECRET_V1)]).await;
    h
}

/// A client of the sandbox, as a person with the same token would use it.
fn client(h: &SyncHarness) -> VercelClient {
    VercelClient::new(h.http(Platform::Vercel), Some(TEAM.into()))
}

fn vercel_writes(h: &SyncHarness, from: usize) -> Vec<Exchange> {
    h.sandbox
        .exchanges()
        .into_iter()
        .filter(|e| e.platform == Platform::Vercel && e.method != "GET")
        .skip(from)
        .collect()
}

fn write_count(h: &SyncHarness) -> usize {
    vercel_writes(h, 0).len()
}

/// Waits until the Environment's status reflects its current generation and is Ready.
async fn ready_for_generation(h: &SyncHarness, name: &str) -> Value {
    h.wait_ready(name).await
}

#[tokio::test]
async fn a_project_goes_from_nothing_to_ready_and_a_changed_field_is_the_only_write() {
    let h = start().await;
    h.apply(manifest("web", vec![project("site")], json!({})))
        .await;
    let env = ready_for_generation(&h, "web").await;
    let status = object(&env, "vercel", "project", "site").expect("status entry");
    assert_eq!(status["ready"], true);
    assert_eq!(status["url"], "https://www.site.example.com");
    assert!(
        status["secretFingerprints"]["envVars.API_KEY@production"]
            .as_str()
            .is_some_and(|f| f.starts_with("hmac-sha256:"))
    );
    let id = status["id"].as_str().unwrap().to_string();

    let site = client(&h).get_project(&id).await.unwrap();
    assert_eq!(site.node_version, "20.x");
    assert_eq!(site.build_command.as_deref(), Some("pnpm build"));
    assert_eq!(site.env_vars.len(), 3);
    let domains = client(&h).list_domains(&id).await.unwrap();
    assert_eq!(domains.len(), 2);
    assert!(h.events("web").await.iter().any(|e| e.1 == "Created"));

    // Steady state: resyncs write nothing.
    let writes = write_count(&h);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(write_count(&h), writes, "an unchanged spec never writes");

    let mut changed = project("site");
    changed["buildCommand"] = json!("pnpm build:prod");
    h.apply(manifest("web", vec![changed], json!({}))).await;
    let env = ready_for_generation(&h, "web").await;
    let writes_after = vercel_writes(&h, writes);
    assert_eq!(writes_after.len(), 1, "{writes_after:?}");
    assert_eq!(writes_after[0].method, "PATCH");
    assert_eq!(writes_after[0].path, format!("/v9/projects/{id}"));
    assert_eq!(
        writes_after[0].request_body,
        Some(json!({"buildCommand": "pnpm build:prod"}))
    );
    assert!(condition_is(&env, "DriftDetected", "False"));
    crate::contract::Contract::load(Platform::Vercel).assert_all(&h.sandbox.exchanges());
    h.stop().await;
}

#[tokio::test]
async fn a_removed_project_is_deleted_and_under_orphan_left_in_place() {
    let h = start().await;
    h.apply(manifest(
        "web",
        vec![project("keep"), project("drop")],
        json!({}),
    ))
    .await;
    ready_for_generation(&h, "web").await;
    h.apply(manifest("web", vec![project("keep")], json!({})))
        .await;
    let env = ready_for_generation(&h, "web").await;
    assert!(object(&env, "vercel", "project", "drop").is_none());
    let names: Vec<String> = client(&h)
        .list_projects()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["keep"], "the removed project is deleted");
    assert!(h.events("web").await.iter().any(|e| e.1 == "Deleted"));

    h.apply(manifest(
        "orphans",
        vec![project("stays")],
        json!({"deletionPolicy": "Orphan"}),
    ))
    .await;
    ready_for_generation(&h, "orphans").await;
    h.apply(manifest(
        "orphans",
        vec![],
        json!({"deletionPolicy": "Orphan"}),
    ))
    .await;
    let env = ready_for_generation(&h, "orphans").await;
    assert!(object(&env, "vercel", "project", "stays").is_none());
    assert!(
        client(&h).get_project("stays").await.is_ok(),
        "orphaned, not deleted"
    );
    assert!(h.events("orphans").await.iter().any(|e| e.1 == "Orphaned"));

    // Deleting the Environment deletes what it still manages (stateless projects).
    h.delete("web").await;
    assert!(client(&h).get_project("keep").await.is_err());
    crate::contract::Contract::load(Platform::Vercel).assert_all(&h.sandbox.exchanges());
    h.stop().await;
}

#[tokio::test]
async fn an_existing_project_is_adopted_not_duplicated() {
    let h = start().await;
    let existing = client(&h)
        .ensure_project(&VercelProjectSpec {
            name: "site".into(),
            framework: Some("nextjs".into()),
            git_repository: Some(("github".into(), "acme/site".into())),
            build_command: Some("npm run build".into()),
            ..VercelProjectSpec::default()
        })
        .await
        .unwrap()
        .object;
    h.apply(manifest("web", vec![project("site")], json!({})))
        .await;
    let env = ready_for_generation(&h, "web").await;
    let status = object(&env, "vercel", "project", "site").unwrap();
    assert_eq!(status["id"], existing.id.as_str());
    let projects = client(&h).list_projects().await.unwrap();
    assert_eq!(projects.len(), 1, "adopted, not duplicated");
    assert_eq!(projects[0].build_command.as_deref(), Some("pnpm build"));
    assert_eq!(projects[0].env_vars.len(), 3);
    assert_eq!(
        h.requests(Platform::Vercel)
            .iter()
            .filter(|r| *r == "POST /v11/projects")
            .count(),
        1,
        "only the test's own create: none for a project seen in the list"
    );
    assert!(h.events("web").await.iter().any(|e| e.1 == "Adopted"));
    crate::contract::Contract::load(Platform::Vercel).assert_all(&h.sandbox.exchanges());
    h.stop().await;
}

#[tokio::test]
async fn drift_in_settings_env_vars_and_domains_is_corrected_under_correct() {
    let h = start().await;
    h.apply(manifest("web", vec![project("site")], json!({})))
        .await;
    let env = ready_for_generation(&h, "web").await;
    let id = object(&env, "vercel", "project", "site").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    h.edit(
        Platform::Vercel,
        "project",
        "site",
        "buildCommand",
        json!("make"),
    )
    .await;
    h.edit(
        Platform::Vercel,
        "envVar",
        "site",
        "API_URL@preview#feature",
        json!("https://edited.example.com"),
    )
    .await;
    h.edit(
        Platform::Vercel,
        "domain",
        "site",
        "site.example.com",
        Value::Null,
    )
    .await;
    let client = client(&h);
    crate::support::eventually(crate::support::sync::WAIT, || {
        let client = client.clone();
        let id = id.clone();
        async move {
            let project = client.get_project(&id).await.ok()?;
            let domains = client.list_domains(&id).await.ok()?;
            let feature = project
                .env_vars
                .iter()
                .find(|v| v.git_branch.as_deref() == Some("feature"))?;
            (project.build_command.as_deref() == Some("pnpm build")
                && feature.value.as_deref() == Some("https://feature.example.com")
                && domains.iter().any(|d| {
                    d.name == "site.example.com"
                        && d.redirect.as_deref() == Some("www.site.example.com")
                }))
            .then_some(())
        }
    })
    .await;
    h.wait_events("web", &["DriftDetected", "DriftCorrected"])
        .await;
    let env = h
        .wait_for("web", "drift cleared", |env| {
            condition_is(env, "DriftDetected", "False")
        })
        .await;
    assert!(
        object(&env, "vercel", "project", "site").unwrap()["drift"].is_null(),
        "corrected drift is not left in status"
    );
    assert!(
        h.metrics()
            .await
            .contains(r#"tether_drift_corrected_total{kind="project",platform="vercel"}"#)
    );
    crate::contract::Contract::load(Platform::Vercel).assert_all(&h.sandbox.exchanges());
    h.stop().await;
}

#[tokio::test]
async fn drift_is_only_reported_under_report() {
    let h = start().await;
    h.apply(manifest(
        "web",
        vec![project("site")],
        json!({"driftPolicy": "Report"}),
    ))
    .await;
    let env = ready_for_generation(&h, "web").await;
    let id = object(&env, "vercel", "project", "site").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let writes = write_count(&h);
    h.edit(
        Platform::Vercel,
        "project",
        "site",
        "nodeVersion",
        json!("18.x"),
    )
    .await;
    let env = h
        .wait_for("web", "DriftDetected=True", |env| {
            condition_is(env, "DriftDetected", "True")
        })
        .await;
    assert_eq!(
        object(&env, "vercel", "project", "site").unwrap()["drift"],
        json!(["nodeVersion"])
    );
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(write_count(&h), writes, "Report never writes");
    assert_eq!(
        client(&h).get_project(&id).await.unwrap().node_version,
        "18.x"
    );
    crate::contract::Contract::load(Platform::Vercel).assert_all(&h.sandbox.exchanges());
    h.stop().await;
}

#[tokio::test]
async fn rotating_a_secret_re_applies_it_and_no_secret_value_is_visible() {
    let h = start().await;
    h.apply(manifest("web", vec![project("site")], json!({})))
        .await;
    let env = ready_for_generation(&h, "web").await;
    let before = object(&env, "vercel", "project", "site").unwrap()["secretFingerprints"]
        ["envVars.API_KEY@production"]
        .clone();
    let writes = write_count(&h);
    h.put_secret("vercel-keys", &[("api", SECRET_V2)]).await;
    let env = h
        .wait_for("web", "a new fingerprint", |env| {
            object(env, "vercel", "project", "site")
                .is_some_and(|o| o["secretFingerprints"]["envVars.API_KEY@production"] != before)
        })
        .await;
    assert!(
        condition_is(&env, "DriftDetected", "False"),
        "a rotation is not drift"
    );
    let rotation = vercel_writes(&h, writes);
    assert_eq!(rotation.len(), 1, "{rotation:?}");
    assert_eq!(rotation[0].method, "POST");
    let body = rotation[0].request_body.clone().unwrap();
    assert_eq!(body[0]["key"], "API_KEY");
    assert_eq!(body[0]["type"], "encrypted");
    assert_eq!(body[0]["value"], SECRET_V2, "the new value was written");
    let visible = h.everything_visible().await;
    for secret in [SECRET_V1, SECRET_V2] {
        assert!(!visible.contains(secret), "a secret value is visible");
    }
    crate::contract::Contract::load(Platform::Vercel).assert_all(&h.sandbox.exchanges());
    h.stop().await;
}

#[tokio::test]
async fn a_crash_between_the_create_and_its_status_write_leaves_one_project() {
    let mut h = start().await;
    // Requests take a while, so the controller is killed after Vercel created the project
    // and before the status recording it is written.
    h.sandbox.set_faults(
        Platform::Vercel,
        tether::sandbox::Faults {
            latency_ms: 400,
            ..tether::sandbox::Faults::default()
        },
    );
    h.apply(manifest("crash", vec![project("site")], json!({})))
        .await;
    crate::support::eventually(crate::support::sync::WAIT, || async {
        h.requests(Platform::Vercel)
            .iter()
            .any(|r| r == "POST /v11/projects")
            .then_some(())
    })
    .await;
    h.kill_controllers();
    let env = h.environments().get("crash").await.unwrap();
    assert!(
        !env.status
            .as_ref()
            .is_some_and(|s| s.objects.iter().any(|o| o.id.is_some())),
        "the status write came first"
    );
    h.sandbox
        .set_faults(Platform::Vercel, tether::sandbox::Faults::default());
    h.start_controllers().await;
    let env = ready_for_generation(&h, "crash").await;
    let creates = h
        .requests(Platform::Vercel)
        .iter()
        .filter(|r| *r == "POST /v11/projects")
        .count();
    assert_eq!(creates, 1, "the restarted controller adopted the project");
    let projects = client(&h).list_projects().await.unwrap();
    assert_eq!(projects.len(), 1);
    assert_eq!(
        object(&env, "vercel", "project", "site").unwrap()["id"],
        projects[0].id.as_str()
    );
    assert_eq!(projects[0].node_version, "20.x", "the rest was applied");
    assert_eq!(
        client(&h)
            .list_domains(&projects[0].id)
            .await
            .unwrap()
            .len(),
        2
    );
    crate::contract::Contract::load(Platform::Vercel).assert_all(&h.sandbox.exchanges());
    h.stop().await;
}
