#!/usr/bin/env bash
# The GPU path in one run: the CUDA tests (tests/test_cuda.py), the demo, the probe benchmark, one edit per method
# (FT-L, ROME, MEMIT, AlphaEdit) with --dtype auto, a float32 ROME edit scanned blind, and a short LoRA mitigation
# of it, all on CUDA, then the scan throughput benchmark at 1.33 GB per side on the machine's cores, within an
# 8-minute budget on one recent GPU.
#
# Usage: bash bench/gpu_check.sh            (from the repository root)
#   EDITAUDIT_MODEL  model to use (default smollm2-135m; fetched and converted once if not cached)
#   DEVICE           CUDA device (default cuda)
#   PYTHON           interpreter (default .venv/bin/python, else python3)
#   BUDGET_S         total time budget in seconds (default 480); steps that would start after it are skipped
# Figures go to $OUT/gpu_check.txt when $OUT is set, else bench/results/gpu_check.txt; each step's JSON and
# log go next to it in gpu_check/. Exit codes: 0 every step passed, 1 a step failed or was skipped,
# 2 no CUDA device here (nothing is run).
set -uo pipefail

cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
MODEL="${EDITAUDIT_MODEL:-smollm2-135m}"
DEVICE="${DEVICE:-cuda}"
BUDGET_S="${BUDGET_S:-480}"
RESULTS="${OUT:-bench/results}"

if ! "$PY" - "$DEVICE" <<'EOF'
import sys
try:
    import torch
except ImportError:
    sys.exit("gpu_check: torch is not importable with this interpreter")
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: no CUDA device here (torch {torch.__version__}, torch.cuda.is_available() is False); "
             "nothing was run. Run this script on a machine with an NVIDIA GPU.")
EOF
then
  exit 2
fi

mkdir -p "$RESULTS/gpu_check"
STEPS="$RESULTS/gpu_check"
REPORT="$RESULTS/gpu_check.txt.tmp"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/editaudit-gpu-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export EDITAUDIT_DB="$WORK/sessions.db"
EA=("$PY" -m editaudit)
FAILED=0
START=$SECONDS

"$PY" - "$DEVICE" > "$REPORT" <<'EOF'
import platform, sys, torch
from editaudit import __version__
from editaudit.models.loading import dtype_name, resolve_dtype
dev = sys.argv[1]
props = torch.cuda.get_device_properties(torch.device(dev))
print(f"editaudit {__version__} · torch {torch.__version__} · CUDA {torch.version.cuda} · python {platform.python_version()}")
print(f"device: {dev} = {props.name}, {props.total_memory / 2**30:.0f} GiB; --dtype auto resolves to "
      f"{dtype_name(resolve_dtype('auto', dev))}")
EOF
echo "model: $MODEL" >> "$REPORT"
printf '%-22s %-6s %8s  %s\n' step status seconds figures >> "$REPORT"

