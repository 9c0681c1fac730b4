#!/usr/bin/env bash
# Puts promtool into DIR (default .venv/bin) for the chart tests: the one on PATH if there is
# one, else only the promtool binary out of Debian's `prometheus` package (downloaded, not
# installed: no daemon, no service, no dependencies).
set -euo pipefail
dir=${1:-.venv/bin}
mkdir -p "$dir"
if existing=$(command -v promtool); then
  ln -sf "$existing" "$dir/promtool"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
if ! apt-get download prometheus >/dev/null 2>&1; then
  apt-get update -qq
  apt-get download prometheus
fi
dpkg-deb --fsys-tarfile prometheus_*.deb | tar -x ./usr/bin/promtool
cd - >/dev/null
install -m 0755 "$work/usr/bin/promtool" "$dir/promtool"
"$dir/promtool" --version | head -1
