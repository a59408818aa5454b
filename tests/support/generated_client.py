"""Drives effp's HTTP API through a client generated from its OpenAPI document.

Usage: generated_client.py CLIENT_DIR BASE_URL TOKEN MODEL.onnx DATASET.zip

CLIENT_DIR holds the package `effp_client` that openapi-python-client generated. The
script uploads the model and the dataset both as raw bodies and as multipart forms,
creates a job on them, follows it until it ends and downloads the pruned model, as an
MLOps platform integrating through a generated client would. It prints one JSON
object with what it saw; the Rust test asserts on it.
"""

import io
import json
import sys
import time
from pathlib import Path


def main() -> int:
    client_dir, base, token, model_path, dataset_path = sys.argv[1:6]
    sys.path.insert(0, client_dir)
    from effp_client import AuthenticatedClient
    from effp_client.api.datasets import upload_dataset
    from effp_client.api.jobs import create_job, download_artifact, get_job
    from effp_client.api.models import upload_model
    from effp_client.models import JobSpec, UploadForm
    from effp_client.types import File

    client = AuthenticatedClient(base_url=base, token=token, raise_on_unexpected_status=True)
    model = Path(model_path).read_bytes()
    dataset = Path(dataset_path).read_bytes()
    seen: dict = {}

    raw = upload_model.sync_detailed(client=client, body=File(payload=io.BytesIO(model)), name="raw.onnx")
    form = upload_model.sync_detailed(
        client=client, body=UploadForm(file=File(payload=io.BytesIO(model), file_name="form.onnx")))
    seen["model"] = {"raw": [raw.status_code.value, raw.parsed.id], "multipart": [form.status_code.value, form.parsed.id]}

    raw = upload_dataset.sync_detailed(client=client, body=File(payload=io.BytesIO(dataset)), name="set.zip")
    form = upload_dataset.sync_detailed(
        client=client, body=UploadForm(file=File(payload=io.BytesIO(dataset), file_name="form.zip")))
    seen["dataset"] = {"raw": [raw.status_code.value, raw.parsed.id],
                       "multipart": [form.status_code.value, form.parsed.id],
                       "train_images": raw.parsed.summary.to_dict()["splits"]["train"]["images"]}

    spec = JobSpec.from_dict({
        "model": seen["model"]["raw"][1], "dataset": seen["dataset"]["raw"][1], "method": "l1",
        "target": {"flops_ratio": 0.5}, "training": {"steps": 4, "batch": 4}, "device": "cpu",
    })
    job = create_job.sync(client=client, body=spec)
    deadline = time.monotonic() + 600
    while job.state in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.5)
        job = get_job.sync(id=job.id, client=client)
    seen["job"] = {"id": job.id, "state": job.state}
    pruned = download_artifact.sync(id=job.id, name="pruned.onnx", client=client)
    data = pruned.payload.read()
    out = Path(client_dir) / "pruned.onnx"
    out.write_bytes(data)
    seen["artifact"] = {"type": type(pruned).__name__, "bytes": len(data), "path": str(out)}
    print(json.dumps(seen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
