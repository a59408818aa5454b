#!/usr/bin/env python3
"""pycocotools as the reference for effp's mAP.

Reads {"cases": [{"images": [...], "annotations": [...], "categories": [...],
"detections": [...]}, ...]} on stdin (COCO ground-truth and result layouts) and
answers, per case, AP@[.5:.95] and AP@.5 from COCOeval (bbox, default parameters).
"""

import contextlib
import io
import json
import sys

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def evaluate(case: dict) -> dict:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {k: case[k] for k in ("images", "annotations", "categories")}
        gt.createIndex()
        if not case["detections"]:
            return {"ap": 0.0, "ap50": 0.0, "empty": True}
        dt = gt.loadRes(case["detections"])
        e = COCOeval(gt, dt, "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return {"ap": max(float(e.stats[0]), 0.0), "ap50": max(float(e.stats[1]), 0.0), "empty": False}


def main() -> int:
    req = json.load(sys.stdin)
    json.dump([evaluate(c) for c in req["cases"]], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
