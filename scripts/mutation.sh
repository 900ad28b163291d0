#!/usr/bin/env bash
# Mutation testing of one module's functions that would give wrong answers silently, against the tests
# that are meant to catch their bugs (README, Development). Not in CI: minutes to tens of minutes.
#   bash scripts/mutation.sh runtimes        # tracking | metrics | detection | quantize | runtimes | model
# It works on HEAD (commit first) in a throwaway git worktree beside the project (../.mutation-MODULE, so
# that ../shared is found), with [tool.mutmut] set to that module and its tests, and prints the killed
# and surviving mutants per function and each survivor's change. The worktree stays for `mutmut show NAME`;
# remove it with `git worktree remove --force ../.mutation-MODULE`.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
module=${1:?usage: scripts/mutation.sh tracking|metrics|detection|quantize|runtimes|model}
names=()
case $module in
  tracking)  tests='"tests/test_tracking.py"' ;;
  metrics)   tests='"tests/test_metrics.py"' ;;
  detection) tests='"tests/test_detection.py", "tests/test_scan.py"' ;;
  quantize)  tests='"tests/test_quantize.py"'  # the gate and what it keeps (the export itself is ONNX Runtime's)
             names=("fer_app.quantize.x_quantize_model*" "fer_app.quantize.x_calibration_sample*"
                    "fer_app.quantize.x_weight_range*") ;;
  runtimes)  tests='"tests/test_runtime_choice.py"'  # the check and auto's choice (the exports: test_runtimes)
             names=("fer_app.runtimes.xǁAccuracyCheckǁ*" "fer_app.runtimes.x_check_runtimes*"
                    "fer_app.runtimes.x_candidates_for*" "fer_app.runtimes.x_select_runtime*"
                    "fer_app.runtimes.xǁ_AutoSelectionǁ_choose*" "fer_app.runtimes.xǁ_AutoSelectionǁ_reason*"
                    "fer_app.runtimes.xǁReferenceǁstale_reason*" "fer_app.runtimes.xǁCheckResultǁsummary*") ;;
  model)     tests='"tests/test_model.py", "tests/test_tta.py"'  # the TTA views
             names=("fer_app.model.xǁClassifierǁviews*" "fer_app.model.xǁClassifierǁview__*"
                    "fer_app.model.xǁClassifierǁpredict_*") ;;
  *) echo "unknown module $module" >&2; exit 2 ;;
esac
[ ${#names[@]} -gt 0 ] || names=("fer_app.$module.*")  # named, so that mutmut lists every result
work=$(dirname "$root")/.mutation-$module
git worktree remove --force "$work" 2>/dev/null || rm -rf "$work"
git worktree add -q --detach "$work" HEAD
cd "$work"
"$root/.venv/bin/python" - "$module" "$tests" <<'EOF'
import re, sys
module, tests = sys.argv[1], sys.argv[2]
text = open("pyproject.toml").read()
section = (f'[tool.mutmut]\nsource_paths = ["fer_app"]\nonly_mutate = ["fer_app/{module}.py"]\n'
           f'pytest_add_cli_args_test_selection = [{tests}]\nalso_copy = ["assets", "models"]\n'
           # workers forked from a process that ran torch or ONNX Runtime can deadlock in their thread pools
           'process_isolation = "forkserver"\n')
text = re.sub(r"\[tool\.mutmut\].*?(?=\n\[|\Z)", section, text, flags=re.S)
open("pyproject.toml", "w").write(text)
EOF
log=$work/mutmut.log
"$root/.venv/bin/mutmut" run --max-children "${MUTMUT_CHILDREN:-2}" "${names[@]}" > "$log" 2>&1 || true
echo "== $module: mutants per function (🎉 killed, 🙁 survived, ⏰ timed out, 🫥 no test reaches it)"
grep -a -E "^(🎉|🙁|⏰|🫥|🤔|🔇) " "$log" | awk '{split($2, a, "__mutmut"); print $1, a[1]}' | sort | uniq -c | sort -k3
echo "== survivors"
grep -a -E "^🙁 " "$log" | awk '{print $2}' | while read -r name; do
  echo "-- $name"; "$root/.venv/bin/mutmut" show "$name" 2>/dev/null | grep -E "^[-+][^-+]" || true
done
echo "worktree kept at $work (git worktree remove --force $work)"
