# tailproxy — one entry point for building, testing, the demo and the benchmarks.
# `make demo` and `make test` work on a fresh Debian machine with Go, gcc and Python (as root:
# the local test tailnet uses network namespaces).

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
NATIVE := src/tailproxy/_native
# (zsh and fish: the unit tests load the completion scripts `tailproxy completion` generates)
DEBS   := curl wget netcat-openbsd iproute2 procps openssl util-linux nodejs proxychains4 microsocks nginx-light valgrind bind9-dnsutils dnsmasq-base zsh fish openssh-server iperf3 tmux chromium chromium-driver musl-tools

.PHONY: all deps native dev wheel wheelhouse test test-unit test-node test-preload demo bench clean

all: dev

# System packages the tests, demo and benchmarks use (installed only when missing).
deps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing" >&2; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# libtailproxy.so and the pinned tailscaled/tailscale, into the source tree (editable install).
native:
	$(PYTHON) tools/build_native.py $(NATIVE)

$(VPY):
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip

dev: $(VPY) native
	$(VPY) -m pip install -q -e '.[test,package]'

# dist/: the sdist and a manylinux wheel (python + libtailproxy.so + the node library), made
# from the native parts `native` built (no second Go build); reproducible for one commit.
wheel: dev
	$(VPY) tools/build_wheel.py --native $(NATIVE) --out dist
	$(VPY) -m twine check --strict dist/*

# The runtime dependencies as wheels, so that tests/e2e/test_wheel.py can install tailproxy's
# wheel offline: it runs inside the test tailnet, which has no internet.
wheelhouse: dev
	$(VPY) tools/build_wheel.py --download-deps build/wheelhouse

test-unit: dev
	$(VPY) -m pytest -q tests/unit

# The node library's Go tests (node/*_test.go: relay, errno, events, PROXY header, C API
# guards; no tailnet needed), under the race detector (which needs cgo: gcc). vet gets -race
# too, so that both share one (race) build of tsnet and gVisor: cold, that build is most of
# the time (5-8 min on 2 busy cores); warm, the whole target takes ~10 s.
test-node:
	cd node && CGO_ENABLED=1 go vet -race ./... && CGO_ENABLED=1 go test -race -count=1 ./...

# Everything: the node library's Go tests, unit and end-to-end tests inside a local tailnet (with
# two exit nodes; tests that need the tailnet fail rather than skip here), then the preload's own
# suite under ASan.
test: deps test-node dev wheelhouse
	$(VPY) -m tailproxy.testnet --exit-nodes 2 -- env TAILPROXY_REQUIRE_TESTNET=1 \
		$(VPY) -m pytest -q -p no:cacheprovider tests
	$(MAKE) -s -C preload asan PYTHON=$(abspath $(VPY)) PYTEST_ARGS="-p no:cacheprovider"

demo: deps dev
	$(VPY) -m tailproxy.testnet -- sh demo/demo.sh

bench: deps dev
	$(VPY) -m tailproxy.testnet -- $(VPY) bench/run.py

clean:
	rm -rf $(VENV) $(NATIVE) build dist preload/build
