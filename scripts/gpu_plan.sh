#!/usr/bin/env bash
# Issue #12's plan (docs/accuracy-log.md, 7 December) on a lent GPU: the `device` tool sends this checkout (tracked
# files, untracked files git does not ignore, the paths named in `carry`) and refuses more than 64 MiB; the tracked
# models are 150 MiB and FER-2013's npz 67 MiB. So:
#
#   bash scripts/gpu_plan.sh prepare   # here: .gpu/ = the data packed (50 MiB); the five teachers' targets are
#                                      # committed (assets/five-teachers.safetensors, 4 MB; made here if missing);
#                                      # the tracked models out of git's index until `finish` (commit nothing between)
#   device run, carry [".gpu"], timeout_s 600:  bash scripts/gpu_plan.sh teacher
#       teacher-wide-long (200 epochs, taught by the five), its views; if it passes the bar, the six teachers'
#       targets (the five and it) for the student
#   device run within 30 s, carry [] (the warm machine keeps .gpu/ and runs/gpu/), timeout_s 600:
#       bash scripts/gpu_plan.sh student   # the long student (300 epochs) taught by the six, its views
#     (the machine gone: `take DIR` first, then the same with carry [".gpu"])
#   bash scripts/gpu_plan.sh take DIR       # here: from DIR (a reply's files_at) the models into runs/acc/models,
#                                           # the six teachers' targets into .gpu/
#   bash scripts/gpu_plan.sh finish [DIR]   # here: `take DIR`, and git's index back as it was
#   bash scripts/gpu_plan.sh dry-run        # all of it here on CPU, on 420 faces and a tiny shape; keeps nothing
#
# A later session (a new machine) runs `student` after `prepare` with .gpu/six-teachers.safetensors from `finish`.
# Each phase writes its log, its model folder as a tar in parts of 15 MiB (the tool returns files of at most
# 16 MiB) and the six teachers' targets under $OUT. The teacher teaches only above TEACHER_BAR on val with its views
# (the best wide teacher's so far); the student then meets the accuracy log's rule or not (above 72.75% / 0.712).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DATA=${DATA:-../shared/data/fer2013-trainval.npz}
TEACHER_BAR=${TEACHER_BAR:-0.7216}  # teacher-wide-s12's val accuracy, the best wide teacher's so far
TEACHERS=(models/compact-fer2013-soup3 models/compact-fer2013-soup runs/acc/models/teacher-wide
          models/teacher-wide-s13-mixup models/teacher-wide-s14-mixup)
GPU=${GPU:-.gpu}                    # what a call carries
RUNS=${RUNS:-runs/gpu}              # the runs there (ignored, not carried: a warm machine keeps it between calls)
DEST=${DEST:-runs/acc/models}       # where `finish` puts the models that came back
CACHE=${CACHE:-runs/acc/work/targets}  # each teacher's share, cached as it is computed (`prepare` resumes)
FIVE=${FIVE:-assets/five-teachers.safetensors}  # the five teachers' targets on the train faces (tracked: it travels)
CUDA_ONLY=${CUDA_ONLY:-1}           # teacher/student stop where torch sees no GPU (the dry run sets 0)
extra=()                            # train options appended to both runs (they win): the dry run's small shapes
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

fer() { "$PY" -m fer_app "$@"; }

# The accuracy on val that a saved model's card records (with its chosen views after `tta`).
val_accuracy() { "$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['metrics']['val']['accuracy'])" \
  "$1/config.json"; }

# A model folder into $OUT as a tar in parts of 15 MiB (NAME.tar.part-aa, -ab, ...).
ship() { tar -cf - -C "$(dirname "$1")" "$(basename "$1")" | split -b 15M - "$OUT/$(basename "$1").tar.part-"; }

# One run: resumed from its checkpoint when one is there; once saved, only its views and parts again. NAME LOG ARGS...
run() {
  local name=$1 log=$2 resume=(); shift 2
  [ -f "$RUNS/work/$name/checkpoint.safetensors" ] && resume=(--resume)
  [ -f "$RUNS/models/$name/config.json" ] || fer train "$GPU/faces.npz" --name "$name" --models-dir "$RUNS/models" \
    --workdir "$RUNS/work/$name" --balance none --kd-weight 0.7 --kd-temperature 2 --mixup 0.2 --swa-epochs 16 "$@" "${resume[@]}" \
    "${extra[@]}" 2>&1 | tee -a "$log"
  fer tta "$RUNS/models/$name" "$GPU/faces.npz" 2>&1 | tee -a "$log"
  ship "$RUNS/models/$name"
}

# What the phase runs on; without CUDA it stops there (minutes of 16 CPU cores would spend the GPU's time for nothing).
machine() {
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
  lscpu | grep 'Model name' || true
  "$PY" -c 'import sys, torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())
sys.exit(int(sys.argv[1] == "1" and not torch.cuda.is_available()))' "$CUDA_ONLY" \
    || { echo "no CUDA here: stopped (CUDA_ONLY=0 runs on the CPU)"; return 1; }
}

