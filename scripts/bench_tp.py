"""The practitioners' baseline of the pruning benchmark: Torch-Pruning, then Ultralytics retraining.

People who prune YOLO detectors today mostly follow Torch-Pruning's YOLOv8 example
(examples/yolov8/yolov8_pruning.py in VainF/Torch-Pruning): split every C2f block's
first convolution in two so that the dependency graph can prune both halves, prune
the same share of channels in every layer by group L2 magnitude, and fine-tune with
Ultralytics' own trainer (its loss on the labels, its augmented loader, its default
hyper-parameters) between iterative pruning steps. This module does that on the
benchmark's trained fixture detector, with two changes the benchmark needs:

* the per-step ratio is searched (bisection on a copy) so that the MACs, counted by
  `tp.utils.count_ops_and_params` at the benchmark's input size, land at or below a
  FLOPs target instead of a channel ratio;
* the training budget is counted in images, so that all Ultralytics runs together
  see exactly as many training images as an `effp prune` run (steps × batch).

It also makes the "unpruned, same training" ceiling: the original checkpoint
retrained by the same trainer for the same images. The caller (bench_prune.py)
scores every ONNX file this module writes with `effp eval`, so all rows of the table
come from one evaluator.

Ultralytics and Torch-Pruning are imported on first use; bench_prune.py imports this
module only when it runs one of these rows, after it has set torch's thread count.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import shutil
import time
from pathlib import Path

import torch
from torch import nn


# Ultralytics reaches for the network (hub, platform, update checks) unless told not to.
os.environ.setdefault("YOLO_OFFLINE", "1")


def _ultralytics():
    """Ultralytics' modules this file uses (imported on first use)."""
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.nn.modules import C2f, Conv, Detect
    from ultralytics.nn.modules.block import Bottleneck

    return DetectionTrainer, C2f, Conv, Detect, Bottleneck


# --------------------------------------------------------------------------------------
# C2f with its split made explicit (the example's C2f_v2)
# --------------------------------------------------------------------------------------


class C2f_v2(nn.Module):  # noqa: N801 (the example's name, kept so the two are easy to compare)
    """C2f whose first 1×1 convolution is two convolutions (cv0, cv1) instead of one split in two.

    Ultralytics' C2f computes `cv1(x).chunk(2)`; Torch-Pruning cannot prune through the
    chunk, so the example replaces the block with this one, which computes the same
    function with the halves as separate layers.
    """

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, g: int = 1, e: float = 0.5):
        super().__init__()
        _, _, Conv, _, Bottleneck = _ultralytics()
        self.c = int(c2 * e)
        self.cv0 = Conv(c1, self.c, 1, 1)
        self.cv1 = Conv(c1, self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut, g, k=((3, 3), (3, 3)), e=1.0) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


def _c2f_to_v2(c2f) -> C2f_v2:
    """A C2f_v2 computing what `c2f` computes: cv1's output channels and BatchNorm split in halves."""
    bottleneck = c2f.m[0]
    shortcut = bool(getattr(bottleneck, "add", False))
    v2 = C2f_v2(
        c2f.cv1.conv.in_channels,
        c2f.cv2.conv.out_channels,
        n=len(c2f.m),
        shortcut=shortcut,
        g=bottleneck.cv2.conv.groups,
        e=c2f.c / c2f.cv2.conv.out_channels,
    )
    v2.cv2 = c2f.cv2
    v2.m = c2f.m
    old = c2f.state_dict()
    new = v2.state_dict()
    half = old["cv1.conv.weight"].shape[0] // 2
    for key in ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"):
        if key.endswith("num_batches_tracked"):
            new[f"cv0.{key}"] = old[f"cv1.{key}"].clone()
            new[f"cv1.{key}"] = old[f"cv1.{key}"].clone()
        else:
            new[f"cv0.{key}"] = old[f"cv1.{key}"][:half].clone()
            new[f"cv1.{key}"] = old[f"cv1.{key}"][half:].clone()
    for key, value in old.items():
        if not key.startswith("cv1."):
            new[key] = value
    v2.load_state_dict(new)
    for bn_src, bn_dst in ((c2f.cv1.bn, v2.cv0.bn), (c2f.cv1.bn, v2.cv1.bn)):
        bn_dst.eps, bn_dst.momentum = bn_src.eps, bn_src.momentum
    # Ultralytics' graph bookkeeping (layer index, input index, type name, parameter count).
    for attr in ("i", "f", "type", "np"):
        if hasattr(c2f, attr):
            setattr(v2, attr, getattr(c2f, attr))
    return v2.train(c2f.training)


