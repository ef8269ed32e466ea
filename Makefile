# The two commands of the README:
#   make demo   set up a virtual environment and run the main job (sinklabel demo)
#   make test   set up a virtual environment and run the test suite
PYTHON ?= python3
VENV ?= .venv
# torch is installed first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build
TORCH ?= torch==2.13.0

.PHONY: demo test bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip

demo: $(VENV)/bin/python
	$(VENV)/bin/pip install -q -e '.[lp,numba]'
	$(VENV)/bin/sinklabel demo

test: $(VENV)/bin/python
	$(VENV)/bin/pip install -q '$(TORCH)'
	$(VENV)/bin/pip install -q -e '.[test]'
	@# pytest's exit code 5 means no test ran: that is a failure, not a pass
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi; exit $$rc

bench: $(VENV)/bin/python
	$(VENV)/bin/pip install -q -e '.[bench]'
	$(VENV)/bin/python -m pytest benchmarks --benchmark-only

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .benchmarks
