#!/usr/bin/env bash
# Re-pin .ci/constraints.txt to the newest releases: install them into a fresh virtual environment, run the
# whole suite there, and only if it passes write the environment's exact versions as the new pins.
#   bash scripts/update_constraints.sh [VENV_DIR]      (default: a temporary directory, removed afterwards)
# Commit the new .ci/constraints.txt with the change that made the suite pass on those versions.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-$(mktemp -d)/venv}
python -m venv "$venv"
# shellcheck disable=SC1091
source "$venv/bin/activate"
python -m pip install --quiet --upgrade pip
TEMPNET_UNPINNED=1 bash .ci/run
{
  echo "# Every package the suite last passed with (Python $(python -c 'import sys; print(*sys.version_info[:2], sep=".")'), $(date -u +%F))."
  echo "# Regenerate with: bash scripts/update_constraints.sh"
  python -m pip freeze --all --exclude-editable | grep -v -e '^-e ' -e '^pip==' | LC_ALL=C sort -f
} > .ci/constraints.txt
echo "wrote .ci/constraints.txt ($(grep -c '==' .ci/constraints.txt) pins)"
