#!/usr/bin/env python3
"""Benchmarks effp's runtime, compaction and dependency analysis against references.

1. Forward and forward+backward time of effp's tch runtime against PyTorch eager on
   the same network (the same ONNX file converted with onnx2torch), same threads.
2. onnxruntime CPU latency of YOLOv8n compacted to 0.5 of its FLOPs over the original.
3. Time to build YOLOv8n's channel dependency groups against Torch-Pruning's
   DependencyGraph on the Ultralytics PyTorch model.

Prints a table and writes every figure as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def timed(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def effp_bench(effp: str, what: str, model: Path, extra: list[str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([effp, "bench", what, str(model), "--json", out.name, *extra], check=True, stdout=subprocess.DEVNULL)
        return {t["name"]: t["median_ms"] for t in json.load(open(out.name))["timings"]}


def pytorch_eager(model: Path, threads: int, iters: int) -> dict:
    import onnx
    from onnx2torch import convert

    torch.set_num_threads(threads)
    proto = onnx.load(str(model))
    # onnx2torch has no Split-18 converter; the export uses explicit split sizes,
    # the form Split-13 takes too, and no other op differs between 17 and 18 here.
    for o in proto.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = min(o.version, 17)
    net = convert(proto).eval()
    x = torch.rand(1, 3, 640, 640)

    def forward():
        with torch.no_grad():
            net(x)

    def backward():
        y = net(x)
        ys = y if isinstance(y, (list, tuple)) else [y]
        sum(t.square().mean() for t in ys).backward()
        net.zero_grad(set_to_none=False)

    return {"forward": timed(forward, 3, iters), "forward+backward": timed(backward, 3, iters)}


def ort_latency(model: Path, threads: int, iters: int) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)
    return timed(lambda: session.run(None, {name: x}), 5, iters)


def ort_interleaved(original: Path, pruned: Path, threads: int, rounds: int) -> tuple[float, float]:
    """Median onnxruntime latency (ms) of two 640-px models run in alternation, so that
    the machine's drift falls on both alike."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sessions = [ort.InferenceSession(str(m), opts, providers=["CPUExecutionProvider"]) for m in (original, pruned)]
    x = np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)
    runs = [lambda s=s: s.run(None, {s.get_inputs()[0].name: x}) for s in sessions]
    for run in runs:
        for _ in range(3):
            run()
    times: list[list[float]] = [[], []]
    for _ in range(rounds):
        for i, run in enumerate(runs):
            start = time.perf_counter()
            run()
            times[i].append((time.perf_counter() - start) * 1e3)
    return float(np.median(times[0])), float(np.median(times[1]))


def torch_pruning_groups(iters: int) -> float:
    import torch_pruning as tp
    from ultralytics import YOLO

    model = YOLO("yolov8n.yaml").model.fuse().eval()
    for p in model.parameters():
        p.requires_grad_(True)
    x = torch.rand(1, 3, 640, 640)
    return timed(lambda: tp.DependencyGraph().build_dependency(model, example_inputs=x), 1, iters)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--effp", required=True)
    parser.add_argument("--fixtures", required=True, type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--pruned", type=Path, action="append", default=[],
                        help="a pruned YOLOv8n (640) made elsewhere, e.g. by EFFP on a GPU: its latency against "
                             "the original's, interleaved (repeatable)")
    args = parser.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    yolov8n = args.fixtures / "yolov8n.onnx"

    ours = effp_bench(args.effp, "runtime", yolov8n, ["--threads", str(args.threads), "--iters", str(args.iters)])
    eager = pytorch_eager(yolov8n, args.threads, args.iters)

    ort_pruned = {}
    with tempfile.TemporaryDirectory() as tmp:
        ort_original = ort_latency(yolov8n, args.threads, args.iters * 3)
        for round_to in (1, 8):
            pruned = Path(tmp) / f"yolov8n_0.5_r{round_to}.onnx"
            subprocess.run(
                [args.effp, "prune", str(yolov8n), "--target-flops", "0.5", "--round-to", str(round_to),
                 "--out", str(pruned), "--device", "cpu"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            ort_pruned[round_to] = ort_latency(pruned, args.threads, args.iters * 3)

    groups = effp_bench(args.effp, "groups", yolov8n, ["--iters", str(args.iters)])
    tp_ms = torch_pruning_groups(max(3, args.iters // 3))

    interleaved = {p.stem: ort_interleaved(yolov8n, p, args.threads, args.iters * 5) for p in args.pruned}

    rows = [
        ("runtime forward (ms)", ours["forward"], eager["forward"], ours["forward"] / eager["forward"], "≤ 1.10"),
        (
            "runtime forward+backward (ms)",
            ours["forward+backward"],
            eager["forward+backward"],
            ours["forward+backward"] / eager["forward+backward"],
            "≤ 1.10",
        ),
        ("onnxruntime latency, l1 0.5 vs original (ms)", ort_pruned[1], ort_original, ort_pruned[1] / ort_original, "≤ 0.6"),
        (
            "onnxruntime latency, l1 0.5 --round-to 8 vs original (ms)",
            ort_pruned[8],
            ort_original,
            ort_pruned[8] / ort_original,
            "≤ 0.6",
        ),
        *[(f"onnxruntime latency, {name} vs original, interleaved (ms)", p, o, p / o, "≤ 0.6")
          for name, (o, p) in interleaved.items()],
        ("dependency groups: effp shapes+groups vs Torch-Pruning (ms)", groups["shapes + groups"], tp_ms, groups["shapes + groups"] / tp_ms, "≤ 0.1"),
    ]
    print(f"{'measure':<62}{'effp':>10}{'reference':>11}{'ratio':>8}  goal")
    for name, a, b, r, goal in rows:
        print(f"{name:<62}{a:>10.2f}{b:>11.2f}{r:>8.3f}  {goal}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "threads": args.threads,
                "torch": torch.__version__,
                "results": [{"measure": n, "effp": a, "reference": b, "ratio": r, "goal": g} for n, a, b, r, g in rows],
                "effp_groups_ms": groups,
            },
            indent=2,
        )
    )
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
