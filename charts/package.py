"""`make chart`: lint the chart strictly with Helm's own linter, then package it.

Usage: package.py CHART_DIR DEST_DIR
"""

import sys

import helm_python as helm


def main(chart: str, destination: str) -> int:
    report = helm.lint(chart, strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    for message in report["messages"]:
        print(f"lint: {message['path']}: {message['error']}".rstrip())
    if problems or report["errors"]:
        print(f"{chart}: helm lint --strict failed", file=sys.stderr)
        return 1
    print(helm.package(chart, destination=destination))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
