#!/usr/bin/env bash
# Issue #12's plan (docs/accuracy-log.md, 7 December) on a lent GPU: the `device` tool sends this checkout (tracked
# files, untracked files git does not ignore, the paths named in `carry`) and refuses more than 64 MiB; the tracked
# models are 150 MiB and FER-2013's npz 67 MiB. So:
#
#   bash scripts/gpu_plan.sh prepare   # here: .gpu/ = the data packed (50 MiB) + the five teachers' targets (4 MB);
#                                      # the tracked models out of git's index until `finish` (commit nothing between)
#   device run, carry [".gpu"], timeout_s 600:
#       bash scripts/gpu_plan.sh teacher   # there: teacher-wide-long, 200 epochs, its views; into $OUT in parts
#       bash scripts/gpu_plan.sh student   # there: the long student taught by the five and the new teacher
#   bash scripts/gpu_plan.sh finish DIR     # here: the index back; the models from DIR (the reply's files_at)
#
#   bash scripts/gpu_plan.sh dry-run   # all four here on CPU, on 420 faces of the data and a tiny shape; keeps nothing
#
# Each phase on the device writes its log and its model folder (a tar in parts of 15 MiB: the tool returns files of
# at most 16 MiB) under $OUT. The teacher teaches only above TEACHER_BAR on val with its views (the best wide teacher
# so far); the student is then for `tta`, `quantize` and the rule of the accuracy log (above 72.75% / 0.712).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DATA=${DATA:-../shared/data/fer2013-trainval.npz}
EXTRA=${EXTRA:-}                    # train options appended to both runs (they win): a dry run's small shapes
TEACHER_BAR=${TEACHER_BAR:-0.7216}  # teacher-wide-s12's val accuracy, the best wide teacher's so far
TEACHERS=(models/compact-fer2013-soup3 models/compact-fer2013-soup runs/acc/models/teacher-wide
          models/teacher-wide-s13-mixup models/teacher-wide-s14-mixup)
GPU=${GPU:-.gpu}                    # what a call carries
DEST=${DEST:-runs/acc/models}        # where `finish` puts the models that came back
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
read -r -a extra <<< "$EXTRA"

fer() { "$PY" -m fer_app "$@"; }

# The accuracy of a saved model on val as its card records it (with its chosen views after `tta`).
val_accuracy() { "$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['metrics']['val']['accuracy'])" \
  "$1/config.json"; }

# A model folder into $OUT as a tar in parts of 15 MiB (NAME.tar.part-aa, -ab, ...).
ship() {  # FOLDER
  tar -cf - -C "$(dirname "$1")" "$(basename "$1")" | split -b 15M - "$OUT/$(basename "$1").tar.part-"
}

prepare() {
  mkdir -p "$GPU"
  [ -f "$GPU/faces.npz" ] || fer pack "$DATA" --out "$GPU/faces.npz"
  if [ ! -f "$GPU/five-teachers.safetensors" ]; then
    [ -f runs/acc/models/teacher-wide/config.json ] || "$PY" scripts/ensemble_member.py \
      models/compact-fer2013-ensemble 1 --others models/compact-fer2013-soup --name teacher-wide \
      --models-dir runs/acc/models
    fer targets "$DATA" --teacher "${TEACHERS[@]}" --out "$GPU/five-teachers.safetensors" \
      --workdir runs/acc/work/targets
  fi
  git rm -r -q --cached --ignore-unmatch models
  grep -qsx '/models/' .git/info/exclude || echo '/models/' >> .git/info/exclude
  local sent
  sent=$( { git ls-files -z; git ls-files -z --others --exclude-standard; find "$GPU" -type f -print0; } \
    | du -cb --files0-from=- | tail -1 | cut -f1)
  echo "what a call with carry [\"$GPU\"] sends: $((sent / 1048576)) MiB of 64"
  [ "$sent" -le $((64 * 1048576)) ] || { echo "over the device tool's 64 MiB" >&2; exit 1; }
}

