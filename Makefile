# The README's commands. `make test` sets up .venv on first use, then runs pytest.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

VENV := .venv
PY := $(VENV)/bin/python
# Prefer Python 3.12 (espnet 202611), else python3. The pyenv shim python3.12 is
# found on PATH but only runs with PYENV_VERSION set: probe by running it.
SYSTEM_PYTHON := $(shell for c in "python3.12" "env PYENV_VERSION=3.12.1 python3.12" "python3"; do \
	$$c --version >/dev/null 2>&1 && { echo "$$c"; break; }; done)
# The oldest supported stack, which CI tests too: Python 3.11 with espnet 202511 (setup.py's lower bound).
OLDEST_PYTHON := $(shell for c in "python3.11" "env PYENV_VERSION=3.11.7 python3.11"; do \
	$$c --version >/dev/null 2>&1 && { echo "$$c"; break; }; done)
OLDEST_VENV := .venv311
# empty: whatever pip picks for the Python
ESPNET_PIN :=
# pip repeats a harmless line per package for this machine's local mirrors (and pip 23 one per legacy build),
# and says it found each requirement already there.
PIP_QUIET := grep --line-buffered -v -e "^WARNING: Location 'file:" -e "^ *DEPRECATION: .* legacy 'setup.py install'" \
	-e "^Requirement already satisfied" || true

.PHONY: demo test test-slow test-oldest venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	test -x $(PY) || $(SYSTEM_PYTHON) -m venv $(VENV)
	# no pip upgrade: pip 26 refuses espnet 202511's dependency ci_sdr (it declares a git URL).
	# Not -q: pip's own lines are the progress of a first install (about 2 minutes with a warm cache).
	$(PY) -m pip install --progress-bar off -e '.[test]' $(ESPNET_PIN) 2>&1 | { $(PIP_QUIET); }
	# pip checks version ranges, not binaries: fail here, by name, if torchaudio does not load beside torch.
	$(PY) -c "import torch, torchaudio; print('venv: torch', torch.__version__, 'torchaudio', torchaudio.__version__)"
	touch $@

# The whole pipeline on the embedded corpus (synthesised here, no download), on CPU:
# LR-SMS with a dense warm-up of 2 of its 10 epochs (docs/results.md: what it buys). Each stage shows
# its progress; docs/benchmarks.md ("The demo") says where the time goes.
demo: venv
	cd egs2/embedded/asr1 && ./run.sh --lowrank_warmup_epochs 2

# The default suite (under ~15 min on 2 cores): every test but the end-to-end runs marked slow.
test: venv
	OMP_NUM_THREADS=2 $(PY) -m pytest -q --durations=10 -m "not slow" tests

# The end-to-end runs (whole pipelines, kill/resume, two training processes, the study tools); CI runs them too.
test-slow: venv
	OMP_NUM_THREADS=2 $(PY) -m pytest -q --durations=10 -m slow tests

# The default suite on the oldest supported stack, in its own venv.
test-oldest:
	test -n '$(OLDEST_PYTHON)' || { echo "make: no Python 3.11 runs here (tried python3.11, PYENV_VERSION=3.11.7 python3.11)"; exit 1; }
	$(MAKE) test VENV=$(OLDEST_VENV) SYSTEM_PYTHON='$(OLDEST_PYTHON)' ESPNET_PIN='espnet==202511'

clean:
	rm -rf $(VENV) $(OLDEST_VENV) build *.egg-info .pytest_cache
