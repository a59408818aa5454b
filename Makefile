# effp's two entry points are `make run` and `make test`; everything they need is
# installed by the targets below, idempotently, into a cache shared by all clones.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

EFFP_CACHE ?= $(HOME)/.cache/effp
export EFFP_CACHE

PYTHON_ENV := .venv/bin/python
EFFP_DEBUG := target/debug/effp
# The fixture script trains a small detector on data made by `effp synth`.
FIXTURES = $$(cargo build --quiet --bin effp && \
	$(PYTHON_ENV) tests/fixtures/make_fixtures.py --cache "$(EFFP_CACHE)" --effp "$(EFFP_DEBUG)" | tail -n 1)
# Each clone builds in its own target/: cargo keys path crates by their place in the
# workspace, so two clones sharing a target directory would reuse each other's builds.
EFFP_BIN := target/release/effp

.PHONY: agent-aarch64 images openapi help run run-distributed test lint venv servers fixtures build soak bench-inspect bench-runtime bench-eval bench-prune bench-step bench-venv bench-http bench-hostile bench-agent

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 16

run: venv ## Start the service on the embedded default (SQLite + local directory); prints its URL
	@cargo build --release --quiet --bin effp
	@set -a; [ ! -f .env ] || . ./.env; set +a; \
	  EFFP_DATA_DIR="$${EFFP_DATA_DIR:-$(EFFP_CACHE)/data}" "$(EFFP_BIN)" serve

run-distributed: venv servers ## Start compose's stack from the binaries: Redis, S3, two API replicas behind nginx, a worker, a CPU agent
	@cargo build --release --quiet --bin effp
	@cargo build --release --quiet -p effp-agent
	@set -a; [ ! -f .env ] || . ./.env; set +a; EFFP_BIN="$(EFFP_BIN)" EFFP_AGENT_BIN=target/release/effp-agent \
	  scripts/run-distributed.sh

test: venv fixtures servers ## Run every test
	@fixtures=$(FIXTURES); log="$(EFFP_CACHE)/test.log"; set +e; \
	  { cargo build --quiet -p effp-agent && \
	    EFFP_FIXTURES="$$fixtures" EFFP_PYTHON="$(CURDIR)/$(PYTHON_ENV)" cargo test --workspace --all-targets \
	    && cargo test --workspace --doc; } 2>&1 | tee "$$log"; status=$${PIPESTATUS[0]}; \
	  awk '/^test result:/ { p += $$4; f += $$6 } END { printf "\ntests: %d passed, %d failed\n", p, f }' "$$log"; \
	  exit $$status

lint: venv ## rustfmt and clippy, warnings as errors
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	cargo clippy --no-default-features --bin effp --quiet --target-dir target/api-only -- -D warnings

IMAGE_TAG ?= 0.1.0

images: ## Build the container images with Docker (needs a Docker engine; docs/deploy.md)
	docker build -f docker/api.Dockerfile -t effp/api:$(IMAGE_TAG) .
	docker build -f docker/worker.Dockerfile -t effp/worker:$(IMAGE_TAG) .
	docker build -f docker/agent.Dockerfile -t effp/agent:$(IMAGE_TAG) .
	docker build -f docker/s3.Dockerfile -t effp/s3s-fs:0.14.1 docker

servers: ## Install the servers the tests start (Debian redis-server, nginx-light, chromium, chromium-driver; s3s-fs from crates.io; axe-core from npm)
	@scripts/install-servers.sh

venv: ## Create the Python environment (torch 2.11.0, onnxruntime, ultralytics …)
	@scripts/bootstrap-python.sh

fixtures: venv ## Export the Ultralytics ONNX fixtures and train the small detector (cached)
	@echo $(FIXTURES) >/dev/null

build: venv ## Build the release binary
	cargo build --release --bin effp

soak: venv fixtures ## Long run of the model-mutation property test (PROPTEST_CASES, default 200000)
	@fixtures=$(FIXTURES); EFFP_FIXTURES="$$fixtures" PROPTEST_CASES=$${PROPTEST_CASES:-200000} \
	  cargo test --release -p effp-graph --test mutation -- --nocapture

