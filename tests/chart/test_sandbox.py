"""The platform sandbox (`sandbox.enabled`): off by default; on, a hardened `tether sandbox`
Deployment and a Service with one port per platform, the controller pointed at that Service
unless a `platformEndpoints` URL is set, NetworkPolicies that let only the controller in, and
NOTES that say it is not the real platforms. The binary accepts what the chart renders and
serves the published tokens on the rendered ports."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
from conftest import NAMESPACE, notes, only, render, run_tether

PLATFORMS = ["render", "vercel", "fly", "supabase"]
PORTS = {"render": 8081, "vercel": 8082, "fly": 8083, "supabase": 8084}
SANDBOX = {"sandbox": {"enabled": True}}
SERVICE_HOST = f"tether-sandbox.{NAMESPACE}.svc"


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return named(objects, "Deployment", name)["spec"]["template"]["spec"]


def the_container(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    containers = pod_spec(objects, name)["containers"]
    assert len(containers) == 1
    return containers[0]


def platform_urls(args: list[str]) -> dict[str, str]:
    """--<platform>-url=URL flags of the controller, by platform."""
    urls = {}
    for arg in args:
        match = re.fullmatch(r"--(render|vercel|fly|supabase)-url=(.+)", arg)
        if match:
            urls[match.group(1)] = match.group(2)
    return urls


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


# --- Off by default ---------------------------------------------------------------------------


def test_the_sandbox_is_off_by_default_and_the_controller_talks_to_the_real_platforms() -> None:
    objects = render()
    assert not [o["metadata"]["name"] for o in objects if "sandbox" in o["metadata"]["name"]]
    assert platform_urls(the_container(objects, "tether")["args"]) == {}
    assert "SANDBOX" not in notes()


# --- The controller is pointed at the sandbox ---------------------------------------------------


def test_with_the_sandbox_the_controller_talks_to_its_service_port_by_port() -> None:
    objects = render(SANDBOX)
    urls = platform_urls(the_container(objects, "tether")["args"])
    assert urls == {
        "render": f"http://{SERVICE_HOST}:8081/v1",
        "vercel": f"http://{SERVICE_HOST}:8082",
        "fly": f"http://{SERVICE_HOST}:8083",
        "supabase": f"http://{SERVICE_HOST}:8084",
    }
    service = named(objects, "Service", "tether-sandbox")
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    for platform, url in urls.items():
        assert url.split("/")[2] == f"{SERVICE_HOST}:{ports[platform]}"


def test_a_platform_endpoint_set_explicitly_wins_over_the_sandbox() -> None:
    values = {**SANDBOX, "platformEndpoints": {"vercel": "https://vercel.proxy.internal"}}
    urls = platform_urls(the_container(render(values), "tether")["args"])
    assert urls["vercel"] == "https://vercel.proxy.internal"
    assert urls["render"] == f"http://{SERVICE_HOST}:8081/v1"
    text = notes(values)
    assert "imitations of Render, Fly.io, Supabase " in text


def test_other_ports_move_the_container_the_service_and_the_controllers_urls_together() -> None:
    ports = {"render": 9001, "vercel": 9002, "fly": 9003, "supabase": 9004}
    objects = render({"sandbox": {"enabled": True, "ports": ports, "timeScale": 2.5}})
    ctr = the_container(objects, "tether-sandbox")
    assert {p["name"]: p["containerPort"] for p in ctr["ports"]} == {**ports, "edge": 8085}
    assert ctr["args"][2:6] == [f"--{p}-port={ports[p]}" for p in PLATFORMS]
    assert "--time-scale=2.5" in ctr["args"]
    service = named(objects, "Service", "tether-sandbox")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {**ports, "edge": 8085}
    assert platform_urls(the_container(objects, "tether")["args"])["fly"] == f"http://{SERVICE_HOST}:9003"


def test_two_platforms_on_one_port_are_refused() -> None:
    with pytest.raises(helm.HelmRenderError, match="sandbox.ports must be four different ports"):
        render({"sandbox": {"enabled": True, "ports": {"vercel": 8081}}})
    with pytest.raises(helm.HelmRenderError, match="sandbox.edgePort 8084 is one of sandbox.ports"):
        render({"sandbox": {"enabled": True, "edgePort": 8084}})


def test_with_the_sandbox_the_controller_sends_health_checks_to_the_sandboxs_app_edge() -> None:
    args = the_container(render(SANDBOX), "tether")["args"]
    assert f"--health-check-via=http://{SERVICE_HOST}:8085" in args
    plain = the_container(render(), "tether")["args"]
    assert not [a for a in plain if a.startswith("--health-check-via")]


# --- The sandbox's Deployment and Service -------------------------------------------------------


def test_the_sandbox_runs_the_controllers_image_as_tether_sandbox_with_the_published_tokens() -> None:
    objects = render(SANDBOX)
    deploy = named(objects, "Deployment", "tether-sandbox")
    assert deploy["metadata"]["namespace"] == NAMESPACE
    assert deploy["spec"]["replicas"] == 1, "the imitated state lives in one pod's memory"
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}
    ctr = the_container(objects, "tether-sandbox")
    assert ctr["image"] == the_container(objects, "tether")["image"]
    assert "command" not in ctr, "the image's entry point is /tether"
    assert ctr["args"] == [
        "sandbox",
        "--addr=0.0.0.0",
        "--render-port=8081",
        "--vercel-port=8082",
        "--fly-port=8083",
        "--supabase-port=8084",
        "--edge-port=8085",
        "--sample-tokens",
        "--time-scale=1",
    ]
    assert ctr["ports"] == [{"name": p, "containerPort": PORTS[p], "protocol": "TCP"} for p in PLATFORMS] + [
        {"name": "edge", "containerPort": 8085, "protocol": "TCP"}
    ]
    assert ctr["readinessProbe"]["tcpSocket"] == {"port": "render"}
    assert ctr["livenessProbe"]["tcpSocket"] == {"port": "render"}
    assert ctr["resources"]["requests"] and ctr["resources"]["limits"]["memory"]


def test_the_sandbox_is_hardened_like_the_controller_and_gets_no_api_token() -> None:
    objects = render(SANDBOX)
    sandbox, controller = pod_spec(objects, "tether-sandbox"), pod_spec(objects, "tether")
    assert sandbox["securityContext"] == controller["securityContext"]
    assert sandbox["securityContext"]["runAsNonRoot"] is True
    hardened = the_container(objects, "tether-sandbox")["securityContext"]
    assert hardened == the_container(objects, "tether")["securityContext"]
    assert hardened["readOnlyRootFilesystem"] is True
    assert sandbox["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in sandbox


def test_the_sandbox_service_has_one_port_per_platform_and_selects_only_the_sandbox_pod() -> None:
    objects = render(SANDBOX)
    service = named(objects, "Service", "tether-sandbox")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": p, "port": PORTS[p], "targetPort": p, "protocol": "TCP"} for p in PLATFORMS
    ] + [{"name": "edge", "port": 8085, "targetPort": "edge", "protocol": "TCP"}]
    sandbox_pod = named(objects, "Deployment", "tether-sandbox")["spec"]["template"]["metadata"]["labels"]
    controller_pod = named(objects, "Deployment", "tether")["spec"]["template"]["metadata"]["labels"]
    assert selects(service["spec"]["selector"], sandbox_pod)
    assert not selects(service["spec"]["selector"], controller_pod)
    # None of the controller's selectors picks the sandbox's pod.
    assert not selects(named(objects, "Deployment", "tether")["spec"]["selector"]["matchLabels"], sandbox_pod)
    assert not selects(named(objects, "Service", "tether-metrics")["spec"]["selector"], sandbox_pod)
    labels = named(objects, "Deployment", "tether-sandbox")["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "sandbox"


def test_only_the_controller_may_reach_the_sandbox_and_the_sandbox_reaches_nothing() -> None:
    objects = render({**SANDBOX, "networkPolicy": {"enabled": True}})
    sandbox_pod = named(objects, "Deployment", "tether-sandbox")["spec"]["template"]["metadata"]["labels"]
    controller_pod = named(objects, "Deployment", "tether")["spec"]["template"]["metadata"]["labels"]
    controller_egress = named(objects, "NetworkPolicy", "tether")["spec"]["egress"]
    to_sandbox = [r for r in controller_egress if r.get("to") and "podSelector" in r["to"][0]]
    assert len(to_sandbox) == 1
    assert selects(to_sandbox[0]["to"][0]["podSelector"]["matchLabels"], sandbox_pod)
    assert to_sandbox[0]["ports"] == [{"port": PORTS[p], "protocol": "TCP"} for p in PLATFORMS] + [
        {"port": 8085, "protocol": "TCP"}
    ]
    policy = named(objects, "NetworkPolicy", "tether-sandbox")["spec"]
    assert selects(policy["podSelector"]["matchLabels"], sandbox_pod)
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["egress"] == []
    [ingress] = policy["ingress"]
    [peer] = ingress["from"]
    assert selects(peer["podSelector"]["matchLabels"], controller_pod)
    assert not selects(peer["podSelector"]["matchLabels"], sandbox_pod)
    assert ingress["ports"] == [{"port": p, "protocol": "TCP"} for p in [*PLATFORMS, "edge"]]
    # Without the sandbox, no rule or policy for it.
    plain = render({"networkPolicy": {"enabled": True}})
    assert only(plain, "NetworkPolicy")["metadata"]["name"] == "tether"


def test_the_notes_say_plainly_that_it_is_a_sandbox_not_the_real_platforms() -> None:
    text = notes(SANDBOX)
    assert "THIS IS A SANDBOX, NOT THE REAL PLATFORMS" in text
    assert "imitations of Render, Vercel, Fly.io, Supabase " in text
    assert "no real security" in text and "try Tether only" in text
    assert f"kubectl -n {NAMESPACE} rollout status deployment/tether-sandbox" in text
    assert "kubectl apply -f config/cluster/" in text
    assert "sandbox.enabled=false" in text


# --- The binary accepts what the chart renders ---------------------------------------------------


def test_every_flag_the_chart_gives_the_sandbox_is_a_flag_of_tether_sandbox(tether_bin: Path) -> None:
    help_text = run_tether(tether_bin, "sandbox", "--help")
    accepted = set(re.findall(r"^\s+(?:-\w, )?(--[a-z][a-z0-9-]*)", help_text, re.MULTILINE))
    rendered = {a.split("=", 1)[0] for a in the_container(render(SANDBOX), "tether-sandbox")["args"][1:]}
    assert rendered <= accepted, f"not flags of `tether sandbox`: {rendered - accepted}"
    assert "no real security" in help_text


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def status_of(url: str, token: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_the_sandbox_serves_the_published_tokens_on_the_rendered_ports_and_stops_on_sigterm(
    tether_bin: Path,
) -> None:
    *platform_ports, edge_port = free_ports(5)
    ports = dict(zip(PLATFORMS, platform_ports))
    values = {"sandbox": {"enabled": True, "ports": ports, "edgePort": edge_port}}
    args = the_container(render(values), "tether-sandbox")["args"]
    process = subprocess.Popen([str(tether_bin), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(60, process.kill)
    watchdog.start()
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline().split() for _ in [*PLATFORMS, "edge"]]
        expected = [
            [p, f"http://0.0.0.0:{ports[p]}" + ("/v1" if p == "render" else ""), f"sandbox-{p}-token"]
            for p in PLATFORMS
        ] + [["edge", f"http://0.0.0.0:{edge_port}"]]
        assert lines == expected, process.stderr.read() if process.poll() is not None else lines
        render_api = f"http://127.0.0.1:{ports['render']}/v1/services"
        assert status_of(render_api, "sandbox-render-token") == 200
        assert status_of(render_api, "sandbox-vercel-token") == 401
        # Kubernetes stops a pod with SIGTERM: the sandbox exits at once, not after the grace period.
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
        assert process.stderr is not None
        assert "no real security" in process.stderr.read()
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
