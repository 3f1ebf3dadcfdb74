# The two set-up commands of the README: `make demo` and `make test`.
# Both install what is missing first (scripts/setup.sh), so a fresh machine needs nothing else.
.PHONY: setup demo test lint

ARGS ?=

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/sep demo $(ARGS)

lint: setup
	.venv/bin/ruff check sepcore ray_jobs tests bench
	.venv/bin/mypy sepcore

test: lint
	.venv/bin/pytest -q $(ARGS)
