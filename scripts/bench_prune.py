#!/usr/bin/env python3
"""The pruning benchmark: every method at every target on the trained fixture detector.

For each (method, target, seed) it runs `effp prune` and reads the report (mAP50-95
and mAP50 on the validation split, parameters, FLOPs, training wall time), then times
the pruned ONNX file with onnxruntime on the CPU. EFFP also runs with regrowing
switched off, beside the default. Every effp method gets the same data, loss,
optimiser and step budget.

Beside them, in the same table, the practitioners' baseline and a ceiling (made by
bench_tp.py):

* "torch-pruning + ultralytics": Torch-Pruning's YOLOv8 recipe (same channel ratio in
  every layer, group L2 magnitude, iterative, Ultralytics fine-tuning between steps)
  to the same FLOPs target, retrained by Ultralytics' own trainer on the labels;
* "unpruned, same training": the original checkpoint retrained the same way, once;
  every row's mAP is also given as a share of it ("of ceiling"), so that extra
  training is not mistaken for a better pruning method.

The Ultralytics runs together see as many training images as one effp run
(steps × batch). Their ONNX exports are scored by `effp eval` and sized by `effp
inspect`, so every row's mAP and FLOPs come from the same tools.

Prints a table and writes JSON; `--resume` keeps rows already in the JSON (a long run
can be continued); `--seeds 0,1,2` repeats every row per seed and prints mean ± sd.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import onnxruntime as ort

# (row label, effp prune arguments)
METHODS = [
    ("effp", ["--method", "effp"]),
    ("effp, no regrowing", ["--method", "effp", "--regrow", "0"]),
    ("effp, label-free", ["--method", "effp", "--label-weight", "0"]),
    ("effp, mosaic", ["--method", "effp", "--mosaic", "1"]),
    ("effp, per layer", ["--method", "effp", "--scope", "layer"]),
    ("effp, prune-share 0.3", ["--method", "effp", "--prune-share", "0.3"]),
    ("effp, prune-share 0.15", ["--method", "effp", "--prune-share", "0.15"]),
    ("effp, prune-share 0.1", ["--method", "effp", "--prune-share", "0.1"]),
    ("effp, per layer, prune-share 0.3, magnitude",
     ["--method", "effp", "--scope", "layer", "--prune-share", "0.3", "--criterion", "magnitude"]),
    ("effp, per layer, prune-share 0.3, taylor",
     ["--method", "effp", "--scope", "layer", "--prune-share", "0.3", "--criterion", "taylor"]),
    ("effp, start at target", ["--method", "effp", "--start", "target"]),
    ("effp, distill neck", ["--method", "effp", "--distill", "neck"]),
    ("effp, distill heads", ["--method", "effp", "--distill", "heads"]),
    ("effp, label-free, distill heads", ["--method", "effp", "--label-weight", "0", "--distill", "heads"]),
    ("effp, distill foreground", ["--method", "effp", "--distill", "foreground"]),
    ("effp, label-free, distill foreground",
     ["--method", "effp", "--label-weight", "0", "--distill", "foreground"]),
    ("effp, start at target, distill neck", ["--method", "effp", "--start", "target", "--distill", "neck"]),
    ("effp, start at target, distill foreground",
     ["--method", "effp", "--start", "target", "--distill", "foreground"]),
    ("effp, per layer, prune-share 0.1, taylor",
     ["--method", "effp", "--scope", "layer", "--prune-share", "0.1", "--criterion", "taylor"]),
    ("effp, per layer, prune-share 0.3, taylor, interval 50",
     ["--method", "effp", "--scope", "layer", "--prune-share", "0.3", "--criterion", "taylor", "--interval", "50"]),
    ("effp, per layer, prune-share 0.3, magnitude, no regrowing",
     ["--method", "effp", "--scope", "layer", "--prune-share", "0.3", "--criterion", "magnitude", "--regrow", "0"]),
    ("effp, per layer, prune-share 0.5, taylor",
     ["--method", "effp", "--scope", "layer", "--prune-share", "0.5", "--criterion", "taylor"]),
    ("effp, per layer, prune-share 0.7, taylor",
     ["--method", "effp", "--scope", "layer", "--prune-share", "0.7", "--criterion", "taylor"]),
    ("effp, per layer, prune-share 0.3, taylor, label-free",
     ["--method", "effp", "--scope", "layer", "--prune-share", "0.3", "--criterion", "taylor", "--label-weight", "0"]),
    ("effp, per layer, prune-share 0.3, label-free",
     ["--method", "effp", "--scope", "layer", "--prune-share", "0.3", "--criterion", "curvature", "--label-weight", "0"]),
    ("effp, per layer, prune-share 0.3, taylor, no regrowing",
     ["--method", "effp", "--scope", "layer", "--prune-share", "0.3", "--criterion", "taylor", "--regrow", "0"]),
    ("effp, per layer, prune-share 0.3", ["--method", "effp", "--scope", "layer", "--prune-share", "0.3"]),
    ("effp, per layer, prune-share 0.3, no regrowing",
     ["--method", "effp", "--scope", "layer", "--prune-share", "0.3", "--regrow", "0"]),
    ("effp, no floor", ["--method", "effp", "--min-fraction", "0"]),
    ("effp, latency-aware", ["--method", "effp", "--activation-cost", "8192", "--round-to", "8"]),
    ("effp, masked fine-tune", ["--method", "effp", "--fine-tune", "masked"]),
    ("uniform (TP recipe)", ["--method", "uniform"]),
    ("progressive", ["--method", "progressive"]),
    ("progressive, per layer", ["--method", "progressive", "--scope", "layer"]),
    ("sfp", ["--method", "sfp"]),
    ("sfp, per layer", ["--method", "sfp", "--scope", "layer"]),
    ("l1 + fine-tune", ["--method", "l1"]),
    ("l1 per layer + fine-tune", ["--method", "l1", "--scope", "layer"]),
    ("random + fine-tune", ["--method", "random"]),
]
TP = "torch-pruning + ultralytics"
CEILING = "unpruned, same training"
ALL_LABELS = [m for m, _ in METHODS] + [TP, CEILING]


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


def effp_json(effp: str, *args: str) -> dict:
    """Runs an effp subcommand that prints JSON and returns it."""
    done = subprocess.run([effp, *args], check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def measure_onnx(effp: str, path: Path, data: Path, device: str, threads: int) -> dict:
    """What the table shows of an ONNX detector: effp eval's mAP, effp inspect's size, ORT latency."""
    ev = effp_json(effp, "eval", str(path), "--data", str(data), "--device", device, "--json")
    totals = effp_json(effp, "inspect", str(path), "--json", "--summary")["totals"]
    metrics = ev["report"]["metrics"]
    return {
        "map50_95": metrics["map50_95"], "map50": metrics["map50"],
        "params": totals["params"], "flops": totals["flops"],
        "ort_ms": ort_latency_ms(path, threads),
    }


def input_size(effp: str, model: Path) -> int:
    """The square input size the ONNX model declares (the fixture: 128)."""
    shape = effp_json(effp, "inspect", str(model), "--json", "--summary")["inputs"][0]["shape"]
    h, w = shape[-2:]
    if h != w:
        raise SystemExit(f"{model}: the Torch-Pruning rows need a square input, got {h}x{w}")
    return int(h)


def parse_overrides(items: list[str]) -> dict:
    """KEY=VALUE pairs for Ultralytics' trainer, values read as YAML (numbers, booleans)."""
    import yaml

    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key.strip()] = yaml.safe_load(value)
    return out


