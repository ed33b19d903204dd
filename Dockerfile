# One image for every Handshake service; the command picks the service. See docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Only what the package needs: the local virtualenv, database and keys stay out of the image.
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY account_manager ./account_manager
COPY device_manager ./device_manager
COPY device_connector ./device_connector
RUN pip install .

# Not root. /keys belongs to this user, so a named volume mounted there starts with that owner
# and the key directory can be kept at mode 0700, the keys at 0600.
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin handshake \
    && install -d -m 0700 -o handshake /keys
USER handshake

ENV HANDSHAKE_KEYS_DIR=/keys
EXPOSE 8000
CMD ["handshake", "serve", "--service", "account-manager", "--host", "0.0.0.0", "--http-port", "8000"]
