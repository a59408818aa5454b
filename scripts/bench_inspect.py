#!/usr/bin/env python3
"""Benchmarks `effp inspect` and the binary's own start: wall time and peak memory.

Runs each release binary given (the full build and, with --effp-api-only, the build
without the engine) several times per model, each run a fresh process (load, shape
inference, cost, JSON report), and takes the median wall time and the largest peak
RSS (from wait4). Also times `effp --version` (process start to exit) and reads the
resident memory of an idle `effp serve --no-worker`. Prints a table and writes the
figures as JSON.
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


def startup_ms(effp: str, runs: int) -> float:
    """Median wall time of `effp --version`, a fresh process each time."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([effp, "--version"], check=True, stdout=subprocess.DEVNULL)
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def idle_serve_rss_mb(effp: str) -> float:
    """Resident memory of `effp serve --no-worker` two seconds after it listens."""
    import tempfile

    with tempfile.TemporaryDirectory() as data:
        proc = subprocess.Popen(
            [effp, "serve", "--no-worker", "--listen", "127.0.0.1:0", "--data-dir", data],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        try:
            proc.stdout.readline()
            time.sleep(2)
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1e3
            raise SystemExit("no VmRSS for the server")
        finally:
            proc.terminate()
            proc.wait()


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
    parser.add_argument("--effp", required=True, help="path to the effp binary (full build)")
    parser.add_argument("--effp-api-only", help="path to the effp binary built without the engine")
    parser.add_argument("--fixtures", required=True, type=Path)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    builds = [("full", args.effp)] + ([("api-only", args.effp_api_only)] if args.effp_api_only else [])
    rows = []
    starts = []
    for build, effp in builds:
        starts.append({"build": build, "version_ms": startup_ms(effp, 30), "idle_serve_rss_mb": idle_serve_rss_mb(effp)})
        for name in MODELS:
            model = args.fixtures / name
            run_once(effp, model)  # warm the page cache
            samples = [run_once(effp, model) for _ in range(args.runs)]
            size = model.stat().st_size
            peak = max(p for _, p in samples)
            rows.append(
                {
                    "build": build,
                    "model": name,
                    "file_mb": size / 1e6,
                    "median_s": statistics.median(t for t, _ in samples),
                    "max_s": max(t for t, _ in samples),
                    "peak_rss_mb": peak / 1e6,
                    "peak_over_file": peak / size,
                    "runs": args.runs,
                }
            )

    header = f"{'build':<10}{'model':<14}{'file MB':>10}{'median s':>10}{'max s':>8}{'peak RSS MB':>13}{'peak/file':>11}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['build']:<10}{r['model']:<14}{r['file_mb']:>10.1f}{r['median_s']:>10.3f}{r['max_s']:>8.3f}"
            f"{r['peak_rss_mb']:>13.1f}{r['peak_over_file']:>11.2f}"
        )
    print()
    print(f"{'build':<10}{'effp --version (ms)':>21}{'idle serve --no-worker RSS (MB)':>33}")
    for s in starts:
        print(f"{s['build']:<10}{s['version_ms']:>21.1f}{s['idle_serve_rss_mb']:>33.1f}")
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "kernel": platform.release()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "inspect", "machine": machine, "results": rows, "start": starts}, indent=2))
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
