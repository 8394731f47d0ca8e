# edd-infra: `make sandbox` deploys for real on local sandbox hosts; `make test` runs every tier.
SHELL := /bin/bash
CACHE ?= $(HOME)/.cache/edd-infra
PY := $(CACHE)/venv/bin/python
PULUMI := scripts/pulumi
export PULUMI_CONFIG_PASSPHRASE ?= edd-infra-example

.PHONY: toolchain unit test preview sandbox sandbox-down bench

toolchain:
	@bash scripts/toolchain.sh

unit: toolchain
	$(PY) -m pytest -q -m unit

test: toolchain
	$(PY) -m pytest -q -n 2 --dist loadfile

preview: toolchain
	$(PULUMI) preview --diff -s prod

sandbox: toolchain
	$(PY) -m sandbox.deploy up

sandbox-down: toolchain
	$(PY) -m sandbox.deploy down

bench: toolchain
	$(PY) -m sandbox.bench
