# Two commands for a fresh machine:
#   make demo   set up .venv and run the offline demo (synthetic data, tiny backbone, CPU)
#   make test   set up .venv with the test extras and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch and torchvision come from the local wheel cache where one is configured (pip's find-links);
# otherwise from PyPI.
PIP_INSTALL := $(PY) -m pip install --quiet

.PHONY: demo test install install-test leaderboard report notebook clean

$(PY):
	$(PYTHON) -m venv $(VENV)

install: $(PY)
	$(PIP_INSTALL) -e .

install-test: $(PY)
	$(PIP_INSTALL) -e ".[test]"

demo: install
	$(PY) -m vedit.run experiment=demo

test: install-test
	$(PY) -m pytest -q -n 2 --dist loadfile

leaderboard:
	$(PY) -m vedit.leaderboard outputs/demo --out outputs/leaderboard

# The report site of the demo's store (make demo first): open outputs/report/index.html in a browser.
report:
	$(PY) -m vedit.report outputs/demo --out outputs/report

# The leaderboard notebook needs the `notebook` extra (nbclient, ipykernel), which `make demo` does not
# install; this executes it on the demo's store (VEDIT_STORE=path overrides) into outputs/leaderboard.ipynb.
notebook: install
	$(PIP_INSTALL) -e ".[notebook]"
	mkdir -p outputs
	VEDIT_STORE=$${VEDIT_STORE:-outputs/demo} $(PY) -c "import nbclient, nbformat; \
	nb = nbformat.read('notebooks/leaderboard.ipynb', as_version=4); \
	nbclient.NotebookClient(nb, timeout=600, kernel_name='python3').execute(); \
	nbformat.write(nb, 'outputs/leaderboard.ipynb'); print('wrote outputs/leaderboard.ipynb')"

clean:
	rm -rf outputs multirun
