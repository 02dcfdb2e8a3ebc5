# Kiln build entry points. Tool versions are pinned here and in .ci/run.
GO        ?= go
GOBIN     ?= $(shell $(GO) env GOPATH)/bin
BUF_VERSION             := v1.75.0
PROTOC_GEN_GO_VERSION   := v1.36.12
PROTOC_GEN_GRPC_VERSION := v1.6.2
STATICCHECK_VERSION     := v0.8.2
# Packages that must pass the race detector.
CORE_PKGS := ./coordinator/... ./agent/... ./internal/...

.PHONY: build demo test test-race test-kill lint proto proto-check tools bench bench-e2e bench-more clean

build:
	@mkdir -p bin
	$(GO) build -o bin/ ./cmd/kiln-coordinator ./cmd/kiln-agent ./cmd/kilnctl

# Quick start: a single-node cluster with its built-in agent runs a real build.
demo:
	./deployments/dev/demo.sh

# The whole suite: unit tests, the in-process cluster tests, integration
# tests with real processes, and the race detector on the core packages.
test: build
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 15m ./...
	$(GO) test -race -count=1 -timeout 15m $(CORE_PKGS)

test-race:
	$(GO) test -race -count=1 -timeout 15m $(CORE_PKGS)

# Coordinators killed with SIGKILL and restarted, 50 rounds under build load
# (the default run in `make test` does 6). KILN_KILL_SEED=N replays a run.
test-kill:
	KILN_KILL_ROUNDS=50 $(GO) test -count=1 -timeout 20m -v -run '^TestKillRestartRounds$$' ./integration/

tools:
	GOBIN=$(GOBIN) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
	GOBIN=$(GOBIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(GOBIN) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GRPC_VERSION)
	GOBIN=$(GOBIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

# Regenerate the Go code of proto/ (committed).
proto:
	PATH=$(GOBIN):$$PATH buf lint
	PATH=$(GOBIN):$$PATH buf generate

# Fail when the committed generated code is not what `make proto` makes.
proto-check: proto
	git diff --exit-code -- proto/ || (echo "generated proto code is stale: run 'make proto' and commit" >&2; exit 1)
	@test -z "$$(git status --porcelain -- proto/)" || (git status --porcelain -- proto/; echo "untracked generated files: run 'make proto' and commit" >&2; exit 1)

lint:
	$(GO) vet ./...
	$(GOBIN)/staticcheck ./...
	PATH=$(GOBIN):$$PATH buf lint

# Numbers, not pass/fail (bench/README.md). `bench` runs the end-to-end
# comparison through the real binaries (KILN_BENCH_BASE against the work
# tree, one run, ratios), then the in-process dispatch benchmarks.
KILN_BENCH_BASE ?= ad0a9dd
KILN_E2E_FLAGS  ?= -log-mb 512
bench: bench-e2e
	$(GO) test -run '^$$' -bench 'DispatchLatency' -benchtime 3000x -timeout 20m ./bench/
	$(GO) test -run '^$$' -bench 'Throughput' -benchtime 10000x -timeout 20m ./bench/
	$(GO) test -run '^$$' -bench 'Failover' -benchtime 3x -timeout 20m ./bench/

bench-e2e:
	./bench/compare.sh $(KILN_BENCH_BASE) $(KILN_E2E_FLAGS)

# The other in-process benchmarks (reads, 1 GiB artifact, memory per agent, JUnit parse).
bench-more:
	$(GO) test -run '^$$' -bench 'Reads' -benchtime 5000x -timeout 20m ./bench/
	$(GO) test -run '^$$' -bench 'ArtifactUploadDownload' -benchtime 1x -timeout 20m ./bench/
	$(GO) test -run '^$$' -bench 'ScaleAgents' -benchtime 1x -timeout 20m ./bench/
	$(GO) test -run '^$$' -bench 'Parse100MB' -benchtime 3x -timeout 20m ./internal/junit/

clean:
	rm -rf bin

# Every Go fuzz test (found by name, so a new FuzzXxx is included), each for
# FUZZTIME; the first failure stops the run and leaves its input under the
# package's testdata/fuzz.
FUZZTIME ?= 15s
.PHONY: fuzz
fuzz:
	@set -e; for f in $$(grep -rl --include='*_test.go' '^func Fuzz' .); do \
		for fn in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$f); do \
			echo "== $$(dirname $$f) $$fn"; \
			$(GO) test ./$$(dirname $$f) -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME); \
		done; \
	done
