"""The Helm chart renders, lints and validates; its objects are hardened; its flags, RBAC and
CRDs match what the tether binary actually does."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from conftest import CHART, HERE, NAMESPACE, ROOT, full_values, kinds, only, render, run_tether, strip

# The Kubernetes versions Tether supports, 1.30 to 1.36 (README, docs/helm.md; Chart.yaml's
# kubeVersion refuses older ones): every rendered object must be valid for the oldest and the
# newest, and for the newest kubernetes-validate knows.
KUBE_VERSIONS = ["1.30.0", "1.36.0", "1.37.0"]

# Value sets the chart must render cleanly for.
NAMESPACED_WITHOUT_LEADER_ELECTION = {
    "watchNamespace": "apps",
    "leaderElection": {"enabled": False, "leaseName": "tether-controller"},
    "serviceAccount": {"create": False, "name": "existing-sa"},
}
# The platform sandbox, as the README's walkthrough installs it (plus the NetworkPolicies).
SANDBOX = {"sandbox": {"enabled": True}, "networkPolicy": {"enabled": True}}
VALUE_SETS = {
    "defaults": {},
    "full": full_values(),
    "namespaced-without-leader-election": NAMESPACED_WITHOUT_LEADER_ELECTION,
    "sandbox": SANDBOX,
}

MONITORING_SCHEMA = json.loads((HERE / "schemas" / "monitoring.coreos.com-v1.json").read_text())


def deployment(values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The controller's Deployment (with sandbox.enabled there is a second one)."""
    found = [o for o in render(values) if o["kind"] == "Deployment" and o["metadata"]["name"] == "tether"]
    assert len(found) == 1, f"expected exactly one controller Deployment, found {len(found)}"
    return found[0]


def container(values: dict[str, Any] | None = None) -> dict[str, Any]:
    containers = deployment(values)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


# --- Chart metadata and lint ---------------------------------------------------------------


def test_chart_app_version_is_the_crate_version() -> None:
    crate = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == crate


def test_chart_kube_version_starts_at_the_oldest_supported_kubernetes() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">={KUBE_VERSIONS[0]}-0"


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_helm_lint_strict_reports_no_warning_or_error(values_name: str) -> None:
    report = helm.lint(CHART, VALUE_SETS[values_name], strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], json.dumps(report, indent=2)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replica": 2}, "additional properties 'replica' not allowed"),
        ({"leaderElection": {"enabled": True, "leaseName": "x", "leaseNamespace": "y"}}, "leaseNamespace"),
        ({"logFormat": "xml"}, "logFormat"),
        ({"minRetryInterval": "5 seconds"}, "minRetryInterval"),
        ({"concurrency": 0}, "concurrency"),
        ({"metrics": {"port": 70000}}, "port"),
        ({"watchNamespace": "Not_A_Namespace"}, "watchNamespace"),
        ({"image": {"repository": "x", "digest": "latest"}}, "digest"),
        ({"podDisruptionBudget": {"minAvailable": "half"}}, "minAvailable"),
        ({"sandbox": {"enabled": "yes"}}, "/sandbox/enabled"),
        ({"sandbox": {"port": 8081}}, "additional properties 'port' not allowed"),
        ({"sandbox": {"ports": {"heroku": 8085}}}, "additional properties 'heroku' not allowed"),
        ({"sandbox": {"ports": {"render": 70000}}}, "/sandbox/ports/render"),
        ({"sandbox": {"ports": {"vercel": 0}}}, "/sandbox/ports/vercel"),
        ({"sandbox": {"timeScale": 0}}, "/sandbox/timeScale"),
        ({"sandbox": {"timeScale": "fast"}}, "/sandbox/timeScale"),
        ({"sandbox": {"resources": {"limit": {}}}}, "additional properties 'limit' not allowed"),
    ],
)
def test_values_schema_rejects_misspelt_keys_and_bad_values(values: dict[str, Any], complaint: str) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as error:
        chart.validate_schema(values)
    assert complaint in str(error.value)


def test_values_schema_accepts_the_defaults_and_the_full_values() -> None:
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema({})
        chart.validate_schema(full_values())


