"""The Dockerfile and the chart agree (no Docker engine here, so the image is checked by
reading): the toolchain is the crate's, the user is the one the chart runs as, the entry point
is what the chart's args expect, and the build context keeps what cargo needs."""

from __future__ import annotations

import json
import re
import tomllib

from conftest import ROOT, only, render

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions(name: str) -> list[str]:
    return re.findall(rf"^{name}\s+(.+)$", DOCKERFILE, re.MULTILINE)


def test_the_builder_uses_the_crates_rust_version_and_a_locked_release_build() -> None:
    rust = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["rust-version"]
    stages = instructions("FROM")
    assert len(stages) == 2, "a build stage and a runtime stage"
    assert stages[0] == f"rust:{rust}-bookworm AS build"
    assert "cargo build --release --locked" in DOCKERFILE


def test_the_runtime_is_distroless_and_runs_as_the_user_the_chart_sets() -> None:
    assert instructions("FROM")[1].startswith("gcr.io/distroless/")
    assert instructions("FROM")[1].endswith(":nonroot")
    pod = only(render(), "Deployment")["spec"]["template"]["spec"]
    user, group = instructions("USER")[-1].split(":")
    assert (int(user), int(group)) == (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"])
    assert int(user) != 0


def test_the_entry_point_is_tether_and_the_default_command_is_what_the_chart_runs() -> None:
    assert json.loads(instructions("ENTRYPOINT")[-1]) == ["/tether"]
    assert json.loads(instructions("CMD")[-1]) == ["controller"]
    container = only(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "command" not in container and container["args"][0] == "controller"
    assert instructions("EXPOSE") == [str(container["ports"][0]["containerPort"])]


def test_the_build_context_drops_outputs_but_keeps_what_cargo_builds_from() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {"target/", ".git/", ".venv/"} <= ignored
    for needed in ("src", "src/", "Cargo.toml", "Cargo.lock", "benches/", "tests/", ".cargo/", "tools/"):
        assert needed not in ignored, f".dockerignore drops {needed}, which cargo build needs"
