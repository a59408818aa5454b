#!/usr/bin/env python3
"""pycocotools as the reference for effp's mAP.

Reads {"cases": [{"images": [...], "annotations": [...], "categories": [...],
"detections": [...]}, ...]} on stdin (COCO ground-truth and result layouts) and
answers, per case, AP@[.5:.95] and AP@.5 from COCOeval (bbox, default parameters).
A case with "uncapped": true is also scored with no limit on detections per image
("ap_uncapped", "ap50_uncapped"), to show whether COCO's maxDets=100 changed it.
"""

import contextlib
import io
import json
import sys

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def score(case: dict, max_dets: int | None) -> tuple[float, float]:
    """COCOeval's AP@[.5:.95] and AP@.5 (-1, "no objects", as 0)."""
    gt = COCO()
    gt.dataset = {k: case[k] for k in ("images", "annotations", "categories")}
    gt.createIndex()
    dt = gt.loadRes(case["detections"])
    e = COCOeval(gt, dt, "bbox")
    if max_dets is not None:
        e.params.maxDets = [1, 10, max_dets]
    e.evaluate()
    e.accumulate()
    if max_dets is None:
        e.summarize()
        return max(float(e.stats[0]), 0.0), max(float(e.stats[1]), 0.0)
    # summarize() reads stats[0] at maxDets=100 whatever the parameters say: read
    # the precision table (T, R, K, A, M) at area "all" and the last maxDets instead.
    p = e.eval["precision"][:, :, :, 0, -1]

    def mean(s):
        return float(s[s > -1].mean()) if (s > -1).any() else 0.0

    return mean(p), mean(p[0])


def evaluate(case: dict) -> dict:
    if not case["detections"]:
        return {"ap": 0.0, "ap50": 0.0, "empty": True}
    with contextlib.redirect_stdout(io.StringIO()):
        ap, ap50 = score(case, None)
        answer = {"ap": ap, "ap50": ap50, "empty": False}
        if case.get("uncapped"):
            ap, ap50 = score(case, 10**9)
            answer.update(ap_uncapped=ap, ap50_uncapped=ap50)
    return answer


def main() -> int:
    req = json.load(sys.stdin)
    json.dump([evaluate(c) for c in req["cases"]], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
