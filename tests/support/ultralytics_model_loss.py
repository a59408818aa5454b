#!/usr/bin/env python3
"""Ultralytics' own detection loss of a trained checkpoint on clean images.

Reads {"weights": "trained.pt", "images": ["a.png", ...]} on stdin: square images at
the model's input size, with YOLO label files beside them (images/ -> labels/,
.txt). Runs the model in eval mode (BatchNorm with its running statistics, as an
ONNX export computes) on all the images as one batch and answers what
`v8DetectionLoss` with the checkpoint's training gains makes of it:

    {"box": ..., "cls": ..., "dfl": ..., "per_image": loss.sum() / batch}
"""

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("YOLO_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from ultralytics import YOLO  # noqa: E402


def label_file(image: str) -> Path:
    p = Path(image)
    parts = list(p.parts)
    i = len(parts) - 1 - parts[::-1].index("images")
    parts[i] = "labels"
    return Path(*parts).with_suffix(".txt")


def main() -> int:
    request = json.load(sys.stdin)
    yolo = YOLO(request["weights"])
    model = yolo.model.float().eval()
    model.args = SimpleNamespace(**yolo.ckpt["train_args"])
    images, rows = [], []
    for i, path in enumerate(request["images"]):
        a = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
        images.append(torch.from_numpy(a).permute(2, 0, 1))
        for line in label_file(path).read_text().splitlines():
            if line.strip():
                rows.append([i] + [float(v) for v in line.split()[:5]])
    t = torch.tensor(rows, dtype=torch.float32).view(-1, 6)
    batch = {"img": torch.stack(images), "batch_idx": t[:, 0], "cls": t[:, 1:2], "bboxes": t[:, 2:6]}
    with torch.no_grad():
        loss, items = model.loss(batch)
    box, cls, dfl = (float(v) for v in (items.values() if isinstance(items, dict) else items))
    json.dump(
        {"box": box, "cls": cls, "dfl": dfl, "per_image": float(loss.sum()) / len(images)},
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
