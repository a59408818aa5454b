#!/usr/bin/env bash
# The checks that need a GPU, in one run (a lent GPU machine has no cargo: build the
# release binary here and carry it). Usage, from the repository root:
#   scripts/gpu_check.sh prepare        # here: copies the binary and fixtures to .device/
#   scripts/gpu_check.sh run OUT_DIR    # there: runs every check, writes OUT_DIR/*.json|log
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
  mkdir -p "$out"
  torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
  export LD_LIBRARY_PATH="$torch_lib"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
  d=.device
  # Gate overhead of a masked training step against a plain one.
  [ -n "${SKIP_STEP:-}" ] || $d/effp bench step $d/yolov8n.onnx --batch 8 --device cuda --json "$out/step-yolov8n.json" 2>&1 | tail -n 3
  [ -n "${SKIP_STEP:-}" ] || $d/effp bench step $d/trained.onnx --batch 8 --device cuda --json "$out/step-trained.json" 2>&1 | tail -n 3
  # The labelled loss against label-free EFFP and the baselines, 0.5 FLOPs.
  steps=${STEPS:-500}
  run() {
    local name=$1; shift
    /usr/bin/time -f "$name wall %e s" $d/effp prune $d/trained.onnx --data $d/synth --device cuda \
      --steps "$steps" --batch 16 --out "/tmp/$name.onnx" --report "$out/$name.json" "$@" 2>&1 |
      grep -E "mAP|wall|error" | sed "s/^/$name: /"
  }
  run effp-labels --method effp --target-flops 0.5
  run effp-labels-w0.3 --method effp --target-flops 0.5 --label-weight 0.3
  run effp-label-free --method effp --target-flops 0.5 --label-weight 0
  [ -n "${ONLY_EFFP:-}" ] && exit 0
  run effp-labels-w3 --method effp --target-flops 0.5 --label-weight 3
  run l1-labels --method l1 --target-flops 0.5
  run random-labels --method random --target-flops 0.5
  run ceiling-0.99 --method l1 --target-flops 0.99
  ;;
*)
  echo "usage: $0 prepare | run OUT_DIR" >&2
  exit 2
  ;;
esac