def run_effp(args, model: Path, data: Path, label: str, extra: list[str], target: float, seed: int,
             tmp: Path) -> dict:
    """One effp row: `effp prune` with the shared options, then its report and the file's latency."""
    tmp = tmp / f"{label}_{target}_{seed}".replace(" ", "_").replace(",", "").replace("/", "_")
    tmp.mkdir(parents=True, exist_ok=True)
    out = tmp / "pruned.onnx"
    report_path = tmp / "report.json"
    cmd = [args.effp, "prune", str(model), "--data", str(data), "--target-flops", str(target),
           "--steps", str(args.steps), "--batch", str(args.batch), "--seed", str(seed),
           "--device", args.device, "--out", str(out), "--report", str(report_path), *extra]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return effp_row(json.loads(report_path.read_text()), label, target, seed, out, args.threads)


def effp_row(r: dict, label: str, target: float, seed: int, onnx: Path | None, threads: int) -> dict:
    """The table's row of an effp prune report (and its file's latency, when the file is here)."""
    acc = r["accuracy"]
    training = r.get("training", {})
    seconds = training.get("seconds", {})
    return {
        "method": label, "source": "effp", "target": target, "seed": seed, "steps": training.get("steps"),
        "batch": training.get("batch"),
        "map50_95": acc["after"]["map50_95"], "map50": acc["after"]["map50"],
        "params": r["after"]["params"], "flops": r["after"]["flops"],
        "flops_ratio": r["flops_ratio"],
        "ort_ms": ort_latency_ms(onnx, threads) if onnx is not None and onnx.exists() else float("nan"),
        "train_seconds": r["wall_seconds"],
        "pruning_seconds": seconds.get("pruning"), "fine_tuning_seconds": seconds.get("fine_tuning"),
        "fine_tune": training.get("fine_tune"),
        "device": training.get("device"),
        "regrown": training.get("regrown", 0),
    }


