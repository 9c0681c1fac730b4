# Tether — the front door. `make help` lists the targets.
SHELL := bash
CARGO ?= cargo
TETHER_BIN = $(or $(CARGO_TARGET_DIR),target)/debug/tether

.PHONY: help build run test test-rust crds lint chaos bench fuzz clean-stale

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

build: ## Build the tether binary (debug)
	$(CARGO) build --locked

run: build ## Run Tether standalone against config/samples (no cluster, no accounts)
	$(TETHER_BIN) run --sandbox --manifests config/samples

test: test-rust chart-test ## Run every test (unit, end-to-end, Postgres, Helm chart)

test-rust: ## Run the Rust tests (unit, end-to-end against the embedded API, PostgreSQL)
	$(CARGO) nextest run --locked --no-fail-fast

crds: build ## Regenerate crds/ (and the chart's copy) from the Rust types
	$(TETHER_BIN) crds --out-dir crds --out-dir charts/tether/crds

lint: ## cargo fmt --check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

chaos: ## Kill the controllers 500 times while Environments are created (TETHER_CHAOS_KILLS, TETHER_CHAOS_SEED)
	TETHER_CHAOS_KILLS=$${TETHER_CHAOS_KILLS:-500} $(CARGO) nextest run --locked --no-capture -E 'test(/^sync::chaos::/)'

bench: ## Run the benchmarks and print their numbers
	$(CARGO) bench --locked

# cargo-fuzz targets (fuzz/): each runs FUZZ_SECONDS on the committed seeds (fuzz/corpus/, read
# only) plus what earlier runs found (fuzz/target/corpus/). cargo-fuzz passes nightly flags
# (-Zsanitizer=address): RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them. The fuzz crate
# builds into fuzz/target (instrumented: never in the main crate's CARGO_TARGET_DIR).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS = manifest_stream admit_json admit_mutated
FUZZ = env -u CARGO_TARGET_DIR RUSTC_BOOTSTRAP=1 $(CARGO) fuzz

fuzz: ## Fuzz each target for FUZZ_SECONDS (default 60); a crash fails and is saved in fuzz/artifacts/
	$(FUZZ) build
	@for t in $(FUZZ_TARGETS); do \
	  echo "== fuzz $$t for $(FUZZ_SECONDS) s"; \
	  mkdir -p fuzz/target/corpus/$$t fuzz/corpus/$$t && \
	  $(FUZZ) run $$t $(CURDIR)/fuzz/target/corpus/$$t $(CURDIR)/fuzz/corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -timeout=30 -print_final_stats=1 || exit 1; \
	done

clean-stale: ## Remove build output the current build no longer uses (old test executables, stale caches)
	CARGO=$(CARGO) tools/clean-stale

# --- Helm chart (charts/tether): Python tests in .venv, promtool from Debian's package ---
VENV ?= .venv
PYTHON ?= python3

$(VENV)/.chart-deps: tests/chart/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/chart/requirements.txt
	touch $@

$(VENV)/bin/promtool:
	tests/chart/install-promtool.sh $(VENV)/bin

.PHONY: chart chart-test
chart-test: build $(VENV)/.chart-deps $(VENV)/bin/promtool ## Test the Helm chart, alerts and dashboard (offline once .venv exists)
	TETHER_BIN=$(TETHER_BIN) PROMTOOL=$(VENV)/bin/promtool $(VENV)/bin/python -m pytest tests/chart -q

chart: $(VENV)/.chart-deps ## Lint the Helm chart strictly and package it into dist/
	$(VENV)/bin/python charts/package.py charts/tether dist