prepare() {
  mkdir -p "$GPU"
  [ -f "$GPU/faces.npz" ] || fer pack "$DATA" --out "$GPU/faces.npz"
  if [ ! -f "$FIVE" ]; then
    [ -f runs/acc/models/teacher-wide/config.json ] || "$PY" scripts/ensemble_member.py \
      models/compact-fer2013-ensemble 1 --others models/compact-fer2013-soup --name teacher-wide \
      --models-dir runs/acc/models
    fer targets "$DATA" --teacher "${TEACHERS[@]}" --out "$FIVE" --workdir "$CACHE"
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
  local log=$OUT/teacher.log acc
  machine | tee "$log"
  run teacher-wide-long "$log" --widths 64 128 256 512 --convs 2 2 2 2 --epochs 200 --seed 15 \
    --teacher "$FIVE"
  acc=$(val_accuracy "$RUNS/models/teacher-wide-long")
  if "$PY" -c "import sys; sys.exit(float(sys.argv[1]) <= float(sys.argv[2]))" "$acc" "$TEACHER_BAR"; then
    fer targets "$GPU/faces.npz" --teacher "$FIVE" "$RUNS/models/teacher-wide-long" \
      --out "$RUNS/six-teachers.safetensors" --workdir "$RUNS/work/targets" 2>&1 | tee -a "$log"
    cp "$RUNS/six-teachers.safetensors" "$OUT/"
    echo "teacher-wide-long: val $acc with its views, above $TEACHER_BAR: it teaches" | tee -a "$log"
  else
    echo "teacher-wide-long: val $acc with its views, not above $TEACHER_BAR: it does not teach (the plan's rule)" \
      | tee -a "$log"
  fi
}

student() {
  : "${OUT:?the device tool sets OUT}"
  local log=$OUT/student.log six
  six=$(ls "$RUNS/six-teachers.safetensors" "$GPU/six-teachers.safetensors" 2>/dev/null | head -1 || true)
  machine | tee "$log"
  [ -n "$six" ] || { echo "no six-teacher targets: the teacher has not run, or did not pass its bar" | tee -a "$log"
                     return 1; }
  run compact-fer2013-long2 "$log" --widths 40 80 160 320 --convs 1 2 2 2 --epochs 300 --seed 0 --teacher "$six"
}

finish() {  # [DIR]
  git reset -q -- models
  [ ! -f .git/info/exclude ] || sed -i '\#^/models/$#d' .git/info/exclude
  git diff --quiet --cached -- models || { echo "models/ differs from HEAD in the index" >&2; exit 1; }
  [ $# -ge 1 ] && take "$1"
  return 0
}

take() {  # DIR: where the device tool put the files of $OUT (its reply's files_at)
  [ -f "$1/six-teachers.safetensors" ] && mkdir -p "$GPU" && cp "$1/six-teachers.safetensors" "$GPU/"
  for name in teacher-wide-long compact-fer2013-long2; do
    compgen -G "$1/$name.tar.part-*" >/dev/null || continue
    mkdir -p "$DEST"
    cat "$1/$name.tar.part-"* | tar -xf - -C "$DEST"
    echo "$DEST/$name: val $(val_accuracy "$DEST/$name") with its views"
  done
}

dry_run() {  # the steps here on CPU: a slice of the data, a tiny shape, a fake $OUT; nothing kept
  tmp=$(mktemp -d)  # global: the EXIT trap reads it
  "$PY" -c "import numpy as np, sys; d = np.load(sys.argv[1]); np.savez(sys.argv[2], **{k: d[k][:300] if \
    k.startswith('train') else d[k][:120] if k.startswith('val') else d[k] for k in d.files})" "$DATA" "$tmp/data.npz"
  DATA=$tmp/data.npz GPU=$tmp/gpu RUNS=$tmp/runs DEST=$tmp/models CACHE=$tmp/cache FIVE=$tmp/five.safetensors
  TEACHER_BAR=0 OUT=$tmp/out CUDA_ONLY=0
  extra=(--epochs 2 --widths 8 16 --convs 1 1 --swa-epochs 0 --threads 2)
  mkdir -p "$OUT"
  trap 'finish >/dev/null; rm -rf "$tmp"' EXIT
  prepare
  teacher
  take "$OUT"
  rm -rf "$RUNS"  # the student on a fresh machine: from the six teachers' targets that `take` put in .gpu/
  student
  ls -l "$OUT"
  finish "$OUT"
}

case "${1:-}" in
  prepare) prepare ;;
  teacher) teacher ;;
  student) student ;;
  take) shift; take "$@" ;;
  finish) shift; finish "$@" ;;
  dry-run) dry_run ;;
  *) sed -n '2,25p' "$0"; exit 2 ;;
esac
