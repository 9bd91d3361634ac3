# order-saga: the commands a newcomer needs. `make run` and `make test` work on a fresh machine.
CARGO   ?= cargo
BIN_DIR ?= target/debug
# One feature set for every dev build, so binaries, tests and lints share one build.
# Failpoints are compiled in (inert unless FAILPOINTS is set); release images leave them out.
FEATURES ?= --features order-service/failpoints,store-service/failpoints,delivery-service/failpoints
DURATION ?= 10m
CLIENTS  ?= 32
REQUESTS ?= 100000

# What `make run` needs: the three services and the CLI (no test-only crates).
RUN_PACKAGES ?= -p order-service -p store-service -p delivery-service -p sagactl

.PHONY: build run test test-rust walkthrough chaos fuzz bench model-check model-explore lint lint-proto fmt compose-up compose-down compose-smoke image-bins clean-data
BUF_VERSION ?= 1.75.0
BUF := .tools/buf/node_modules/.bin/buf

## Build the binaries a running cluster needs (one dev profile, shared with the tests).
build:
	$(CARGO) build $(RUN_PACKAGES) --bins $(FEATURES)

## Run the whole cluster locally on SQLite under ./data (Ctrl-C stops it).
run: build
	BIN_DIR=$(BIN_DIR) bash deploy/run-local.sh

## The whole test suite: Rust tests on SQLite and PostgreSQL, then the README's grpcurl session.
test: test-rust walkthrough

## Rust unit, integration and end-to-end tests (including the failure-injection scenarios, a
## 40-second chaos campaign, which run the real binaries, and the console in headless Chromium);
## PostgreSQL is found or started, Chromium installed from Debian's packages when missing.
test-rust: build
	bash tests/ensure-chromium.sh
	bash tests/with-postgres.sh $(CARGO) test --workspace --all-targets $(FEATURES) -- --test-threads=6

## Run the README's grpcurl session against a fresh `make run` cluster.
walkthrough: build
	BIN_DIR=$(BIN_DIR) bash tests/run-walkthrough.sh

## The randomized chaos campaign on a local PostgreSQL cluster: make chaos DURATION=10m CLIENTS=32 [SEED=n]
chaos: build
	$(CARGO) build -p order-saga-harness $(RUN_PACKAGES) --bin chaos $(FEATURES)
	$(BIN_DIR)/chaos --duration $(DURATION) --clients $(CLIENTS) $(if $(SEED),--seed $(SEED))

## The input fuzzer: hostile requests to every RPC of a fresh SQLite cluster (the binaries
## `make run` uses); every answer must be a documented code, nothing may crash, the invariants
## must hold. make fuzz [REQUESTS=100000] [SEED=n] [RPC=OrderAdminService]. `make test` runs a
## short version.
fuzz: build
	$(CARGO) build -p order-saga-harness $(RUN_PACKAGES) --bin fuzz $(FEATURES)
	$(BIN_DIR)/fuzz --bin-dir $(BIN_DIR) --requests $(REQUESTS) $(if $(SEED),--seed $(SEED)) $(if $(RPC),--rpc $(RPC))

## The benchmark, on release binaries it builds (never the dev profile):
##   make bench [BENCH_ARGS="--backend sqlite --workload hot --clients 64 --duration 5m --screenshot"]
## PostgreSQL is found or started as for `make test`, but durably (no fsync=off). Results:
## bench-results/<timestamp>/report.{json,html}. `target/release/bench --help` lists every option.
bench:
	$(CARGO) build --release -p order-service -p store-service -p delivery-service -p order-saga-harness --bins
	WITH_POSTGRES_DURABLE=1 bash tests/with-postgres.sh target/release/bench $(BENCH_ARGS)

## The exhaustive model check of the saga protocol (stateright): states, depth, verdict.
## `make test` runs a smaller bound of the same model.
model-check:
	$(CARGO) run -p order-saga-model --bin model -- check --full

## stateright's explorer UI on the model: open http://127.0.0.1:3000 (ADDR=host:port to move it).
model-explore:
	$(CARGO) run -p order-saga-model --bin model -- explore --addr $(or $(ADDR),127.0.0.1:3000)

## `buf lint` of the protos (buf from npm's @bufbuild/buf, installed into .tools/ once).
lint-proto:
	@[ -x $(BUF) ] || npm install --prefix .tools/buf --no-audit --no-fund --silent @bufbuild/buf@$(BUF_VERSION)
	cd proto && ../$(BUF) lint && echo "buf lint: clean"

## Formatting and lints, as CI checks them.
lint: lint-proto
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets $(FEATURES) -- -D warnings

fmt:
	$(CARGO) fmt --all

## The binaries local stand-in images pack: the same dev profile, without failpoints (images
## never carry them; deploy/Dockerfile builds release binaries when a registry is reachable).
image-bins:
	$(CARGO) build $(RUN_PACKAGES) --bins

## Start the docker compose cluster (PostgreSQL + the three services); only the order API
## (50051) is published, COMPOSE_OPERATOR=1 also publishes the admin listeners on 127.0.0.1.
## Builds local stand-in images when no image registry is reachable.
compose-up: image-bins
	BIN_DIR=$(BIN_DIR) bash deploy/compose.sh up

## Stop the compose cluster (`make compose-down ARGS=-v` also deletes the database volume).
compose-down:
	bash deploy/compose.sh down $(ARGS)

## Bring up a throwaway compose cluster, run the walkthrough, load and kill tests, tear down.
compose-smoke: image-bins
	BIN_DIR=$(BIN_DIR) bash deploy/compose-smoke.sh

## Remove the local cluster's SQLite databases and logs.
clean-data:
	rm -rf data