def replace_c2f(module: nn.Module) -> int:
    """Replaces every C2f below `module` by an equivalent C2f_v2 in place; returns how many."""
    _, C2f, _, _, _ = _ultralytics()
    count = 0
    for name, child in module.named_children():
        if type(child) is C2f:
            setattr(module, name, _c2f_to_v2(child))
            count += 1
        else:
            count += replace_c2f(child)
    return count


# --------------------------------------------------------------------------------------
# Torch-Pruning
# --------------------------------------------------------------------------------------


def ignored_layers(model: nn.Module, mode: str) -> list[nn.Module]:
    """Layers Torch-Pruning must leave alone.

    "head": the Detect head's final prediction convolutions (box distributions and class
    scores: their output channels are the model's outputs) and the fixed DFL convolution;
    the rest of the head is pruned like any layer.
    "detect": the whole Detect module, as the published example passes it; its inner
    convolutions then keep their width (only their input channels follow the neck).
    """
    _, _, _, Detect, _ = _ultralytics()
    ignored: list[nn.Module] = []
    for m in model.modules():
        if not isinstance(m, Detect):
            continue
        if mode == "detect":
            ignored.append(m)
            continue
        for branch in ("cv2", "cv3", "one2one_cv2", "one2one_cv3"):
            for seq in getattr(m, branch, None) or []:
                ignored.append(seq[-1])
        if getattr(m, "dfl", None) is not None and hasattr(m.dfl, "conv"):
            ignored.append(m.dfl.conv)
    if mode not in ("head", "detect"):
        raise ValueError(f"unknown ignore mode {mode!r}")
    return ignored


def count_macs(model: nn.Module, imgsz: int) -> tuple[float, int]:
    """(MACs, parameters) of `model` at imgsz × imgsz, as Torch-Pruning counts them."""
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, 3, imgsz, imgsz))
    finally:
        model.train(was_training)
    return float(macs), int(params)


def prune_step(model: nn.Module, ratio: float, imgsz: int, ignore: str) -> None:
    """One pruning step in place: the same channel `ratio` in every layer, by group L2 magnitude.

    As in the example, a new pruner is built for each step (the model has been trained
    since the last one) and run with iterative_steps=1.
    """
    import torch_pruning as tp

    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    pruner = tp.pruner.MetaPruner(
        model,
        torch.zeros(1, 3, imgsz, imgsz),
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        global_pruning=False,
        pruning_ratio=ratio,
        iterative_steps=1,
        ignored_layers=ignored_layers(model, ignore),
    )
    pruner.step()
    del pruner


def search_ratio(model: nn.Module, goal_macs: float, imgsz: int, ignore: str, iters: int = 6) -> tuple[float, float]:
    """The smallest per-layer channel ratio whose step brings `model` to at most `goal_macs`.

    Searched on copies of the model: a coarse scan upwards in 0.05 steps finds the first
    ratio that reaches the goal, then bisection narrows the last interval (MACs fall in
    steps as the ratio grows, since every layer keeps int(channels × (1 − ratio))). The
    scan stops at 0.85: beyond it Torch-Pruning would empty the narrowest layers (8
    channels here). Returns (ratio, MACs after). Raises if the goal is out of reach
    (the ignored layers set a floor).
    """

    def after(r: float) -> float:
        trial = copy.deepcopy(model)
        prune_step(trial, r, imgsz, ignore)
        return count_macs(trial, imgsz)[0]

    lo, hi, macs_hi = 0.0, None, None
    for k in range(1, 18):
        r = round(0.05 * k, 2)
        m = after(r)
        if m <= goal_macs:
            hi, macs_hi = r, m
            break
        lo = r
    if hi is None:
        raise RuntimeError(
            f"Torch-Pruning with ignored layers '{ignore}' cannot reach {goal_macs:.4g} MACs "
            f"(at ratio {lo}: {m:.4g})"
        )
    for _ in range(iters):
        mid = (lo + hi) / 2
        m = after(mid)
        if m <= goal_macs:
            hi, macs_hi = mid, m
        else:
            lo = mid
    return hi, macs_hi


