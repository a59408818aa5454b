#!/usr/bin/env python3
"""What the service's defences cost and whether they hold (release binary).

1. The API process's memory before and after 300 small jobs (l1 on the tiny YOLOv8
   fixture, each run in its own worker process), and once idle again.
2. The cost of a job's own process: start-up of `effp run-job` (exec, loading
   libtorch, exit) measured alone, and the mean wall time per job of the 300.
3. `/healthz` latency (oha) alone, then while 2,000 idle connections and 50 slow
   clients (a header byte a second) are held open against the server.

Prints a table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench_http import Server, cpu_name, oha, rss


def settle(pid: int) -> int:
    time.sleep(2)
    return rss(pid)


def jobs_memory(effp: str, fixtures: Path, tmp: Path, count: int) -> dict:
    server = Server(effp, tmp / "jobs", [])
    try:
        status, model = server.request("POST", "/v1/models", body=(fixtures / "yolov8t.onnx").read_bytes())
        assert status == 201, model
        model_id = json.loads(model)["id"]
        spec = json.dumps({"model": model_id, "target": {"flops_ratio": 0.5}, "device": "cpu"})
        # One job first, so that the idle figure includes what every job touches once.
        def run_batch(n: int) -> list[str]:
            ids = []
            for _ in range(n):
                status, job = server.request("POST", "/v1/jobs", body=spec, headers={"Content-Type": "application/json"})
                assert status == 201, job
                ids.append(json.loads(job)["id"])
            return ids

        def wait(ids: list[str]) -> None:
            for job_id in ids:
                while True:
                    state = json.loads(server.request("GET", f"/v1/jobs/{job_id}")[1])["state"]
                    if state in ("succeeded", "failed", "cancelled"):
                        assert state == "succeeded", state
                        break
                    time.sleep(0.05)

        wait(run_batch(1))
        before = settle(server.proc.pid)
        started = time.perf_counter()
        peak = before
        remaining = count
        while remaining:
            n = min(remaining, 15)  # within the tenant's queued-job quota
            wait(run_batch(n))
            remaining -= n
            peak = max(peak, rss(server.proc.pid))
        elapsed = time.perf_counter() - started
        after = settle(server.proc.pid)
        return {
            "jobs": count,
            "api_rss_before_mb": before / 1e6,
            "api_rss_peak_mb": peak / 1e6,
            "api_rss_after_mb": after / 1e6,
            "seconds": elapsed,
            "seconds_per_job": elapsed / count,
        }
    finally:
        server.stop()


def process_startup(effp: str, runs: int = 20) -> dict:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([effp, "run-job", "/nonexistent/job.json"], capture_output=True)
        times.append(time.perf_counter() - t)
    return {"runs": runs, "mean_ms": statistics.mean(times) * 1000, "median_ms": statistics.median(times) * 1000}


def hold_connections(host: str, port: int, idle: int, slow: int, stop: threading.Event) -> dict:
    sockets = []
    refused = 0
    for _ in range(idle):
        try:
            sockets.append(socket.create_connection((host, port), timeout=5))
        except OSError:
            refused += 1
    slow_sockets = [socket.create_connection((host, port), timeout=5) for _ in range(slow)]
    for s in slow_sockets:
        s.sendall(b"GET /healthz HTTP/1.1\r\n")

    def drip():
        while not stop.is_set():
            for s in slow_sockets:
                try:
                    s.sendall(b"X")
                except OSError:
                    pass
            time.sleep(1)

    threading.Thread(target=drip, daemon=True).start()
    return {"sockets": sockets + slow_sockets, "refused_at_connect": refused}


def connections(effp: str, oha_tool: str, tmp: Path, seconds: int) -> dict:
    rows = {}
    for label, extra in [
        ("cap 4096", ["--max-connections", "4096", "--header-read-timeout-secs", "60"]),
        ("defaults (cap 1024, 10 s head timeout)", []),
    ]:
        server = Server(effp, tmp / f"conn-{len(rows)}", extra)
        try:
            alone = oha(oha_tool, f"{server.url}/healthz", seconds, 4, [])
            stop = threading.Event()
            held = hold_connections(server.host, server.port, 2000, 50, stop)
            time.sleep(1)
            loaded = oha(oha_tool, f"{server.url}/healthz", seconds, 4, [])
            stop.set()
            for s in held["sockets"]:
                s.close()
            rows[label] = {
                "alone": alone,
                "with_2000_idle_50_slow": loaded,
                "api_rss_mb": rss(server.proc.pid) / 1e6,
            }
        finally:
            server.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--effp", required=True)
    parser.add_argument("--oha", required=True)
    parser.add_argument("--fixtures", required=True, type=Path)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        startup = process_startup(args.effp)
        memory = jobs_memory(args.effp, args.fixtures, tmp, args.jobs)
        conns = connections(args.effp, args.oha, tmp, args.seconds)

    print(f"effp serve, release build, {os.cpu_count()} cores ({cpu_name()})")
    print(f"\nworker process start-up (effp run-job, exec to exit): {startup['mean_ms']:.0f} ms mean, {startup['median_ms']:.0f} ms median")
    print(
        f"{memory['jobs']} l1 jobs (yolov8t) in {memory['seconds']:.1f} s ({memory['seconds_per_job'] * 1000:.0f} ms per job); "
        f"API RSS {memory['api_rss_before_mb']:.1f} MB before, {memory['api_rss_peak_mb']:.1f} MB peak, "
        f"{memory['api_rss_after_mb']:.1f} MB after"
    )
    print(f"\n{'/healthz (oha -c 4)':<42} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}  status codes")
    for label, r in conns.items():
        for case in ("alone", "with_2000_idle_50_slow"):
            m = r[case]
            print(f"{label + ', ' + case:<42} {m['requests_per_second']:>8.0f} {m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f}  {m['status_codes']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"machine": {"cpus": os.cpu_count(), "cpu": cpu_name()}, "startup": startup, "jobs": memory, "connections": conns},
            indent=2,
        )
    )
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
