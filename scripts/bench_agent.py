#!/usr/bin/env python3
"""Benchmarks the benchmark agent's CPU runner and its cost per task.

An `effp serve` on loopback prunes YOLOv8n (640 px) to 0.7, 0.5 and 0.3 of its FLOPs
(`--method l1`, one-shot: only the structure is timed), each job asking for a CPU
benchmark, and an `effp-agent --once --runner cpu` measures each task for real (the
original and the pruned model, the same warm-up and runs). Then onnxruntime times the
same two files with the same threads, warm-up and runs, for comparison.

The agent's cost per task is its process's wall time (start, device facts, claim, two
downloads, two model loads and optimisations, warm-up, timed runs, report) beside the
timed runs alone ((warm-up + runs) x mean of each model).

Prints a table and writes every figure as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np


def ort_measure(model: Path, iters: int, warmup: int, threads: int) -> dict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)
    for _ in range(warmup):
        session.run(None, {name: x})
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        session.run(None, {name: x})
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    return {"p50_ms": statistics.median(samples), "p90_ms": samples[int(0.9 * (len(samples) - 1))],
            "mean_ms": statistics.fmean(samples)}


def http(method: str, url: str, body: bytes | None = None) -> dict:
    request = urllib.request.Request(url, data=body, method=method)
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def agent_task(url: str, agent: str, model_id: str, target: float, args) -> dict:
    """Prunes to `target` with a CPU benchmark, lets one agent process measure it,
    and returns the job, the agent's wall time and the pruned file."""
    spec = {"model": model_id, "method": "l1", "target": {"flops_ratio": target},
            "benchmark": {"device": "cpu", "iterations": args.iters}}
    job = http("POST", f"{url}/v1/jobs", json.dumps(spec).encode())
    while http("GET", f"{url}/v1/jobs/{job['id']}")["phase"] != "benchmark":
        time.sleep(0.1)
    started = time.perf_counter()
    subprocess.run([agent, "--server", url, "--key", "local-agent-key-0123456789", "--device", "cpu",
                    "--runner", "cpu", "--once", "--warmup", str(args.warmup), "--threads", str(args.threads)],
                   check=True, stderr=subprocess.DEVNULL)
    task_s = time.perf_counter() - started
    while (done := http("GET", f"{url}/v1/jobs/{job['id']}"))["state"] == "running":
        time.sleep(0.1)
    benchmark = done["benchmarks"][0]
    assert benchmark["state"] == "succeeded", benchmark
    pruned = args.work / f"pruned-{target}.onnx"
    with urllib.request.urlopen(f"{url}/v1/jobs/{job['id']}/artifacts/pruned.onnx") as r:
        pruned.write_bytes(r.read())
    return {"result": benchmark["result"], "task_s": task_s, "pruned": pruned}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--effp", required=True)
    parser.add_argument("--agent", required=True)
    parser.add_argument("--fixtures", type=Path, required=True)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    original = args.fixtures / "yolov8n.onnx"
    rows = []
    with tempfile.TemporaryDirectory() as data:
        args.work = Path(data)
        server = subprocess.Popen([args.effp, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(Path(data) / "effp")],
                                  stdout=subprocess.PIPE, text=True)
        try:
            url = next(w for w in server.stdout.readline().split() if w.startswith("http://"))
            model_id = http("POST", f"{url}/v1/models", original.read_bytes())["id"]
            ort_original = ort_measure(original, args.iters, args.warmup, args.threads)
            for target in (0.7, 0.5, 0.3):
                task = agent_task(url, args.agent, model_id, target, args)
                result = task["result"]
                timed_s = sum((args.warmup + args.iters) * result[m]["end_to_end"]["mean_ms"] / 1e3
                              for m in ("original", "pruned"))
                ort_pruned = ort_measure(task["pruned"], args.iters, args.warmup, args.threads)
                rows.append({
                    "target": target,
                    "agent_original_p50_ms": result["original"]["end_to_end"]["p50_ms"],
                    "agent_pruned_p50_ms": result["pruned"]["end_to_end"]["p50_ms"],
                    "ort_original_p50_ms": ort_original["p50_ms"],
                    "ort_pruned_p50_ms": ort_pruned["p50_ms"],
                    "task_s": task["task_s"],
                    "timed_runs_s": timed_s,
                    "device": result["device"],
                })
        finally:
            server.terminate()
            server.wait()

    print(f"YOLOv8n 640, batch 1, {args.threads} threads, {args.warmup} warm-up + {args.iters} runs, median ms")
    print(f"{'target':>6} {'agent orig':>11} {'agent pruned':>13} {'ratio':>6} {'ORT orig':>9} {'ORT pruned':>11} "
          f"{'ratio':>6} {'agent/ORT':>10} {'task s':>7} {'timed s':>8}")
    for r in rows:
        print(f"{r['target']:>6} {r['agent_original_p50_ms']:>11.1f} {r['agent_pruned_p50_ms']:>13.1f} "
              f"{r['agent_pruned_p50_ms'] / r['agent_original_p50_ms']:>6.2f} {r['ort_original_p50_ms']:>9.1f} "
              f"{r['ort_pruned_p50_ms']:>11.1f} {r['ort_pruned_p50_ms'] / r['ort_original_p50_ms']:>6.2f} "
              f"{r['agent_pruned_p50_ms'] / r['ort_pruned_p50_ms']:>10.2f} {r['task_s']:>7.1f} {r['timed_runs_s']:>8.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.node(), "threads": args.threads, "iters": args.iters,
                                    "warmup": args.warmup, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
