#!/usr/bin/env python3
"""Benchmarks `effp eval` against Ultralytics `val`: same model, data, image size and
thread count.

Generates a larger synthetic validation set with `effp synth`, evaluates the trained
fixture detector with both, and reports whole-process wall time (start-up, model
load, data loading, inference, NMS, scoring), images per second and the mAP each
reports. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(cmd: list[str], cwd: str | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=cwd)
    return time.perf_counter() - start, out.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--effp", required=True)
    parser.add_argument("--fixtures", required=True, type=Path)
    parser.add_argument("--images", type=int, default=2500, help="synthetic images (a fifth are val)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    model = args.fixtures / "trained.onnx"
    val_script = Path(__file__).resolve().parent.parent / "tests" / "support" / "ultralytics_val.py"

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "synth"
        subprocess.run([args.effp, "synth", "--out", str(data), "--images", str(args.images), "--seed", "1",
                        "--imgsz", "128"], check=True, stdout=subprocess.DEVNULL)
        images = len(list((data / "images" / "val").iterdir()))
        for batch in (1, 8):
            seconds, out = run([args.effp, "eval", str(model), "--data", str(data), "--device", "cpu",
                                "--batch", str(batch), "--json"])
            report = json.loads(out)["report"]
            rows.append((f"effp eval (batch {batch})", seconds, report["metrics"]["map50_95"], report["metrics"]["map50"]))
        seconds, out = run([sys.executable, str(val_script), str(model), str(data / "data.yaml"), "128", "1",
                            str(args.threads)], cwd=tmp)
        ref = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
        rows.append(("ultralytics val (batch 1, onnxruntime)", seconds, ref["map50_95"], ref["map50"]))

    print(f"{images} validation images, 128x128, {args.threads} threads")
    print(f"{'engine':<42}{'wall s':>8}{'images/s':>10}{'mAP50-95':>10}{'mAP50':>8}")
    for name, s, m, m50 in rows:
        print(f"{name:<42}{s:>8.2f}{images / s:>10.1f}{m:>10.4f}{m50:>8.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "images": images, "threads": args.threads,
        "results": [{"engine": n, "wall_seconds": s, "images_per_second": images / s, "map50_95": m, "map50": m50}
                    for n, s, m, m50 in rows],
    }, indent=2))
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
