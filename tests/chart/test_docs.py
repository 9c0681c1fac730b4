"""The Helm guide's examples are real: every Tether object in docs/helm.md validates against
the CRDs in crds/ (with unknown fields treated as errors, since the API server would silently
drop them), and the `--set` keys it uses exist in values.yaml. The README's walkthrough
installs what the chart renders: the image it builds, the Deployments it waits for.
(tests/e2e/cli/walkthrough.rs checks the rest of it: its manifests, its Environment becoming
Ready on the sandbox.)"""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest
import yaml
from conftest import CHART, NAMESPACE, ROOT, render

GUIDE = ROOT / "docs" / "helm.md"


def yaml_blocks() -> list[Any]:
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", GUIDE.read_text(), re.DOTALL)]


def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) → the served version's openAPIV3Schema, strict below the top level
    (apiVersion, kind and metadata are the API server's, not the CRD's)."""
    schemas = {}
    for path in (ROOT / "crds").glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            api_version = f"{crd['spec']['group']}/{version['name']}"
            schema = version["schema"]["openAPIV3Schema"]
            strict = {name: no_unknown_fields(sub) for name, sub in schema["properties"].items()}
            schemas[(api_version, crd["spec"]["names"]["kind"])] = {**schema, "properties": strict}
    return schemas


def no_unknown_fields(schema: Any) -> Any:
    """The schema with `additionalProperties: false` wherever the API server would prune."""
    if isinstance(schema, list):
        return [no_unknown_fields(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: no_unknown_fields(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def test_the_guides_tether_objects_validate_against_the_crds() -> None:
    schemas = crd_schemas()
    objects = [b for b in yaml_blocks() if isinstance(b, dict) and "kind" in b]
    assert objects, "docs/helm.md has no example object"
    for obj in objects:
        schema = schemas.get((obj["apiVersion"], obj["kind"]))
        assert schema, f"no CRD for {obj['apiVersion']} {obj['kind']} in crds/"
        errors = [
            f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in jsonschema.Draft7Validator(schema).iter_errors(obj)
        ]
        assert errors == [], f"{obj['kind']} {obj['metadata']['name']}: {errors}"


def test_a_misspelt_field_in_an_example_would_be_caught() -> None:
    schema = crd_schemas()[("tether.dev/v1alpha1", "Environment")]
    typo = {
        "apiVersion": "tether.dev/v1alpha1",
        "kind": "Environment",
        "metadata": {"name": "x"},
        "spec": {"driftPolcy": "Correct"},
    }
    assert any("driftPolcy" in e.message for e in jsonschema.Draft7Validator(schema).iter_errors(typo))


@pytest.mark.parametrize("key", sorted(set(re.findall(r"--set ([A-Za-z.]+)=", GUIDE.read_text()))))
def test_every_value_the_guide_sets_exists_in_values_yaml(key: str) -> None:
    node: Any = yaml.safe_load((CHART / "values.yaml").read_text())
    for part in key.split("."):
        assert isinstance(node, dict) and part in node, f"docs/helm.md sets {key}, which values.yaml lacks"
        node = node[part]


README = ROOT / "README.md"


def readme_walkthrough_commands() -> list[list[str]]:
    """The commands of the README's Helm section's sh blocks, continuation lines joined and
    comments dropped, as words."""
    text = README.read_text()
    section = text.split("## Installing in a cluster with Helm\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL):
        joined = re.sub(r"\\\n", " ", block)
        for line in joined.splitlines():
            words = line.split(" #", 1)[0].split()
            if words:
                commands.append(words)
    return commands


def set_values(command: list[str]) -> dict[str, Any]:
    """--set a.b=c of a helm command as nested values (true/false as booleans)."""
    values: dict[str, Any] = {}
    for flag, setting in zip(command, command[1:]):
        if flag != "--set":
            continue
        key, value = setting.split("=", 1)
        *parents, leaf = key.split(".")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = {"true": True, "false": False}.get(value, value)
    return values


def test_the_readme_walkthrough_installs_the_image_it_builds_and_waits_for_deployments_the_chart_renders() -> None:
    commands = readme_walkthrough_commands()
    install = next(c for c in commands if c[:2] == ["helm", "install"])
    assert install[install.index("-n") + 1] == NAMESPACE
    objects = render(set_values(install), namespace=NAMESPACE)
    images = {
        c["image"]
        for o in objects
        if o["kind"] == "Deployment"
        for c in o["spec"]["template"]["spec"]["containers"]
    }
    built = next(c for c in commands if c[:2] == ["docker", "build"])
    loaded = next(c for c in commands if c[:3] == ["kind", "load", "docker-image"])
    assert images == {built[built.index("-t") + 1]} == {loaded[3]}
    deployments = {o["metadata"]["name"] for o in objects if o["kind"] == "Deployment"}
    waited = {
        c[-1].removeprefix("deployment/")
        for c in commands
        if c[0] == "kubectl" and "rollout" in c and c[c.index("-n") + 1] == NAMESPACE
    }
    assert waited == deployments == {"tether", "tether-sandbox"}
