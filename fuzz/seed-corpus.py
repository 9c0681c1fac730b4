#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets from the manifests in the repository:
config/samples and tests/fixtures (valid and invalid). Run from the repository root, then
minimise with `cargo fuzz cmin` (see README, "Fuzzing"). Needs PyYAML."""

import hashlib
import json
import pathlib
import re

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
MANIFESTS = sorted(
    [*ROOT.glob("config/samples/*.yaml"), *ROOT.glob("tests/fixtures/**/*.yaml"),
     *ROOT.glob("tests/fixtures/**/*.yaml.base")]
)


def write(target: str, data: bytes) -> None:
    out = ROOT / "fuzz" / "corpus" / target
    out.mkdir(parents=True, exist_ok=True)
    (out / hashlib.sha1(data).hexdigest()).write_bytes(data)


def as_json(doc) -> bytes:
    return json.dumps(doc, default=str, separators=(",", ":")).encode()


for path in MANIFESTS:
    text = path.read_text()
    write("manifest_stream", text.encode())
    # `# old: <file>` in a fixture: the document is an update of that file's object.
    old = re.search(r"^# old: (\S+)", text, re.M)
    old_doc = yaml.safe_load((path.parent / old.group(1)).read_text()) if old else None
    for doc in yaml.safe_load_all(text):
        if doc is None:
            continue
        write("admit_json", as_json(doc))
        if old_doc is not None:
            write("admit_json", as_json(old_doc) + b"\0" + as_json(doc))
