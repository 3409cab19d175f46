# The two commands a new machine needs: `make benchmark` and `make test`.
SHELL := /bin/bash
ARGS ?=

.PHONY: install up down benchmark test lint

install:            ## ffmpeg + .venv with the pinned stack (skipped when already there)
	@infra/bootstrap.sh

up: install         ## start Prefect server, MLflow server and the deployment server
	@infra/up.sh

down:               ## stop exactly what `make up` started
	@infra/down.sh

benchmark: up       ## run crosstvr/full-benchmark through the Prefect CLI and print results
	@infra/run_benchmark.sh $(ARGS)

test: install       ## ruff + the test suite
	@infra/test.sh $(ARGS)

lint: install
	@.venv/bin/ruff check .
