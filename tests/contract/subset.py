#!/usr/bin/env python3
"""Cut the subset of each vendor OpenAPI spec that Tether uses into tests/contract/<platform>.json.

The full specs live outside the repository (../shared/provider-apis, or $TETHER_PROVIDER_APIS).
A fresh clone only has the committed subsets; the contract tests validate every recorded
request and response against them with a JSON Schema validator.

What the subset keeps: for each operation Tether calls (OPERATIONS below) its path, method,
parameters (path-level and operation-level, `$ref`s inlined), request body schema and response
schemas per status code, plus every `components/schemas` entry those reach. What it drops:
descriptions, summaries, examples, tags, security, `x-*` extensions.

OpenAPI 3.0 schemas are not quite JSON Schema; the translation done here:
- `nullable: true` becomes a `"null"` member of `type` (or `anyOf [.., {type: null}]` when the
  schema has no `type`), and `null` is added to an `enum`;
- boolean `exclusiveMinimum`/`exclusiveMaximum` become the numeric form;
- empty `anyOf`/`oneOf` lists are dropped;
- `oneOf` becomes `anyOf`: the vendors use `oneOf` for variants that overlap (no discriminator,
  no `additionalProperties: false`), so strict `oneOf` would reject payloads the vendor sends;
- `$ref`s that point outside `components/schemas` (Render refers into `#/paths/...`) are inlined.

Usage:
  subset.py [--specs DIR] [--out DIR]   write the subsets
  subset.py --check [--specs DIR]       exit 1 (and print a diff summary) when a committed
                                        subset differs from what the full spec gives now
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# (method, path) pairs Tether calls, per platform.
OPERATIONS = {
    "render": [
        ("get", "/services"),
        ("post", "/services"),
        ("get", "/services/{serviceId}"),
        ("patch", "/services/{serviceId}"),
        ("delete", "/services/{serviceId}"),
        ("get", "/services/{serviceId}/env-vars"),
        ("put", "/services/{serviceId}/env-vars/{envVarKey}"),
        ("delete", "/services/{serviceId}/env-vars/{envVarKey}"),
        ("get", "/services/{serviceId}/custom-domains"),
        ("post", "/services/{serviceId}/custom-domains"),
        ("delete", "/services/{serviceId}/custom-domains/{customDomainIdOrName}"),
        ("get", "/services/{serviceId}/deploys"),
        ("post", "/services/{serviceId}/deploys"),
        ("get", "/services/{serviceId}/deploys/{deployId}"),
        ("post", "/services/{serviceId}/rollback"),
        ("post", "/services/{serviceId}/scale"),
        ("get", "/key-value"),
        ("post", "/key-value"),
        ("get", "/key-value/{keyValueId}"),
        ("patch", "/key-value/{keyValueId}"),
        ("delete", "/key-value/{keyValueId}"),
        ("get", "/postgres"),
        ("post", "/postgres"),
        ("get", "/postgres/{postgresId}"),
        ("patch", "/postgres/{postgresId}"),
        ("delete", "/postgres/{postgresId}"),
    ],
    "vercel": [
        ("post", "/v11/projects"),
        ("get", "/v10/projects"),
        ("get", "/v9/projects/{idOrName}"),
        ("patch", "/v9/projects/{idOrName}"),
        ("delete", "/v9/projects/{idOrName}"),
        ("get", "/v10/projects/{idOrName}/env"),
        ("post", "/v10/projects/{idOrName}/env"),
        ("delete", "/v9/projects/{idOrName}/env/{id}"),
        ("get", "/v9/projects/{idOrName}/domains"),
        ("post", "/v10/projects/{idOrName}/domains"),
        ("patch", "/v9/projects/{idOrName}/domains/{domain}"),
        ("delete", "/v9/projects/{idOrName}/domains/{domain}"),
        ("post", "/v13/deployments"),
        ("get", "/v13/deployments/{idOrUrl}"),
        ("get", "/v6/deployments"),
        ("post", "/v10/projects/{projectId}/promote/{deploymentId}"),
    ],
    "fly": [
        ("get", "/v1/apps"),
        ("post", "/v1/apps"),
        ("get", "/v1/apps/{app_name}"),
        ("delete", "/v1/apps/{app_name}"),
        ("get", "/v1/apps/{app_name}/machines"),
        ("post", "/v1/apps/{app_name}/machines"),
        ("get", "/v1/apps/{app_name}/machines/{machine_id}"),
        ("post", "/v1/apps/{app_name}/machines/{machine_id}"),
        ("delete", "/v1/apps/{app_name}/machines/{machine_id}"),
        ("post", "/v1/apps/{app_name}/machines/{machine_id}/lease"),
        ("delete", "/v1/apps/{app_name}/machines/{machine_id}/lease"),
        ("post", "/v1/apps/{app_name}/machines/{machine_id}/stop"),
        ("post", "/v1/apps/{app_name}/machines/{machine_id}/start"),
        ("post", "/v1/apps/{app_name}/machines/{machine_id}/cordon"),
        ("post", "/v1/apps/{app_name}/machines/{machine_id}/uncordon"),
        ("get", "/v1/apps/{app_name}/secrets"),
        ("post", "/v1/apps/{app_name}/secrets"),
        ("delete", "/v1/apps/{app_name}/secrets/{secret_name}"),
        ("get", "/v1/apps/{app_name}/volumes"),
        ("post", "/v1/apps/{app_name}/volumes"),
        ("get", "/v1/apps/{app_name}/volumes/{volume_id}"),
        ("delete", "/v1/apps/{app_name}/volumes/{volume_id}"),
        ("put", "/v1/apps/{app_name}/volumes/{volume_id}/extend"),
        ("get", "/v1/apps/{app_name}/certificates"),
        ("post", "/v1/apps/{app_name}/certificates/acme"),
        ("delete", "/v1/apps/{app_name}/certificates/{hostname}"),
    ],
    "supabase": [
        ("post", "/v1/projects"),
        ("get", "/v1/projects/{ref}"),
        ("patch", "/v1/projects/{ref}"),
        ("delete", "/v1/projects/{ref}"),
        ("get", "/v1/organizations/{slug}/projects"),
        ("get", "/v1/projects/{ref}/secrets"),
        ("post", "/v1/projects/{ref}/secrets"),
        ("delete", "/v1/projects/{ref}/secrets"),
        ("get", "/v1/projects/{ref}/health"),
        ("post", "/v1/projects/{ref}/pause"),
        ("post", "/v1/projects/{ref}/restore"),
        ("get", "/v1/projects/{ref}/config/auth"),
        ("patch", "/v1/projects/{ref}/config/auth"),
        ("get", "/v1/projects/{ref}/postgrest"),
        ("patch", "/v1/projects/{ref}/postgrest"),
        ("patch", "/v1/projects/{ref}/billing/addons"),
        ("patch", "/v1/projects/{ref}/database/password"),
    ],
}

# Error bodies. Where an operation declares an error status without a body schema (Vercel
# declares most without content), or does not declare it at all, the body is checked against
# the platform's error schema: the named components schema, keyed by status or "default".
ERRORS = {
    "render": {"default": "error"},
    "vercel": {"default": "VercelNotFoundError", "429": "VercelRateLimitError"},
    "fly": {"default": "ErrorResponse"},
    # Supabase models no error bodies; its API and CLI use `{"message": string}` (inferred,
    # see provider-apis/README.md), so that shape is declared here.
    "supabase": {"default": {"type": "object", "required": ["message"],
                             "properties": {"message": {"type": "string"}}}},
}

DROP = {"description", "summary", "example", "examples", "tags", "security", "externalDocs",
        "operationId", "deprecated", "discriminator", "xml"}


def resolve_pointer(doc, ref):
    if not ref.startswith("#/"):
        raise SystemExit(f"external $ref not supported: {ref}")
    node = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        part = part.replace("%7B", "{").replace("%7D", "}")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


class Cutter:
    def __init__(self, doc):
        self.doc = doc
        self.schemas = {}
        self.pending = []

    def schema_ref(self, ref):
        name = ref[len("#/components/schemas/"):]
        if "/" in name:
            # A pointer into a schema's inside: inline it.
            return None
        if name not in self.schemas:
            self.schemas[name] = None
            self.pending.append(name)
        return {"$ref": ref}

    def clean(self, node, in_schema):
        if isinstance(node, list):
            return [self.clean(v, in_schema) for v in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            ref = node["$ref"]
            siblings = {k: v for k, v in node.items() if k != "$ref" and k not in DROP
                        and not k.startswith("x-")}
            if ref.startswith("#/components/schemas/"):
                kept = self.schema_ref(ref)
                if kept is not None:
                    if siblings:
                        out = self.translate(dict(kept, **self.clean(siblings, True)))
                        return out
                    return kept
            target = self.clean(resolve_pointer(self.doc, ref), in_schema)
            if siblings and isinstance(target, dict):
                target = dict(target, **self.clean(siblings, in_schema))
            return target
        out = {}
        for key, value in node.items():
            if key in DROP or key.startswith("x-"):
                continue
            if key == "properties" and isinstance(value, dict):
                out[key] = {k: self.clean(v, True) for k, v in value.items()}
            else:
                out[key] = self.clean(value, in_schema or key in ("schema", "items"))
        return self.translate(out) if in_schema else out

    @staticmethod
    def translate(s):
        if s.pop("nullable", False):
            if "type" in s:
                types = s["type"] if isinstance(s["type"], list) else [s["type"]]
                if "null" not in types:
                    types = types + ["null"]
                s["type"] = types
                if "enum" in s and None not in s["enum"]:
                    s["enum"] = s["enum"] + [None]
            else:
                inner = dict(s)
                s.clear()
                s["anyOf"] = [inner, {"type": "null"}]
        for key, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if isinstance(s.get(key), bool):
                if s[key] and bound in s:
                    s[key] = s.pop(bound)
                else:
                    del s[key]
        if "oneOf" in s:
            s["anyOf"] = s.pop("oneOf")
        # An empty `anyOf` (Vercel has a few) constrains nothing in OpenAPI's reading but is
        # invalid JSON Schema.
        if s.get("anyOf") == []:
            del s["anyOf"]
        return s

    def operation(self, path, method):
        item = self.doc["paths"][path]
        op = item[method]
        params = [self.clean(p, False) for p in item.get("parameters", [])]
        names = {(p["name"], p["in"]) for p in params}
        for p in op.get("parameters", []):
            p = self.clean(p, False)
            if (p["name"], p["in"]) in names:
                params = [q for q in params if (q["name"], q["in"]) != (p["name"], p["in"])]
            params.append(p)
        params.sort(key=lambda p: (p["in"], p["name"]))
        out = {"parameters": params}
        body = op.get("requestBody")
        if body is not None:
            body = self.clean(body, False)
            content = body.get("content", {})
            schema = content.get("application/json", {}).get("schema")
            out["requestBody"] = {"required": bool(body.get("required", False)),
                                  "schema": schema}
        responses = {}
        for code, response in op.get("responses", {}).items():
            response = self.clean(response, False)
            content = response.get("content") or {}
            schema = None
            for media in ("application/json", "application/json; charset=utf-8", "*/*"):
                if media in content:
                    schema = content[media].get("schema")
                    break
            responses[str(code)] = {"schema": schema,
                                    "content": sorted(content.keys())}
        out["responses"] = responses
        return out

    def finish(self):
        while self.pending:
            name = self.pending.pop()
            self.schemas[name] = self.clean(self.doc["components"]["schemas"][name], True)
        return dict(sorted(self.schemas.items()))


def subset(specs, platform):
    with open(os.path.join(specs, platform, "openapi.json")) as f:
        doc = json.load(f)
    cutter = Cutter(doc)
    paths = {}
    for method, path in OPERATIONS[platform]:
        paths.setdefault(path, {})[method] = cutter.operation(path, method)
    errors = {}
    for status, name in ERRORS.get(platform, {}).items():
        if isinstance(name, dict):
            errors[status] = name
        else:
            errors[status] = cutter.clean({"$ref": f"#/components/schemas/{name}"}, True)
    servers = [s.get("url") for s in doc.get("servers", [])]
    return {
        "platform": platform,
        "source": f"{platform}/openapi.json",
        "openapi": doc.get("openapi"),
        "servers": servers,
        "paths": dict(sorted(paths.items())),
        "errors": errors,
        "components": {"schemas": cutter.finish()},
    }


def render(obj):
    return json.dumps(obj, indent=1, sort_keys=True) + "\n"


def main():
    default_specs = os.environ.get("TETHER_PROVIDER_APIS",
                                   os.path.join(REPO, "..", "shared", "provider-apis"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", default=default_specs)
    parser.add_argument("--out", default=HERE)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    if not os.path.isdir(args.specs):
        print(f"full specs not found at {args.specs}; nothing to do", file=sys.stderr)
        return 3
    failed = False
    for platform in OPERATIONS:
        text = render(subset(args.specs, platform))
        target = os.path.join(args.out, f"{platform}.json")
        if args.check:
            try:
                with open(target) as f:
                    committed = f.read()
            except FileNotFoundError:
                committed = ""
            if committed != text:
                failed = True
                print(f"{target} differs from the subset of {args.specs}/{platform}/openapi.json; "
                      f"run tests/contract/subset.py to regenerate", file=sys.stderr)
        else:
            with open(target, "w") as f:
                f.write(text)
            print(f"wrote {target} ({len(text)} bytes)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
