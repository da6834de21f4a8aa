# Sourced by run.sh and test.sh: make .venv with the project installed.
# Usage: EXTRAS="[dev,kurrentdb,mongodb]"; . scripts/bootstrap.sh   (POSIX `.` takes no arguments)
set -eu
ROOT="$(cd "$(dirname "$0")/.." && pwd)"  # $0 is the calling script in scripts/
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "Ledger needs Python 3.11 or newer as '$PYTHON' (set PYTHON=... to choose one)." >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then
    echo "python3 -m venv failed; installing Debian's python3-venv" >&2
    rm -rf .venv
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    "$PYTHON" -m venv .venv
  fi
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${EXTRAS:-}"
