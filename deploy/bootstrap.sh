#!/usr/bin/env bash
# Creates .venv with the pinned dependencies from requirements.lock and installs the
# project into it (editable). Re-runs only when the lock file or pyproject.toml change.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if ! command -v "$PY" >/dev/null 2>&1; then
    echo "bootstrap: error: $PY not found: install Python 3.11 or newer (or set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "bootstrap: error: $("$PY" -V 2>&1) is too old: Python 3.11 or newer is needed (set PYTHON=...)" >&2
    exit 1
fi

stamp=".venv/.installed-$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ -x .venv/bin/python ]; then
    exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
echo "bootstrap: installing pinned dependencies into .venv" >&2
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.lock
.venv/bin/python -m pip install -q --no-deps -e .
rm -f .venv/.installed-*
touch "$stamp"