# step NAME TIMEOUT_S CMD... : runs CMD with its stdout to STEPS/NAME.out and stderr to STEPS/NAME.log
step() {
  local name=$1 limit=$2; shift 2
  local used=$((SECONDS - START)) status t0 rc figures
  if [ "$used" -ge "$BUDGET_S" ]; then
    printf '%-22s %-6s %8s  %s\n' "$name" skip - "budget of ${BUDGET_S}s spent" >> "$REPORT"
    FAILED=1
    return
  fi
  [ $((BUDGET_S - used)) -lt "$limit" ] && limit=$((BUDGET_S - used))
  echo "gpu_check: $name (at most ${limit}s)" >&2
  t0=$SECONDS
  timeout "$limit" "$@" > "$STEPS/$name.out" 2> "$STEPS/$name.log"
  rc=$?
  case $rc in
    0) status=ok ;;
    124) status=timeout; FAILED=1 ;;
    *) status="rc=$rc"; FAILED=1 ;;
  esac
  figures=$("$PY" - "$name" "$STEPS/$name.out" <<'EOF'
import json, sys
name, path = sys.argv[1], sys.argv[2]
try:
    text = open(path).read()
except OSError:
    text = ""
if name == "cuda-tests":  # pytest's last line: "8 passed in 46.55s"
    print(next((line for line in reversed(text.splitlines()) if line.strip()), ""))
    sys.exit()
if name == "scan-throughput":  # "paired (…), 2 round(s): median 0.67, range 0.66–0.68; …"
    line = next((x for x in text.splitlines() if x.startswith("paired")), "")
    print("scan / raw read, cold, 1.33 GB per side: " + line.split(": ", 1)[-1].split(";")[0] if line else "")
    sys.exit()
try:
    doc = json.loads(text)
except Exception:
    print("")
    sys.exit()
def pct(x):
    return "-" if x is None else f"{100 * x:.0f}%"
if name.startswith("edit-"):
    s = doc.get("summary", {})
    print(f"success {pct(s.get('success'))}, paraphrase {pct(s.get('paraphrase'))}, "
          f"neighbourhood {pct(s.get('neighbourhood'))}, {s.get('seconds_per_fact')} s/fact, "
          f"statistics {s.get('stats_seconds')} s")
elif name == "scan-rome":
    kinds = sorted({f["rule"] for f in doc.get("findings", [])})
    print(f"verdict {doc.get('verdict')}, rules {','.join(kinds)}, total {doc.get('summary', {}).get('total_s')} s")
elif name == "mitigate-lora":
    keys = [k for k in ("goal", "method", "steps", "out") if k in doc]
    print(", ".join(f"{k} {doc[k]}" for k in keys))
EOF
)
  printf '%-22s %-6s %8s  %s\n' "$name" "$status" $((SECONDS - t0)) "$figures" >> "$REPORT"
}

step fetch-model 240 "$PY" -c 'import sys; from editaudit.models.registry import resolve_model; print(resolve_model(sys.argv[1]))' "$MODEL"
step cuda-tests 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py
step demo 200 "${EA[@]}" demo --device "$DEVICE" --workdir "$WORK/demo"
step probe-benchmark 90 "$PY" bench/probe_speed.py --model "$MODEL" --facts 64 --batch 32 --repeats 2 \
  --out "$STEPS/probe_speed.txt"
for method in ft rome memit alphaedit; do
  step "edit-$method" 60 "${EA[@]}" edit "$MODEL" --method "$method" --facts smollm2-135m-edit --limit 2 \
    --device "$DEVICE" --dtype auto --format json --out "$WORK/$method"
done
# a float32 checkpoint edited in bfloat16 carries 16-bit rounding in its edited matrices: the scan and the
# mitigation run on a float32 edit, which changes only what ROME changes
step edit-rome-float32 60 "${EA[@]}" edit "$MODEL" --method rome --facts smollm2-135m-edit --limit 2 \
  --device "$DEVICE" --dtype float32 --format json --out "$WORK/rome32"
if [ -d "$WORK/rome32" ]; then
  step scan-rome 90 "${EA[@]}" scan "$WORK/rome32" --base "$MODEL" --device "$DEVICE" --format json --exit-zero
  step mitigate-lora 90 "${EA[@]}" mitigate "$WORK/rome32" --base "$MODEL" --goal preserve --method lora \
    --steps 20 --eval-every 10 --max-examples 200 --device "$DEVICE" --format json --out "$WORK/mitigated"
fi
# the scan's comparison runs on the CPU: a GPU machine's many cores are what this step measures
step scan-throughput 150 "$PY" bench/scan_throughput.py --sizes 1 --cache cold --repeat 2 \
  --out "$STEPS/scan_throughput.txt"
if [ -f "$STEPS/probe_speed.txt" ]; then
  { echo; echo "probe benchmark:"; cat "$STEPS/probe_speed.txt"; } >> "$REPORT"
fi
if [ -f "$STEPS/scan_throughput.txt" ]; then
  { echo; echo "scan throughput:"; cat "$STEPS/scan_throughput.txt"; } >> "$REPORT"
fi
echo "total: $((SECONDS - START)) s (budget ${BUDGET_S} s)" >> "$REPORT"
echo "command: bash bench/gpu_check.sh (MODEL=$MODEL DEVICE=$DEVICE)" >> "$REPORT"
mv "$REPORT" "$RESULTS/gpu_check.txt"
cat "$RESULTS/gpu_check.txt"
exit $FAILED
