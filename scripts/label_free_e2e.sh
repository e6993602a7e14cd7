#!/usr/bin/env bash
# Label-free adapters end to end, on the demo (docs/training.md "Adapters without labels"):
# the index `querylift setup` built, a tenant with no labels, `querylift train --mode distill`
# on query TEXT only, activation through the label-free gate, /search before and after.
# Run after `make demo`; it uses its own store and port, and stops the service at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
W=${W:-var/label-free-e2e}
PORT=${PORT:-8794}
URL=http://127.0.0.1:$PORT
KEY=e2e-tenant-key
TOKEN=e2e-admin-token
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
rm -rf "$W" && mkdir -p "$W"

# a tenant on the demo collection (tenant value `default`, what setup indexed), no adapter
"$BIN/python" - "$W" "$KEY" <<'PY'
import gzip, hashlib, json, sys
from pathlib import Path
w, key = Path(sys.argv[1]), sys.argv[2]
tenant = {"name": "acme", "collection": "demo", "tenant_value": "default",
          "api_keys_sha256": [hashlib.sha256(key.encode()).hexdigest()]}
(w / "tenants.json").write_text(json.dumps({"tenants": [tenant]}))
# the train claims' TEXT only (never their qrels): 600 to distil on, the rest for the gate
ids = [l.split("\t")[0] for l in open("demo/scifact-mini/qrels/train.tsv") if l[0].isdigit()]
text = {}
for line in gzip.open("demo/scifact-mini/queries.jsonl.gz", "rt"):
    q = json.loads(line)
    text[q["_id"]] = q["text"]
train = sorted(dict.fromkeys(i for i in ids if i in text))
(w / "queries.txt").write_text("\n".join(text[i] for i in train[:600]) + "\n")
(w / "gate-queries.json").write_text(json.dumps([text[i] for i in train[600:]]))
print(f"{len(train[:600])} training query texts, {len(train[600:])} held out for the gate")
PY

echo "== distil (no labels)"
/usr/bin/time -f "distil: %e s" "$BIN/querylift" train demo/scifact-mini --mode distill \
  --kind hybrid --queries "$W/queries.txt" --out "$W/distilled"

echo "== serve"
QUERYLIFT_TENANTS_FILE="$W/tenants.json" QUERYLIFT_ADMIN_TOKEN=$TOKEN \
QUERYLIFT_ADAPTER_STORE="$W/store" QUERYLIFT_LOG_LEVEL=warning \
QUERYLIFT_GATE_LABEL_FREE_QUERIES=${GATE_QUERIES:-40} \
QUERYLIFT_GATE_LABEL_FREE_CANDIDATES=${GATE_CANDIDATES:-30} \
  "$BIN/querylift" serve --port "$PORT" > "$W/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 300); do curl -sf "$URL/readyz" >/dev/null && break; sleep 1; done

echo "== before: acme is served by the document model"
"$BIN/python" -m bench.search_quality --data demo/scifact-mini --split test --url "$URL" \
  --key $KEY --label "before (all-MiniLM-L6-v2 alone)"

echo "== upload, the gate's unlabelled queries, activate through the label-free gate"
ID=$("$BIN/querylift" adapters upload "$W/distilled/checkpoint" --url "$URL" --token $TOKEN \
  | "$BIN/python" -c "import json, sys; print(json.load(sys.stdin)['id'])")
curl -sf -X PUT "$URL/admin/tenants/acme/queries" -H "Authorization: Bearer $TOKEN" \
  -H 'content-type: application/json' --data-binary @"$W/gate-queries.json" >/dev/null
/usr/bin/time -f "activation (label-free gate): %e s" \
  "$BIN/querylift" adapters activate acme "$ID" --url "$URL" --token $TOKEN --timeout 1800 \
  > "$W/activation.json"
"$BIN/python" - "$W/activation.json" <<'PY'
import json, sys
a = json.load(open(sys.argv[1]))
g = a.get("gate") or {}
lf = g.get("label_free") or g
print("gate:", json.dumps({k: lf.get(k) for k in ("decision", "queries", "candidate", "baseline",
      "current", "seconds") if k in lf})[:600])
PY

echo "== after"
"$BIN/python" -m bench.search_quality --data demo/scifact-mini --split test --url "$URL" \
  --key $KEY --label "after (distilled hybrid, no labels)"
