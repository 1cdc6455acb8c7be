#!/usr/bin/env bash
# Run the test suite (installs the project into .venv on first use). Extra arguments go to pytest.
source "$(dirname "$0")/scripts/env.sh"
cd "$ROOT"
exec "$PY" -m pytest "$@"