# --------------------------------------------------------------------------------------
# Ultralytics retraining of a given (pruned) model
# --------------------------------------------------------------------------------------


def ultralytics_device(device: str) -> str:
    """effp's device names (cpu, cuda, cuda:N) in Ultralytics' spelling (cpu, 0, N)."""
    if device == "cpu":
        return "cpu"
    if device == "cuda":
        return "0"
    if device.startswith("cuda:"):
        return device.split(":", 1)[1]
    raise ValueError(f"unknown device {device!r}")


def make_trainer_class():
    """Ultralytics' DetectionTrainer, changed only where the benchmark needs it.

    * `setup_model` keeps the model it is given. The stock trainer (and `YOLO.train`)
      rebuilds the network from its YAML and loads the weights into it, which would
      undo the pruning; the Torch-Pruning example replaces `YOLO.train` for the same
      reason (`train_v2(pruning=True)`, which sets `trainer.model` to the pruned model).
    * Training stops once `budget` images have been through a forward and backward
      pass, mid-epoch if need be; `epochs` is set so that the schedule ends there.
    * Optimizer steps are counted (Ultralytics accumulates gradients up to its nominal
      batch of 64 images, so they are fewer than the batches).
    * `final_eval` (re-validating best.pt) is skipped: the row is scored by effp eval,
      and the model taken is the final EMA in fp32 rather than the fp16 checkpoint
      (the example disables half-precision saving for the same reason).
    """
    DetectionTrainer = _ultralytics()[0]

    class GivenModelTrainer(DetectionTrainer):
        def __init__(self, model: nn.Module, budget: int, overrides: dict):
            super().__init__(overrides=overrides)
            self.given_model = model
            self.budget = budget
            self.images_seen = 0
            self.optimizer_steps = 0

        def setup_model(self):
            self.model = self.given_model
            return None

        def preprocess_batch(self, batch):
            batch = super().preprocess_batch(batch)
            self.images_seen += int(batch["img"].shape[0])
            if self.images_seen >= self.budget:
                self.stop = True
            return batch

        def optimizer_step(self):
            super().optimizer_step()
            self.optimizer_steps += 1

        def final_eval(self):
            pass

    return GivenModelTrainer


