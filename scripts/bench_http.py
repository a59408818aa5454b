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

With --distributed (needs --effp-api-only), the distributed deployment on this
machine: a real redis-server and s3s-fs, an API replica (the API-only build with
`--no-worker`) and an `effp worker` (full build), each in its own data directory.
For it and for the embedded full build it also measures:

3. Submit-to-claim latency: one-shot jobs submitted one at a time to an idle worker;
   the time from the submission's answer to the first poll (every 2 ms) that sees
   the job no longer queued.
4. Submissions: 1000 valid `POST /v1/jobs` with oha at the same concurrency, to a
   deployment whose workers are stopped (so that the queue only grows).

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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, name: str) -> None:
    import socket

    for _ in range(400):
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.025)
    raise SystemExit(f"{name} did not open port {port}")


class Backing:
    """A redis-server and an s3s-fs on free loopback ports, in `root`."""

    def __init__(self, root: Path, s3s_fs: str):
        (root / "redis").mkdir(parents=True)
        (root / "s3" / "effp").mkdir(parents=True)
        self.redis_port, self.s3_port = free_port(), free_port()
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", str(root / "redis"),
             "--appendonly", "yes", "--save", "", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL,
        )
        wait_port(self.redis_port, self.redis, "redis-server")
        self.s3 = subprocess.Popen(
            [s3s_fs, "--host", "127.0.0.1", "--port", str(self.s3_port), "--access-key", "bench", "--secret-key",
             "bench-secret", str(root / "s3")],
            stdout=subprocess.DEVNULL,
            stderr=open(root / "s3s-fs.log", "w"),
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        wait_port(self.s3_port, self.s3, "s3s-fs")

    def env(self) -> dict:
        return {
            "EFFP_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}",
            "EFFP_S3_BUCKET": "effp",
            "EFFP_S3_ENDPOINT": f"http://127.0.0.1:{self.s3_port}",
            "EFFP_S3_REGION": "us-east-1",
            "EFFP_S3_PATH_STYLE": "true",
            "EFFP_S3_ACCESS_KEY_ID": "bench",
            "EFFP_S3_SECRET_ACCESS_KEY": "bench-secret",
        }

    def stop(self):
        for p in (self.s3, self.redis):
            p.terminate()
            p.wait(timeout=30)


class Worker:
    """A release `effp worker` in its own data directory."""

    def __init__(self, effp: str, data: Path, env: dict):
        self.proc = subprocess.Popen(
            [effp, "worker", "--data-dir", str(data)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "EFFP_LOG": "error", **env},
        )
        assert self.proc.stdout.readline().startswith("effp worker running")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


class Server:
    """A release `effp serve` on a free loopback port with its own data directory."""

    def __init__(self, effp: str, data: Path, extra: list[str] | None = None, env: dict | None = None):
        self.proc = subprocess.Popen(
            [effp, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data), *(extra or [])],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "EFFP_API_KEYS": "", "EFFP_LOG": "error", "EFFP_MAX_QUEUED_JOBS": "100000",
                 **(env or {})},
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


