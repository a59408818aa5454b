#!/usr/bin/env bash
# The checks that need a GPU, in one run (a lent GPU machine has no cargo: build the
# release binary here and carry it). Usage, from the repository root:
#   scripts/gpu_check.sh prepare        # here: copies the binary and fixtures to .device/
#   scripts/gpu_check.sh run OUT_DIR    # there: runs every check, writes OUT_DIR/*.json|log
# The pruning table's effp rows run there, several at once (the fixture detector is
# far too small to fill the card alone); extract OUT_DIR/rows.tgz here and
# scripts/bench_prune.py --from-reports FOLDER puts them in the table beside the rows
# run here.
set -euo pipefail
case "${1:-}" in
prepare)
  fixtures=$(ls -d "${EFFP_CACHE:-$HOME/.cache/effp}"/fixtures/*/ | head -n1)
  rm -rf .device && mkdir -p .device
  cp target/release/effp .device/effp && strip .device/effp
  cp "$fixtures/trained.onnx" "$fixtures/yolov8n.onnx" .device/
  cp -r "$fixtures/synth" .device/synth
  mkdir -p .git/info && touch .git/info/exclude
  grep -qx "/.device/" .git/info/exclude || echo '/.device/' >> .git/info/exclude
  du -sh .device
  ;;
run)
  out=${2:?OUT_DIR}
  mkdir -p "$out/reports" "$out/models"
  torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
  export LD_LIBRARY_PATH="$torch_lib"
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no GPU"; } | tee "$out/gpu.txt"
  nproc >> "$out/gpu.txt"
  d=.device
  steps=${STEPS:-1000}
  batch=${BATCH:-8}
  deadline=$(( $(date +%s) + ${BUDGET_S:-480} ))
  # label|target|seed|arguments, most wanted first: what is unfinished at the
  # deadline is left out of the table, not half-reported.
  rows=$(mktemp)
  for target in 0.5 0.3 0.7; do
    cat >> "$rows" <<ROWS
effp|$target|0|--method effp
uniform (TP recipe)|$target|0|--method uniform
l1 per layer + fine-tune|$target|0|--method l1 --scope layer
progressive, per layer|$target|0|--method progressive --scope layer
sfp, per layer|$target|0|--method sfp --scope layer
effp, label-free|$target|0|--method effp --label-weight 0
progressive|$target|0|--method progressive
sfp|$target|0|--method sfp
l1 + fine-tune|$target|0|--method l1
random + fine-tune|$target|0|--method random
ROWS
    if [ "$target" = 0.5 ]; then
      cat >> "$rows" <<ROWS
effp|0.5|1|--method effp --seed 1
effp|0.5|2|--method effp --seed 2
effp, masked fine-tune|0.5|0|--method effp --fine-tune masked
ROWS
    fi
  done
  one() {
    IFS='|' read -r label target seed args <<<"$1"
    [ "$(date +%s)" -lt "$deadline" ] || exit 0
    local name
    name=$(echo "$label-$target-$seed" | tr -c 'a-zA-Z0-9.\n-' '_')
    # shellcheck disable=SC2086
    if timeout $(( deadline - $(date +%s) )) $d/effp prune $d/trained.onnx --data $d/synth --device "${DEVICE:-cuda}" \
        --steps "$steps" --batch "$batch" --target-flops "$target" --out "/tmp/$name.onnx" \
        --report "/tmp/$name.json" $args >"/tmp/$name.log" 2>&1; then
      python3 - "$label" "$target" "$seed" "/tmp/$name.json" "$out/reports/$name.json" <<'PY'
import json, sys
label, target, seed, src, dst = sys.argv[1:]
r = json.load(open(src))
r["bench"] = {"method": label, "target": float(target), "seed": int(seed)}
json.dump(r, open(dst, "w"))
PY
      [ "$target" != 0.5 ] || cp "/tmp/$name.onnx" "$out/models/$name.onnx"
      echo "done $label @ $target seed $seed"
    else
      echo "failed $label @ $target seed $seed: $(tail -n 2 "/tmp/$name.log")"
    fi
  }
  # EFFP on the published YOLOv8n at 640 (images of another domain: only the file's
  # structure is wanted here, for its onnxruntime latency against the original's).
  for round_to in 1 8; do
    (timeout $(( deadline - $(date +%s) )) $d/effp prune $d/yolov8n.onnx --data $d/synth --device "${DEVICE:-cuda}" \
      --method effp --steps 200 --batch 8 --target-flops 0.5 --round-to $round_to \
      --out "$out/models/yolov8n-effp-0.5-r$round_to.onnx" --report "$out/yolov8n-effp-0.5-r$round_to.json" \
      >"$out/yolov8n-r$round_to.log" 2>&1 || echo "yolov8n round-to $round_to failed") &
  done
  export -f one
  export d out steps batch deadline OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
  start=$(date +%s)
  tr '\n' '\0' < "$rows" | xargs -0 -P "${PARALLEL:-10}" -I{} bash -c 'one "$1"' _ {} | tee "$out/rows.log"
  echo "rows took $(( $(date +%s) - start )) s with ${PARALLEL:-10} at once" | tee -a "$out/rows.log"
  wait
  # The device tool brings back only a few files: one archive of the reports and models
  # (extract it here and pass the folder to bench_prune.py --from-reports).
  tar czf "$out/rows.tgz" -C "$out" reports models && rm -rf "$out/reports" "$out/models"
  ;;
*)
  echo "usage: $0 prepare | run OUT_DIR" >&2
  exit 2
  ;;
esac
