#!/usr/bin/env bash
# The GPU checks of issue 23 (item 4) in one run of under 8 minutes on one NVIDIA GPU, written to one Markdown file:
#   1. the precision matrix: every installed method in bf16 and fp16, finite, state in float32;
#   2. jef's augmenter at 224 px on the GPU against torchvision.transforms.v2 on the GPU;
#   3. the SimCLR (ResNet-50) and DINO (ViT-S/16) steps, bf16, channels-last, eager and torch.compile'd,
#      against a bare forward and backward of the same backbone;
#   4. jef against lightly end to end on ResNet-18 at 224 px from uint8 images in memory (skipped, with a line
#      saying so, where lightly cannot be imported even after installing benchmarks/wheels/).
#
# Usage, from the repository root:
#   bash benchmarks/gpu_check.sh [--out FILE] [--cpu-smoke]
# The Markdown goes to --out, else $OUT (a folder: $OUT/gpu_check.md), else gpu_check.md. --cpu-smoke runs every
# check on the CPU with tiny sizes (under 3 minutes): it tests this script, it measures nothing. $PYTHON picks the
# interpreter (default: .venv/bin/python where it exists, else python3); $GPU_CHECK_BUDGET the seconds all
# checks may take together (default 420 on a GPU, 170 in smoke mode).
#
# No `set -e`: a check that fails or hangs is reported (its exit status and last lines) and the next one runs.
# Each check runs under `timeout`, capped by what is left of the total budget.
set -u

cd "$(dirname "$0")/.." || exit 2
SMOKE=0
OUT_FILE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-smoke) SMOKE=1 ;;
    --out) OUT_FILE="${2:?--out needs a file}"; shift ;;
    --out=*) OUT_FILE="${1#--out=}" ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$OUT_FILE" ]; then
  if [ -n "${OUT:-}" ] && [ -d "${OUT}" ]; then OUT_FILE="$OUT/gpu_check.md"; else OUT_FILE="${OUT:-gpu_check.md}"; fi
fi
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1  # a check killed at its timeout still leaves its last lines in the log
WORK="$(mktemp -d "${TMPDIR:-/tmp}/jef-gpu-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
if [ "$SMOKE" = 1 ]; then BUDGET="${GPU_CHECK_BUDGET:-170}"; else BUDGET="${GPU_CHECK_BUDGET:-420}"; fi
START=$(date +%s)
FAILED=0
MD="$WORK/report.md"
: > "$MD"

md() { printf '%s\n' "$@" >> "$MD"; }

# run_check NAME LIMIT CMD...: runs CMD under timeout (LIMIT seconds, or what is left of the budget), its stdout
# to $WORK/NAME.out and stderr to $WORK/NAME.err; sets STATUS to a one-line verdict and returns CMD's status.
run_check() {
  local name="$1" limit="$2"; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) - 10 ))  # 10: timeout's grace before its KILL
  [ "$limit" -gt "$left" ] && limit=$left
  : > "$WORK/$name.out"; : > "$WORK/$name.err"
  if [ "$limit" -lt 15 ]; then
    STATUS="skipped: the time budget (${BUDGET} s for all checks) ran out"
    echo "[gpu_check] $name: $STATUS" >&2
    return 125
  fi
  echo "[gpu_check] $name (limit ${limit} s): $*" >&2
  local t0=$(date +%s) rc
  timeout -k 10 "$limit" "$@" > "$WORK/$name.out" 2> "$WORK/$name.err"
  rc=$?
  local took=$(( $(date +%s) - t0 ))
  case $rc in
    0) STATUS="passed in ${took} s" ;;
    124|137) STATUS="TIMED OUT after ${took} s (limit ${limit} s)"; FAILED=1 ;;
    *) STATUS="FAILED (exit ${rc}) after ${took} s"; FAILED=1 ;;
  esac
  echo "[gpu_check] $name: $STATUS" >&2
  return $rc
}

# report NAME RC CMD...: the command's verdict, its stdout (the tables) and, when it did not pass, the last lines
# of its stderr (and of its stdout, when that printed no table to show above).
report() {
  local name="$1" rc="$2"; shift 2
  md "Command: \`$*\`  " "Status: $STATUS" ""
  if [ -s "$WORK/$name.out" ]; then md "$(cat "$WORK/$name.out")" ""; fi
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 125 ]; then
    local logs=("$WORK/$name.err")
    [ -s "$WORK/$name.out" ] || logs+=("$WORK/$name.out")
    md "Last lines of its output:" "" '```text' "$(tail -n 30 "${logs[@]}" 2>/dev/null)" '```' ""
  fi
}

