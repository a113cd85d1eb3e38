# Tenure — set-up and entry points. Run as root on a fresh Debian 12 machine:
#   make run    install what is missing, build, start `tenure serve` on the embedded PostgreSQL
#   make test   install what is missing, run every test (starts its own PostgreSQL)
#   make bench  benchmarks (never part of `make test`)
#   make fidelity  the regression database round trip against pg_dump | pg_restore (needs ../shared)

SWIFT        ?= swift
APT_PACKAGES := postgresql-15 postgresql-contrib postgresql-15-postgis-3 libpq-dev libzstd-dev zlib1g-dev pkg-config zstd time prometheus rclone
PG_BIN       ?= /usr/lib/postgresql/15/bin
TENURE_HOME  ?= $(CURDIR)/var
export TENURE_HOME
# PyPI tools the tests run, pinned in ops/test-tools.txt, in a virtual environment of the build directory.
SCHEMATHESIS_VERSION := $(shell sed -n 's/^schemathesis==//p' ops/test-tools.txt)
TOOLS        := $(CURDIR)/.build/tools

.PHONY: deps tools build release run test bench fidelity fleet clean

# Installs only what is missing: `apt-get update` once, then one `apt-get install -y`.
deps:
	@missing=""; \
	for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root to install:$$missing" >&2; exit 1; fi; \
	  DEBIAN_FRONTEND=noninteractive apt-get update && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi
	@test -x $(PG_BIN)/initdb || { echo "PostgreSQL 15 server binaries not found in $(PG_BIN)" >&2; exit 1; }

# schemathesis (the property-based API client `make test` runs against a live `tenure serve`)
# and moto's S3 server (the object store the rclone backup-store tests use).
tools:
	@{ $(TOOLS)/bin/st --version 2>/dev/null | grep -q "$(SCHEMATHESIS_VERSION)" && test -x $(TOOLS)/bin/moto_server; } || { \
	  python3 -m venv $(TOOLS) 2>/dev/null || { \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv python3-pip || \
	    { DEBIAN_FRONTEND=noninteractive apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv python3-pip; }; \
	    python3 -m venv $(TOOLS); }; \
	  $(TOOLS)/bin/pip install -q --disable-pip-version-check -r ops/test-tools.txt; }
	@$(TOOLS)/bin/st --version

build: deps
	$(SWIFT) build --product tenure

release: deps
	$(SWIFT) build -c release --product tenure

run: build
	$$($(SWIFT) build --show-bin-path)/tenure serve

test: deps tools
	promtool check rules ops/prometheus-alerts.yml
	cd ops && promtool test rules prometheus-alerts.test.yml
	$(SWIFT) build --build-tests
	TENURE_SCHEMATHESIS=$(TOOLS)/bin/st TENURE_MOTO=$(TOOLS)/bin/moto_server $(SWIFT) test --skip-build --no-parallel

bench: release
	@command -v wrk >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wrk || \
	  { DEBIAN_FRONTEND=noninteractive apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wrk; }; }
	@command -v curl >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends curl
	TENURE_BIN=$$($(SWIFT) build -c release --show-bin-path)/tenure python3 ops/bench.py

# The backup schedule on 50 databases over two private servers (issue 15); prints the peak
# concurrent backups per server. FLEET_DATABASES, FLEET_ROUNDS, FLEET_INTERVAL override.
fleet: build
	TENURE_BIN=$$($(SWIFT) build --show-bin-path)/tenure python3 ops/fleet.py

fidelity: build
	TENURE_BIN=$$($(SWIFT) build --show-bin-path)/tenure python3 ops/fidelity.py

clean:
	rm -rf .build
