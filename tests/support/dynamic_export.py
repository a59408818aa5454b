#!/usr/bin/env python3
"""Exports the tiny YOLOv8 test model with free input sizes, as users deploy it.

The model is the `yolov8t` fixture of tests/fixtures/make_fixtures.py (same YAML,
width, seed and weights), exported twice by Ultralytics' own exporter: with
`dynamic=True` (input `[batch, 3, height, width]`, a shape subgraph in the head)
and with `dynamic=False` at 128x128, so that tests can compare the two.

Outputs go to CACHE/dynamic/<hash of this script and make_fixtures.py>/ and are
reused while both scripts are unchanged. The folder is printed on the last line
of standard output.

  dynamic_export.py --cache DIR
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "fixtures" / "make_fixtures.py"
FILES = {"yolov8t_dynamic.onnx": True, "yolov8t_static.onnx": False}


def content_hash() -> str:
    h = hashlib.sha256()
    for p in (Path(__file__), FIXTURES):
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True, type=Path, help="cache root (exports go below it)")
    args = parser.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(args.cache / "ultralytics-config"))
    final = args.cache / "dynamic" / content_hash()
    if not all((final / f).is_file() for f in FILES):
        spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES)
        fixtures = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fixtures)
        name, yaml_name, scale, nc, imgsz = next(t for t in fixtures.TINY if t[0] == "yolov8t")
        final.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=final) as tmp:
            cwd = os.getcwd()
            os.chdir(tmp)  # the exporter writes next to the YAML name
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    model = fixtures.build(yaml_name, scale, nc)
                    fixtures.liven(model)
                    for file, dynamic in FILES.items():
                        produced = model.export(format="onnx", imgsz=imgsz, simplify=True, dynamic=dynamic, verbose=False)
                        staged = Path(tmp) / f"{file}.part"
                        shutil.move(str(produced), staged)
                        staged.replace(final / file)
            finally:
                os.chdir(cwd)
    print(final)
    return 0


if __name__ == "__main__":
    sys.exit(main())
