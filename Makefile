# edd-infra: `make sandbox` deploys for real on local sandbox hosts; `make test` runs every tier.
SHELL := /bin/bash
CACHE ?= $(HOME)/.cache/edd-infra
PY := $(CACHE)/venv/bin/python
PULUMI := scripts/pulumi
# The published example passphrase, so `make preview` runs on the committed example stacks. The
# program itself refuses any other stack keyed with it (edd_infra/example_passphrase.py): set your
# own PULUMI_CONFIG_PASSPHRASE or PULUMI_CONFIG_PASSPHRASE_FILE (README: re-keying).
ifndef PULUMI_CONFIG_PASSPHRASE_FILE
export PULUMI_CONFIG_PASSPHRASE ?= edd-infra-example
endif

.PHONY: toolchain unit test preview preview-pr sandbox sandbox-down sandbox-prometheus bench

toolchain:
	@bash scripts/toolchain.sh

unit: toolchain
	$(PY) -m pytest -q -m unit

test: toolchain
	$(PY) -m pytest -q -n 2 --dist loadfile

preview: toolchain
	$(PULUMI) preview --diff -s prod

# What .github/workflows/preview.yml runs for each stack: the diff, checked by the policy pack.
# `stack select --create` makes the stack in a backend that has no state for it (a fresh CI run).
preview-pr: toolchain
	@test -n "$(STACK)" || { echo "usage: make preview-pr STACK=<stack>" >&2; exit 2; }
	$(PULUMI) stack select --create $(STACK) --non-interactive
	$(PULUMI) preview --diff --policy-pack policy --non-interactive --color never -s $(STACK)

sandbox: toolchain
	$(PY) -m sandbox.deploy up

# A Prometheus scraping the deployed sandbox, its alert rules loaded (or SANDBOX_PROMETHEUS=1 make sandbox).
sandbox-prometheus: toolchain
	$(PY) -m sandbox.deploy prometheus

sandbox-down: toolchain
	$(PY) -m sandbox.deploy down

bench: toolchain
	$(PY) -m sandbox.bench
