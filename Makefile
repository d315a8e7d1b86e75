# Two commands do all set-up on a fresh clone: `make demo` and `make test`.
# Django 6.1 needs Python >= 3.12; override the interpreter with PYTHON=/path/to/python3.

SHELL := /bin/bash
PYTHON ?= $(shell for p in python3.13 python3.12 $$(ls -d $$HOME/.pyenv/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -rV); do \
	if command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then echo $$p; break; fi; done)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench worker clean

$(STAMP): setup.cfg pyproject.toml
	@if [ -z "$(PYTHON)" ]; then \
		echo "Django 6.1 needs Python 3.12 or newer, and none was found (tried python3.13,"; \
		echo "python3.12 and ~/.pyenv/versions/3.1[2-9]*). Install one (e.g. 'pyenv install 3.13')"; \
		echo "or point to it: make PYTHON=/path/to/python3.12 ..."; exit 1; fi
	@echo "Creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) manage.py migrate --noinput
	$(PY) manage.py demo

worker: $(STAMP)
	$(PY) manage.py worker

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) manage.py makemigrations --check --dry-run

# SQLite always; PostgreSQL when reachable (required under CI=true).
test: lint
	TEST_DB=sqlite $(PY) -m pytest
	TEST_DB=postgres $(PY) -m pytest

# Every figure of docs/performance.md in one table (~15 min); BENCH_ARGS=--quick for a smoke
# check (< 2 min). Creates benchmarks/.celery-venv (Celery 5.7 + Redis) on first use.
bench: $(STAMP)
	$(PY) benchmarks/bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) db.sqlite3 db.sqlite3-*
