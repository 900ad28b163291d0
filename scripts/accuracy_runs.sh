#!/usr/bin/env bash
# The runs toward issue #12's model (>= 73.5% val, same network as the bundled one), resumable step by step:
# run it again after any interruption (a session's end, a lost GPU) and it goes on where it stopped.
#
#   1. teachers: the bundled shape with other seeds, and a wider net (teachers may cost more; the
#      shipped student may not), each a full run into runs/acc/models/ (never models/);
#   2. the student: the bundled shape, distilled from all the teachers (and the bundled model),
#      on a longer schedule; saved as models/$STUDENT for `tta`, `quantize` and `evaluate --card`.
#   3. every run, the ones that ship and the ones that don't, goes into the student's table of runs.
#
#   bash scripts/accuracy_runs.sh                          # all of it (days on 2 CPU cores; minutes per run on a GPU)
#   EPOCHS=120 SEEDS="1 2" WIDE=0 bash scripts/accuracy_runs.sh
#   SEEDS= EPOCHS=60 TEACHERS_ONLY=1 bash scripts/accuracy_runs.sh   # only the wide teacher, then stop
#   SEEDS= EPOCHS=60 TEACHERS_ONLY=1 WIDE_NAME=teacher-wide-s12 WIDE_SEED=12 bash scripts/accuracy_runs.sh  # another
#   SEEDS= EPOCHS=60 WIDE_FT=1 TEACHERS_ONLY=1 bash scripts/accuracy_runs.sh  # the wide net, then its mixup fine-tune
#   DATA=tiny.npz EPOCHS=1 STUDENT_EPOCHS=1 bash scripts/accuracy_runs.sh   # a smoke test of the steps
#   SEEDS= BASE_TEACHERS=models/compact-fer2013-ensemble STUDENT_INIT=compact-fer2013-ft STUDENT_EPOCHS=40 \
#     bash scripts/accuracy_runs.sh    # the student fine-tuned from a saved model (cosine, lr 0.01), not from scratch
#   SEEDS= EPOCHS=60 BASE_TEACHERS=models/compact-fer2013-ensemble STUDENT_INIT=compact-fer2013-soup \
#     STUDENT_ARGS="--kd-online --mixup 0.2" bash scripts/accuracy_runs.sh   # consistent teaching (--kd-online)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/data/fer2013-trainval.npz}
EPOCHS=${EPOCHS:-120}                  # each teacher
STUDENT_EPOCHS=${STUDENT_EPOCHS:-150}
SEEDS=${SEEDS-"1 2 3"}                  # set and empty: no seed teachers
WIDE=${WIDE:-1}                        # 1: also a wider teacher (widths 64 128 256 512)
WIDE_NAME=${WIDE_NAME:-teacher-wide}   # its name under $ROOT/models: another name and seed for another one
WIDE_SEED=${WIDE_SEED:-11}
WIDE_FT=${WIDE_FT:-0}                  # 1: then fine-tune it with mixup ($WIDE_NAME-mixup), which teaches in its place
WIDE_FT_EPOCHS=${WIDE_FT_EPOCHS:-24}
TEACHERS_ONLY=${TEACHERS_ONLY:-0}      # 1: stop after the teachers (choose the student recipe on their figures)
STUDENT=${STUDENT:-compact-fer2013-kd}
STUDENT_INIT=${STUDENT_INIT:-}         # a saved model: the student starts from it (cosine schedule, lr 0.01)
STUDENT_ARGS=${STUDENT_ARGS:-}         # more train options for the student (they win over the above), e.g. --kd-online
BASE_TEACHERS=${BASE_TEACHERS:-models/compact-fer2013}  # saved models that teach besides the ones trained here
ROOT=${ROOT:-runs/acc}
THREADS=${THREADS:-0}
SHAPE=(--widths 40 80 160 320 --convs 1 2 2 2)
COMMON=(--balance none --threads "$THREADS")
mkdir -p "$ROOT/models"

lscpu | grep -E 'Model name|Flags' | sed 's/^Flags: */flags: /' || true
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

# One run: skipped once its model is saved; resumed from its checkpoint when one is there.
run() {  # NAME MODELS_DIR ARGS...
  local name=$1 dir=$2; shift 2
  if [ -f "$dir/$name/config.json" ]; then echo "== $name: saved already"; return; fi
  local resume=(); [ -f "$ROOT/work/$name/checkpoint.safetensors" ] && resume=(--resume)
  echo "== $name ($(date -u +%FT%TZ))"
  "$PY" -m fer_app train "$DATA" --name "$name" --models-dir "$dir" --workdir "$ROOT/work/$name" \
    "${COMMON[@]}" "${resume[@]}" "$@"
}

read -r -a teachers <<< "$BASE_TEACHERS"
for seed in $SEEDS; do
  run "teacher-s$seed" "$ROOT/models" "${SHAPE[@]}" --epochs "$EPOCHS" --seed "$seed"
  teachers+=("$ROOT/models/teacher-s$seed")
done
if [ "$WIDE" = 1 ]; then
  run "$WIDE_NAME" "$ROOT/models" --widths 64 128 256 512 --convs 2 2 2 2 --epochs "$EPOCHS" --seed "$WIDE_SEED"
  wide=$WIDE_NAME
  if [ "$WIDE_FT" = 1 ]; then  # the recipe that lifted both wide nets it was tried on (README, Results)
    wide=$WIDE_NAME-mixup
    run "$wide" "$ROOT/models" --init-from "$ROOT/models/$WIDE_NAME" --lr 0.01 --schedule cosine \
      --epochs "$WIDE_FT_EPOCHS" --mixup 0.2
  fi
  teachers+=("$ROOT/models/$wide")
fi
if [ -f "$ROOT/work/$STUDENT/checkpoint.safetensors" ] && [ "$TEACHERS_ONLY" != 1 ]; then
  # a resumed student: the teachers' figures were printed when it started (minutes on 2 cores)
  echo "== teachers' val figures: printed when $STUDENT started (its log)"
else
  for t in "${teachers[@]}"; do  # each teacher's own val figure, with its TTA views as saved
    "$PY" -m fer_app evaluate "$DATA" --split val --runtime torch --model "$t" --json |
      "$PY" -c 'import json,sys; d=json.load(sys.stdin); print(d["model"], round(d["accuracy"], 4), round(d["macro_f1"], 4))'
  done
fi
if [ "$TEACHERS_ONLY" = 1 ]; then exit 0; fi
start=("${SHAPE[@]}")
[ -n "$STUDENT_INIT" ] && start=(--init-from "$STUDENT_INIT" --lr 0.01 --schedule cosine)
read -r -a extra <<< "$STUDENT_ARGS"
run "$STUDENT" models "${start[@]}" --epochs "$STUDENT_EPOCHS" --teacher "${teachers[@]}" \
  --kd-weight 0.7 --kd-temperature 2 "${extra[@]}"
"$PY" -m fer_app tta "$STUDENT" "$DATA"
"$PY" -m fer_app runs "$STUDENT"
echo "next: python -m fer_app quantize $STUDENT $DATA; python -m fer_app evaluate $DATA --split val --runtime torch --model $STUDENT --card"
