# The README's two commands: `make run` and `make test`. Each sets up what is missing.
SHELL := /bin/bash
VENV := .venv/bin

.PHONY: setup setup-test run test test-steps lint typecheck pytest frontend-test e2e screenshots bench clean test-memory-load

setup:
	@scripts/setup.sh

setup-test:
	@scripts/setup.sh --test

run: setup
	$(VENV)/crucible serve

lint: setup-test
	$(VENV)/ruff check src tests bench scripts
	$(VENV)/ruff format --check src tests bench scripts

typecheck: setup-test
	$(VENV)/mypy

# Three pytest processes (pytest-xdist) on the 2-core machine, a module to each at a time
# (its module-scoped server stays one), the heaviest modules first (tests/conftest.py,
# HEAVIEST_FIRST): most tests wait on containers, servers and workers, not on a core,
# so a third process fills those waits. With a busy loop on each core beside it, make
# test took 15 min 51 s with two and 13 min 17 s with three (fresh clones, 2026-12-03).
# Every process has its own state directory, database and ports; the 25 slowest tests
# are listed at the end.
# PYTEST_ARGS adds to them (for example --junitxml=/tmp/times.xml: every test's time).
PYTEST_WORKERS ?= 3
PYTEST_ARGS ?=
pytest: setup-test
	$(VENV)/pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadscope --no-loadscope-reorder --durations=25 $(PYTEST_ARGS)

# Types generated from the committed OpenAPI document must not drift; then unit tests.
frontend-test: setup-test
	cd frontend && npm run --silent check:api && npm run --silent typecheck && npm test --silent

# Real Chromium against a real `crucible serve`; screenshots in frontend/test-artifacts.
# setup-test has just built dist/ if anything it is built from changed, so Playwright
# runs on that build (`npm run e2e` would build it a second time).
e2e: setup-test
	cd frontend && npx --no-install playwright test

# The same browser tests, also refreshing the README's docs/screenshots (tracked files:
# only on purpose, never as a side effect of `make test`).
screenshots: setup-test
	cd frontend && E2E_DOCS_SCREENSHOTS=1 npx --no-install playwright test

# The memory verdicts, 20 runs of each case per runtime, one-shot and in agent sandboxes,
# while a busy loop holds every core (make test runs 1 of each).
test-memory-load: setup-test
	CRUCIBLE_MEMORY_REPEATS=20 $(VENV)/pytest -q -p no:cacheprovider tests/security/test_memory_under_load.py

# The set-up once, then the checks (lint, typecheck, frontend-test, e2e) beside pytest
# (scripts/test-steps.sh says why); then the tree must be as it was.
test:
	@MAKE=$(MAKE) scripts/unchanged-tree.sh scripts/test-steps.sh

# The same steps one after another.
test-steps: lint typecheck frontend-test e2e pytest

bench: setup
	$(VENV)/python bench/sandbox_overhead.py
	$(VENV)/python bench/api_throughput.py
	$(VENV)/python bench/humaneval.py

clean:
	rm -rf .venv data frontend/node_modules frontend/dist frontend/test-artifacts
