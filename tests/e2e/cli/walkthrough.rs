//! The README's "Installing in a cluster with Helm" walkthrough stays true: its manifests
//! (`config/cluster/`) pass `tether validate` and the embedded API, the files, chart and
//! `--set` values it names exist, its Secret holds the tokens the chart's sandbox accepts,
//! and its own kubectl commands bring the Environment to Ready against the sandbox started
//! as the chart starts it (`tether sandbox --sample-tokens`) with the controller flags the
//! chart gives (`--<platform>-url` pointing at the sandbox, every other flag at its default).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use clap::Parser;
use serde_json::Value;
use tether::controller::Health;
use tether::controller::cli::ControllerArgs;
use tether::platform::Platform;
use tether::sandbox::cli::SandboxArgs;
use tether::telemetry::MetricsRegistry;
use tokio_util::sync::CancellationToken;

use crate::support::{KubectlOutput, TestCluster};

const SECTION: &str = "## Installing in a cluster with Helm";
const MANIFESTS: &str = "config/cluster/";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn yaml(path: &str) -> Value {
    serde_saphyr::from_str(&read(path)).unwrap_or_else(|e| panic!("parse {path}: {e}"))
}

/// The README's walkthrough: from its heading to the next `## ` heading.
fn section() -> String {
    let readme = read("README.md");
    let start = readme
        .find(&format!("{SECTION}\n"))
        .unwrap_or_else(|| panic!("README.md has no section {SECTION:?}"));
    let rest = &readme[start + SECTION.len()..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    rest[..end].to_owned()
}

/// The commands of the section's `sh` blocks, one per command: continuation lines joined,
/// comments dropped, split into words (the walkthrough quotes nothing).
fn commands() -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    for line in section().lines() {
        let line = line.trim();
        if line.starts_with("```") {
            in_block = line == "```sh";
            continue;
        }
        if !in_block {
            continue;
        }
        let code = line.split(" #").next().unwrap_or("").trim_end();
        if let Some(head) = code.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(code);
        let words: Vec<String> = pending.split_whitespace().map(str::to_owned).collect();
        if !words.is_empty() {
            commands.push(words);
        }
        pending.clear();
    }
    assert!(!commands.is_empty(), "the walkthrough has no sh block");
    commands
}

fn commands_of(program: &str) -> Vec<Vec<String>> {
    commands().into_iter().filter(|c| c[0] == program).collect()
}

/// The value following `flag` (`-n apps`, `-f dir`) or joined to it (`--timeout=5m`).
fn flag<'a>(command: &'a [String], flag: &str) -> Option<&'a str> {
    command.iter().enumerate().find_map(|(i, word)| {
        if word == flag {
            command.get(i + 1).map(String::as_str)
        } else {
            word.strip_prefix(flag)?.strip_prefix('=')
        }
    })
}

/// The `--set key=value` pairs of a helm command.
fn set_values(command: &[String]) -> Vec<(String, String)> {
    command
        .windows(2)
        .filter(|w| w[0] == "--set")
        .map(|w| {
            let (key, value) = w[1].split_once('=').expect("--set key=value");
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

/// Every document of every file in config/cluster/, in file order, with its file name.
fn manifests() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(MANIFESTS))
        .expect("config/cluster/ exists")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "config/cluster/ has no manifest");
    let mut documents = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&file).expect("read manifest");
        for doc in serde_saphyr::from_multiple::<Value>(&text)
            .unwrap_or_else(|e| panic!("parse {name}: {e}"))
        {
            if !doc.is_null() {
                documents.push((name.clone(), doc));
            }
        }
    }
    documents
}

fn find<'a>(docs: &'a [(String, Value)], kind: &str, namespace: &str, name: &str) -> &'a Value {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| {
            d["kind"] == kind
                && d["metadata"]["name"] == name
                && d["metadata"]["namespace"].as_str().unwrap_or("") == namespace
        })
        .unwrap_or_else(|| panic!("config/cluster/ has no {kind} {namespace}/{name}"))
}

/// The walkthrough's `kubectl -n NS wait environment/NAME` command and its NS and NAME.
fn wait_command() -> (Vec<String>, String, String) {
    let wait = commands_of("kubectl")
        .into_iter()
        .find(|c| c.iter().any(|w| w == "wait"))
        .expect("the walkthrough waits for its Environment");
    let target = wait
        .iter()
        .find_map(|w| w.strip_prefix("environment/"))
        .expect("kubectl wait environment/<name>")
        .to_owned();
    let namespace = flag(&wait, "-n")
        .expect("kubectl -n <namespace> wait")
        .to_owned();
    assert!(
        wait.iter().any(|w| w == "--for=condition=Ready"),
        "{wait:?}"
    );
    (wait, namespace, target)
}

