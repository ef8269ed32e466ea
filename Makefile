# The two commands of the README:
#   make demo   set up a virtual environment and run the main job (sinklabel demo)
#   make test   set up a virtual environment and run the test suite
PYTHON ?= python3
VENV ?= .venv
# torch is installed first, pinned: the version the tests were run with (it needs Python >= 3.10,
# hence requires-python in pyproject.toml). From plain PyPI on Linux this pin is the CUDA build
# (a 527 MB wheel plus the CUDA 13 packages); for the CPU-only wheel (190 MB) name PyTorch's
# CPU index:  make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: demo test bench clean

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
	  { echo "sinklabel needs Python >= 3.10; $(PYTHON) is $$($(PYTHON) -V 2>&1)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip

demo: $(VENV)/bin/python
	$(VENV)/bin/pip install -q -e '.[lp,numba]'
	$(VENV)/bin/sinklabel demo

test: $(VENV)/bin/python
	$(VENV)/bin/pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) '$(TORCH)'
	$(VENV)/bin/pip install -q -e '.[test]'
	@# pytest's exit code 5 means no test ran: that is a failure, not a pass
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi; exit $$rc

# make bench: one moderate size, every installed backend, POT and the paper loop (86 s here, fresh clone);
# make bench BENCH=--bench-full: the comparison of benchmarks/RESULTS.md (about 18 min here; README)
bench: $(VENV)/bin/python
	$(VENV)/bin/pip install -q '$(TORCH)'
	$(VENV)/bin/pip install -q -e '.[bench]'
	$(VENV)/bin/python -m pytest benchmarks --benchmark-only -p no:cacheprovider \
	  --benchmark-columns=median,min,max,rounds $(BENCH)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .benchmarks