def rows_from_reports(folder: Path, threads: int) -> list[dict]:
    """effp rows run elsewhere (scripts/gpu_check.sh on a GPU machine): FOLDER/reports/*.json,
    each with a "bench" entry naming its row, and FOLDER/models/<same name>.onnx where kept."""
    rows = []
    for path in sorted((folder / "reports").glob("*.json")):
        r = json.loads(path.read_text())
        b = r["bench"]
        onnx = folder / "models" / (path.stem + ".onnx")
        rows.append(effp_row(r, b["method"], b["target"], b["seed"], onnx, threads))
    return rows


def run_ultralytics(args, label: str, target: float, seed: int, original: dict, imgsz: int, work: Path,
                    log) -> dict:
    """One Torch-Pruning or ceiling row (bench_tp.py), scored like the effp rows."""
    import bench_tp

    checkpoint = args.fixtures / f"{args.model}.pt"
    data_yaml = args.data / "data.yaml"
    slug = "ceiling" if label == CEILING else f"tp_{target}"
    run_dir = work / f"{slug}_seed{seed}"
    out = run_dir / f"{slug}.onnx"
    common = dict(steps=args.steps, batch=args.batch, imgsz=imgsz, seed=seed, device=args.device, out=out,
                  workdir=run_dir, overrides=parse_overrides(args.ultralytics_arg), log=log)
    print(f"=== {label} @ {target}, seed {seed}", file=log, flush=True)
    if label == CEILING:
        facts = bench_tp.unpruned_row(checkpoint, data_yaml, **common)
    else:
        facts = bench_tp.torch_pruning_row(checkpoint, data_yaml, target=target, iterative_steps=args.tp_steps,
                                           ignore=args.tp_ignore, **common)
    measured = measure_onnx(args.effp, out, args.data, args.device, args.threads)
    row = {
        "method": label, "source": facts.pop("source"), "target": target, "seed": seed, "steps": args.steps,
        "batch": args.batch, **measured,
        "flops_ratio": measured["flops"] / original["flops"],
        "train_seconds": facts.pop("train_seconds"),
        "regrown": None,
        **facts,
    }
    if label == TP and row["flops_ratio"] > target + 1e-9:
        print(f"  warning: {label} @ {target} kept {row['flops_ratio']:.4f} of the FLOPs (effp inspect)",
              file=sys.stderr)
    return row


