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
COPY . /app
# Every dependency has a wheel (psycopg[binary], PyMySQL is pure Python): no compiler needed.
RUN pip install . && rm -rf build *.egg-info

USER portcullis
EXPOSE 8000
CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "gateway.asgi:application"]
