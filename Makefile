# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint typecheck protos bench clean system-deps docs

$(STAMP): pyproject.toml setup.py scripts/gen_protos.py $(wildcard protos/*/*/*.proto)
	bash scripts/install-system-deps.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 'grpcio-tools>=1.66,<1.82' 'protobuf>=5.28,<7'
	$(BIN)/python scripts/gen_protos.py .
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

system-deps:
	bash scripts/install-system-deps.sh

protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py .

demo: $(STAMP)
	$(BIN)/bkv demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not chaos and not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "not chaos"

lint: $(STAMP)
	$(BIN)/ruff check bkv_protocol bkv_ops vault_node chatd_proxy client_sdk bkv_tools tests scripts
	$(BIN)/mypy bkv_protocol bkv_ops vault_node chatd_proxy client_sdk bkv_tools

# Coverage-guided fuzzing (atheris) of every untrusted-input parser, one process per
# target; `make test` runs all targets together for a few seconds. Findings: crash-*
# inputs in build/fuzz/.
FUZZ_SECONDS ?= 60
.PHONY: fuzz
fuzz: $(STAMP)
	$(BIN)/python tests/fuzz/run.py --target all --seconds $(FUZZ_SECONDS) --artifacts build/fuzz

# API reference of the SDK's public names (client_sdk.__all__), from the docstrings;
# any warning fails the build.
docs: $(STAMP)
	rm -rf build/docs
	$(BIN)/python -W error -m pdoc -o build/docs client_sdk
	@echo "API reference: build/docs/index.html"

bench: $(STAMP)
	$(BIN)/bkv bench opaque
	$(BIN)/bkv bench files
	$(BIN)/bkv bench vault

# A five-node shard holding SHARD_DEPOSITS deposits (bulk-loaded, sealed by the HSM):
# RSS, disk, restarts, commit latency during a snapshot, catch-up, recoveries/s.
SHARD_DEPOSITS ?= 1000000
.PHONY: bench-shard
bench-shard: $(STAMP)
	$(BIN)/bkv bench shard --deposits $(SHARD_DEPOSITS)

# Incremental backups, bkv against restic (installed from Debian when missing) on a
# WhatsApp-like folder of BENCH_BACKUP_MB: first backup, backup after a small change, restore.
BENCH_BACKUP_MB ?= 640
.PHONY: bench-backup
bench-backup: $(STAMP)
	bash scripts/install-system-deps.sh restic
	$(BIN)/bkv bench backup --size-mb $(BENCH_BACKUP_MB)

clean:
	rm -rf $(VENV) bkv_api build *.egg-info .pytest_cache .mypy_cache .ruff_cache

# ---- container deployment (deploy/): one shard over 3 data centers in docker compose ----
DEPLOY_STATE ?= deploy/state
DOCKER_COMPOSE ?= docker-compose
COMPOSE = $(DOCKER_COMPOSE) -p bkv -f deploy/docker-compose.yml --env-file $(DEPLOY_STATE)/compose.env

.PHONY: deploy-image deploy-up deploy-down

# Offline build: engine + daemon when missing, cached debootstrap base image, wheelhouse.
deploy-image: $(STAMP)
	bash scripts/docker-setup.sh
	docker build --network none -f deploy/Dockerfile -t bkv:local \
		--build-arg BASE_IMAGE=bkv-base:bookworm --build-arg WHEELHOUSE=1 .

deploy-up: $(STAMP)
	docker image inspect bkv:local >/dev/null 2>&1 || $(MAKE) deploy-image
	$(BIN)/python -m bkv_tools.compose_layout prepare --state-dir $(DEPLOY_STATE)
	$(COMPOSE) up -d --no-build
	$(BIN)/python -m bkv_tools.compose_layout status --state-dir $(DEPLOY_STATE) --wait 120
	@echo "bkv vault ... --config $(DEPLOY_STATE)/client.toml"

# Stops and removes the containers; node volumes (the vault's data) are kept.
deploy-down:
	$(COMPOSE) down

# ---- chaos suite (tests/chaos/): faults on a schedule against the compose cluster ----
.PHONY: chaos

# Installs and starts the container engine when missing (fails loudly when it cannot),
# then the suite builds the image offline, runs a workload under 100+ faults, checks
# the history and prints a summary (copied to build/chaos/). About 15 minutes.
chaos: $(STAMP)
	bash scripts/docker-setup.sh engine daemon
	BKV_CHAOS_REQUIRE_ENGINE=1 $(BIN)/python -m pytest -q -m chaos tests/chaos
