# Tether — the front door. `make help` lists the targets.
SHELL := bash
CARGO ?= cargo
TETHER_BIN = $(or $(CARGO_TARGET_DIR),target)/debug/tether

.PHONY: help build run test crds lint bench

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

build: ## Build the tether binary (debug)
	$(CARGO) build --locked

run: build ## Run Tether standalone against config/samples (no cluster, no accounts)
	$(TETHER_BIN) run --sandbox --manifests config/samples

test: ## Run every test (unit, end-to-end, Postgres, chart)
	$(CARGO) nextest run --locked --no-fail-fast

crds: build ## Regenerate crds/ (and the chart's copy) from the Rust types
	$(TETHER_BIN) crds --out-dir crds

lint: ## cargo fmt --check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

bench: ## Run the benchmarks and print their numbers
	$(CARGO) bench --locked
