#!/usr/bin/env bash
# Renders docs/scaling/*.png from docs/scaling/data/*.jsonl (see plot.py) and
# prints the measured tables and the model's projection (model.py). Uses
# Debian's python3 (/usr/bin/python3) with python3-matplotlib, installing
# the package with apt-get when it is missing.
set -euo pipefail
cd "$(dirname "$0")"
PY=/usr/bin/python3
if ! "$PY" -c 'import matplotlib' 2>/dev/null; then
  apt-get install -y -q python3-matplotlib >/dev/null ||
    { echo "render.sh: needs python3-matplotlib (apt-get install python3-matplotlib)" >&2; exit 1; }
fi
"$PY" plot.py
"$PY" model.py
