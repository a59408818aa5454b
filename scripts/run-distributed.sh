#!/usr/bin/env bash
# Starts effp's distributed deployment on this machine from the binaries, the same
# stack as docker/compose.yaml: a redis-server with its append-only file, an
# S3-compatible server (s3s-fs), two API replicas (effp serve --no-worker) behind
# nginx with docker/nginx.conf, a job worker (effp worker) and a CPU benchmark agent
# (effp-agent), each its own process on loopback, and prints the URL. Ctrl-C stops
# them all; Redis's data and the bucket stay in the run directory for the next start.
#
# Settings (environment): EFFP_BIN and EFFP_AGENT_BIN (the binaries; `make
# run-distributed` builds the release ones), EFFP_RUN_DIR (default
# $EFFP_CACHE/distributed), EFFP_LISTEN (the balancer's address, default
# 127.0.0.1:8080), and any EFFP_* setting of serve and worker.
set -euo pipefail

cache=${EFFP_CACHE:-$HOME/.cache/effp}
bin=${EFFP_BIN:-target/release/effp}
agent_bin=${EFFP_AGENT_BIN:-target/release/effp-agent}
run=${EFFP_RUN_DIR:-$cache/distributed}
listen=${EFFP_LISTEN:-127.0.0.1:8080}
s3s_fs=${EFFP_S3S_FS:-$cache/tools/bin/s3s-fs}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$run/redis" "$run/s3/effp" "$run/api-1" "$run/api-2" "$run/worker" "$run/agent" "$run/nginx"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() { # port name pid
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$3" 2>/dev/null || { echo "run-distributed: $2 exited; see $run/$2.log" >&2; return 1; }
    sleep 0.05
  done
  echo "run-distributed: $2 did not open port $1; see $run/$2.log" >&2
  return 1
}

pids=()
stop() {
  trap - INT TERM EXIT
  # The API and the worker first (the worker checkpoints and hands its jobs back),
  # then the servers they use.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
}
trap 'stop; exit 0' INT TERM
trap stop EXIT

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$run/redis" --appendonly yes \
  --save "" --protected-mode no >"$run/redis.log" 2>&1 &
pids+=($!)
wait_port "$redis_port" redis "${pids[-1]}"

s3_port=$(free_port)
s3_key=effp-local-key
s3_secret=effp-local-secret
"$s3s_fs" --host 127.0.0.1 --port "$s3_port" --access-key "$s3_key" --secret-key "$s3_secret" \
  "$run/s3" >"$run/s3.log" 2>&1 &
pids+=($!)
wait_port "$s3_port" s3 "${pids[-1]}"

export EFFP_REDIS_URL="redis://127.0.0.1:$redis_port"
export EFFP_S3_BUCKET=effp EFFP_S3_ENDPOINT="http://127.0.0.1:$s3_port" EFFP_S3_REGION=us-east-1
export EFFP_S3_PATH_STYLE=true EFFP_S3_ACCESS_KEY_ID=$s3_key EFFP_S3_SECRET_ACCESS_KEY=$s3_secret

"$bin" worker --data-dir "$run/worker" >"$run/worker.log" 2>&1 &
pids+=($!)
api_ports=()
for replica in 1 2; do
  port=$(free_port)
  "$bin" serve --no-worker --listen "127.0.0.1:$port" --data-dir "$run/api-$replica" \
    >"$run/api-$replica.log" 2>&1 &
  pids+=($!)
  wait_port "$port" "api-$replica" "${pids[-1]}"
  api_ports+=("$port")
done

# compose's balancer configuration, pointed at the two replicas and the run folder.
servers="server 127.0.0.1:${api_ports[0]};\n    server 127.0.0.1:${api_ports[1]};"
sed -e "s|server api:8080;|$servers|" -e "s|listen 8080;|listen $listen;|" -e "s|/tmp/|$run/nginx/|g" \
  "$root/docker/nginx.conf" >"$run/nginx/nginx.conf"
"$(command -v nginx || echo /usr/sbin/nginx)" -e stderr -p "$run/nginx" -c "$run/nginx/nginx.conf" -g "daemon off;" >"$run/nginx.log" 2>&1 &
pids+=($!)
wait_port "${listen##*:}" nginx "${pids[-1]}"

# The agent's key: EFFP_AGENT_KEY, else the first of EFFP_AGENT_KEYS; a server without
# keys (loopback) takes any.
agent_key=${EFFP_AGENT_KEY:-}
if [ -z "$agent_key" ] && [ -n "${EFFP_AGENT_KEYS:-}" ]; then
  first=${EFFP_AGENT_KEYS%%,*}
  agent_key=${first#*:}
fi
EFFP_AGENT_KEY=${agent_key:-loopback-agent-needs-no-key} "$agent_bin" --server "http://$listen" \
  --device cpu --runner cpu --name run-distributed-cpu --work-dir "$run/agent" >"$run/agent.log" 2>&1 &
pids+=($!)

cat <<MSG
effp is running at http://$listen (API docs at http://$listen/docs)
  redis-server  $EFFP_REDIS_URL (append-only file in $run/redis)
  s3s-fs        $EFFP_S3_ENDPOINT, bucket effp (files in $run/s3/effp)
  API replicas  effp serve --no-worker on 127.0.0.1:${api_ports[0]} and 127.0.0.1:${api_ports[1]} behind nginx (logs: $run/api-1.log, $run/api-2.log)
  job worker    effp worker              (log: $run/worker.log)
  agent         effp-agent --device cpu  (log: $run/agent.log)
Ctrl-C stops them all.
MSG
wait -n "${pids[@]}" || true
echo "run-distributed: a process exited; stopping the others (logs in $run)" >&2
