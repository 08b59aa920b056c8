# Portcullis: one image for the gateway (daphne), the Celery worker and beat, and migrations.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORTCULLIS_DATA_DIR=/var/lib/portcullis

# An unprivileged user; its data directory is the only place it may write.
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent portcullis \
    && mkdir -p /var/lib/portcullis \
    && chown portcullis:portcullis /var/lib/portcullis

WORKDIR /app
# The dependency layer: only pyproject.toml's pinned dependencies, so a change to the code reuses
# it and rebuilds in seconds. Every dependency has a wheel (psycopg[binary], PyMySQL is pure
# Python): no compiler needed.
COPY pyproject.toml /app/
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
# The code layer: the package itself, without resolving dependencies again.
COPY . /app
RUN pip install --no-deps . && rm -rf build *.egg-info

USER portcullis
EXPOSE 8000
CMD ["daphne", "-v", "0", "-b", "0.0.0.0", "-p", "8000", "gateway.asgi:application"]