def retrain(model: nn.Module, *, data: Path, images: int, batch: int, imgsz: int, seed: int, device: str,
            workdir: Path, name: str, overrides: dict | None = None, log=None) -> tuple[nn.Module, dict]:
    """Trains `model` with Ultralytics' trainer on `data` for `images` training images.

    Ultralytics' defaults throughout (optimizer "auto", nominal batch 64, warm-up,
    linear LR decay, EMA, its augmentation with mosaic closed for the last 10 epochs)
    except: batch, image size, seed, device, `epochs` = the epochs that `images` spans,
    amp=False (Ultralytics' AMP check loads yolo26n.pt, which an offline machine lacks,
    and effp trains in fp32), plots=False, val=False (the final epoch is still
    validated; effp eval scores the result). `overrides` replaces any of these.
    Returns the final EMA model (fp32, on the CPU) and a summary of the run.
    """
    n_train = _train_images(data)
    epochs = max(1, math.ceil(images / n_train))
    args = {
        "model": "yolov8n.yaml",  # only a name here: setup_model uses the given model
        "data": str(data),
        "epochs": epochs,
        "batch": batch,
        "imgsz": imgsz,
        "seed": seed,
        "device": ultralytics_device(device),
        "amp": False,
        "plots": False,
        "val": False,
        "project": str(workdir),
        "name": name,
        "exist_ok": True,
        "verbose": False,
    }
    args.update(overrides or {})
    Trainer = make_trainer_class()
    model.criterion = None  # the loss holds the model's old head; build it anew
    start = time.perf_counter()
    with _quiet(log):
        trainer = Trainer(model, images, args)
        trainer.train()
    seconds = time.perf_counter() - start
    out = copy.deepcopy(trainer.ema.ema).float().cpu()
    out.args = {k: v for k, v in vars(trainer.args).items()}
    out.criterion = None
    summary = {
        "images": trainer.images_seen,
        "epochs": epochs,
        "optimizer_steps": trainer.optimizer_steps,
        "optimizer": str(trainer.args.optimizer),
        "lr0": float(trainer.args.lr0),
        "accumulate": int(getattr(trainer, "accumulate", 0) or 0),
        "mosaic_epochs": max(0, epochs - int(trainer.args.close_mosaic)) if trainer.args.close_mosaic else epochs,
        "seconds": seconds,
    }
    return out, summary


def _train_images(data_yaml: Path) -> int:
    """Images in the dataset's train split (YOLO layout: the images next to labels/)."""
    import yaml

    cfg = yaml.safe_load(Path(data_yaml).read_text())
    root = Path(cfg.get("path") or Path(data_yaml).parent)
    train = root / cfg["train"]
    suffixes = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
    return sum(1 for p in train.rglob("*") if p.suffix.lower() in suffixes)


@contextlib.contextmanager
def _quiet(log):
    """Ultralytics prints progress on stdout and stderr; send it to `log` (a file) or discard it.

    Its LOGGER's handlers hold the streams they were created with, so they are pointed
    at the sink too, and restored afterwards.
    """
    import logging

    from ultralytics.utils import LOGGER

    sink = log if log is not None else io.StringIO()
    handlers = [h for h in LOGGER.handlers if isinstance(h, logging.StreamHandler)]
    streams = [h.setStream(sink) for h in handlers]
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        for h, stream in zip(handlers, streams):
            h.setStream(stream)
        sink.flush()


# --------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------


def export_onnx(checkpoint: Path, model: nn.Module, imgsz: int, out: Path, workdir: Path, log=None) -> Path:
    """Exports `model` with Ultralytics' ONNX exporter as the fixture was exported.

    Same settings as tests/fixtures/make_fixtures.py: static 1×3×imgsz×imgsz input,
    BatchNorm fused, onnxslim (simplify=True), Ultralytics' default opset. The
    `checkpoint` wrapper supplies the exporter's arguments; `model` replaces its network.
    """
    from ultralytics import YOLO

    wrapper = YOLO(str(checkpoint))
    model = copy.deepcopy(model).float().cpu()
    model.pt_path = str(workdir / f"{out.stem}.pt")  # the exporter writes next to this name
    wrapper.model = model
    with _quiet(log):
        produced = Path(wrapper.export(format="onnx", imgsz=imgsz, simplify=True, dynamic=False, verbose=False,
                                       device="cpu"))
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(produced), out)
    return out


# --------------------------------------------------------------------------------------
# The two rows
# --------------------------------------------------------------------------------------


