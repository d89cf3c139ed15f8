# Thin targets over the venv, Ansible, Molecule and pytest.
#   make up     provision the database (engine, image, container, bootstrap, migrations, health)
#               and install the migrations command line as .venv/bin/pg-migrate
#   make cli    install .venv/bin/pg-migrate only (no provisioning)
#   make test   lint, unit tests, then `molecule test` (converge, idempotence, integration tests)
#               for the single server and, beside it, for the cluster (scenario `cluster`)
#               and the image builds (tests/image), then the Docker engine's tests (tests/engine)
#   make bench  the benchmarks under bench/
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
# Ansible and Molecule call each other by name: the venv goes first on PATH.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: up cli test lint unit molecule single-server-lane cluster-and-image-lane bench clean-venv node test-tools

$(BIN)/activate:
	command -v python3 >/dev/null && python3 -c 'import ensurepip, venv' 2>/dev/null \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv; }
	python3 -m venv $(VENV)

$(VENV)/.installed: requirements.txt | $(BIN)/activate
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

# bin/pg-migrate run by the venv's Python (psycopg2, pglast), wherever the
# venv is activated or not: a two-line wrapper, rewritten when bin/pg-migrate changes.
$(BIN)/pg-migrate: bin/pg-migrate | $(VENV)/.installed
	printf '#!/bin/sh\nexec "%s" "%s" "$$@"\n' "$(CURDIR)/$(BIN)/python" "$(CURDIR)/bin/pg-migrate" > $@
	chmod 0755 $@

cli: $(BIN)/pg-migrate

# The node-pg-migrate and pg-promise tests need Node.js and npm: Debian's when node is absent
# (bookworm's Node 18 runs node-pg-migrate 6.2.2, pg-promise and npm ci; 9.x runs on the Node.js 20
# that tests/integration/node-v9 pins for Linux x86_64, elsewhere where the system node is 20.11+).
# SKIP_NODE_TESTS=1 installs nothing and skips those tests.
node:
	@if [ "$$SKIP_NODE_TESTS" != 1 ] && ! { command -v node && command -v npm; } >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; fi

# Tools the tests use beside the project's own: openssl (TLS renewal), age (backups, installed by
# the backup role too) and Debian's docker-registry (the image role's digest pinning, on 127.0.0.1).
test-tools:
	@missing=(); for tool in openssl:openssl age:age docker-registry:docker-registry; do \
	  command -v "$${tool%%:*}" >/dev/null || missing+=("$${tool#*:}"); done; \
	if (($${#missing[@]})); then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$${missing[@]}"; fi

up: $(VENV)/.installed $(BIN)/pg-migrate
	ansible-playbook site.yml

lint: $(VENV)/.installed
	yamllint --strict .
	ansible-lint --profile production

unit: $(VENV)/.installed
	pytest tests/unit

# The tests take over the local stacks: both are removed first (molecule/default/teardown.yml), so
# that converge starts from nothing with the secrets of this clone. The image both run is built
# first, once. Then two lanes side by side, one on each of this machine's 2 cores (one after the
# other they took 58 minutes): the single server (scenario `default`, the inventory's names), and
# the cluster (scenario `cluster`: names, ports, folders and secrets of its own,
# molecule/cluster/vars.json) followed by the image builds' tests (tests/image: a repository and a
# build folder of their own, no database), which would otherwise lengthen the first. The single
# server's lane runs at a lower priority: the cluster's tests time failovers and lag, the single
# server's only count changes. The engine's own tests stop dockerd, so they come last.
CLUSTER_VARS := molecule/cluster/vars.json
DURATIONS := --durations=0 --durations-min=10

molecule: $(VENV)/.installed $(BIN)/pg-migrate node test-tools
	ansible-playbook molecule/default/teardown.yml
	ansible-playbook molecule/default/teardown.yml -e @$(CLUSTER_VARS)
	ansible-playbook tests/integration/image_only.yml
	$(MAKE) --jobs=2 --output-sync=target single-server-lane cluster-and-image-lane
	pytest tests/engine

single-server-lane:
	nice -n 10 molecule test

cluster-and-image-lane:
	molecule test --scenario-name cluster
	pytest $(DURATIONS) tests/image

test: lint unit molecule

bench: $(VENV)/.installed
	python bench/bench_health.py
	python bench/bench_migrations.py
	python bench/bench_commands.py
	python bench/bench_pitr.py
	@if [ "$$(docker ps -q --filter name=^social_selling_pgbouncer$$)" ]; then python bench/bench_pooler.py; \
	  else echo 'bench_pooler.py skipped: db_pooler is not pgbouncer on this stack (see bench/README.md)'; fi
	@if [ "$$(docker ps -q --filter name=^social_selling_postgres_1$$)" ]; then python bench/bench_failover.py; \
	  else echo 'bench_failover.py skipped: db_topology is not cluster on this stack (see bench/README.md)'; fi

clean-venv:
	rm -rf $(VENV)
