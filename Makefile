# Set-up and checks. `make demo` and `make test` create .venv and install on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Pins torch and torchvision to a pair that imports together; override with CONSTRAINTS=/dev/null elsewhere.
CONSTRAINTS ?= constraints.txt
STAMP := $(VENV)/.installed
DEMO_INSTRUCTION := make it black and white, increase the contrast and add a vignette, but keep the cat

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[offline,studio,mcp,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ragedit edit agent/data/cat.png "$(DEMO_INSTRUCTION)" --profile offline \
		-o demo-output/cat.png --report demo-output/report.json --sheet demo-output/steps.png --overwrite

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

# About 10 minutes on two cores; writes benchmarks/RESULTS.md.
bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) demo-output .pytest_cache
