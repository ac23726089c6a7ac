#!/usr/bin/env bash
# Every GPU figure of the project in one command, for a session with a lent GPU (one H200: under
# 10 minutes, each check capped; the caps add up to CAPS_TOTAL below). From the repository root:
#
#   bash bench/gpu_check.sh            # on the GPU machine
#   bash bench/gpu_check.sh --dry-run  # anywhere: list the checks and commands, check the scripts start
#
# The checks, in order (name: what it measures):
#   cuda_device        torch sees a CUDA device (none: a loud failure, and nothing else runs)
#   python_packages    every package the checks import is importable (bitsandbytes for qlora)
#   make_data          64 pre-tokenised rows, 300-700 article + 64 summary tokens, ids < 49,152 (make_token_data.py)
#   cuda_tests         pytest -m cuda: every CUDA-marked test; any skip counts as a failure
#   throughput_lora, throughput_prompt_tuning, throughput_last_layers
#                      bench/throughput.py in bf16 against the peer (HF Trainer + PEFT), GPT-Neo-125M
#                      shape: tokens/s both sides, ratio, peak CUDA memory both sides
#                      (torch.cuda.max_memory_allocated), MFU against a bf16 matmul peak measured on
#                      the device in the same run (8192^3 products) and against the datasheet's
#                      dense bf16 figure where bench/peak.py knows the device
#   throughput_lora_llama, throughput_prompt_tuning_llama
#                      the same on the Llama layout in SmolLM2-135M's shape (random weights:
#                      bench/common.py's smollm2-135m-random)
#   generate_cnndm     bench/generate.py $GENERATE_FLAGS: decoding at the cnndm preset against
#                      batched HF generate at the same batch (--peers hf_batched)
#   generate_cnndm_llama  the same on the SmolLM2-shaped model
#   qlora              bench/qlora_check.py: 4-bit NF4 base, QLoRA training, decoding, PEFT reload
# Each check's log and last JSON line go to $OUT_DIR/NAME.log and NAME.json; a line per check as it
# ends; then one JSON line {"gpu_check": {...}, "ok": bool, "failed": [...], "checks": {NAME: {rc,
# seconds, cap_s, result}}}. Exit status 0 only if every check ran and passed; a check that fails,
# times out or cannot start prints "FAILED: NAME ..." (no check is skipped silently).
#
# Environment: PYTHON (default python3, the one holding PyTorch on the lent machine), OUT_DIR
# (default a temp dir), PEER (the peer script; default the first of shared/bench/,
# ../shared/bench/, /work/shared/bench/ that has peer_hf_trainer.py: copy ../shared into the
# checkout, git-ignored, so it travels), WHEELS (a folder of wheels for packages the machine lacks,
# e.g. datasets, rouge-score, pysbd, bitsandbytes: installed with pip --no-index into
# $OUT_DIR/site first), GENERATE_FLAGS (default below).
set -u -o pipefail
cd "$(dirname "$0")/.."
DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  *) echo "usage: bash bench/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT_DIR:-$(mktemp -d -t sumtune-gpu-check-XXXX)}
mkdir -p "$OUT"
if [[ -z "${PEER:-}" ]]; then
  for d in shared/bench ../shared/bench /work/shared/bench; do
    [[ -f "$d/peer_hf_trainer.py" ]] && { PEER="$d/peer_hf_trainer.py"; break; }
  done
fi
PEER=${PEER:-shared/bench/peer_hf_trainer.py}
MAKE_DATA=$(dirname "$PEER")/make_token_data.py
DATA="$OUT/tokens.jsonl"
GENERATE_FLAGS=${GENERATE_FLAGS:---decoding cnndm --n 32 --batch-size 32 --max-new-tokens 64 --reps 3 --peers hf_batched}
# name, cap in seconds: the caps add up to CAPS_TOTAL (< 600 s with the script's own seconds)
CHECKS=(cuda_device:30 python_packages:20 make_data:10 cuda_tests:90 throughput_lora:70
        throughput_prompt_tuning:50 throughput_last_layers:45 throughput_lora_llama:70
        throughput_prompt_tuning_llama:50 generate_cnndm:50 generate_cnndm_llama:50 qlora:50)
