# The two commands a newcomer needs: `make demo` (main job) and `make test` (the whole check).
SHELL := /bin/bash
VENV := .venv/bin

.PHONY: install demo test lint protos bench

install:
	./scripts/install.sh

demo: install
	$(VENV)/kdcvg demo

lint: install
	$(VENV)/python scripts/gen_protos.py --check
	cd protos && ../$(VENV)/buf lint
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .

test: lint
	$(VENV)/python -m pytest -q

protos: install
	$(VENV)/python scripts/gen_protos.py

bench: install
	$(VENV)/python bench/search_latency.py
	$(VENV)/python bench/encoder.py
	$(VENV)/python bench/retrieval_quality.py
