# Sourced by run.sh and test.sh: make sure .venv holds this project and its dependencies.
# IBOT_PYTHON overrides the interpreter (an environment you manage yourself).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${IBOT_PYTHON:-}" ]]; then
  PY="$IBOT_PYTHON"
else
  PY="$ROOT/.venv/bin/python"
  STAMP="$ROOT/.venv/.ibot-installed"
  if [[ ! -x "$PY" || ! -f "$STAMP" || "$ROOT/pyproject.toml" -nt "$STAMP" ]]; then
    echo "[ibot] setting up $ROOT/.venv (first run only; torch is large, this takes a few minutes)" >&2
    python3 -m venv "$ROOT/.venv"
    "$PY" -m pip install --quiet --upgrade pip >&2
    "$PY" -m pip install --quiet -e "$ROOT[dev]" >&2
    touch "$STAMP"
  fi
fi
export PY