def oha(tool: str, url: str, seconds: int, concurrency: int, extra: list[str], count: int | None = None) -> dict:
    amount = ["-n", str(count)] if count else ["-z", f"{seconds}s"]
    out = subprocess.run(
        [tool, "--no-tui", "--output-format", "json", *amount, "-c", str(concurrency), *extra, url],
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


def submit(server: Server, model_id: str) -> str:
    spec = json.dumps({"model": model_id, "target": {"flops_ratio": 0.5}, "device": "cpu"})
    status, job = server.request("POST", "/v1/jobs", body=spec, headers={"Content-Type": "application/json"})
    assert status == 201, job
    return json.loads(job)["id"]


def state(server: Server, job_id: str) -> str:
    return json.loads(server.request("GET", f"/v1/jobs/{job_id}")[1])["state"]


def claim_latency(server: Server, model_id: str, samples: int) -> dict:
    """Milliseconds from a submission's answer until an idle worker has claimed it."""
    times = []
    for _ in range(samples):
        job_id = submit(server, model_id)
        start = time.perf_counter()
        while state(server, job_id) == "queued":
            time.sleep(0.002)
        times.append((time.perf_counter() - start) * 1000)
        while state(server, job_id) not in ("succeeded", "failed", "cancelled"):
            time.sleep(0.05)
    times.sort()
    return {
        "samples": samples,
        "p50_ms": times[len(times) // 2],
        "p90_ms": times[int(len(times) * 0.9) - 1],
        "max_ms": times[-1],
    }


def submissions(args, server: Server, model_id: str) -> dict:
    """1000 valid submissions with oha (no worker runs them)."""
    spec = json.dumps({"model": model_id, "target": {"flops_ratio": 0.5}, "device": "cpu"})
    return oha(
        args.oha,
        f"{server.url}/v1/jobs",
        args.seconds,
        args.concurrency,
        ["-m", "POST", "-H", "Content-Type: application/json", "-d", spec],
        count=1000,
    )


def upload_model(server: Server, fixtures: Path) -> str:
    status, model = server.request("POST", "/v1/models", body=(fixtures / "yolov8t.onnx").read_bytes())
    assert status == 201, model
    return json.loads(model)["id"]


def distributed(args, tmp: Path) -> dict:
    """The distributed deployment: Redis, S3, an API-only replica and a worker."""
    backing = Backing(tmp / "backing", args.s3s_fs)
    server = worker = None
    try:
        server = Server(args.effp_api_only, tmp / "api", ["--no-worker"], backing.env())
        worker = Worker(args.effp, tmp / "worker", backing.env())
        model_id = upload_model(server, args.fixtures)
        latency = claim_latency(server, model_id, args.claim_samples)
        job_id = submit(server, model_id)
        while state(server, job_id) not in ("succeeded", "failed"):
            time.sleep(0.1)
        worker.stop()
        worker = None
        figures = measure(server, args, tmp, model_id, job_id)
        figures["claim_latency"] = latency
        figures["submissions"] = submissions(args, server, model_id)
        return figures
    finally:
        for p in (worker, server):
            if p:
                p.stop()
        backing.stop()


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
    parser.add_argument("--distributed", action="store_true", help="also measure the distributed deployment "
                        "(redis-server, s3s-fs, the API-only build as a replica, a worker)")
    parser.add_argument("--s3s-fs", default=str(Path(os.environ.get("EFFP_CACHE", Path.home() / ".cache/effp"))
                                                / "tools/bin/s3s-fs"))
    parser.add_argument("--claim-samples", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    builds = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        server = Server(args.effp, tmp / "data")
        try:
            model_id = upload_model(server, args.fixtures)
            latency = claim_latency(server, model_id, args.claim_samples) if args.distributed else None
            job_id = submit(server, model_id)
            while state(server, job_id) not in ("succeeded", "failed"):
                time.sleep(0.2)
            builds["full"] = measure(server, args, tmp, model_id, job_id)
            if latency:
                builds["full"]["claim_latency"] = latency
        finally:
            server.stop()
        if args.effp_api_only:
            # The same data directory, now served by the build without the engine.
            server = Server(args.effp_api_only, tmp / "data", ["--no-worker"])
            try:
                builds["api-only"] = measure(server, args, tmp, model_id, job_id)
                if args.distributed:
                    # Embedded, no worker: the queue only grows, as in the distributed row.
                    builds["api-only"]["submissions"] = submissions(args, server, model_id)
            finally:
                server.stop()
        if args.distributed:
            builds["distributed"] = distributed(args, tmp)

    print(f"effp serve, release builds, {os.cpu_count()} cores ({cpu_name()}); oha -c {args.concurrency} for {args.seconds} s")
    print(f"{'build':<12} {'endpoint':<24} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}  status codes")
    for build, b in builds.items():
        for name, r in b["endpoints"].items():
            print(f"{build:<12} {name:<24} {r['requests_per_second']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}  {r['status_codes']}")
    print(f"\n{'build':<12} {'upload':<34} {'MB':>6} {'status':>6} {'MB/s':>7} {'peak RSS above idle':>20} {'idle RSS':>9}")
    for build, b in builds.items():
        for name, u in b["uploads"].items():
            print(
                f"{build:<12} {name:<34} {u['bytes'] / 1e6:>6.0f} {u['status']:>6} {u['mb_per_second']:>7.1f} "
                f"{u['peak_rss_above_idle_mb']:>17.1f} MB {b['idle_rss_mb']:>6.1f} MB"
            )
    if args.distributed:
        print(f"\n{'build':<12} {'submit to claim p50 / p90 / max ms':>36} {'1000 submissions req/s':>24} {'p99 ms':>8}")
        for build, b in builds.items():
            lat = b.get("claim_latency")
            sub = b.get("submissions")
            lat_s = f"{lat['p50_ms']:.1f} / {lat['p90_ms']:.1f} / {lat['max_ms']:.1f}" if lat else "-"
            sub_s = f"{sub['requests_per_second']:.0f}" if sub else "-"
            p99 = f"{sub['p99_ms']:.2f}" if sub else "-"
            print(f"{build:<12} {lat_s:>36} {sub_s:>24} {p99:>8}")
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