CAPS_TOTAL=0
for c in "${CHECKS[@]}"; do CAPS_TOTAL=$((CAPS_TOTAL + ${c#*:})); done
FAILED=()
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"

cap_of() { local c; for c in "${CHECKS[@]}"; do [[ ${c%%:*} == "$1" ]] && echo "${c#*:}"; done; }

# check NAME CMD...: run CMD under NAME's cap (print it with --dry-run), log to $OUT/NAME.log, keep its
# last JSON line in $OUT/NAME.json and a record in $RESULTS; a non-zero exit or a timeout is a failure.
check() {
  local name=$1 limit
  shift
  limit=$(cap_of "$name")
  if (( DRY )); then
    echo "check $name (cap ${limit} s): $*"
    return 0
  fi
  local t0=$SECONDS rc
  timeout --kill-after=5 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  { grep '^{' "$OUT/$name.log" | tail -1 || true; } >"$OUT/$name.json"
  local why=""
  (( rc == 124 || rc == 137 )) && why=" (timed out at its ${limit} s cap)"
  if (( rc == 0 )) && [[ -n "${EXTRA_FAIL:-}" ]] && grep -Eq "$EXTRA_FAIL" "$OUT/$name.log"; then
    rc=1; why=" (log matches /$EXTRA_FAIL/)"
  fi
  if (( rc == 0 )); then
    echo "ok: $name in $((SECONDS - t0)) s (log: $OUT/$name.log)"
  else
    FAILED+=("$name")
    echo "FAILED: $name rc=$rc$why in $((SECONDS - t0)) s; last lines of $OUT/$name.log:"
    tail -15 "$OUT/$name.log" | sed 's/^/    /'
  fi
  "$PY" - "$name" "$rc" "$((SECONDS - t0))" "$limit" "$OUT/$name.json" >>"$RESULTS" <<'EOF'
import json, sys
name, rc, seconds, cap, path = sys.argv[1:]
try:
    result = json.loads(open(path).read() or "null")
except ValueError:
    result = None
print(json.dumps({"name": name, "rc": int(rc), "seconds": int(seconds), "cap_s": int(cap), "result": result}))
EOF
  return $rc
}

if (( DRY )); then  # every problem found is printed; the exit status says whether there was one
  DRY_FAILED=0
  dry_fail() { echo "FAILED: dry run: $*"; DRY_FAILED=1; }
  echo "dry run: ${#CHECKS[@]} checks, caps ${CAPS_TOTAL} s in all"
  for s in bench/gpu_preflight.py bench/throughput.py bench/generate.py bench/qlora_check.py; do
    "$PY" "$s" --help >"$OUT/help.txt" 2>&1 || dry_fail "$s does not start: $(tail -1 "$OUT/help.txt")"
    if [[ $s == bench/generate.py ]]; then
      for flag in $GENERATE_FLAGS; do
        [[ $flag == --* ]] && ! grep -q -- "$flag\b" "$OUT/help.txt" \
          && dry_fail "bench/generate.py has no $flag (GENERATE_FLAGS='$GENERATE_FLAGS')"
      done
    fi
  done
  "$PY" -m pytest --collect-only -q -p no:cacheprovider -m cuda tests >"$OUT/collect.txt" 2>&1 \
    || dry_fail "the cuda tests do not collect: $(tail -1 "$OUT/collect.txt")"
  [[ -f "$PEER" ]] || dry_fail "no peer script at $PEER (set PEER)"
  [[ -f "$MAKE_DATA" ]] || dry_fail "no make_token_data.py at $MAKE_DATA (beside the peer)"
  echo "dry run: the checks (peer: $PEER):"
fi

if [[ -n "${WHEELS:-}" ]] && (( ! DRY )); then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$OUT/site" \
    "$WHEELS"/*.whl || { echo "FAILED: installing the wheels in $WHEELS"; exit 1; }
  export PYTHONPATH="$PYTHONPATH:$OUT/site"
fi

check cuda_device "$PY" bench/gpu_preflight.py device
if (( ! DRY )) && [[ " ${FAILED[*]} " == *" cuda_device "* ]]; then
  echo "FAILED: no usable CUDA device, so no GPU figure can be measured; nothing else was run"
  for c in "${CHECKS[@]:1}"; do FAILED+=("${c%%:*}"); done
fi

if (( DRY )) || [[ ${#FAILED[@]} -eq 0 ]]; then
  check python_packages "$PY" bench/gpu_preflight.py packages
  # ids below 49,152: the same rows fit GPT-Neo's vocabulary and SmolLM2's
  check make_data "$PY" "$MAKE_DATA" --n 64 --vocab 49152 --out "$DATA"
  # a cuda test that skips (a missing package, say) is a failure here, not a pass
  EXTRA_FAIL='[0-9]+ skipped' check cuda_tests "$PY" -m pytest -q -rs -p no:cacheprovider -m cuda -s tests
  for method in lora prompt_tuning last_layers; do
    check "throughput_$method" "$PY" bench/throughput.py --method "$method" --data "$DATA" --precision bf16 \
      --steps 4 --reps 2 --epochs-last-layers 3 --peak-seconds 1 --peer "$PEER" --workdir "$OUT/work_$method" --json
  done
  # the Llama layout in SmolLM2-135M's shape, random weights (the real file cannot travel here)
  for method in lora prompt_tuning; do
    check "throughput_${method}_llama" "$PY" bench/throughput.py --model smollm2-135m-random --method "$method" \
      --data "$DATA" --precision bf16 --steps 4 --reps 2 --peak-seconds 1 --peer "$PEER" \
      --workdir "$OUT/work_${method}_llama" --json
  done
  # shellcheck disable=SC2086  # GENERATE_FLAGS is a list of flags
  check generate_cnndm "$PY" bench/generate.py --data "$DATA" $GENERATE_FLAGS --precision bf16 --json
  # shellcheck disable=SC2086
  check generate_cnndm_llama "$PY" bench/generate.py --model smollm2-135m-random --data "$DATA" $GENERATE_FLAGS \
    --precision bf16 --json
  check qlora "$PY" bench/qlora_check.py --out "$OUT/qlora"
fi

if (( DRY )); then
  rm -rf "$OUT"
  (( DRY_FAILED )) && { echo "FAILED: dry run found problems (above)"; exit 1; }
  echo "dry run: ok"
  exit 0
fi
"$PY" - "$RESULTS" "$CAPS_TOTAL" "${FAILED[@]}" <<'EOF'
import json, sys
records = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
failed = sys.argv[3:]
checks = {r.pop("name"): r for r in records}
for name in failed:
    checks.setdefault(name, {"rc": None, "not_run": "no usable CUDA device"})
print(json.dumps({"gpu_check": {"caps_total_s": int(sys.argv[2]), "checks_run": len(checks)},
                  "ok": not failed, "failed": failed, "checks": checks}))
EOF
if (( ${#FAILED[@]} )); then
  echo "FAILED: ${#FAILED[@]} check(s): ${FAILED[*]} (logs in $OUT)"
  exit 1
fi
echo "all ${#CHECKS[@]} checks passed (logs in $OUT)"