fn ok(out: KubectlOutput) -> String {
    assert!(
        out.success,
        "kubectl failed: {}\n{}",
        out.stderr, out.stdout
    );
    out.stdout
}

#[test]
fn the_walkthrough_manifests_pass_tether_validate() {
    let out = Command::new(env!("CARGO_BIN_EXE_tether"))
        .arg("validate")
        .arg(root().join(MANIFESTS))
        .output()
        .expect("tether runs");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "tether validate failed:\n{printed}");
    let documents = manifests().len();
    assert!(
        printed.contains(&format!("{documents} document(s) checked, 0 problem(s)")),
        "{printed}"
    );
}

#[tokio::test]
async fn every_walkthrough_manifest_applies_server_side_to_the_embedded_api() {
    let cluster = TestCluster::start().await;
    let mut stream = String::new();
    for (_, doc) in manifests() {
        stream.push_str("---\n");
        stream.push_str(&serde_json::to_string(&doc).unwrap());
        stream.push('\n');
    }
    let out = cluster
        .kubectl_with_stdin(&["apply", "--server-side", "-f", "-"], Some(&stream))
        .await;
    // Nothing was pruned: every field is one the CRDs know.
    assert!(!out.stderr.contains("unknown field"), "{}", out.stderr);
    let stdout = ok(out);
    for (file, doc) in manifests() {
        let kind = doc["kind"].as_str().unwrap().to_lowercase();
        let name = doc["metadata"]["name"].as_str().unwrap();
        assert!(
            stdout.lines().any(|l| l.starts_with(&kind)
                && l.contains(&format!("/{name} serverside-applied"))),
            "{file}: {kind} {name} not applied:\n{stdout}"
        );
    }
}

#[test]
fn the_walkthrough_names_versions_files_chart_values_and_tokens_that_exist() {
    let text = section();
    // The supported Kubernetes versions, and the chart refusing older ones.
    assert!(text.contains("Kubernetes 1.30 to 1.36"), "{text}");
    let chart = yaml("charts/tether/Chart.yaml");
    assert_eq!(chart["kubeVersion"], ">=1.30.0-0");

    // `helm install|upgrade` use the package `make chart` writes, and values the chart has.
    let values = yaml("charts/tether/values.yaml");
    let package = format!("dist/tether-{}.tgz", chart["version"].as_str().unwrap());
    let helm = commands_of("helm");
    let install = helm
        .iter()
        .find(|c| c[1] == "install")
        .expect("helm install");
    assert!(
        set_values(install).contains(&("sandbox.enabled".into(), "true".into())),
        "{install:?}"
    );
    assert!(
        install.iter().any(|w| w == "--create-namespace"),
        "{install:?}"
    );
    for command in helm
        .iter()
        .filter(|c| c[1] == "install" || c[1] == "upgrade")
    {
        assert_eq!(command[3], package, "{command:?}");
        for (key, _) in set_values(command) {
            let mut node = &values;
            for part in key.split('.') {
                node = node
                    .get(part)
                    .unwrap_or_else(|| panic!("README sets {key}, which values.yaml lacks"));
            }
        }
    }
    assert!(
        commands_of("make").contains(&vec!["make".to_owned(), "chart".to_owned()]),
        "the walkthrough packages the chart with `make chart`"
    );

    // Every file or directory kubectl applies exists, config/cluster/ among them.
    let applied: Vec<String> = commands_of("kubectl")
        .iter()
        .filter(|c| c.iter().any(|w| w == "apply"))
        .filter_map(|c| flag(c, "-f").map(str::to_owned))
        .collect();
    assert!(applied.iter().any(|p| p == MANIFESTS), "{applied:?}");
    for path in &applied {
        assert!(
            root().join(path).exists(),
            "README applies {path}, which does not exist"
        );
    }
    assert!(text.contains(&format!("[`{MANIFESTS}`]({MANIFESTS})")));

    // The Environment it waits for is in config/cluster/, in the namespace created there,
    // and its credentials Secrets hold the tokens the chart's sandbox accepts.
    let (_, namespace, name) = wait_command();
    let docs = manifests();
    find(&docs, "Namespace", "", &namespace);
    let environment = find(&docs, "Environment", &namespace, &name);
    let credentials = environment["spec"]["credentials"]
        .as_object()
        .expect("spec.credentials");
    assert!(!credentials.is_empty());
    for (platform, reference) in credentials {
        let platform = Platform::ALL
            .into_iter()
            .find(|p| p.to_string() == *platform)
            .unwrap_or_else(|| panic!("unknown platform {platform}"));
        assert!(
            environment["spec"][platform.to_string()].is_object(),
            "credentials for {platform} but no spec.{platform}"
        );
        let secret = find(
            &docs,
            "Secret",
            &namespace,
            reference["name"].as_str().unwrap(),
        );
        let key = reference["key"].as_str().unwrap_or("token");
        assert_eq!(
            secret["stringData"][key].as_str(),
            Some(tether::sandbox::sample_token(platform).expose()),
            "Secret {}: key {key} must hold the sandbox's sample token",
            reference["name"]
        );
    }
}

