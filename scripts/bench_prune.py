#!/usr/bin/env python3
"""The pruning benchmark: every method at every target on the trained fixture detector,
all with the same data, loss, optimiser and step budget.

For each (method, target) it runs `effp prune` and reads the report (mAP50-95 and
mAP50 on the validation split, parameters, FLOPs, training wall time), then times
the pruned ONNX file with onnxruntime on the CPU. EFFP also runs with regrowing
switched off, beside the default. Prints a table and writes JSON; `--resume` skips
rows already in the JSON (a long run can be continued).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

# (row label, effp prune arguments)
METHODS = [
    ("effp", ["--method", "effp"]),
    ("effp, no regrowing", ["--method", "effp", "--regrow", "0"]),
    ("progressive", ["--method", "progressive"]),
    ("sfp", ["--method", "sfp"]),
    ("l1 + fine-tune", ["--method", "l1"]),
    ("random + fine-tune", ["--method", "random"]),
]


def ort_latency_ms(path: Path, threads: int, runs: int = 50) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    shape = [1 if not isinstance(d, int) else d for d in inp.shape]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    for _ in range(5):
        session.run(None, {inp.name: x})
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {inp.name: x})
        samples.append((time.perf_counter() - start) * 1e3)
    return float(np.median(samples))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--effp", required=True)
    parser.add_argument("--fixtures", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--targets", default="0.7,0.5,0.3")
    parser.add_argument("--methods", default=";".join(m for m, _ in METHODS),
                        help="semicolon-separated row labels to run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--resume", action="store_true", help="keep rows already in --out")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    model = args.fixtures / "trained.onnx"
    data = args.fixtures / "synth"
    targets = [float(t) for t in args.targets.split(",")]
    wanted = [m.strip() for m in args.methods.split(";")]

    rows: list[dict] = []
    if args.resume and args.out.exists():
        rows = json.loads(args.out.read_text())["rows"]
    done = {(r["method"], r["target"]) for r in rows}
    original = {"method": "original", "target": 1.0, "ort_ms": ort_latency_ms(model, args.threads)}
    with tempfile.TemporaryDirectory() as tmp:
        for target in targets:
            for label, extra in METHODS:
                if label not in wanted or (label, target) in done:
                    continue
                out = Path(tmp) / "pruned.onnx"
                report_path = Path(tmp) / "report.json"
                cmd = [args.effp, "prune", str(model), "--data", str(data), "--target-flops", str(target),
                       "--steps", str(args.steps), "--device", "cpu", "--out", str(out),
                       "--report", str(report_path), *extra]
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                r = json.loads(report_path.read_text())
                acc = r["accuracy"]
                original.update(map50_95=acc["before"]["map50_95"], map50=acc["before"]["map50"],
                                params=r["before"]["params"], flops=r["before"]["flops"])
                rows.append({
                    "method": label, "target": target, "steps": args.steps,
                    "map50_95": acc["after"]["map50_95"], "map50": acc["after"]["map50"],
                    "params": r["after"]["params"], "flops": r["after"]["flops"],
                    "flops_ratio": r["flops_ratio"], "ort_ms": ort_latency_ms(out, args.threads),
                    "train_seconds": r["wall_seconds"],
                    "regrown": r.get("training", {}).get("regrown", 0),
                })
                print(f"  {label} @ {target}: mAP50-95 {rows[-1]['map50_95']:.4f}", flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps({"steps": args.steps, "threads": args.threads,
                                                "original": original, "rows": rows}, indent=2))

    print(f"\ntrained fixture detector, 128x128, {args.steps} steps per run, {args.threads} threads")
    header = f"{'target':>6} {'method':<20}{'mAP50-95':>9}{'mAP50':>8}{'kept':>7}{'params':>9}{'MFLOPs':>8}{'ORT ms':>8}{'wall s':>8}"
    print(header)
    if "map50_95" in original:
        print(f"{1.0:>6} {'original':<20}{original['map50_95']:>9.4f}{original['map50']:>8.4f}{1.0:>7.1%}"
              f"{original['params']:>9}{original['flops'] / 1e6:>8.1f}{original['ort_ms']:>8.2f}{'':>8}")
    for r in sorted(rows, key=lambda r: (-r["target"], [m for m, _ in METHODS].index(r["method"]))):
        kept = r["map50_95"] / original["map50_95"] if original.get("map50_95") else float("nan")
        print(f"{r['target']:>6} {r['method']:<20}{r['map50_95']:>9.4f}{r['map50']:>8.4f}{kept:>7.1%}"
              f"{r['params']:>9}{r['flops'] / 1e6:>8.1f}{r['ort_ms']:>8.2f}{r['train_seconds']:>8.0f}")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
