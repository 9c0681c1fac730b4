"""The Helm guide's examples are real: every Tether object in docs/helm.md validates against
the CRDs in crds/ (with unknown fields treated as errors, since the API server would silently
drop them), and the `--set` keys it uses exist in values.yaml."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest
import yaml
from conftest import CHART, ROOT

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
