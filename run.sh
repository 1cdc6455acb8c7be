#!/usr/bin/env bash
# The pre-training + evaluation cycle in one line: with no arguments, pre-training -> k-NN ->
# linear -> fine-tuning on the embedded Fashion-MNIST with the CPU preset, then the results table.
# ./run.sh --help explains the stages and options. Installs the project into .venv on first use.
source "$(dirname "$0")/scripts/env.sh"
cd "$ROOT"
exec "$PY" -m ibot.cycle "$@"
