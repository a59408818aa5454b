#!/usr/bin/env bash
# Installs the real servers the tests start and the distributed deployment uses:
# Redis from the Debian package redis-server. Idempotent; needs root or sudo the
# first time.
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
