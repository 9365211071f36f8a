#!/usr/bin/env bash
# Creates .venv beside the repo and installs segsvc with its dev tools into it, once.
# Sourced by scripts/serve and scripts/test so that a fresh clone needs nothing but Python 3.11+.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$repo/.venv"
stamp="$venv/.segsvc-installed"
python=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "segsvc needs Python 3.11 or newer ($python is $("$python" --version))" >&2; exit 1; }
  "$python" -m venv "$venv"
fi
# Reinstall when pyproject.toml changed since the last install.
if [ ! -f "$stamp" ] || [ "$repo/pyproject.toml" -nt "$stamp" ]; then
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e "$repo[dev]"
  touch "$stamp"
fi
