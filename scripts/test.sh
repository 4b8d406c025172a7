#!/usr/bin/env bash
# The test command from the README.
set -euo pipefail
cd "$(dirname "$0")/.."
exec ${PYTHON:-python3} -m pytest tests -q
