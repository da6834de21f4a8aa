#!/bin/sh
# Install everything the tests need and run the whole suite: generated code is fresh,
# buf lint, ruff, mypy --strict, then pytest (domain, contract suites on every adapter,
# gRPC, end-to-end with real processes, deployment files).
EXTRAS="[dev,kurrentdb,mongodb]"
. "$(dirname "$0")/bootstrap.sh"

if ! command -v npm >/dev/null 2>&1; then
  echo "== installing Node.js and npm (for the buf CLI)"
  apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
fi
echo "== npm ci (buf CLI)"
npm ci --no-audit --no-fund --silent

echo "== generated code is fresh"
.venv/bin/python scripts/generate_protos.py >/dev/null
if [ -d .git ] || git rev-parse --git-dir >/dev/null 2>&1; then
  git diff --exit-code --stat -- ledger/v1 || { echo "ledger/v1 is stale: run scripts/generate_protos.py and commit" >&2; exit 1; }
  untracked="$(git ls-files --others --exclude-standard -- ledger/v1)"
  [ -z "$untracked" ] || { echo "untracked generated files: $untracked" >&2; exit 1; }
fi

echo "== buf lint"
node_modules/.bin/buf lint

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .

echo "== mypy --strict"
.venv/bin/mypy

echo "== pytest"
PATH="$ROOT/node_modules/.bin:$PATH" exec .venv/bin/pytest -p no:cacheprovider "$@"
