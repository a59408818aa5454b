#!/usr/bin/env bash
# Installs the real servers the tests start and the distributed deployment uses:
# Redis from the Debian package redis-server, nginx from nginx-light, chromium with
# its chromedriver, the S3-compatible server s3s-fs 0.14.1 from crates.io (later
# versions need a newer Rust) into $EFFP_CACHE/tools, and axe-core 4.14.1 from npm
# (the browser tests' accessibility audit) beside it.
# Idempotent; needs root or sudo the first time.
set -euo pipefail

# Debian packages: redis-server (the queue and records), nginx-light (the balancer in
# front of run-distributed's two API replicas, as in docker/compose.yaml), chromium
# and chromium-driver (the dashboard's browser tests drive it over WebDriver).
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  echo "servers: installing the Debian packages ${missing[*]}" >&2
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  # The packages' own services stay stopped: the tests and scripts start their own.
  policy=/usr/sbin/policy-rc.d
  own_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null && $sudo chmod +x "$policy" && own_policy=1
  fi
  $sudo apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
    || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
  if [ -n "$own_policy" ]; then $sudo rm -f "$policy"; fi
fi
redis-server --version >&2
/usr/sbin/nginx -v
/usr/bin/chromedriver --version >&2

tools="${EFFP_CACHE:-$HOME/.cache/effp}/tools"
if ! "$tools/bin/s3s-fs" --version 2>/dev/null | grep -q '0\.14\.1'; then
  echo "servers: building s3s-fs 0.14.1 from crates.io into $tools (a few minutes, once)" >&2
  cargo install s3s-fs --version 0.14.1 --features binary --locked --quiet --root "$tools"
fi
"$tools/bin/s3s-fs" --version >&2

# axe-core, the accessibility rules engine the browser tests run in the dashboard's
# pages: its one browser script and its licence, from the npm registry, checked against
# the published integrity.
axe="$tools/axe-core-4.14.1"
if [ ! -f "$axe/axe.min.js" ]; then
  echo "servers: fetching axe-core 4.14.1 from npm into $axe" >&2
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack axe-core@4.14.1 --silent >/dev/null)
  integrity=$(python3 -c 'import base64, hashlib, sys; print(base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$tmp/axe-core-4.14.1.tgz")
  if [ "$integrity" != "FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuFooJpZe37OgudVGtQ==" ]; then
    echo "servers: axe-core-4.14.1.tgz is not the published package (sha512 $integrity)" >&2
    exit 1
  fi
  tar xzf "$tmp/axe-core-4.14.1.tgz" -C "$tmp"
  mkdir -p "$axe.partial"
  cp "$tmp/package/axe.min.js" "$tmp/package/LICENSE" "$axe.partial/"
  rm -rf "$axe" "$tmp" && mv "$axe.partial" "$axe"
fi
echo "axe-core $(head -c 20 "$axe/axe.min.js" | grep -o 'v[0-9.]*')" >&2