def summarise(rows: list[dict]) -> dict[tuple[str, float], dict]:
    """Rows grouped by (method, target): mean, sample sd and count of each number over seeds."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["target"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        s = {"n": len(rs)}
        for k in ("map50_95", "map50", "params", "flops", "ort_ms", "train_seconds"):
            vals = [float(r[k]) for r in rs]
            s[k] = statistics.fmean(vals)
            s[k + "_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out[key] = s
    return out


def print_table(args, original: dict, rows: list[dict]) -> None:
    """The table, one line per (method, target), then what the comparison does not cover."""
    summary = summarise(rows)
    multi = any(s["n"] > 1 for s in summary.values())
    w = 15 if multi else 9

    def m(s: dict, k: str) -> str:
        if multi and s["n"] > 1:
            return f"{s[k]:.4f}±{s[k + '_sd']:.4f}"
        return f"{s[k]:.4f}"

    def pct(x: float | None) -> str:
        return "" if x is None else f"{x:.1%}"

    ceiling = summary.get((CEILING, 1.0))
    ceiling_map = ceiling["map50_95"] if ceiling else None
    seeds = sorted({r.get("seed", 0) for r in rows}) or [0]
    print(f"\nfixture detector {args.model}, {original.get('imgsz', '?')} px, {args.steps} steps × batch {args.batch} "
          f"per run ({args.steps * args.batch} training images), device {args.device}, seeds "
          f"{','.join(map(str, seeds))}, ORT latency on {args.threads} threads")
    print(f"{'target':>6} {'method':<28}{'mAP50-95':>{w}}{'mAP50':>{w}}{'kept':>7}{'of ceiling':>11}"
          f"{'params':>9}{'MFLOPs':>8}{'ORT ms':>8}{'wall s':>8}")
    base = original["map50_95"]
    line = (f"{1.0:>6} {'original':<28}{base:>{w}.4f}{original['map50']:>{w}.4f}{1.0:>7.1%}"
            f"{pct(base / ceiling_map if ceiling_map else None):>11}{original['params']:>9}"
            f"{original['flops'] / 1e6:>8.1f}{original['ort_ms']:>8.2f}{'':>8}")
    print(line)
    order = {label: i for i, label in enumerate(ALL_LABELS)}
    keys = sorted(summary, key=lambda k: (k[0] != CEILING, -k[1], order.get(k[0], 99)))
    for method, target in keys:
        s = summary[(method, target)]
        kept = s["map50_95"] / base if base else float("nan")
        of_ceiling = s["map50_95"] / ceiling_map if ceiling_map else None
        print(f"{target:>6} {method:<28}{m(s, 'map50_95'):>{w}}{m(s, 'map50'):>{w}}{kept:>7.1%}{pct(of_ceiling):>11}"
              f"{s['params']:>9.0f}{s['flops'] / 1e6:>8.1f}{s['ort_ms']:>8.2f}{s['train_seconds']:>8.0f}")
    if multi:
        print("± is the sample standard deviation over seeds")
    ul_rows = [r for r in rows if r.get("source") in ("torch-pruning", "ultralytics")]
    if ul_rows:
        print_ultralytics_notes(args, ul_rows)


def print_ultralytics_notes(args, ul_rows: list[dict]) -> None:
    """The footer: how the Ultralytics-trained rows were made and what the comparison leaves out."""
    stages = [s for r in ul_rows for s in r.get("stages", []) if "optimizer" in s]
    opt = sorted({f"{s['optimizer']} lr0 {s['lr0']:g}" for s in stages})
    mosaic = sorted({(s["mosaic_epochs"], s["epochs"]) for s in stages})
    accumulate = ", ".join(str(a) for a in sorted({s["accumulate"] for s in stages})) or "?"
    steps = {(r["method"], r["target"]): r.get("optimizer_steps") for r in ul_rows}
    tp_rows = [r for r in ul_rows if r["method"] == TP]
    ignored = ("the Detect head's final prediction convs and DFL" if args.tp_ignore == "head"
               else "the whole Detect module")
    overrides = "".join(f", {a}" for a in args.ultralytics_arg)
    taken = ", ".join(f"{k[0]} @ {k[1]}: {v}" for k, v in sorted(steps.items(), key=str))
    mosaic_share = ", ".join(f"{a}/{b}" for a, b in mosaic) or "?"
    images = args.steps * args.batch
    print(f"""
