#!/usr/bin/env bash
# The README's figures, in one run, with the CPU they come from: run on an otherwise idle machine.
#   bash scripts/figures.sh > figures.txt 2>&1
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PEER=${FER_PEER_PYTHON:-$HOME/.cache/fer-peer-venv/bin/python}
DATA=../shared/data/fer2013-trainval.npz
echo "== $(date -u +%FT%TZ)"; lscpu | grep -E 'Model name|^CPU\(s\)|Flags' | sed 's/^Flags: */flags: /'
echo "== accuracy on val: default runtime (auto), then torch fp32"
$PY -m fer_app evaluate "$DATA" --split val --json | $PY -c 'import json,sys; d=json.load(sys.stdin); print({k: d[k] for k in d if k in ("accuracy","macro_f1","runtime","n")})'
$PY -m fer_app evaluate "$DATA" --split val --json --runtime torch | $PY -c 'import json,sys; d=json.load(sys.stdin); print({k: d[k] for k in d if k in ("accuracy","macro_f1","runtime","n")})'
echo "== runtime check of the bundled model"
$PY -m fer_app check-runtime --model compact-fer2013
if [ -x "$PEER" ]; then
  echo "== the fer package: accuracy on val, ms per face"
  "$PEER" ../shared/peers/fer_peer.py accuracy "$DATA" --split val
  "$PEER" ../shared/peers/fer_peer.py classify
fi
echo "== bench"
$PY -m fer_app bench --pipeline --runtimes onnx-int8 --repeats 10