check() {  # check NAME LIMIT CMD...: run_check then report
  local name="$1" limit="$2"; shift 2
  run_check "$name" "$limit" "$@"
  report "$name" $? "$@"
}

# --- the machine -----------------------------------------------------------------------------------------------
if [ "$SMOKE" = 1 ]; then
  DEVICE=cpu
  GPU_LINE="none: --cpu-smoke (every check on the CPU, tiny sizes; the numbers mean nothing)"
else
  DEVICE=cuda
  GPU_LINE="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)"
  GPU_LINE="${GPU_LINE:-nvidia-smi gave nothing}"
fi
VERSIONS="$("$PYTHON" -c 'import torch, torchvision; print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, CUDA {torch.version.cuda}, cuda available: {torch.cuda.is_available()}")' 2>&1 | tail -n 1)"
CPU_LINE="$(grep -m 1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | sed 's/^ //') ($(getconf _NPROCESSORS_ONLN) cores)"
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' + local changes')"

md "# jef GPU checks" "" \
   "- Command: \`bash benchmarks/gpu_check.sh $( [ "$SMOKE" = 1 ] && echo --cpu-smoke)\` (python: \`$PYTHON\`)" \
   "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')" \
   "- GPU (name, driver, memory): $GPU_LINE" \
   "- $VERSIONS" \
   "- CPU: $CPU_LINE; jef commit $COMMIT" \
   "- Budget: ${BUDGET} s for all checks, each under its own timeout" ""

if [ "$SMOKE" = 0 ] && ! "$PYTHON" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  md "**No CUDA device is visible to \`$PYTHON\`: every check below will fail. Run with \`--cpu-smoke\` on a CPU.**" ""
fi

# --- 1. the precision matrix ---------------------------------------------------------------------------------
md "## 1. Precision matrix: every installed method in bf16 and fp16" ""
if [ "$SMOKE" = 1 ]; then
  md "Smoke settings: small_cnn, batch 8, 2 steps on the CPU (fp16 rows say it needs a GPU)." ""
  check matrix 100 "$PYTHON" benchmarks/gpu_step.py precision-matrix --cpu --backbone small_cnn --batch-size 8 \
    --steps 2 --warmup 1 --precisions bf16 fp16
else
  md "Settings cut to fit the budget: ResNet-18 (CIFAR stem), batch 256, **20 steps** (warm-up 5) per cell on" \
     "fashion_mnist_mini, instead of precision_matrix.py's default 300 steps. The note column says whether every" \
     "floating tensor of the model and optimiser state was float32 at the end (\`gpu_step.py precision-matrix\`)." ""
  check matrix 190 "$PYTHON" benchmarks/gpu_step.py precision-matrix --precisions bf16 fp16 --steps 20 --warmup 5 \
    --batch-size 256
fi

# --- 2. the augmenter on the GPU -----------------------------------------------------------------------------
md "## 2. Augmenter: jef's batched views against per-image torchvision.transforms.v2, both on the $DEVICE" ""
if [ "$SMOKE" = 1 ]; then
  check augment 40 "$PYTHON" benchmarks/augment_throughput.py --sizes 32:64 --recipes simclr byol --threads 1 \
    --batch 16 --images 16 --repeats 1
else
  check augment 90 "$PYTHON" benchmarks/augment_throughput.py --device cuda --sizes 224:256 --recipes simclr byol \
    --threads 1 --batch 256 --images 512 --repeats 3
fi

# --- 3. model steps against the bare backbone ----------------------------------------------------------------
# Eager rows first, compiled ones last: compilation is what most likely eats the budget.
md "## 3. Model steps: jef's SimCLR and DINO steps against a bare forward + backward of the same backbone" "" \
   "Goals: jef's step within 10% of the bare step (time ratio <= 1.10); DINO ViT-S/16 at 224 px >= 1,750 images/s" \
   "on an H200-class GPU (images/s counts source images, each with all its views: the 2x224 + 10x96 row is the" \
   "recipe's, the 2x224 + 0 row shows the global views alone). Compiled rows: \`torch.compile\` of the model's" \
   "forward (the loss) and of the bare backbone, optimiser outside; their warm-up column includes the compilation." ""
