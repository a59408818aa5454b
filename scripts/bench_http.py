#!/usr/bin/env python3
"""Benchmarks `effp serve` on the embedded default (release binaries, one process).

1. Throughput and latency percentiles, measured with oha at a fixed concurrency, of
   `GET /v1/jobs/{id}` (a finished l1 job) and of `POST /v1/jobs` with a request that
   fails validation (422).
2. Large uploads: a ~500 MB dataset archive (the synthetic set plus a padding file,
   so the server streams, hashes, unpacks and checks all of it) and a 500 MB body
   that is not an ONNX model. The server's resident memory is sampled every 10 ms
   from /proc while the request runs; the figure is its peak above the idle level.

With --effp-api-only, the same figures for the build without the engine, serving the
same data with `--no-worker` (the API replicas' build).

Prints a table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import subprocess
import tarfile
import tempfile
import threading
import time
from pathlib import Path


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Server:
    """A release `effp serve` on a free loopback port with its own data directory."""

    def __init__(self, effp: str, data: Path, extra: list[str] | None = None):
        self.proc = subprocess.Popen(
            [effp, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data), *(extra or [])],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "EFFP_API_KEYS": "", "EFFP_LOG": "error"},
        )
        line = self.proc.stdout.readline()
        self.url = next(w for w in line.split() if w.startswith("http://"))
        self.host, port = self.url.removeprefix("http://").split(":")
        self.port = int(port)

    def request(self, method: str, path: str, body=None, headers=None, length=None):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=600)
        headers = dict(headers or {})
        if length is not None:
            headers["Content-Length"] = str(length)
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response.status, data

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def oha(tool: str, url: str, seconds: int, concurrency: int, extra: list[str]) -> dict:
    out = subprocess.run(
        [tool, "--no-tui", "--output-format", "json", "-z", f"{seconds}s", "-c", str(concurrency), *extra, url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    report = json.loads(out)
    summary = report["summary"]
    pct = report["latencyPercentiles"]
    return {
        "requests_per_second": summary["requestsPerSec"],
        "p50_ms": pct["p50"] * 1000,
        "p99_ms": pct["p99"] * 1000,
        "status_codes": report["statusCodeDistribution"],
        "success_rate": summary["successRate"],
    }


def padded_dataset(synth: Path, size: int, out: Path) -> None:
    """An uncompressed tar of the synthetic set plus a random padding file up to `size`."""
    files = [f for f in synth.rglob("*") if f.is_file()]
    # Each member takes its size rounded up to 512 bytes plus a 512-byte header.
    used = sum((f.stat().st_size + 1023) // 512 * 512 for f in files)
    with tarfile.open(out, "w") as tar:
        tar.add(synth, arcname="synth")
        info = tarfile.TarInfo("synth/extra/padding.bin")
        info.size = max(size - used - (64 << 10), 1 << 20)
        tar.addfile(info, io.BufferedReader(RandomReader(info.size)))


class RandomReader(io.RawIOBase):
    """`n` pseudo-random bytes, made as they are read (incompressible padding)."""

    def __init__(self, n: int):
        self.left = n
        self.block = os.urandom(1 << 20)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self.left, len(self.block))
        b[:n] = self.block[:n]
        self.left -= n
        return n


def upload(server: Server, path: str, file: Path) -> dict:
    """Streams `file` as the raw body while sampling the server's memory."""
    idle = rss(server.proc.pid)
    peak = idle
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss(server.proc.pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    size = file.stat().st_size
    start = time.perf_counter()
    with open(file, "rb") as body:
        status, reply = server.request("POST", path, body=body, length=size)
    elapsed = time.perf_counter() - start
    done.set()
    sampler.join()
    return {
        "bytes": size,
        "status": status,
        "seconds": elapsed,
        "mb_per_second": size / elapsed / 1e6,
        "idle_rss_mb": idle / 1e6,
        "peak_rss_above_idle_mb": (peak - idle) / 1e6,
        "answer": json.loads(reply).get("type", json.loads(reply).get("id")),
    }


def measure(server: Server, args, tmp: Path, model_id: str, job_id: str) -> dict:
    """Endpoint throughput and the two large uploads against one running server."""
    idle = rss(server.proc.pid)
    rows = {}
    rows["GET /v1/jobs/{id}"] = oha(args.oha, f"{server.url}/v1/jobs/{job_id}", args.seconds, args.concurrency, [])
    invalid = json.dumps({"model": model_id, "target": {"flops_ratio": 1.5}})
    rows["POST /v1/jobs (422)"] = oha(
        args.oha,
        f"{server.url}/v1/jobs",
        args.seconds,
        args.concurrency,
        ["-m", "POST", "-H", "Content-Type: application/json", "-d", invalid],
    )
    size = args.upload_mb * 1_000_000
    # New random padding per server: the same bytes twice would be found stored.
    archive = tmp / "dataset.tar"
    padded_dataset(args.fixtures / "synth", size, archive)
    garbage = tmp / "garbage.bin"
    with open(garbage, "wb") as f:
        reader = RandomReader(size)
        while chunk := reader.read(1 << 20):
            f.write(chunk)
    uploads = {
        "POST /v1/datasets (valid archive)": upload(server, "/v1/datasets", archive),
        "POST /v1/models (not ONNX, 422)": upload(server, "/v1/models", garbage),
    }
    archive.unlink()
    garbage.unlink()
    return {"idle_rss_mb": idle / 1e6, "endpoints": rows, "uploads": uploads}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--effp", required=True)
    parser.add_argument("--effp-api-only", help="also measure this build without the engine "
                        "(effp serve --no-worker on the same data)")
    parser.add_argument("--oha", required=True)
    parser.add_argument("--fixtures", required=True, type=Path)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--upload-mb", type=int, default=500)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    builds = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        server = Server(args.effp, tmp / "data")
        try:
            status, model = server.request(
                "POST", "/v1/models", body=(args.fixtures / "yolov8t.onnx").read_bytes()
            )
            assert status == 201, model
            model_id = json.loads(model)["id"]
            spec = json.dumps({"model": model_id, "target": {"flops_ratio": 0.5}, "device": "cpu"})
            status, job = server.request("POST", "/v1/jobs", body=spec, headers={"Content-Type": "application/json"})
            job_id = json.loads(job)["id"]
            while json.loads(server.request("GET", f"/v1/jobs/{job_id}")[1])["state"] not in ("succeeded", "failed"):
                time.sleep(0.2)
            builds["full"] = measure(server, args, tmp, model_id, job_id)
        finally:
            server.stop()
        if args.effp_api_only:
            # The same data directory, now served by the build without the engine.
            server = Server(args.effp_api_only, tmp / "data", ["--no-worker"])
            try:
                builds["api-only"] = measure(server, args, tmp, model_id, job_id)
            finally:
                server.stop()

    print(f"effp serve, release builds, {os.cpu_count()} cores ({cpu_name()}); oha -c {args.concurrency} for {args.seconds} s")
    print(f"{'build':<9} {'endpoint':<24} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}  status codes")
    for build, b in builds.items():
        for name, r in b["endpoints"].items():
            print(f"{build:<9} {name:<24} {r['requests_per_second']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}  {r['status_codes']}")
    print(f"\n{'build':<9} {'upload':<34} {'MB':>6} {'status':>6} {'MB/s':>7} {'peak RSS above idle':>20} {'idle RSS':>9}")
    for build, b in builds.items():
        for name, u in b["uploads"].items():
            print(
                f"{build:<9} {name:<34} {u['bytes'] / 1e6:>6.0f} {u['status']:>6} {u['mb_per_second']:>7.1f} "
                f"{u['peak_rss_above_idle_mb']:>17.1f} MB {b['idle_rss_mb']:>6.1f} MB"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "cpu": cpu_name()},
                "concurrency": args.concurrency,
                "seconds": args.seconds,
                "builds": builds,
            },
            indent=2,
        )
    )
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
