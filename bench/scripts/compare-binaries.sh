#!/usr/bin/env bash
# Compares fhir-bulk-proxy binaries on one export against the synthetic
# upstream with real servers' manners, run as its own process: wall time,
# upstream request counters (the sim's /_sim/counts) and output totals.
#
# usage: bench/scripts/compare-binaries.sh SIM_BINARY PATIENTS KICKOFF_PATH BINARY...
#   SIM_BINARY    a fhir-bulk-proxy binary whose `sim` has /_sim/counts
#   KICKOFF_PATH  e.g. '/$export' or '/Group/all/$export?_type=Observation'
# env: KICKOFF_ONLY=1 deletes the job after the 202 (times the kick-off only);
#      TIMEOUT=seconds gives up on a binary after that long (default 900).
set -u
sim=$1; patients=$2; path=$3; shift 3
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
simport=18190; port=18191
"$sim" sim --listen 127.0.0.1:$simport --patients "$patients" --latency 20ms --max-concurrent 4 --real-manners >/dev/null 2>&1 &
simpid=$!
trap 'kill $simpid 2>/dev/null; rm -rf "$work"' EXIT
until curl -sf -o /dev/null http://127.0.0.1:$simport/fhir/metadata; do sleep 0.5; done
counts() { curl -s http://127.0.0.1:$simport/_sim/counts; }
for bin in "$@"; do
  rm -rf "$work/data"; mkdir -p "$work/data"
  FBP_EXPORT_POLL_THROTTLE=false "$bin" serve --listen 127.0.0.1:$port --upstream http://127.0.0.1:$simport/fhir \
    --public-url http://127.0.0.1:$port/fhir --data-dir "$work/data" --log-level warn --export-concurrency 4 >"$work/log" 2>&1 &
  pid=$!
  until curl -sf -o /dev/null http://127.0.0.1:$port/healthz; do sleep 0.2; done
  c0=$(counts); t0=$(date +%s.%N)
  loc=$(curl -s -o "$work/kick" -D - -H 'Accept: application/fhir+json' -H 'Prefer: respond-async' \
    --max-time "${TIMEOUT:-900}" "http://127.0.0.1:$port/fhir$path" | tr -d '\r' | awk -F': ' 'tolower($1)=="content-location"{print $2}')
  t1=$(date +%s.%N)
  echo "$bin: kick-off $(echo "$t1 - $t0" | bc) s; upstream requests before the kick-off $c0, after $(counts)"
  if [ -z "$loc" ]; then echo "$bin: no 202 (timed out or refused): $(head -c 300 "$work/kick")"; kill $pid; wait $pid 2>/dev/null; continue; fi
  if [ -n "${KICKOFF_ONLY:-}" ]; then curl -s -o /dev/null -X DELETE "$loc"; kill $pid; wait $pid 2>/dev/null; continue; fi
  code=202
  while [ "$code" = 202 ] && [ "$(echo "$(date +%s) - ${t0%.*} < ${TIMEOUT:-900}" | bc)" = 1 ]; do
    sleep 0.2; code=$(curl -s -o "$work/status" -w '%{http_code}' "$loc")
  done
  t2=$(date +%s.%N)
  echo "$bin: status $code after $(echo "$t2 - $t0" | bc) s; upstream requests $(counts)"
  python3 -c "import json; m=json.load(open('$work/status')); o=m.get('output',[]); print('$bin: output files', len(o), 'resources', sum(f.get('count',0) for f in o), 'error files', len(m.get('error',[])))" 2>/dev/null
  kill $pid; wait $pid 2>/dev/null
done
