#!/usr/bin/env python3
"""Benchmarks `effp inspect`: wall time and peak resident memory per model.

Runs the release binary several times per model, each run a fresh process (load,
shape inference, cost, JSON report), and takes the median wall time and the largest
peak RSS (from wait4). Prints a table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

MODELS = ["yolov8n.onnx", "yolov8x.onnx"]


def run_once(effp: str, model: Path) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.Popen([effp, "inspect", "--json", str(model)], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"effp inspect {model} failed with status {status}")
    return elapsed, usage.ru_maxrss * 1024


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--effp", required=True, help="path to the effp binary")
    parser.add_argument("--fixtures", required=True, type=Path)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    rows = []
    for name in MODELS:
        model = args.fixtures / name
        run_once(args.effp, model)  # warm the page cache
        samples = [run_once(args.effp, model) for _ in range(args.runs)]
        size = model.stat().st_size
        peak = max(p for _, p in samples)
        rows.append(
            {
                "model": name,
                "file_mb": size / 1e6,
                "median_s": statistics.median(t for t, _ in samples),
                "max_s": max(t for t, _ in samples),
                "peak_rss_mb": peak / 1e6,
                "peak_over_file": peak / size,
                "runs": args.runs,
            }
        )

    header = f"{'model':<14}{'file MB':>10}{'median s':>10}{'max s':>8}{'peak RSS MB':>13}{'peak/file':>11}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['model']:<14}{r['file_mb']:>10.1f}{r['median_s']:>10.3f}{r['max_s']:>8.3f}"
            f"{r['peak_rss_mb']:>13.1f}{r['peak_over_file']:>11.2f}"
        )
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "kernel": platform.release()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "inspect", "machine": machine, "results": rows}, indent=2))
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
