# sandstorm — see README.md. Every target prints what it does; long ones print phases.
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)
# The Podman bindings need these tags to build without gpgme and btrfs headers.
export GOFLAGS := -tags=remote,containers_image_openpgp,exclude_graphdriver_btrfs
GO ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
# Loads the daemon sockets host-setup.sh found, if it ran.
CI_ENV := set -a; [ -r /run/sandstorm/ci.env ] && . /run/sandstorm/ci.env; [ -r /run/sandstorm/k8s.env ] && . /run/sandstorm/k8s.env; set +a
# PHASE NAME CMD...: a start line, a heartbeat every 10s, the duration.
PHASE := ./scripts/phase.sh

.PHONY: all build test test-other-host unit lint bench testimage agentimage setup demo smoke clean k8s-build k8s-up k8s-down

all: build

## build: compile the ds CLI into bin/ds (modules first: a cold machine downloads them for minutes)
build:
	@$(PHASE) "go mod download" $(GO) mod download
	@$(PHASE) "go build bin/ds" $(GO) build -ldflags "$(LDFLAGS)" -o bin/ds ./cmd/ds

## testimage: build the busybox test image tar (build/sandstorm-test.tar)
testimage:
	@$(PHASE) "build the test image" $(GO) run ./cmd/testimage -o build/sandstorm-test.tar

## agentimage: build the agent image tar offline (build/sandstorm-agent.tar), cached by its inputs
agentimage: build
	./bin/ds image build --no-import

## setup: install and start containerd, Docker and Podman (root and rootless) — needs root
setup:
	@$(PHASE) "host setup" ./scripts/host-setup.sh

## k8s-build: build kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kubectl
## (K8S_VERSION, default 1.35.4) from the Go module proxy into /var/cache/sandstorm/k8s (the
## Kubernetes backend's test cluster; not part of make test yet)
k8s-build:
	./scripts/k8s-build.sh

## k8s-up: a single-node Kubernetes on this host (etcd, control plane, a kubelet on a containerd of its
## own, the pause image built here, sandstorm's namespace with Pod Security restricted); writes what the
## kubernetes backend's tests need to /run/sandstorm/k8s.env.
k8s-up:
	./scripts/k8s-up.sh

## k8s-down: stop that cluster (its Pods, the kubelet, the control plane, etcd, its containerd); state stays
k8s-down:
	./scripts/k8s-down.sh

## demo: set up the host, build ds and the agent image, and run one agent (the README's first command).
## With no ANTHROPIC_API_KEY the scripted demo model answers (offline); with one, the real model.
DEMO_PROMPT ?= Write a small Python program that prints the first Fibonacci numbers, run it, and tell me what it printed.
demo: setup build
	./bin/ds image build
	./bin/ds "$(DEMO_PROMPT)"

## smoke: run one hardened busybox sandbox (no agent)
smoke: setup build testimage
	./bin/ds sandbox run --import build/sandstorm-test.tar -- sh -c \
	  'echo "hello from $$(hostname) as $$(id -u):$$(id -g)"; grep -E "^(CapEff|NoNewPrivs|Seccomp):" /proc/self/status; touch /etc/x 2>/dev/null || echo "root filesystem: read-only"'

## lint: gofmt and go vet
lint:
	@unformatted=$$(gofmt -l .); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	@$(PHASE) "go vet" $(GO) vet ./...

## unit: every test that needs no daemon (-short skips the ones that do), in every package
unit:
	@$(PHASE) "unit tests" $(GO) test -short -count=1 ./...

## test: the whole suite — lint, unit tests, the conformance suite and the agent end-to-end tests on every backend
test: lint setup testimage agentimage k8s-up
	@$(CI_ENV); $(PHASE) "go test (every package, every backend)" $(GO) test -count=1 -timeout 25m ./...

## test-other-host: the conformance suites (or PKGS) as on a host that differs from this one: the limits the
## daemons and the test process pass on are changed with prlimit, another hostname, temporary directories on
## tmpfs (scripts/other-host.sh).
## It lowers the running daemons' limits until they restart.
test-other-host: setup testimage k8s-up
	@$(CI_ENV); ./scripts/other-host.sh $(PKGS)

## bench: sandstorm vs `ctr run --rm`, `docker run --rm`, `podman run --rm` and `kubectl run --rm` of the
## same image with the same limits, alternating in one run, printed as ratios; gVisor vs runc cold start on
## containerd and Docker; then time to the first SDK message on containerd
bench: setup build testimage agentimage k8s-up
	$(CI_ENV); for rt in containerd docker podman kubernetes; do ./bin/ds image import --runtime $$rt build/sandstorm-test.tar || exit 1; done
	$(CI_ENV); $(GO) test -count=1 -run '^$$' -bench 'RunTrue|GVisor' -benchtime 30x ./runtime/containerd/ ./runtime/docker/ ./runtime/podman/ | tee build/bench.txt
	$(CI_ENV); $(GO) test -count=1 -run '^$$' -bench 'RunTrue' -benchtime 10x ./runtime/kubernetes/ | tee -a build/bench.txt
	$(CI_ENV); $(GO) test -count=1 -run '^$$' -bench 'FirstMessage|ColdPhases' -benchtime 10x ./e2e/ | tee -a build/bench.txt
	$(CI_ENV); $(GO) test -count=1 -run '^$$' -bench 'Warm' -benchtime 30x ./e2e/ | tee -a build/bench.txt
	$(CI_ENV); $(GO) test -count=1 -run '^$$' -bench 'MemberCost' -benchtime 3x ./e2e/ | tee -a build/bench.txt
	$(CI_ENV); $(GO) test -count=1 -run '^$$' -bench 'Burst' -benchtime 3x ./server/ | tee -a build/bench.txt
	$(CI_ENV); $(GO) test -count=1 -run '^$$' -bench 'Scale' -benchtime 1x -timeout 30m ./server/ | tee -a build/bench.txt
	@awk '/^pkg:/ { pkg = $$2 } /^BenchmarkRunTrue/ { for (i = 1; i < NF; i++) if ($$(i+1) == "ratio") { n = split(pkg, p, "/"); printf "ratio sandstorm/%s run: %s (target <= 1.0)\n", p[n], $$i } } /^BenchmarkGVisor/ { for (i = 1; i < NF; i++) if ($$(i+1) == "gvisor-ratio") { n = split(pkg, p, "/"); printf "ratio gvisor/runc cold start on %s: %s\n", p[n], $$i } } /(cold phases|warm pool) on .* over [0-9][0-9]+ runs|cost of one sandbox on .* \([0-9]+ runs\)|burst of .* \([0-9]+ bursts\)|scale run of/ { sub(/^.*_test.go:[0-9]+: /, ""); print }' build/bench.txt

clean:
	rm -rf bin build
