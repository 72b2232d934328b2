#!/usr/bin/env bash
# Creates .venv with everything the tests need. torch/torchvision: the 2.14.1 / 0.29.1 pair (the only pair with a
# working torchvision on the CI machines, and on local disk there); never let another requirement pull a newer torch.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  need=""
  for pkg in espeak-ng sox chromium; do dpkg -s "$pkg" >/dev/null 2>&1 || need="$need $pkg"; done
  if [ -n "$need" ]; then apt-get update -qq && apt-get install -y -qq $need >/dev/null; fi
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -c "import torch, torchvision" 2>/dev/null || .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
echo "torch==$(.venv/bin/python -c 'import torch; print(torch.__version__.split("+")[0])')" > .venv/torch-constraint.txt
.venv/bin/pip install -q -c .venv/torch-constraint.txt -r requirements-test.txt
.venv/bin/pip install -q --no-deps -r requirements-nodeps.txt
.venv/bin/pip install -q --no-deps -e .
