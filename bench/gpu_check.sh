#!/usr/bin/env bash
# The GPU checks in one go (each capped: 30+150+3x90+2x60 = 570 s at most), for a session with a lent GPU:
#   1. the CUDA-marked tests (pytest -m cuda);
#   2. bench/throughput.py, lora / prompt_tuning / last_layers against the peer
#      (GPT-Neo-125M shape, random weights): ratio, MFU, sumtune's peak CUDA memory;
#   3. bench/generate.py at decoding batch 1 and 32: summaries/s vs HF generate, peak CUDA memory.
# One summary line per check at the end; logs and JSON under $OUT_DIR (default: a temp dir).
#
#   bash bench/gpu_check.sh            # on the GPU machine, from the repository root
#   bash bench/gpu_check.sh --dry-run  # anywhere: print the commands, check the scripts start
#
# Environment: PYTHON (default: python), PEER (default: ../shared/bench/peer_hf_trainer.py,
# else /work/shared/bench/...), OUT_DIR.
set -u
cd "$(dirname "$0")/.."
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
PY=${PYTHON:-python}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT_DIR:-$(mktemp -d -t sumtune-gpu-check-XXXX)}
mkdir -p "$OUT"
PEER=${PEER:-../shared/bench/peer_hf_trainer.py}
[[ -f "$PEER" ]] || PEER=/work/shared/bench/peer_hf_trainer.py
MAKE_DATA=$(dirname "$PEER")/make_token_data.py
SUMMARY=()

# check NAME TIMEOUT_S CMD...: run it (or print it with --dry-run), log to $OUT/NAME.log,
# keep the last JSON line in $OUT/NAME.json
check() {
  local name=$1 limit=$2
  shift 2
  if (( DRY )); then
    echo "would run ($limit s max): $*"
    return 0
  fi
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  grep '^{' "$OUT/$name.log" | tail -1 >"$OUT/$name.json" || true
  echo "[$name] rc=$rc in $((SECONDS - t0)) s (log: $OUT/$name.log)"
  return $rc
}

summarise() {  # NAME PYTHON-EXPRESSION over the JSON object j
  local name=$1 expr=$2
  if (( DRY )); then return 0; fi
  if [[ -s "$OUT/$name.json" ]]; then
    SUMMARY+=("$name: $("$PY" -c "import json,sys; j=json.load(open(sys.argv[1])); print($expr)" "$OUT/$name.json")")
  else
    SUMMARY+=("$name: FAILED (no result; see $OUT/$name.log)")
  fi
}

if (( DRY )); then
  for s in bench/throughput.py bench/generate.py; do
    "$PY" "$s" --help >/dev/null || { echo "dry run: $s does not start"; exit 1; }
  done
  "$PY" -m pytest --collect-only -q -p no:cacheprovider -m cuda tests/test_cuda.py >/dev/null \
    || { echo "dry run: the cuda tests do not collect"; exit 1; }
  echo "dry run: scripts start, cuda tests collect; commands:"
fi

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/GPU: /' || true
DATA="$OUT/tokens.jsonl"
check make_data 30 "$PY" "$MAKE_DATA" --n 64 --out "$DATA"

check cuda_tests 150 "$PY" -m pytest -q -p no:cacheprovider -m cuda -s tests/test_cuda.py
if (( ! DRY )); then
  SUMMARY+=("cuda_tests: $(tail -1 "$OUT/cuda_tests.log") | $(grep -h 'peak CUDA memory' "$OUT/cuda_tests.log" | tr '\n' ' ')")
fi

for method in lora prompt_tuning last_layers; do
  check "throughput_$method" 90 "$PY" bench/throughput.py --method "$method" --data "$DATA" --steps 2 --reps 2 \
    --epochs-last-layers 3 --peer "$PEER" --workdir "$OUT/work_$method" --json
  summarise "throughput_$method" \
    "f\"ratio {j['ratio']:.2f}x ({j['sumtune_tokens_per_s']} vs {j['peer_tokens_per_s']} tokens/s, {j['precision']}), MFU sumtune {100*j['sumtune_mfu']:.1f}% peer {100*j['peer_mfu']:.1f}% of {j['peak']['bf16_flops']} GFLOP/s bf16, sumtune peak CUDA {j['sumtune_peak_cuda_mb']} MB\""
done

for batch in 1 32; do
  check "generate_b$batch" 60 "$PY" bench/generate.py --data "$DATA" --n 32 --batch-size "$batch" --reps 1 --json
  summarise "generate_b$batch" \
    "f\"batch {j['batch_size']}: {j['sumtune_summaries_per_s']} vs HF {j['hf_summaries_per_s']} summaries/s (ratio {j['ratio']:.2f}x), identical {j['identical_prompts']}/{j['n']}, peak CUDA MB {j['peak_cuda_mb']}\""
done

if (( ! DRY )); then
  echo "== summary (logs in $OUT) =="
  printf '%s\n' "${SUMMARY[@]}"
fi
if (( DRY )); then rm -rf "$OUT"; fi