def load_detector(checkpoint: Path) -> nn.Module:
    """The DetectionModel of an Ultralytics checkpoint, fp32, on the CPU, trainable."""
    from ultralytics import YOLO

    model = YOLO(str(checkpoint)).model.float().cpu()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def split_budget(total_batches: int, parts: int) -> list[int]:
    """`total_batches` split into `parts` nearly equal counts (earlier parts get the remainder)."""
    return [total_batches // parts + (1 if i < total_batches % parts else 0) for i in range(parts)]


def torch_pruning_row(checkpoint: Path, data_yaml: Path, *, target: float, steps: int, batch: int, imgsz: int,
                      seed: int, device: str, iterative_steps: int, ignore: str, out: Path, workdir: Path,
                      overrides: dict | None = None, log=None) -> dict:
    """Torch-Pruning to a FLOPs target with Ultralytics fine-tuning between steps; writes `out` (ONNX).

    As the example: C2f → C2f_v2 (function unchanged, checked here), then
    `iterative_steps` times: prune every layer by the same channel ratio (group L2
    magnitude, MetaPruner with global_pruning=False), fine-tune with Ultralytics.
    Step i aims at target^(i/n) of the original MACs (the geometric schedule the
    example uses for channels, here in MACs); the last step's goal is the target
    itself. The `steps × batch` training images are split over the fine-tuning runs,
    so the last run is the retraining of the final model.
    Returns the row's facts (the caller adds mAP, size and latency from the ONNX file).
    """
    from ultralytics.utils.torch_utils import initialize_weights

    start = time.perf_counter()
    model = load_detector(checkpoint)
    x = torch.rand(2, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        before = model(x)[0]
    replaced = replace_c2f(model)
    initialize_weights(model)  # as the example: BatchNorm eps 1e-3, momentum 0.03
    with torch.no_grad():
        after = model(x)[0]
    if not torch.allclose(before, after, rtol=1e-4, atol=1e-4):
        raise RuntimeError(f"C2f_v2 changed the model's outputs (max diff {(before - after).abs().max():.3g})")
    base_macs, base_params = count_macs(model, imgsz)
    budgets = split_budget(steps, iterative_steps)
    stages = []
    for i in range(iterative_steps):
        goal = base_macs * target ** ((i + 1) / iterative_steps)
        ratio, macs = search_ratio(model, goal, imgsz, ignore)
        prune_step(model, ratio, imgsz, ignore)
        macs, params = count_macs(model, imgsz)
        stage = {"ratio": ratio, "macs_ratio": macs / base_macs, "params": params}
        if budgets[i] > 0:
            model, summary = retrain(model, data=data_yaml, images=budgets[i] * batch, batch=batch, imgsz=imgsz,
                                     seed=seed, device=device, workdir=workdir, name=f"tp_stage{i}",
                                     overrides=overrides, log=log)
            for p in model.parameters():
                p.requires_grad_(True)
            stage.update(summary)
        stages.append(stage)
    final_macs, final_params = count_macs(model, imgsz)
    export_onnx(checkpoint, model, imgsz, out, workdir, log=log)
    return {
        "source": "torch-pruning",
        "tp_macs_ratio": final_macs / base_macs,
        "tp_params": final_params,
        "c2f_replaced": replaced,
        "stages": stages,
        "images": sum(s.get("images", 0) for s in stages),
        "optimizer_steps": sum(s.get("optimizer_steps", 0) for s in stages),
        "train_seconds": time.perf_counter() - start,
    }


def unpruned_row(checkpoint: Path, data_yaml: Path, *, steps: int, batch: int, imgsz: int, seed: int, device: str,
                 out: Path, workdir: Path, overrides: dict | None = None, log=None) -> dict:
    """The ceiling: the original checkpoint retrained by Ultralytics for `steps × batch` images; writes `out`.

    Same trainer and settings as the Torch-Pruning row's fine-tuning, in one run, with
    the network unchanged (its C2f blocks kept, so the export is like the fixture's).
    """
    start = time.perf_counter()
    model = load_detector(checkpoint)
    model, summary = retrain(model, data=data_yaml, images=steps * batch, batch=batch, imgsz=imgsz, seed=seed,
                             device=device, workdir=workdir, name="unpruned", overrides=overrides, log=log)
    export_onnx(checkpoint, model, imgsz, out, workdir, log=log)
    return {
        "source": "ultralytics",
        "stages": [summary],
        "images": summary["images"],
        "optimizer_steps": summary["optimizer_steps"],
        "train_seconds": time.perf_counter() - start,
    }
