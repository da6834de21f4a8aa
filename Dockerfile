# syntax=docker/dockerfile:1
#
# One image for the three Ledger processes. The default command is the command server;
# docker-compose.yml picks the process per service with `command:`
# (ledger-command-server, ledger-projector or ledger-query-server).
#
#   docker build -t ledger .
#   docker run --rm -p 127.0.0.1:50051:50051 -v ledger-data:/var/lib/ledger ledger

# ---- builder: a virtualenv with the project and its production extras -----------------
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# The dependencies first, read from pyproject.toml alone: this layer is rebuilt only when
# they change, not on every code change.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; x = p['optional-dependencies']; print('\n'.join([*p['dependencies'], *x['kurrentdb'], *x['mongodb']]))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

# Then the project itself (what .dockerignore lets through), compiled to bytecode by pip.
COPY . .
RUN pip install ".[kurrentdb,mongodb]" \
 && pip check

# ---- runtime: the virtualenv on a clean slim Python, as an unprivileged user -----------
FROM python:3.11-slim AS runtime

RUN groupadd --system --gid 10001 ledger \
 && useradd --system --uid 10001 --gid ledger --no-create-home \
      --home-dir /var/lib/ledger --shell /usr/sbin/nologin ledger \
 && install -d -o ledger -g ledger -m 0750 /var/lib/ledger

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LEDGER_BIND_HOST=0.0.0.0 \
    LEDGER_COMMAND_PORT=50051 \
    LEDGER_QUERY_PORT=50052 \
    LEDGER_DATA_DIR=/var/lib/ledger

# /var/lib/ledger holds the embedded SQLite stores (the default backends) and the
# projector's heartbeat; mount a volume there to keep SQLite data. It belongs to the
# ledger user, and Docker copies that ownership into a new volume mounted on it.
WORKDIR /var/lib/ledger
USER 10001:10001

EXPOSE 50051 50052

# Exec form throughout, no shell in between: SIGTERM from `docker stop` reaches Python,
# which flips health to NOT_SERVING, drains in-flight calls and exits 0.
STOPSIGNAL SIGTERM

# Without arguments the probe finds which Ledger process runs in the container (/proc)
# and checks it: gRPC health for the servers, the heartbeat file for the projector.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --start-interval=1s --retries=3 \
  CMD ["python", "-m", "ledger.healthcheck"]

CMD ["ledger-command-server"]
