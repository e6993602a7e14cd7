#!/usr/bin/env bash
# Label-free adapters end to end, on the demo (docs/training.md "Adapters without labels"):
# the index `querylift setup` built, a tenant with no labels and its query log on, traffic,
# the log exported, `querylift train --mode distill` on it, activation through the label-free
# gate (on the log's held-out queries), /search before and after.
# Run after `make demo`; it uses its own store and port, and stops the service at the end.
# PULL=0.02 distils with a weaker pull toward the start than the default (bench/README.md).
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

# a tenant on the demo collection (tenant value `default`, what setup indexed), no adapter, no
# labels, its query log on
"$BIN/python" - "$W" "$KEY" <<'PY'
import hashlib, json, sys
from pathlib import Path
w, key = Path(sys.argv[1]), sys.argv[2]
tenant = {"name": "acme", "collection": "demo", "tenant_value": "default", "query_log": True,
          "api_keys_sha256": [hashlib.sha256(key.encode()).hexdigest()]}
(w / "tenants.json").write_text(json.dumps({"tenants": [tenant]}))
PY

echo "== serve (acme's query log on)"
QUERYLIFT_TENANTS_FILE="$W/tenants.json" QUERYLIFT_ADMIN_TOKEN=$TOKEN \
QUERYLIFT_ADAPTER_STORE="$W/store" QUERYLIFT_LOG_LEVEL=warning \
QUERYLIFT_GATE_LABEL_FREE_QUERIES=${GATE_QUERIES:-40} \
QUERYLIFT_GATE_LABEL_FREE_CANDIDATES=${GATE_CANDIDATES:-30} \
  "$BIN/querylift" serve --port "$PORT" > "$W/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 300); do curl -sf "$URL/readyz" >/dev/null && break; sleep 1; done
export QUERYLIFT_URL=$URL QUERYLIFT_ADMIN_TOKEN=$TOKEN

echo "== before: acme is served by the document model"
"$BIN/python" -m bench.search_quality --data demo/scifact-mini --split test --url "$URL" \
  --key $KEY --label "before (all-MiniLM-L6-v2 alone)"
# the measurement's test claims went through /search too: out of the log, they are not traffic
"$BIN/querylift" adapters clear-log acme

echo "== traffic: the train claims' TEXT through /search (never their qrels)"
"$BIN/python" - "$URL" "$KEY" <<'PY'
import gzip, json, sys, time
import httpx
url, key = sys.argv[1], sys.argv[2]
ids = {l.split("\t")[0] for l in open("demo/scifact-mini/qrels/train.tsv") if l[0].isdigit()}
texts = [q["text"] for q in map(json.loads, gzip.open("demo/scifact-mini/queries.jsonl.gz", "rt"))
         if q["_id"] in ids]
t0 = time.perf_counter()
with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
    for text in texts:
        c.post("/search", json={"query": text, "top_k": 10}).raise_for_status()
print(f"{len(texts)} searches in {time.perf_counter() - t0:.0f} s")
PY

echo "== export the log (the train side: the gate keeps the held-out share), distil on it"
"$BIN/querylift" adapters export-log acme --split train --out "$W/log-train.jsonl"
/usr/bin/time -f "distil: %e s" "$BIN/querylift" train demo/scifact-mini --mode distill \
  --queries-from "$W/log-train.jsonl" --out "$W/distilled" ${PULL:+--reg "$PULL"}

echo "== upload, activate through the label-free gate (on the log's held-out queries)"
ID=$("$BIN/querylift" adapters upload "$W/distilled/checkpoint" \
  | "$BIN/python" -c "import json, sys; print(json.load(sys.stdin)['id'])")
/usr/bin/time -f "activation (label-free gate): %e s" \
  "$BIN/querylift" adapters activate acme "$ID" --timeout 1800 > "$W/activation.json"
"$BIN/python" - "$W/activation.json" <<'PY'
import json, sys
a = json.load(open(sys.argv[1]))
lf, vs = a["label_free"], a["gate"]["vs_baseline"]
print(f"gate: {a['gate']['decision']} on {lf['queries_used']} {lf['source']} queries x "
      f"{lf['candidates_per_query']} candidates: agreement with {lf['teacher']} "
      f"{lf['baseline_agreement']:.3f} (document model alone) -> {lf['candidate_agreement']:.3f} "
      f"(delta {vs['delta']:+.3f}, 95% CI [{vs['ci_low']:+.3f}, {vs['ci_high']:+.3f}]), "
      f"{lf['seconds']['total']:.0f} s")
PY

echo "== after"
"$BIN/python" -m bench.search_quality --data demo/scifact-mini --split test --url "$URL" \
  --key $KEY --label "after (distilled hybrid, no labels)"
