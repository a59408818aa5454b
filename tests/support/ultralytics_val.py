#!/usr/bin/env python3
"""Ultralytics' own `val` as the reference for `effp eval`.

  ultralytics_val.py MODEL DATA_YAML IMGSZ [BATCH] [THREADS]

Prints {"map50_95", "map50", "seconds"} as JSON on its last line (Ultralytics logs
to the same stream before it).
"""

import contextlib
import io
import json
import os
import sys
import time


def main() -> int:
    model, data, imgsz = sys.argv[1], sys.argv[2], int(sys.argv[3])
    batch = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    threads = int(sys.argv[5]) if len(sys.argv) > 5 else 2
    os.environ.setdefault("YOLO_OFFLINE", "1")
    import torch
    from ultralytics import YOLO

    torch.set_num_threads(threads)
    with contextlib.redirect_stdout(io.StringIO()):
        yolo = YOLO(model, task="detect")
        start = time.perf_counter()
        metrics = yolo.val(data=data, imgsz=imgsz, batch=batch, conf=0.001, iou=0.7, plots=False,
                           device="cpu", workers=0, verbose=False, save_json=False)
        seconds = time.perf_counter() - start
    print()
    json.dump({"map50_95": float(metrics.box.map), "map50": float(metrics.box.map50), "seconds": seconds}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
