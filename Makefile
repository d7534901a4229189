# The two commands a newcomer needs are `make run` and `make test`; the rest are helpers.
.PHONY: run test bootstrap stack-up stack-down stack-status stack-reset lint typecheck schemas

PY := .venv/bin/python

bootstrap:
	@deploy/bootstrap.sh

## Run the scheduler locally: stack, worker, API and a sample schedule firing.
run: bootstrap
	@$(PY) -m streams.demo

## Run the whole test suite (starts the local stack if nothing is configured).
test: bootstrap
	@$(PY) -m pytest

stack-up: bootstrap
	@$(PY) -m deploy.stack up

stack-down: bootstrap
	@$(PY) -m deploy.stack down

stack-status: bootstrap
	@$(PY) -m deploy.stack status

stack-reset: bootstrap
	@$(PY) -m deploy.stack reset

lint: bootstrap
	@$(PY) -m ruff check . && $(PY) -m ruff format --check .

typecheck: bootstrap
	@$(PY) -m mypy scheduler schemas streams projections api deploy

schemas: bootstrap
	@$(PY) -m schemas.export