How the Ultralytics rows were made (bench_tp.py):
  - {TP}: C2f → C2f_v2 (same function), then {args.tp_steps} iterative steps: the same channel
    ratio in every layer (group L2 magnitude, MetaPruner, global_pruning=False; ignored: {ignored}),
    ratio searched so that Torch-Pruning's MACs count reaches target^(i/{args.tp_steps}) after step i,
    each step followed by an Ultralytics run of its share of the {images} images.
  - {CEILING}: the original checkpoint, one Ultralytics run of all the images.
  - Ultralytics trainer defaults except batch {args.batch}, imgsz, seed, device, epochs spanning the
    images (stopped mid-epoch at the budget), amp=False, val=False, plots=False{overrides}:
    optimizer {", ".join(opt) or "?"}, gradients accumulated over {accumulate} batches (nominal batch nbs,
    default 64), warm-up min(3, epochs-1) epochs, linear LR decay, EMA weights taken at the end (no best-epoch selection),
    its loss on the labels.
  - mAP: effp eval on the val split; params/FLOPs: effp inspect of each exported ONNX file.
Not covered by the comparison:
  - Optimizer steps differ at equal images: effp takes {args.steps} steps of batch {args.batch}; the
    Ultralytics runs took {taken}
    (nbs images a step; a partly accumulated remainder is dropped).
  - Schedules differ: effp warms up for 10 steps then decays by cosine in one run; Ultralytics warms up
    over epochs and decays linearly per epoch, and restarts both at every Torch-Pruning step.
  - Supervision differs: Ultralytics learns from the labels with its detection loss alone; effp from
    the same loss (default --label-weight 1) plus distillation from the original model's outputs.
  - Augmentation: both jitter HSV, scale, shift and flip alike; Ultralytics uses mosaic in the epochs
    before its last 10 (mosaic epochs / epochs per run here: {mosaic_share}); effp only with --mosaic
    (the "effp, mosaic" row; in its last tenth of steps none).
  - wall s: effp's is the whole `effp prune` run (with its own evaluation); the Ultralytics rows' is
    pruning (with the ratio search), training and export, without effp eval.""")
    if tp_rows:
        achieved = ", ".join(f"{r['target']}: {r['flops_ratio']:.3f}" for r in tp_rows)
        print(f"  - FLOPs kept by the Torch-Pruning rows (effp inspect): {achieved}; same ratio per layer only"
              f" approaches the target in steps of whole channels.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--effp", required=True)
    parser.add_argument("--fixtures", required=True, type=Path)
    parser.add_argument("--model", default="trained",
                        help="the fixture detector: trained (default), or a benchmark one that "
                        "`make_fixtures.py --bench-models` trained to convergence (converged, yolov8n-160)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="effp rows run this many at a time (each with --threads threads)")
    parser.add_argument("--steps", type=int, default=300, help="effp optimiser steps; the Ultralytics rows get "
                        "steps × batch training images")
    parser.add_argument("--batch", type=int, default=8, help="images per step, for effp and Ultralytics")
    parser.add_argument("--targets", default="0.7,0.5,0.3")
    parser.add_argument("--methods", default=";".join(ALL_LABELS),
                        help="semicolon-separated row labels to run (default: all)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; each row is run once per seed")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: effp's training and eval, and "
                        "Ultralytics' training")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tp-steps", type=int, default=4,
                        help="Torch-Pruning iterative steps, each followed by Ultralytics fine-tuning")
    parser.add_argument("--tp-ignore", choices=["head", "detect"], default="head",
                        help="what Torch-Pruning leaves alone: the Detect head's final prediction convs (head) "
                        "or the whole Detect module (detect, as the published example; cannot reach 0.3 here)")
    parser.add_argument("--ultralytics-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="override an Ultralytics training argument (repeatable), e.g. nbs=8")
    parser.add_argument("--work", type=Path, help="keep the Ultralytics runs, their ONNX files and log here "
                        "(default: a temporary folder)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--resume", action="store_true", help="keep rows already in --out")
    parser.add_argument("--from-reports", type=Path, metavar="DIR",
                        help="also take the effp rows that scripts/gpu_check.sh ran on a GPU machine from DIR")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    model = args.fixtures / f"{args.model}.onnx"
    manifest = json.loads((args.fixtures / "MANIFEST.json").read_text())["fixtures"]
    if args.model not in manifest or "data" not in manifest[args.model]:
        raise SystemExit(f"{args.model} is not a trained fixture in {args.fixtures}; the benchmark "
                         "detectors are made by tests/fixtures/make_fixtures.py --bench-models")
    data = args.data = args.fixtures / manifest[args.model]["data"]
    targets = [float(t) for t in args.targets.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    wanted = [m.strip() for m in args.methods.split(";")]
    unknown = [m for m in wanted if m not in ALL_LABELS]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; known: {ALL_LABELS}")
    uses_ultralytics = TP in wanted or CEILING in wanted
    if uses_ultralytics:
        import torch

        torch.set_num_threads(args.threads)

    rows: list[dict] = []
    if args.resume and args.out.exists():
        rows = json.loads(args.out.read_text())["rows"]
    if args.from_reports:
        known = {(r["method"], r["target"], r.get("seed", 0)) for r in rows}
        rows += [r for r in rows_from_reports(args.from_reports, args.threads)
                 if (r["method"], r["target"], r["seed"]) not in known]
    done = {(r["method"], r["target"], r.get("seed", 0)) for r in rows}
    imgsz = input_size(args.effp, model)
    original = {"method": "original", "target": 1.0, "imgsz": imgsz,
                **measure_onnx(args.effp, model, data, args.device, args.threads)}

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "model": args.model, "fixture": manifest[args.model],
            "steps": args.steps, "batch": args.batch, "threads": args.threads, "device": args.device,
            "tp_steps": args.tp_steps, "tp_ignore": args.tp_ignore, "ultralytics_args": args.ultralytics_arg,
            "original": original, "rows": rows}, indent=2))

    # (label, target) pairs to run, the ceiling once; effp methods in table order, then the Ultralytics ones.
    plan = [(CEILING, 1.0)] if CEILING in wanted else []
    for target in targets:
        plan += [(label, target) for label, _ in METHODS if label in wanted]
        if TP in wanted:
            plan.append((TP, target))
    extra_of = dict(METHODS)
    todo = [(label, target, seed) for seed in seeds for label, target in plan if (label, target, seed) not in done]

    def finish(row: dict, started: float) -> None:
        rows.append(row)
        print(f"  {row['method']} @ {row['target']}, seed {row['seed']}: mAP50-95 {row['map50_95']:.4f}, "
              f"FLOPs {row['flops_ratio']:.3f} ({time.perf_counter() - started:.0f} s)", flush=True)
        save()

    with tempfile.TemporaryDirectory() as tmp:
        # The effp rows first, `--jobs` at a time; then the Ultralytics ones, in this process.
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            started = time.perf_counter()
            futures = {pool.submit(run_effp, args, model, data, label, extra_of[label], target, seed, Path(tmp)):
                       (label, target, seed) for label, target, seed in todo if label in extra_of}
            for future in as_completed(futures):
                finish(future.result(), started)
        work = args.work or Path(tmp) / "ultralytics"
        work.mkdir(parents=True, exist_ok=True)
        with open(work / "ultralytics.log", "a") as log:
            for label, target, seed in todo:
                if label in extra_of:
                    continue
                start = time.perf_counter()
                try:
                    row = run_ultralytics(args, label, target, seed, original, imgsz, work, log)
                except RuntimeError as e:  # e.g. a target the ignored layers put out of reach
                    print(f"  {label} @ {target}, seed {seed}: skipped: {e}", file=sys.stderr, flush=True)
                    continue
                finish(row, start)
    save()
    print_table(args, original, rows)
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