/// `tether controller` as the chart runs it with `sandbox.enabled=true` (every flag at its
/// default but the platform URLs), pointed at `sandbox`.
fn controller_as_the_chart_runs_it(sandbox: &tether::sandbox::SandboxHandle) -> ControllerArgs {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ControllerArgs,
    }
    let mut argv = vec!["controller".to_owned()];
    for (platform, url, _) in sandbox.endpoints() {
        argv.push(format!("--{platform}-url={url}"));
    }
    Cli::try_parse_from(argv).expect("controller flags").args
}

#[tokio::test]
async fn the_walkthrough_kubectl_commands_bring_its_environment_to_ready_on_the_sandbox() {
    tether::install_crypto_provider();
    let cluster = TestCluster::start().await;
    let stop = CancellationToken::new();

    // `tether sandbox --sample-tokens` (the chart adds --addr and fixed ports for its Service).
    #[derive(Parser)]
    struct SandboxCli {
        #[command(flatten)]
        args: SandboxArgs,
    }
    let sandbox_args = SandboxCli::try_parse_from(["sandbox", "--sample-tokens"])
        .unwrap()
        .args;
    let sandbox = tether::sandbox::start(sandbox_args.config(), stop.clone())
        .await
        .expect("the sandbox starts");
    let config = controller_as_the_chart_runs_it(&sandbox)
        .config()
        .expect("controller config");
    let client = cluster.client();
    let controllers = tokio::spawn(tether::controller::run(
        client,
        config,
        MetricsRegistry::new(),
        Health::new(),
        stop.clone(),
    ));

    // The walkthrough's kubectl commands on config/cluster/ and its Environment, as written,
    // but for the wait's timeout (the test's kubectl runs are capped at a minute).
    let (_, namespace, name) = wait_command();
    let mut ran = BTreeMap::new();
    for command in commands_of("kubectl") {
        let touches_walkthrough = command.iter().any(|w| w == MANIFESTS)
            || (flag(&command, "-n") == Some(namespace.as_str())
                && !command.iter().any(|w| w == "delete"));
        if !touches_walkthrough {
            continue;
        }
        let args: Vec<String> = command[1..]
            .iter()
            .map(|w| {
                if w == MANIFESTS {
                    root().join(MANIFESTS).display().to_string()
                } else if w.starts_with("--timeout=") {
                    "--timeout=55s".to_owned()
                } else {
                    w.clone()
                }
            })
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let started = std::time::Instant::now();
        let stdout = ok(cluster.kubectl(&args).await);
        ran.insert(command.join(" "), (started.elapsed(), stdout));
    }
    let wait = ran
        .iter()
        .find(|(c, _)| c.contains(" wait "))
        .expect("the wait ran");
    assert!(
        wait.1
            .1
            .contains(&format!("environment.tether.dev/{name} condition met")),
        "{ran:#?}"
    );
    assert!(
        ran.keys().any(|c| c.contains("apply -f config/cluster/")),
        "{ran:#?}"
    );

    // What `kubectl get` shows: every object of the Environment ready.
    let summary = ok(cluster
        .kubectl(&[
            "-n",
            &namespace,
            "get",
            &format!("environment/{name}"),
            "-o",
            "jsonpath={.status.summary}",
        ])
        .await);
    let (ready, total) = summary.split_once('/').expect("summary n/m");
    assert_eq!(ready, total, "{summary}");

    // The first step back to the real platforms: deleting the Environment while the
    // sandbox runs removes it (its objects are cleaned up on the sandbox).
    let delete = commands_of("kubectl")
        .into_iter()
        .find(|c| c.iter().any(|w| w == "delete") && c.iter().any(|w| w == "environment"))
        .expect("the walkthrough deletes its Environment");
    let args: Vec<&str> = delete[1..].iter().map(String::as_str).collect();
    let out = ok(cluster.kubectl(&args).await);
    assert!(out.contains(&format!("\"{name}\" deleted")), "{out}");

    stop.cancel();
    let _ = controllers.await;
    sandbox.stopped().await;
    cluster.stop().await;
}