teacher() {
  : "${OUT:?the device tool sets OUT}"
  { nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true; lscpu | grep 'Model name' || true
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'; } \
    | tee "$OUT/teacher.log"
  local models=$GPU/models work=$GPU/work/teacher-wide-long resume=()
  [ -f "$work/checkpoint.safetensors" ] && resume=(--resume)
  fer train "$GPU/faces.npz" --name teacher-wide-long --models-dir "$models" --workdir "$work" --balance none \
    --widths 64 128 256 512 --convs 2 2 2 2 --epochs 200 --seed 15 --teacher "$GPU/five-teachers.safetensors" \
    --kd-weight 0.7 --kd-temperature 2 --mixup 0.2 --swa-epochs 16 "${resume[@]}" "${extra[@]}" \
    2>&1 | tee -a "$OUT/teacher.log"
  fer tta "$models/teacher-wide-long" "$GPU/faces.npz" 2>&1 | tee -a "$OUT/teacher.log"
  ship "$models/teacher-wide-long"
  echo "teacher-wide-long: val $(val_accuracy "$models/teacher-wide-long") with its views (bar $TEACHER_BAR)" \
    | tee -a "$OUT/teacher.log"
}

student() {
  : "${OUT:?the device tool sets OUT}"
  local models=$GPU/models acc
  acc=$(val_accuracy "$models/teacher-wide-long")
  if ! "$PY" -c "import sys; sys.exit(float(sys.argv[1]) <= float(sys.argv[2]))" "$acc" "$TEACHER_BAR"; then
    echo "teacher-wide-long: val $acc, not above $TEACHER_BAR: it does not teach (the plan's rule)" \
      | tee "$OUT/student.log"
    return
  fi
  local work=$GPU/work/compact-fer2013-long2 resume=()
  [ -f "$work/checkpoint.safetensors" ] && resume=(--resume)
  fer train "$GPU/faces.npz" --name compact-fer2013-long2 --models-dir "$models" --workdir "$work" \
    --balance none --widths 40 80 160 320 --convs 1 2 2 2 --epochs 300 --seed 0 \
    --teacher "$GPU/five-teachers.safetensors" "$models/teacher-wide-long" --kd-weight 0.7 --kd-temperature 2 \
    --mixup 0.2 --swa-epochs 16 "${resume[@]}" "${extra[@]}" 2>&1 | tee "$OUT/student.log"
  fer tta "$models/compact-fer2013-long2" "$GPU/faces.npz" 2>&1 | tee -a "$OUT/student.log"
  ship "$models/compact-fer2013-long2"
}

finish() {  # DIR: where the device tool put the files of $OUT (its reply's files_at)
  git reset -q -- models
  sed -i '\#^/models/$#d' .git/info/exclude
  git diff --quiet --cached -- models || { echo "models/ differs from HEAD in the index" >&2; exit 1; }
  [ $# -ge 1 ] || return 0
  for name in teacher-wide-long compact-fer2013-long2; do
    compgen -G "$1/$name.tar.part-*" >/dev/null || continue
    mkdir -p "$DEST"
    cat "$1/$name.tar.part-"* | tar -xf - -C "$DEST"
    echo "$DEST/$name: val $(val_accuracy "$DEST/$name") with its views"
  done
}

dry_run() {  # the four steps here on CPU: a slice of the data, a tiny shape, a fake $OUT; nothing kept
  local tmp; tmp=$(mktemp -d)
  "$PY" -c "import numpy as np, sys; d = np.load(sys.argv[1]); np.savez(sys.argv[2], **{k: d[k][:300] if \
    k.startswith('train') else d[k][:120] if k.startswith('val') else d[k] for k in d.files})" "$DATA" "$tmp/data.npz"
  export DATA=$tmp/data.npz GPU=.gpu-dry DEST=$tmp/models TEACHER_BAR=0 OUT=$tmp/out
  extra=(--epochs 2 --widths 8 16 --convs 1 1 --swa-epochs 0 --threads 2)
  mkdir -p "$OUT"
  trap 'finish >/dev/null; rm -rf "$GPU"' EXIT
  prepare
  teacher
  student
  ls -l "$OUT"
  finish "$OUT"
}

case "${1:-}" in
  prepare) prepare ;;
  teacher) teacher ;;
  student) student ;;
  finish) shift; finish "$@" ;;
  dry-run) dry_run ;;
  *) sed -n '2,20p' "$0"; exit 2 ;;
esac