# --- Every object is a valid Kubernetes object -----------------------------------------------


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_rendered_object_validates_as_its_kubernetes_type(values_name: str, kube_version: str) -> None:
    objects = render(VALUE_SETS[values_name])
    assert objects
    for obj in objects:
        body = strip(obj)
        where = f"{obj['__template']}: {obj['kind']}/{obj['metadata']['name']}"
        if obj["apiVersion"] == "monitoring.coreos.com/v1":
            schema = {**MONITORING_SCHEMA, "$ref": f"#/$defs/{obj['kind']}"}
            errors = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(body)]
            assert errors == [], f"{where}: {errors}"
            continue
        try:
            kubernetes_validate.validate(body, kube_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            pytest.fail(f"{where} is not a valid {obj['kind']} for Kubernetes {kube_version}: {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            pytest.fail(f"{where}: {error.message}")


def test_every_namespaced_object_is_in_the_release_namespace_unless_configured_elsewhere() -> None:
    objects = render(full_values())
    placed = {(o["kind"], o["metadata"]["name"]): o["metadata"].get("namespace") for o in objects}
    assert placed[("Deployment", "tether")] == NAMESPACE
    assert placed[("Role", "tether")] == "apps"
    assert placed[("Role", "tether-leader-election")] == "tether-leases"
    assert placed[("ConfigMap", "tether-dashboard")] == "monitoring"
    for (kind, name), namespace in placed.items():
        assert namespace is not None or kind.startswith("Cluster"), f"{kind}/{name} has no namespace"


# --- Deployment ------------------------------------------------------------------------------


def test_default_install_is_one_hardened_replica_with_probes_and_resources() -> None:
    deploy = deployment()
    pod = deploy["spec"]["template"]["spec"]
    ctr = container()
    assert deploy["spec"]["replicas"] == 1
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sec = ctr["securityContext"]
    assert sec["runAsNonRoot"] is True
    assert sec["readOnlyRootFilesystem"] is True
    assert sec["allowPrivilegeEscalation"] is False
    assert sec["capabilities"] == {"drop": ["ALL"]}
    assert sec["seccompProfile"] == {"type": "RuntimeDefault"}
    assert ctr["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert ctr["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert ctr["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]
    assert ctr["resources"]["requests"] and ctr["resources"]["limits"]["memory"]
    assert ctr["image"] == "ghcr.io/tether-dev/tether:0.1.0"
    assert pod["serviceAccountName"] == "tether"


def test_pod_namespace_comes_from_the_downward_api() -> None:
    env = {e["name"]: e for e in container()["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_image_digest_wins_over_the_tag() -> None:
    assert container(full_values())["image"] == (
        "registry.example.com/platform/tether@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    )
    assert container({"image": {"repository": "r/tether", "tag": "v9"}})["image"] == "r/tether:v9"


def test_controller_args_map_one_to_one_onto_the_values() -> None:
    assert container(full_values())["args"] == [
        "controller",
        "--namespace=apps",
        "--selector=tether.dev/shard=a,team!=legacy",
        "--log-level=tether=debug,kube=warn",
        "--log-format=text",
        "--metrics-addr=0.0.0.0:9090",
        "--leader-elect=true",
        "--lease-name=tether-shard-a",
        "--lease-namespace=tether-leases",
        "--lease-duration=30s",
        "--lease-renew-deadline=20s",
        "--lease-retry-period=5s",
        "--min-retry-interval=2s",
        "--max-retry-interval=10m",
        "--concurrency=8",
        "--pending-interval=10s",
        "--observe-max-age=1m",
        "--supabase-database-url=postgres://postgres@{ref}.pooler.internal:6543/postgres",
        "--fly-url=https://fly.proxy.internal",
        "--render-url=https://render.proxy.internal/v1",
        "--supabase-url=https://supabase.proxy.internal",
        "--vercel-url=https://vercel.proxy.internal",
        "--health-check-via=http://edge.internal:8080",
    ]


def test_default_args_watch_all_namespaces_with_leader_election_on() -> None:
    assert container()["args"] == [
        "controller",
        "--log-level=info",
        "--log-format=json",
        "--metrics-addr=0.0.0.0:8080",
        "--leader-elect=true",
        "--lease-name=tether-controller",
        "--lease-duration=15s",
        "--lease-renew-deadline=10s",
        "--lease-retry-period=2s",
        "--min-retry-interval=5s",
        "--max-retry-interval=5m",
        "--concurrency=4",
        "--pending-interval=15s",
        "--observe-max-age=30s",
    ]


def test_leader_election_can_be_switched_off_for_a_single_replica() -> None:
    args = container(NAMESPACED_WITHOUT_LEADER_ELECTION)["args"]
    assert "--leader-elect=false" in args


def flags_of(args: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in args if a.startswith("--")}


def test_the_chart_sets_every_flag_of_tether_controller(tether_bin: Path) -> None:
    help_text = run_tether(tether_bin, "controller", "--help")
    accepted = set(re.findall(r"^\s+(?:-\w, )?(--[a-z][a-z0-9-]*)", help_text, re.MULTILINE)) - {"--help", "--version"}
    assert accepted, f"no flags found in `tether controller --help`:\n{help_text}"
    assert flags_of(container(full_values())["args"]) == accepted


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_the_binary_accepts_every_argument_the_chart_renders(
    values_name: str, tether_bin: Path, tmp_path: Path
) -> None:
    # With no cluster to reach, `tether controller` gets as far as building its Kubernetes
    # client: every flag has been parsed and checked by then, so a value the binary rejects
    # fails here with clap's "invalid value" or the controller's own start-up check instead.
    ctr = container(VALUE_SETS[values_name])
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "missing")}
    env |= {e["name"]: e.get("value", "tether-system") for e in ctr["env"]}
    done = subprocess.run(
        [str(tether_bin), *ctr["args"]], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert "failed to configure the Kubernetes client" in done.stderr, done.stderr


@pytest.mark.parametrize(("minimum", "maximum"), [("10m", "5m"), ("1h", "59m"), ("2s", "1500ms"), ("90m1ms", "1h30m")])
def test_a_minimum_retry_interval_above_the_maximum_is_refused(minimum: str, maximum: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=f"minRetryInterval \\({minimum}\\) exceeds maxRetryInterval"):
        render({"minRetryInterval": minimum, "maxRetryInterval": maximum})


def test_equal_or_ordered_retry_intervals_in_different_units_render() -> None:
    for minimum, maximum in [("1h30m", "90m"), ("250ms", "1s"), ("5s", "5m")]:
        assert container({"minRetryInterval": minimum, "maxRetryInterval": maximum})["args"]


# --- Replicas, PodDisruptionBudget -----------------------------------------------------------


def test_a_disruption_budget_exists_only_with_more_than_one_replica() -> None:
    assert "PodDisruptionBudget" not in kinds(render())
    pdb = only(render(full_values()), "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 2
    assert pdb["spec"]["selector"] == deployment(full_values())["spec"]["selector"]


def test_several_replicas_without_leader_election_are_refused() -> None:
    with pytest.raises(helm.HelmRenderError, match="replicas > 1 needs leaderElection.enabled=true"):
        render({"replicas": 2, "leaderElection": {"enabled": False, "leaseName": "x"}})


# --- Optional objects ------------------------------------------------------------------------


def test_defaults_render_only_the_controller_its_account_rbac_and_metrics_service() -> None:
    assert kinds(render()) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]


def test_full_values_render_every_optional_object() -> None:
    assert kinds(render(full_values())) == [
        "ConfigMap",
        "Deployment",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "PrometheusRule",
        "Role",
        "Role",
        "RoleBinding",
        "RoleBinding",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]


def test_the_service_monitor_scrapes_the_metrics_service_port() -> None:
    objects = render(full_values())
    service, monitor = only(objects, "Service"), only(objects, "ServiceMonitor")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s", "scrapeTimeout": "5s"}
    ]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


def test_the_prometheus_rule_is_the_alerts_file() -> None:
    rule = only(render(full_values()), "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())


def test_the_dashboard_config_map_carries_the_sidecar_label_and_the_dashboard() -> None:
    configmap = only(render(full_values()), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Tether"}
    dashboard = json.loads(configmap["data"]["tether.json"])
    assert dashboard == json.loads((CHART / "files" / "dashboard.json").read_text())
    assert dashboard["uid"] == "tether-overview"


def test_the_network_policy_allows_dns_the_api_server_https_postgres_and_metrics_scrapes_only() -> None:
    policy = only(render(full_values()), "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["podSelector"] == deployment(full_values())["spec"]["selector"]
    assert policy["ingress"] == [
        {
            "ports": [{"port": "metrics", "protocol": "TCP"}],
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        }
    ]
    egress = [([(p["port"], p["protocol"]) for p in rule["ports"]], rule.get("to")) for rule in policy["egress"]]
    assert egress == [
        ([(53, "UDP"), (53, "TCP")], None),
        ([(6443, "TCP")], [{"ipBlock": {"cidr": "10.0.0.10/32"}}, {"ipBlock": {"cidr": "10.0.0.11/32"}}]),
        ([(443, "TCP")], None),
        ([(5432, "TCP"), (6543, "TCP")], None),
        ([(3128, "TCP")], [{"ipBlock": {"cidr": "10.1.0.0/16"}}]),
    ]


# --- RBAC ------------------------------------------------------------------------------------

Triple = tuple[str, str, str]


def granted(objects: list[dict[str, Any]], service_account: str) -> set[Triple]:
    """(apiGroup, resource, verb) granted to the service account through the rendered bindings."""
    roles = {
        (o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")): o
        for o in objects
        if o["kind"] in ("Role", "ClusterRole")
    }
    triples: set[Triple] = set()
    for binding in (o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        subjects = binding["subjects"]
        assert subjects == [{"kind": "ServiceAccount", "name": service_account, "namespace": NAMESPACE}]
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace") if ref["kind"] == "Role" else None
        role = roles[(ref["kind"], ref["name"], namespace)]
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        assert "*" not in (group, resource, verb), f"wildcard in {role['metadata']['name']}"
                        triples.add((group, resource, verb))
    return triples


def triples_of_tether_rbac(tether_bin: Path) -> set[Triple]:
    rules = json.loads(run_tether(tether_bin, "rbac"))
    return {(rule["apiGroup"], rule["resource"], verb) for rule in rules for verb in rule["verbs"]}


def show(triples: set[Triple]) -> str:
    return "\n".join(f"  {g or 'core'} {r} {v}" for g, r, v in sorted(triples)) or "  (none)"


@pytest.mark.parametrize("values_name", ["defaults", "full"])
def test_rbac_grants_exactly_the_api_calls_the_controllers_make(values_name: str, tether_bin: Path) -> None:
    values = VALUE_SETS[values_name]
    account = values.get("serviceAccount", {}).get("name") or "tether"
    chart, code = granted(render(values), account), triples_of_tether_rbac(tether_bin)
    assert chart == code, f"missing from the chart:\n{show(code - chart)}\nnot used by the code:\n{show(chart - code)}"


def test_without_leader_election_rbac_drops_only_the_lease_rules(tether_bin: Path) -> None:
    chart = granted(render(NAMESPACED_WITHOUT_LEADER_ELECTION), "existing-sa")
    code = {t for t in triples_of_tether_rbac(tether_bin) if t[:2] != ("coordination.k8s.io", "leases")}
    assert chart == code, f"missing:\n{show(code - chart)}\nextra:\n{show(chart - code)}"


def test_rbac_is_cluster_wide_by_default_and_namespaced_when_watching_one_namespace() -> None:
    default = render()
    assert only(default, "ClusterRole")["metadata"]["name"] == "tether"
    assert only(default, "ClusterRoleBinding")["roleRef"]["kind"] == "ClusterRole"
    assert only(default, "Role")["metadata"]["namespace"] == NAMESPACE  # the Lease
    namespaced = render(NAMESPACED_WITHOUT_LEADER_ELECTION)
    assert "ClusterRole" not in kinds(namespaced) and "ClusterRoleBinding" not in kinds(namespaced)
    assert only(namespaced, "Role")["metadata"]["namespace"] == "apps"
    assert only(namespaced, "RoleBinding")["metadata"]["namespace"] == "apps"


def test_the_lease_role_covers_only_leases_in_the_lease_namespace() -> None:
    objects = render(full_values())
    lease_role = next(o for o in objects if o["kind"] == "Role" and o["metadata"]["name"].endswith("leader-election"))
    assert lease_role["metadata"]["namespace"] == "tether-leases"
    assert [(r["apiGroups"], r["resources"]) for r in lease_role["rules"]] == [(["coordination.k8s.io"], ["leases"])]


def test_no_rbac_objects_when_rbac_create_is_off() -> None:
    objects = render({"rbac": {"create": False}})
    assert not {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"} & set(kinds(objects))


# --- CRDs ------------------------------------------------------------------------------------


def test_the_charts_crds_equal_the_repositorys_crds() -> None:
    repo = {p.name: p.read_text() for p in sorted((ROOT / "crds").glob("*.yaml"))}
    assert repo, "crds/ is empty: run `make crds`"
    with helm.Chart.load(CHART) as chart:
        shipped = {Path(c["name"]).name: c["data"] for c in chart.crds}
    assert sorted(shipped) == sorted(repo), "charts/tether/crds differs from crds/: run `make crds`"
    for name, text in repo.items():
        assert shipped[name] == text, f"charts/tether/crds/{name} differs from crds/{name}: run `make crds`"
    for text in shipped.values():
        crd = yaml.safe_load(text)
        assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["group"] == "tether.dev"
        kubernetes_validate.validate(crd, KUBE_VERSIONS[0], strict=True)


def test_crds_are_not_templates_so_helm_keeps_them_on_uninstall() -> None:
    assert all(o["kind"] != "CustomResourceDefinition" for o in render(full_values()))
