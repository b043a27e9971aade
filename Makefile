# The README's two commands: `make run` and `make test`. Each sets up what is missing.
SHELL := /bin/bash
VENV := .venv/bin

.PHONY: setup run test lint typecheck unit bench clean

setup:
	@scripts/setup.sh

run: setup
	$(VENV)/crucible serve

lint: setup
	$(VENV)/ruff check src tests bench scripts
	$(VENV)/ruff format --check src tests bench scripts

typecheck: setup
	$(VENV)/mypy

test: setup lint typecheck
	$(VENV)/pytest -q -p no:cacheprovider

clean:
	rm -rf .venv data
