# Portcullis: `make run` serves the embedded demo; `make test` runs the whole suite on PostgreSQL + Redis.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8000
# The ASGI server of `make run`: daphne, or uvicorn (docs/operations.md, "The ASGI server").
SERVER ?= daphne
SERVE_daphne  = $(BIN)/daphne -b 127.0.0.1 -p $(PORT) gateway.asgi:application
SERVE_uvicorn = $(BIN)/uvicorn --host 127.0.0.1 --port $(PORT) --no-proxy-headers --no-access-log \
	--timeout-graceful-shutdown 10 gateway.asgi:application

TEST_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/portcullis
TEST_REDIS_URL    ?= redis://127.0.0.1:6379/15

.PHONY: run test install lint bench bench-peer bench-review bench-sessions clean

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Portcullis needs Python >= 3.11 (set PYTHON=python3.x)") if sys.version_info < (3, 11) else None'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@

install: $(BIN)/.installed

# Every step sees PORT, so the OAuth issuer, resource URI and links say the port served; the URL
# is recorded (gateway/settings.py, RUN_PUBLIC_URL_FILE) for manage.py commands run later.
run: install
	$(if $(SERVE_$(SERVER)),,$(error SERVER must be daphne or uvicorn, not $(SERVER)))
	PORT=$(PORT) $(BIN)/python manage.py migrate --noinput -v 0
	@PORT=$(PORT) $(BIN)/python -c 'import os; os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings"); \
		from django.conf import settings as s; s.RUN_PUBLIC_URL_FILE.write_text(s.PUBLIC_BASE_URL + "\n")'
	@PORT=$(PORT) $(BIN)/python manage.py demo_seed
	@PORT=$(PORT) $(BIN)/python manage.py sessions_sweep > /dev/null
	@PORT=$(PORT) $(BIN)/python -c 'import os; os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings"); \
		from django.conf import settings as s; print("Serving on", s.PUBLIC_BASE_URL, "(Ctrl-C stops)")'
	PORT=$(PORT) $(SERVE_$(SERVER))

test: install
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} REDIS_URL=$${REDIS_URL:-$(TEST_REDIS_URL)} \
		$(BIN)/python tests/check_services.py
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} REDIS_URL=$${REDIS_URL:-$(TEST_REDIS_URL)} \
		$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@# The layers (pyproject.toml [tool.importlinter]); the counts of imports inside functions and of cycles.
	$(BIN)/lint-imports --no-cache
	$(BIN)/python tests/test_architecture.py
	DATABASE_URL= REDIS_URL= $(BIN)/mypy
	@# The migration check needs no server: run it on the embedded SQLite default.
	DATABASE_URL= REDIS_URL= $(BIN)/python manage.py makemigrations --check --dry-run -v 0

bench: install
	$(BIN)/python bench/exec_latency.py $(BENCH_ARGS)

# exec against postgres-mcp (installed into bench/.venvs/ on the first run), psycopg and a bare SDK tool.
bench-peer: install
	$(BIN)/python bench/peer_postgres_mcp.py $(BENCH_ARGS)

# A review decided in one daphne process -> reviews_wait returning in another (aim: 100 ms).
bench-review: install
	$(BIN)/python bench/review_wake.py $(BENCH_ARGS)

# A million sessions in PostgreSQL (database portcullis_bench_scale, loaded once, kept between runs).
bench-sessions: install
	$(BIN)/python bench/sessions_scale.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
