#!/usr/bin/env python3
"""Ultralytics' own YOLOv8 detection loss (v8DetectionLoss) as the reference for effp's.

Reads {"cases": [...]} on stdin, each case

    {"nc": 3, "reg_max": 16, "strides": [8, 16, 32],
     "gains": {"box": 7.5, "cls": 0.5, "dfl": 1.5},
     "levels": [{"shape": [B, 4*reg_max + nc, H, W], "data": [...]}, ...],
     "targets": [[image, class, cx, cy, w, h], ...]}

(levels as the training forward concatenates them, box channels first; boxes
normalised xywh), and answers, per case, what Ultralytics' trainer sees:

    {"total": loss.sum(), "box": ..., "cls": ..., "dfl": ..., "assigned": ...,
     "grads": [[...], ...]}

with the number of anchors the assigner made foreground with a positive target
score and the gradient of the total with respect to each level's predictions.
"""

import json
import os
import sys
from types import SimpleNamespace

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch  # noqa: E402
from ultralytics.utils.loss import v8DetectionLoss  # noqa: E402


class Head(torch.nn.Module):
    """What v8DetectionLoss reads from the Detect module."""

    def __init__(self, nc: int, reg_max: int, strides: list):
        super().__init__()
        self.nc = nc
        self.reg_max = reg_max
        self.no = nc + 4 * reg_max
        self.stride = torch.tensor(strides, dtype=torch.float32)


class StandIn(torch.nn.Module):
    """What v8DetectionLoss reads from the model: a parameter (for the device), the
    hyperparameters and the head as the last module."""

    def __init__(self, case: dict):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.args = SimpleNamespace(**case["gains"])
        self.model = torch.nn.ModuleList([Head(case["nc"], case["reg_max"], case["strides"])])


def run(case: dict) -> dict:
    nc, reg_max = case["nc"], case["reg_max"]
    criterion = v8DetectionLoss(StandIn(case))
    assigner, seen = criterion.assigner, {}

    def recording(*args, **kwargs):
        out = assigner(*args, **kwargs)  # (labels, boxes, scores, fg_mask, gt_idx)
        # Foreground anchors that carry weight (zero-alignment ones are tie picks).
        seen["assigned"] = int((out[3] & (out[2].sum(-1) > 0)).sum())
        return out

    criterion.assigner = recording
    feats = [
        torch.tensor(level["data"], dtype=torch.float32).view(level["shape"]).requires_grad_(True)
        for level in case["levels"]
    ]
    b = feats[0].shape[0]
    if hasattr(criterion, "parse_output"):
        # Ultralytics >= 8.4 passes the two branches flattened over the levels; the
        # level maps themselves serve only for their sizes.
        preds = {
            "boxes": torch.cat([f[:, : 4 * reg_max].reshape(b, 4 * reg_max, -1) for f in feats], -1),
            "scores": torch.cat([f[:, 4 * reg_max :].reshape(b, nc, -1) for f in feats], -1),
            "feats": feats,
        }
    else:
        preds = feats
    targets = torch.tensor(case["targets"], dtype=torch.float32).view(-1, 6)
    batch = {"batch_idx": targets[:, 0], "cls": targets[:, 1:2], "bboxes": targets[:, 2:6]}
    loss, items = criterion(preds, batch)
    total = loss.sum()
    total.backward()
    # A tensor (box, cls, dfl) in older releases, a dict keyed by the loss names since.
    box, cls, dfl = (float(v) for v in (items.values() if isinstance(items, dict) else items))
    return {
        "total": float(total.detach()),
        "box": box,
        "cls": cls,
        "dfl": dfl,
        "assigned": seen["assigned"],
        "grads": [f.grad.reshape(-1).tolist() for f in feats],
    }


def main() -> int:
    request = json.load(sys.stdin)
    json.dump([run(c) for c in request["cases"]], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