bench-inspect: venv ## Benchmark `effp inspect` time and peak memory (yolov8n, yolov8x), start-up and idle memory, full and API-only builds
	@cargo build --release --quiet --bin effp
	@cargo build --release --quiet --no-default-features --bin effp --target-dir target/api-only
	@fixtures=$$($(PYTHON_ENV) tests/fixtures/make_fixtures.py --cache "$(EFFP_CACHE)" --bench | tail -n 1); \
	  $(PYTHON_ENV) scripts/bench_inspect.py --effp "$(EFFP_BIN)" --effp-api-only target/api-only/release/effp \
	    --fixtures "$$fixtures" --out "$(EFFP_CACHE)/bench/inspect.json"

bench-venv: venv
	@$(PYTHON_ENV) -m pip install --quiet --disable-pip-version-check -r scripts/requirements-bench.txt -c scripts/constraints.txt

bench-runtime: bench-venv fixtures ## Runtime vs PyTorch eager, pruned ORT latency, groups vs Torch-Pruning
	@cargo build --release --quiet --bin effp
	@fixtures=$(FIXTURES); \
	  $(PYTHON_ENV) scripts/bench_runtime.py --effp "$(EFFP_BIN)" --fixtures "$$fixtures" --out "$(EFFP_CACHE)/bench/runtime.json" $(BENCH_ARGS)

bench-eval: fixtures ## effp eval vs Ultralytics val throughput on the trained detector
	@cargo build --release --quiet --bin effp
	@fixtures=$(FIXTURES); \
	  $(PYTHON_ENV) scripts/bench_eval.py --effp "$(EFFP_BIN)" --fixtures "$$fixtures" --out "$(EFFP_CACHE)/bench/eval.json"

# The benchmark detectors, trained until validation mAP stops rising (hours on a CPU, once).
BENCH_MODELS ?= converged yolov8n-160
bench-prune: bench-venv fixtures ## Every pruning method, Torch-Pruning + Ultralytics and the retrained ceiling at 0.7/0.5/0.3 FLOPs, per benchmark detector
	@cargo build --release --quiet --bin effp
	@fixtures=$$($(PYTHON_ENV) tests/fixtures/make_fixtures.py --cache "$(EFFP_CACHE)" --effp "$(EFFP_DEBUG)" --bench-models | tail -n 1); \
	  for model in $(BENCH_MODELS); do \
	    $(PYTHON_ENV) scripts/bench_prune.py --effp "$(EFFP_BIN)" --fixtures "$$fixtures" --model "$$model" \
	      --out "$(EFFP_CACHE)/bench/prune-$$model.json" $(BENCH_ARGS); \
	  done

OHA := $(EFFP_CACHE)/tools/bin/oha

$(OHA):
	cargo install --locked --quiet --root "$(EFFP_CACHE)/tools" oha@1.16.0

bench-http: fixtures servers $(OHA) ## Service throughput and p99 (oha), 500 MB uploads, submit-to-claim latency: embedded (full, API-only) and distributed
	@cargo build --release --quiet --bin effp
	@cargo build --release --quiet --no-default-features --bin effp --target-dir target/api-only
	@fixtures=$(FIXTURES); \
	  $(PYTHON_ENV) scripts/bench_http.py --effp "$(EFFP_BIN)" --effp-api-only target/api-only/release/effp \
	    --distributed --oha "$(OHA)" --fixtures "$$fixtures" --out "$(EFFP_CACHE)/bench/http.json" $(BENCH_ARGS)

bench-hostile: fixtures $(OHA) ## API memory over 300 jobs, worker start-up, /healthz under 2,000 idle and 50 slow clients
	@cargo build --release --quiet --bin effp
	@fixtures=$(FIXTURES); \
	  $(PYTHON_ENV) scripts/bench_hostile.py --effp "$(EFFP_BIN)" --oha "$(OHA)" --fixtures "$$fixtures" --out "$(EFFP_CACHE)/bench/hostile.json" $(BENCH_ARGS)