STEP_ROWS="$WORK/step_rows.md"
STEP_NOTES="$WORK/step_notes.md"
: > "$STEP_ROWS"; : > "$STEP_NOTES"
step() {  # step NAME LIMIT ARGS...: one gpu_step.py row into the table, or a failure row and its last lines
  local name="$1" limit="$2"; shift 2
  run_check "$name" "$limit" "$PYTHON" benchmarks/gpu_step.py "$@"
  local rc=$?
  if [ $rc -eq 0 ]; then
    grep '^| ' "$WORK/$name.out" | tail -n 1 >> "$STEP_ROWS"
  else
    echo "| \`$*\` | | | | | — | | | | $STATUS |" >> "$STEP_ROWS"
    if [ $rc -ne 125 ]; then
      { echo "\`$name\` ($STATUS), last lines:"; echo; echo '```text'; tail -n 30 "$WORK/$name.err"; echo '```'; echo; } \
        >> "$STEP_NOTES"
    fi
  fi
}
if [ "$SMOKE" = 1 ]; then
  TINY_SIMCLR=(--method simclr --backbone resnet18 --image-size 32 --batch-size 4 --warmup 1 --steps 1 --repeats 1)
  TINY_DINO=(--method dino --image-size 32 --local-size 16 --batch-size 2 --warmup 1 --steps 1 --repeats 1)
  md "Smoke settings: ResNet-18 at 32 px and ViT-S/16 at 32/16 px on the CPU; compiled rows use the \`eager\`" \
     "backend (dynamo's tracing only: inductor's C++ compilation would not fit the smoke budget)." ""
  step simclr_eager 30 "${TINY_SIMCLR[@]}" --precision bf16 --channels-last
  step dino_eager 30 "${TINY_DINO[@]}" --n-local 2 --precision bf16 --channels-last
  step dino_global_eager 30 "${TINY_DINO[@]}" --n-local 0 --precision bf16 --channels-last
  COMPILE_SIMCLR=("${TINY_SIMCLR[@]}" --precision bf16 --channels-last --compile --compile-backend eager)
  COMPILE_DINO=("${TINY_DINO[@]}" --n-local 2 --precision bf16 --channels-last --compile --compile-backend eager)
else
  GPU_SIMCLR=(--method simclr --device cuda --precision bf16 --channels-last --batch-size 128 --warmup 3 --steps 5
              --repeats 3)
  GPU_DINO=(--method dino --device cuda --precision bf16 --channels-last --batch-size 128 --warmup 3 --steps 5
            --repeats 3)
  step simclr_eager 90 "${GPU_SIMCLR[@]}"
  step dino_eager 90 "${GPU_DINO[@]}" --n-local 10
  step dino_global_eager 60 "${GPU_DINO[@]}" --n-local 0
  COMPILE_SIMCLR=("${GPU_SIMCLR[@]}" --compile)
  COMPILE_DINO=("${GPU_DINO[@]}" --n-local 10 --compile)
fi
# The section is written now (the compiled rows are appended at the end, below check 4's section).

