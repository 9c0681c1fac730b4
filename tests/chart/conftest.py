"""Shared helpers for the Helm chart tests: render the chart with the real Helm engine
(helm-python-sdk embeds Helm v4 as a library, no binary and no cluster), run the built
`tether` binary, and find promtool.

Environment:
  TETHER_BIN      use this tether binary instead of `cargo build` + $CARGO_TARGET_DIR/debug/tether
  PROMTOOL        use this promtool instead of the one on PATH or in .venv/bin
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tether"
HERE = Path(__file__).resolve().parent
RELEASE = "tether"
NAMESPACE = "tether-system"


def full_values() -> dict[str, Any]:
    """tests/chart/values-full.yaml: every feature switched on."""
    return yaml.safe_load((HERE / "values-full.yaml").read_text())


def render(values: dict[str, Any] | None = None, *, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """Every object the chart renders for `values` (NOTES.txt left out), in template order."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values or {}, name=RELEASE, namespace=namespace, is_install=True)
    objects: list[dict[str, Any]] = []
    for path in sorted(manifests):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(manifests[path]):
            if doc:
                doc.setdefault("__template", path)
                objects.append(doc)
    return objects


def notes(values: dict[str, Any] | None = None, *, namespace: str = NAMESPACE) -> str:
    """What `helm install` prints after installing (templates/NOTES.txt)."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values or {}, name=RELEASE, namespace=namespace, is_install=True)
    return next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))


def strip(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without the test's bookkeeping key."""
    return {k: v for k, v in obj.items() if k != "__template"}


def only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The one object of `kind`; fails when there are none or several."""
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected exactly one {kind}, found {len(found)}"
    return found[0]


def kinds(objects: list[dict[str, Any]]) -> list[str]:
    return sorted(o["kind"] for o in objects)


@pytest.fixture(scope="session")
def tether_bin() -> Path:
    """The tether binary: $TETHER_BIN, or `cargo build` then $CARGO_TARGET_DIR/debug/tether."""
    override = os.environ.get("TETHER_BIN")
    if override:
        return Path(override)
    subprocess.run(["cargo", "build", "--quiet", "--bin", "tether"], cwd=ROOT, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", "target"))
    if not target.is_absolute():
        target = ROOT / target
    return target / "debug" / "tether"


def run_tether(binary: Path, *args: str) -> str:
    """Runs `tether ARGS`, returning stdout; a missing subcommand fails with a clear message."""
    done = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        command = "tether " + " ".join(args)
        if "unrecognized subcommand" in done.stderr or "unexpected argument" in done.stderr:
            pytest.fail(
                f"`{command}` does not exist in {binary} yet: the `controller` branch adds it "
                "(see INTERFACES.md), and this test passes once that branch is merged.\n"
                f"{done.stderr}"
            )
        pytest.fail(f"`{command}` failed with exit code {done.returncode}:\n{done.stderr}")
    return done.stdout


@pytest.fixture(scope="session")
def promtool() -> str:
    """promtool from $PROMTOOL, PATH or .venv/bin (where `make chart-test` puts it)."""
    candidates = [os.environ.get("PROMTOOL"), shutil.which("promtool"), str(ROOT / ".venv" / "bin" / "promtool")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return str(Path(candidate).resolve())
    pytest.fail("promtool not found: `make chart-test` installs it (tests/chart/install-promtool.sh)")
