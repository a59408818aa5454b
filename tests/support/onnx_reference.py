#!/usr/bin/env python3
"""Independent references for effp's tests: onnxruntime and the onnx package.

Reads a JSON request on stdin and writes a JSON answer on stdout.

  compare  {"pairs": [[reference.onnx, candidate.onnx], ...], "seed": 0,
            "input_shapes": {"images": [1, 3, 160, 96]}}
           runs both files of each pair in onnxruntime on the same random inputs and
           answers, per pair, the output names, shapes and the largest absolute and
           relative differences. Free input sizes are 1 unless `input_shapes` (optional)
           gives the input's shape.
  run      {"jobs": [{"model": m.onnx, "inputs": [raw.f32, ...], "out_dir": d}, ...]}
           runs each model in onnxruntime on the given inputs (raw little-endian
           float32 in the shape the model declares) and writes every output as raw
           float32 to out_dir/<index>.f32; answers their names, shapes and paths.
  values   {"models": [{"model": m.onnx, "input_shapes": {"x": [1, 3, 8, 8]}}, ...], "seed": 0}
           runs each model in onnxruntime on random inputs of its given shapes and
           answers, per model, its outputs' element types and values (nested lists;
           for small outputs such as computed shapes).
  shapes   {"models": [model.onnx, ...]}
           answers every value's shape as inferred by onnx.shape_inference, and
           whether onnx.checker (full check) accepts the file.
"""

from __future__ import annotations

import json
import sys

import numpy as np


def random_inputs(session, seed: int, given: dict | None = None) -> dict:
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        shape = (given or {}).get(i.name, shape)
        feeds[i.name] = rng.standard_normal(shape, dtype=np.float32)
    return feeds


def run(path: str, feeds: dict | None, seed: int, given: dict | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    feeds = feeds if feeds is not None else random_inputs(session, seed, given)
    names = [o.name for o in session.get_outputs()]
    return names, session.run(names, feeds), feeds


def compare(req: dict) -> list:
    answers = []
    for reference, candidate in req["pairs"]:
        ref_names, ref_out, feeds = run(reference, None, req.get("seed", 0), req.get("input_shapes"))
        cand_names, cand_out, _ = run(candidate, feeds, 0)
        max_abs, max_rel = 0.0, 0.0
        shapes_equal = ref_names == cand_names and all(a.shape == b.shape for a, b in zip(ref_out, cand_out))
        if shapes_equal:
            for a, b in zip(ref_out, cand_out):
                diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
                scale = max(float(np.abs(a).max(initial=0.0)), 1e-12)
                max_abs = max(max_abs, float(diff.max(initial=0.0)))
                max_rel = max(max_rel, float(diff.max(initial=0.0)) / scale)
        answers.append(
            {
                "reference": reference,
                "candidate": candidate,
                "outputs": ref_names,
                "shapes": [list(a.shape) for a in ref_out],
                "candidate_shapes": [list(b.shape) for b in cand_out],
                "shapes_equal": shapes_equal,
                "max_abs": max_abs,
                "max_rel": max_rel,
            }
        )
    return answers


def run_jobs(req: dict) -> list:
    import onnxruntime as ort

    answers = []
    for job in req["jobs"]:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        session = ort.InferenceSession(job["model"], opts, providers=["CPUExecutionProvider"])
        feeds = {}
        for spec, path in zip(session.get_inputs(), job["inputs"]):
            data = np.fromfile(path, dtype="<f4")
            feeds[spec.name] = data.reshape([d if isinstance(d, int) else -1 for d in spec.shape])
        names = [o.name for o in session.get_outputs()]
        outputs = []
        for i, (name, value) in enumerate(zip(names, session.run(names, feeds))):
            path = f"{job['out_dir']}/{i}.f32"
            np.ascontiguousarray(value, dtype="<f4").tofile(path)
            outputs.append({"name": name, "shape": list(value.shape), "path": path})
        answers.append({"model": job["model"], "outputs": outputs})
    return answers


def values(req: dict) -> list:
    answers = []
    for job in req["models"]:
        path = job["model"]
        _, outputs, _ = run(path, None, req.get("seed", 0), job.get("input_shapes"))
        answers.append({"model": path, "dtypes": [str(o.dtype) for o in outputs], "values": [o.tolist() for o in outputs]})
    return answers


def shapes(req: dict) -> list:
    import onnx

    answers = []
    for path in req["models"]:
        model = onnx.load(path)
        try:
            onnx.checker.check_model(model, full_check=True)
            checker = None
        except Exception as e:  # the message is the answer
            checker = str(e)
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
        values = {}
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
            t = vi.type.tensor_type
            if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
                values[vi.name] = [d.dim_value for d in t.shape.dim]
        answers.append({"model": path, "checker_error": checker, "shapes": values})
    return answers


def main() -> int:
    command = sys.argv[1]
    req = json.load(sys.stdin)
    answer = {"compare": compare, "run": run_jobs, "shapes": shapes, "values": values}[command](req)
    json.dump(answer, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