bench-step: fixtures ## Gate overhead: a masked training step against a plain one
	@cargo build --release --quiet --bin effp
	@fixtures=$(FIXTURES); \
	  "$(EFFP_BIN)" bench step "$$fixtures/trained.onnx" --batch 8 --json "$(EFFP_CACHE)/bench/step-trained.json" && \
	  "$(EFFP_BIN)" bench step "$$fixtures/yolov8n.onnx" --batch 1 --iters 10 --json "$(EFFP_CACHE)/bench/step-yolov8n.json"

bench-agent: bench-venv fixtures ## The agent's CPU runner on YOLOv8n 640 pruned to 0.7/0.5/0.3 against onnxruntime, and its cost per task
	@cargo build --quiet --bin effp -p effp-agent
	@fixtures=$(FIXTURES); $(PYTHON_ENV) scripts/bench_agent.py --effp target/debug/effp --agent target/debug/effp-agent \
	  --fixtures "$$fixtures" --out "$(EFFP_CACHE)/bench/agent.json" $(BENCH_ARGS)

openapi: ## Regenerate openapi/openapi.json from the code
	@cargo build --quiet --bin effp && mkdir -p openapi && target/debug/effp openapi > openapi/openapi.json

# The agent for Jetson boards: aarch64 linked against glibc 2.31 (Ubuntu 20.04, the base
# of JetPack 5), so it runs on L4T r35 and later. cargo-zigbuild links with zig, from
# the PyPI package ziglang in its own environment; both are installed once in the cache.
# The debug info (200 MB of it with the release profile's line tables) is stripped
# with the toolchain's rust-objcopy; symbols stay, for backtraces.
AGENT_TARGET := aarch64-unknown-linux-gnu
AGENT_GLIBC := 2.31
ZIGBUILD := $(EFFP_CACHE)/tools/bin/cargo-zigbuild
ZIG_VERSION := 0.17.0
ZIG_ENV := $(EFFP_CACHE)/zig-$(ZIG_VERSION)

$(ZIGBUILD):
	cargo install --locked --quiet --root "$(EFFP_CACHE)/tools" cargo-zigbuild@0.24.1

$(ZIG_ENV)/.complete:
	rm -rf "$(ZIG_ENV)" && python3 -m venv "$(ZIG_ENV)"
	"$(ZIG_ENV)/bin/python" -m pip install --quiet --disable-pip-version-check ziglang==$(ZIG_VERSION)
	touch "$@"

agent-aarch64: $(ZIGBUILD) $(ZIG_ENV)/.complete ## Cross-build effp-agent for Jetson (aarch64, glibc 2.31) into target/aarch64-unknown-linux-gnu/release/
	@rustup target list --installed | grep -qx $(AGENT_TARGET) || rustup target add $(AGENT_TARGET)
	@PATH="$(ZIG_ENV)/bin:$$PATH" "$(ZIGBUILD)" zigbuild --release --quiet -p effp-agent --target $(AGENT_TARGET).$(AGENT_GLIBC)
	@bin=target/$(AGENT_TARGET)/release/effp-agent; sysroot="$$(rustc --print sysroot)"; \
	  objcopy="$$sysroot/lib/rustlib/$$(rustc -vV | sed -n 's/^host: //p')/bin/rust-objcopy"; \
	  LD_LIBRARY_PATH="$$sysroot/lib" "$$objcopy" --strip-debug "$$bin" \
	    || echo "(rust-objcopy failed: $$bin keeps its debug info)"; \
	  echo "$$bin: $$(stat -c %s "$$bin") bytes"; file "$$bin"; \
	  if command -v qemu-aarch64 >/dev/null && [ -d /usr/aarch64-linux-gnu ]; then \
	    qemu-aarch64 -L /usr/aarch64-linux-gnu "$$bin" --version; \
	  else echo "(no qemu-aarch64 with libc6-arm64-cross here: skipping the --version check)"; fi