# --- 4. jef against lightly end to end -----------------------------------------------------------------------
lightly_ready() { "$PYTHON" -c 'import lightly' 2>/dev/null; }
if ! lightly_ready && ls benchmarks/wheels/*.whl > /dev/null 2>&1; then
  # lightly and the few packages it needs beyond the GPU image (see benchmarks/README.md); no index, no network.
  echo "[gpu_check] installing lightly from benchmarks/wheels/" >&2
  timeout 120 "$PYTHON" -m pip install -q --no-index --find-links benchmarks/wheels lightly > "$WORK/pip.log" 2>&1 \
    || { timeout 120 "$PYTHON" -m pip install -q --no-index --no-deps --target "$WORK/site" benchmarks/wheels/*.whl \
           >> "$WORK/pip.log" 2>&1 && export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"; }
fi
DATA=fashion_mnist_mini  # the 10k images bundled with jef, unless the full Fashion-MNIST IDX files are here
"$PYTHON" -c 'from jef.data.fashion import find_fashion_files; find_fashion_files(None)' 2>/dev/null && DATA=fashion_mnist
COMPARE_SECTION="$WORK/compare.md"
{
  echo "## 4. jef against lightly end to end: ResNet-18 at 224 px from uint8 images in memory"
  echo
} > "$COMPARE_SECTION"
compare_note() { printf '%s\n' "$@" >> "$COMPARE_SECTION"; }
if [ "$SMOKE" = 1 ]; then
  COMPARE=(--methods simclr --seeds 0 --steps 3 --subset-train 64 --subset-test 32 --batch-size 16 --width 4
           --blocks 1 1 1 1 --stem imagenet --image-size 64 --data "$DATA" --probe-epochs 1 --step-steps 2
           --step-repeats 1 --warmup-steps 1 --window 1 --threads 1 --workers 0 --out "$WORK/compare.json")
else
  COMPARE=(--methods simclr --seeds 0 --epochs 1 --steps 30 --subset-train 10000 --subset-test 2000 --batch-size 256
           --width 64 --blocks 2 2 2 2 --stem imagenet --image-size 224 --data "$DATA" --probe-epochs 2
           --step-steps 10 --step-repeats 1 --warmup-steps 5 --window 5 --threads 8 --workers 8 --device cuda
           --precision bf16 --out "$WORK/compare.json")
fi
compare_note "SimCLR, one seed, 30 steps (3 in smoke mode), Fashion-MNIST's 28 px uint8 images ($DATA) resized" \
  "to 224 px views by each framework's own augmentation (jef: its batched augmenter on the device; lightly:" \
  "its transforms in DataLoader workers), ResNet-18 layout with ResNet's 7x7 stem; kNN and a 2-epoch probe." ""
if lightly_ready; then
  run_check compare 150 "$PYTHON" benchmarks/compare_lightly.py "${COMPARE[@]}"
  rc=$?
  saved_md="$MD"; MD="$COMPARE_SECTION"; report compare $rc "$PYTHON" benchmarks/compare_lightly.py "${COMPARE[@]}"
  MD="$saved_md"
elif [ "$SMOKE" = 1 ]; then
  compare_note "lightly cannot be imported here (nothing usable in benchmarks/wheels/): smoke mode runs jef's side" \
    "alone, to test the script; on a GPU this check is skipped instead." ""
  run_check compare 60 "$PYTHON" benchmarks/compare_lightly.py --frameworks jef "${COMPARE[@]}"
  rc=$?
  saved_md="$MD"; MD="$COMPARE_SECTION"; report compare $rc "$PYTHON" benchmarks/compare_lightly.py --frameworks jef \
    "${COMPARE[@]}"
  MD="$saved_md"
else
  compare_note "Status: skipped: lightly cannot be imported by \`$PYTHON\`, and benchmarks/wheels/ held no wheels it" \
    "could install (make them as benchmarks/README.md says, then run this script again)." ""
  [ -s "$WORK/pip.log" ] && compare_note "pip said:" "" '```text' "$(tail -n 15 "$WORK/pip.log")" '```' ""
fi

# --- 3, continued: the compiled steps ------------------------------------------------------------------------
if [ "$SMOKE" = 1 ]; then
  step simclr_compile 40 "${COMPILE_SIMCLR[@]}"
  step dino_compile 40 "${COMPILE_DINO[@]}"
else
  step simclr_compile 200 "${COMPILE_SIMCLR[@]}"
  step dino_compile 200 "${COMPILE_DINO[@]}"
fi
{
  # The table's header from gpu_step.py itself, so the two cannot drift apart.
  "$PYTHON" -c 'import sys; sys.path.insert(0, "benchmarks"); import gpu_step; print(gpu_step.HEADER)' 2>/dev/null \
    || echo '| gpu_step.py could not be imported for the header |'
  cat "$STEP_ROWS"
  echo
  cat "$STEP_NOTES"
} >> "$MD"
cat "$COMPARE_SECTION" >> "$MD"

ELAPSED=$(( $(date +%s) - START ))
md "---" "" "All checks took ${ELAPSED} s; $( [ "$FAILED" = 0 ] && echo 'none failed' || echo 'SOME FAILED (see their sections)')."
mkdir -p "$(dirname "$OUT_FILE")" && cp "$MD" "$OUT_FILE"
echo "[gpu_check] ${ELAPSED} s; the Markdown is at $(cd "$(dirname "$OUT_FILE")" && pwd)/$(basename "$OUT_FILE")"
exit "$FAILED"
