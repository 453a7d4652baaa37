# `make test` and `make demo` are the two entry points (see README.md).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-all demo config-results repro lint bench clean

$(STAMP): setup.py
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,hf]'
	touch $(STAMP)

install: $(STAMP)

# Fast suite: everything except tests marked `slow`.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 -m "not slow" tests

test-all: $(STAMP)
	$(PY) -m pytest -q -n 2 tests

demo: $(STAMP)
	rm -rf workdirs/demo
	$(PY) experiments/arith_demo.py --workdir workdirs/demo

# Every config, the procedural ones in full on seeds 0-2 (15 full runs: tens of minutes on
# 2 cores), one at a time; rewrites the README's config table and the JSON it is drawn from.
config-results: $(STAMP)
	$(PY) experiments/config_results.py --write-readme

# Every reproduction (experiments/repro/*.py but the helpers common.py and host_runs.py;
# experiments/README.md "Reproductions") in full, one
# after another, each writing experiments/repro/results/<topic>/; prints each one's time and
# the total.
repro: $(STAMP)
	@start=$$(date +%s); status=0; \
	for script in $$(ls experiments/repro/*.py | grep -v -E '/(common|host_runs)\.py$$'); do \
	  t0=$$(date +%s); echo "== $$script"; \
	  $(PY) $$script || status=1; \
	  echo "== $$script: $$(( $$(date +%s) - t0 )) s"; \
	done; \
	echo "make repro: total $$(( $$(date +%s) - start )) s"; exit $$status

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
