# The two set-up commands of the README: `make demo` and `make test`.
# Both install what is missing first (scripts/setup.sh), so a fresh machine needs nothing else.
.PHONY: setup demo test lint lock

ARGS ?=
PYTHON ?= python3

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/sep demo $(ARGS)

lint: setup
	.venv/bin/ruff check sepcore ray_jobs tests bench
	.venv/bin/mypy sepcore

test: lint
	.venv/bin/pytest -q --durations=15 $(ARGS)

# Refresh requirements.lock, the exact versions scripts/setup.sh installs: what plain pip
# resolves today from pyproject.toml's ranges (with the dev and demucs extras) in a fresh virtualenv.
# torch is written without its local label (2.13.0, not 2.13.0+cpu): `==2.13.0` matches
# either build, so pip takes the CPU wheel where one is offered and PyPI's elsewhere.
lock:
	@set -eu; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	echo "lock: resolving pyproject.toml in a fresh virtualenv ($$tmp)"; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/pip" install -q --disable-pip-version-check -e ".[dev,demucs]"; \
	{ echo "# Exact versions of a working set for pyproject.toml (with the dev and demucs extras)."; \
	  echo "# Made by \`make lock\` ($$("$$tmp/venv/bin/python" --version)); installed by scripts/setup.sh."; \
	  "$$tmp/venv/bin/pip" freeze --all --exclude-editable --exclude pip \
	    | sed -E 's/^(torch==[^+]+)\+.*/\1/'; } > requirements.lock.new; \
	mv requirements.lock.new requirements.lock; \
	echo "lock: wrote requirements.lock ($$(grep -c '==' requirements.lock) packages)"
