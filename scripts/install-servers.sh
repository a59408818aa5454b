#!/usr/bin/env bash
# Installs the real servers the tests start and the distributed deployment uses:
# Redis from the Debian package redis-server, and the S3-compatible server s3s-fs
# 0.14.1 from crates.io (later versions need a newer Rust) into $EFFP_CACHE/tools.
# Idempotent; needs root or sudo the first time.
set -euo pipefail

if ! command -v redis-server >/dev/null 2>&1; then
  echo "servers: installing the Debian package redis-server" >&2
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y --no-install-recommends redis-server >/dev/null \
    || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y --no-install-recommends redis-server >/dev/null; }
fi
redis-server --version >&2

tools="${EFFP_CACHE:-$HOME/.cache/effp}/tools"
if ! "$tools/bin/s3s-fs" --version 2>/dev/null | grep -q '0\.14\.1'; then
  echo "servers: building s3s-fs 0.14.1 from crates.io into $tools (a few minutes, once)" >&2
  cargo install s3s-fs --version 0.14.1 --features binary --locked --quiet --root "$tools"
fi
"$tools/bin/s3s-fs" --version >&2
