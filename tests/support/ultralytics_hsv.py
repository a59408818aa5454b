#!/usr/bin/env python3
"""Ultralytics' own HSV colour jitter (`RandomHSV`) as the reference for effp's.

Reads {"pixels": [[r, g, b], ...], "cases": [[uh, us, uv], ...], "gains": [h, s, v]}
on stdin: for each case, the random draws in [-1, 1] that `RandomHSV` would take from
`np.random.uniform(-1, 1, 3)`. Answers {"pixels": [[[r, g, b], ...], ...]}: the
jittered pixels per case, as Ultralytics' training loader would see them (BGR inside).
"""

import json
import os
import sys

os.environ.setdefault("YOLO_OFFLINE", "1")

import numpy as np  # noqa: E402
from ultralytics.data.augment import RandomHSV  # noqa: E402


def main() -> None:
    request = json.load(sys.stdin)
    rgb = np.array(request["pixels"], dtype=np.uint8).reshape(1, -1, 3)
    hgain, sgain, vgain = request["gains"]
    out = []
    for draws in request["cases"]:
        np.random.uniform = lambda low, high, size, d=draws: np.array(d, dtype=np.float64)
        labels = {"img": np.ascontiguousarray(rgb[..., ::-1])}
        RandomHSV(hgain=hgain, sgain=sgain, vgain=vgain)(labels)
        out.append(labels["img"][..., ::-1].reshape(-1, 3).tolist())
    json.dump({"pixels": out}, sys.stdout)


if __name__ == "__main__":
    main()
