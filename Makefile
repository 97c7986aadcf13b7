# Two entry points: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed-dev

.PHONY: demo test install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: a CPU build; the constraints file keeps every later install from pulling CUDA wheels.
$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PIP) install -c constraints.txt torch
	$(PIP) install -c constraints.txt -e '.[dev]'
	@if $(PY) -m pip list 2>/dev/null | grep -iE '^(nvidia-|torchvision|triton)'; then \
		echo "error: CUDA packages or torchvision were installed on a CPU machine" >&2; exit 1; fi
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/zsad demo --out demo-out

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) demo-out
