#!/bin/sh
# Install Ledger into .venv and run command server, projector and query server together
# on the embedded SQLite stores. Ctrl-C stops all three.
EXTRAS=""
. "$(dirname "$0")/bootstrap.sh"
exec .venv/bin/ledger-local
