#!/usr/bin/env bash
# The worker image's check on a GPU host, in one run. A lent GPU machine has no
# container engine and no cargo, so it checks what the image is made of instead of the
# image: the release `effp` with its rpath set to the worker image's libtorch folder,
# torch's and NVIDIA's shared libraries copied to that folder from the host's
# torch==2.11.0 wheel (as docker/worker.Dockerfile copies them), run as the image's
# non-root user with no LD_LIBRARY_PATH pointing at torch, inside docker/compose.yaml's
# stack started by scripts/run-distributed.sh (Redis, s3s-fs, two API replicas behind
# nginx, the worker, a CPU agent).
#
# Usage, from the repository root:
#   scripts/gpu_deploy_check.sh prepare      # here: binaries, servers and fixtures to .device-deploy/
#   (the device tool's run, with carry [".device-deploy"]:)
#   scripts/gpu_deploy_check.sh run OUT_DIR  # there, as root: the checks; OUT_DIR/deploy-gpu.json and logs
set -euo pipefail
dev=.device-deploy
# Where docker/worker.Dockerfile puts libtorch, and so what the worker binary's rpath names.
image_site=/opt/venv/lib/python3.11/site-packages
case "${1:-}" in
prepare)
  fixtures=$(ls -d "${EFFP_CACHE:-$HOME/.cache/effp}"/fixtures/*/ | head -n1)
  rm -rf "$dev" && mkdir -p "$dev/bin" "$dev/libexec" "$dev/lib"
  # The same binary a build with LIBTORCH=$image_site/torch would give: only the rpath differs.
  cp target/release/effp "$dev/effp" && strip "$dev/effp"
  patchelf --set-rpath "$image_site/torch/lib" "$dev/effp"
  cp target/release/effp-agent "$dev/effp-agent" && strip "$dev/effp-agent"
  cp "${EFFP_CACHE:-$HOME/.cache/effp}/tools/bin/s3s-fs" "$dev/s3s-fs"
  # Debian's redis-server and nginx with the libraries they need beyond glibc, behind
  # wrappers that give only them that library path.
  for tool in /usr/bin/redis-server /usr/sbin/nginx; do
    name=$(basename "$tool")
    cp "$tool" "$dev/libexec/$name"
    ldd "$tool" | awk '$3 ~ /^\// {print $3}' | grep -v -E '/(libc|libm|libstdc\+\+|libgcc_s)\.so' |
      xargs -r -I{} cp -L {} "$dev/lib/"
    printf '#!/bin/sh\nhere=$(dirname "$(readlink -f "$0")")/..\nLD_LIBRARY_PATH="$here/lib" exec "$here/libexec/%s" "$@"\n' \
      "$name" >"$dev/bin/$name"
    chmod +x "$dev/bin/$name"
  done
  cp "$fixtures/trained.onnx" "$dev/"
  tar czf "$dev/synth.tar.gz" -C "$fixtures" synth
  # One archive: what travels to the GPU machine is capped at 64 MiB.
  tar cJf "$dev.tar.xz" -C "$dev" . && rm -rf "$dev" && mkdir "$dev" && mv "$dev.tar.xz" "$dev/bundle.tar.xz"
  mkdir -p .git/info && touch .git/info/exclude
  grep -qx "/$dev/" .git/info/exclude || echo "/$dev/" >>.git/info/exclude
  du -sh "$dev"
  ;;
run)
  out=$(mkdir -p "${2:?OUT_DIR}" && cd "$2" && pwd)
  tar xJf "$dev/bundle.tar.xz" -C "$dev"
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no GPU"; } | tee "$out/gpu.txt"
  # The worker image's libraries: torch/lib and nvidia/ of the torch wheel.
  host_site=$(python3 -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')
  python3 -c 'import torch; print("host torch", torch.__version__)' | tee -a "$out/gpu.txt"
  rm -rf "$image_site" && mkdir -p "$image_site/torch"
  # Hard links where the file system allows: the same files at the image's paths.
  cp -al "$host_site/torch/lib" "$image_site/torch/lib" 2>/dev/null || cp -a "$host_site/torch/lib" "$image_site/torch/lib"
  cp -al "$host_site/nvidia" "$image_site/nvidia" 2>/dev/null || cp -a "$host_site/nvidia" "$image_site/nvidia"
  install -m 0755 "$dev/effp" /usr/local/bin/effp
  id effp >/dev/null 2>&1 || useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin effp
  # Only the driver's folder stays on the library path (the NVIDIA container toolkit
  # puts the driver's libraries on the image's library path the same way); libtorch
  # must come from the binary's rpath.
  driver_path=""
  IFS=: read -r -a dirs <<<"${LD_LIBRARY_PATH:-}"
  for d in "${dirs[@]}"; do
    if [ -n "$d" ] && [ -e "$d/libcuda.so.1" ]; then driver_path="${driver_path:+$driver_path:}$d"; fi
  done
  echo "host LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-} -> worker LD_LIBRARY_PATH=$driver_path" | tee -a "$out/gpu.txt"
  env -i PATH=/usr/bin:/bin LD_LIBRARY_PATH="$driver_path" ldd /usr/local/bin/effp | tee "$out/ldd.txt"
  # What the image's user runs, where that user can read it.
  app=/tmp/effp-deploy-app run_dir=/tmp/effp-deploy-run
  rm -rf "$app" "$run_dir" && mkdir -p "$app" "$run_dir"
  cp -r scripts docker "$dev" "$app/"
  chown -R effp:effp "$run_dir" && chmod -R a+rX "$app"
  stack() { # starts the stack as the image's user; its pid in $stack_pid
    setpriv --reuid 10001 --regid 10001 --clear-groups \
      env -i PATH="$app/$dev/bin:$PATH" HOME="$run_dir" LD_LIBRARY_PATH="$driver_path" \
      EFFP_BIN=/usr/local/bin/effp EFFP_AGENT_BIN="$app/$dev/effp-agent" EFFP_S3S_FS="$app/$dev/s3s-fs" \
      EFFP_RUN_DIR="$run_dir" EFFP_LISTEN=127.0.0.1:18080 EFFP_DEVICE=auto \
      bash "$app/scripts/run-distributed.sh" >>"$out/stack.log" 2>&1 &
    stack_pid=$!
  }
  stack
  restart="$out/restart"
  # The client: jobs through the balancer, as a user would send them.
  EFFP_OUT="$out" EFFP_DEV="$dev" EFFP_RESTART="$restart" python3 - <<'PY' &
import json, os, subprocess, sys, time
import requests

base = "http://127.0.0.1:18080"
out, dev = os.environ["EFFP_OUT"], os.environ["EFFP_DEV"]
result = {"checks": {}}

def save():
    json.dump(result, open(f"{out}/deploy-gpu.json", "w"), indent=2)

def wait_up(limit=60):
    end = time.time() + limit
    while time.time() < end:
        try:
            if requests.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise SystemExit("the stack did not come up")

def upload(kind, path, name):
    r = requests.post(f"{base}/v1/{kind}?name={name}", data=open(path, "rb"), timeout=120)
    assert r.status_code == 201, r.text
    return r.json()["id"]

def job(id):
    for _ in range(50):
        try:
            return requests.get(f"{base}/v1/jobs/{id}", timeout=10).json()
        except requests.RequestException:
            time.sleep(0.2)
    raise SystemExit("the API stopped answering")

def states_of(id):
    text = requests.get(f"{base}/v1/jobs/{id}/events", timeout=30).text
    states = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if fields.get("event") == "state":
            states.append(json.loads(fields["data"])["state"])
    return states

def until(id, test, limit):
    end = time.time() + limit
    while time.time() < end:
        j = job(id)
        if test(j):
            return j
        time.sleep(0.25)
    raise SystemExit(f"job {id} timed out: {json.dumps(j)}")

# DEVICE=cpu tries the script itself on a machine without a GPU.
device = os.environ.get("DEVICE", "cuda")
ended = lambda j: j["state"] in ("succeeded", "failed", "cancelled")
wait_up()
# A: the fixture detector pruned on the GPU, measured by the CPU agent.
model = upload("models", f"{dev}/trained.onnx", "trained.onnx")
data = upload("datasets", f"{dev}/synth.tar.gz", "synth.tar.gz")
started = time.time()
a = requests.post(f"{base}/v1/jobs", json={
    "model": model, "dataset": data, "method": "effp", "target": {"flops_ratio": 0.5},
    "training": {"steps": int(os.environ.get("STEPS_A", 300)), "batch": 8}, "device": device,
    "benchmark": {"device": "cpu", "iterations": 3}}, timeout=10).json()["id"]
# Which of the image's libraries the worker and its job processes load: what an
# image without the others would still need.
loaded = set()
def look():
    pids = subprocess.run(["pgrep", "-u", "10001", "-f", "/usr/local/bin/effp"], capture_output=True, text=True).stdout.split()
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/maps"):
                path = line.split()[-1]
                if path.startswith("/opt/venv/"):
                    loaded.add(path)
        except OSError:
            pass
j = until(a, lambda j: look() or ended(j), 300)
site = "/opt/venv/lib/python3.11/site-packages"
carried = {os.path.join(d, f) for d, _, fs in os.walk(site) for f in fs if ".so" in f}
size = lambda paths: sum(os.path.getsize(p) for p in paths if os.path.exists(p))
result["libraries"] = {"loaded": sorted(loaded), "loaded_bytes": size(loaded),
                       "carried_files": len(carried), "carried_bytes": size(carried),
                       "not_loaded": sorted(os.path.relpath(p, site) for p in carried - loaded)}
report = requests.get(f"{base}/v1/jobs/{a}/artifacts/report.json", timeout=10).json()
result["job_a"] = {"wall_s": round(time.time() - started, 1), "state": j["state"],
                   "device": report["training"]["device"], "metrics": j.get("metrics"),
                   "benchmark": (j.get("benchmarks") or [{}])[0].get("result")}
result["checks"]["job succeeded on the device"] = j["state"] == "succeeded" and report["training"]["device"].startswith(device)
result["checks"]["cpu agent measured it"] = (j.get("benchmarks") or [{}])[0].get("state") == "succeeded"
save()
# B: SIGTERM to the worker mid-job: it checkpoints and hands the job back; the
# restarted stack resumes it from the checkpoint without spending an attempt.
steps = int(os.environ.get("STEPS_B", 3000))
b = requests.post(f"{base}/v1/jobs", json={
    "model": model, "dataset": data, "method": "effp", "target": {"flops_ratio": 0.6},
    "training": {"steps": steps, "batch": 8}, "device": device}, timeout=10).json()["id"]
at = steps // 10
until(b, lambda j: (j.get("metrics") or {}).get("step", 0) >= at or ended(j), 300)
worker = subprocess.run(["pgrep", "-o", "-f", "-u", "10001", "effp worker"], capture_output=True, text=True).stdout.split()
stop = time.time()
subprocess.run(["kill", "-TERM", worker[0]], check=True)
while subprocess.run(["kill", "-0", worker[0]], capture_output=True).returncode == 0:
    time.sleep(0.05)
result["job_b"] = {"sigterm_to_exit_s": round(time.time() - stop, 2)}
# The shell starts the stack again and then removes the file.
open(os.environ["EFFP_RESTART"], "w").close()
while os.path.exists(os.environ["EFFP_RESTART"]):
    time.sleep(0.1)
wait_up()
j = until(b, ended, 300)
report = requests.get(f"{base}/v1/jobs/{b}/artifacts/report.json", timeout=10).json()
states = states_of(b)
result["job_b"].update({"state": j["state"], "attempts": j["attempts"],
                        "resumed_from_step": j["metrics"].get("resumed_from_step"),
                        "curve_steps": len(report["curve"]), "device": report["training"]["device"],
                        "states": states})
result["checks"]["sigterm: handed back and resumed"] = (
    j["state"] == "succeeded" and j["attempts"] == 1 and (j["metrics"].get("resumed_from_step") or 0) >= at
    and len(report["curve"]) == steps and states == ["queued", "running", "queued", "running", "succeeded"])
save()
print(json.dumps(result, indent=2))
sys.exit(0 if all(result["checks"].values()) else 1)
PY
  client=$!
  # run-distributed.sh stops the whole stack when the worker exits; start it again
  # (same run folder: Redis's append-only file and the bucket) when the client asks.
  while kill -0 "$client" 2>/dev/null; do
    if [ -e "$restart" ]; then
      wait "$stack_pid" || true
      stack
      rm -f "$restart"
    fi
    sleep 0.2
  done
  wait "$client" && status=0 || status=$?
  kill -TERM "$stack_pid" 2>/dev/null || true
  wait "$stack_pid" 2>/dev/null || true
  # The device tool brings back only a few files: the logs in one archive.
  mkdir -p "$out/logs" && mv "$out/stack.log" "$out/logs/" && cp "$run_dir"/*.log "$out/logs/" 2>/dev/null || true
  tar czf "$out/logs.tgz" -C "$out" logs && rm -rf "$out/logs"
  exit "$status"
  ;;
*)
  echo "usage: $0 prepare | run OUT_DIR" >&2
  exit 2
  ;;
esac
