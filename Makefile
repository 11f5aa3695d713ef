# Everything a fresh machine needs: `make demo` runs the main job, `make test` the tests.
# Both create the virtual environment in .venv first (torch CPU build, then gptlab).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO_OUT ?= runs/demo

.PHONY: install demo test bench clean

install: $(VENV)/.installed

# torch is pinned here, not in pyproject: `torch==2.13.0` takes the CPU wheel already on
# this kind of machine, after which pyproject's `torch>=2.9` is satisfied and pulls nothing.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: install
	$(BIN)/gptlab speedrun --out $(DEMO_OUT)

test: install
	$(BIN)/python -m pytest tests -n 2 -p no:cacheprovider

bench: install
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/decode.py

clean:
	rm -rf $(VENV) runs .pytest_cache
