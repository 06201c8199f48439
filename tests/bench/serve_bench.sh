#!/usr/bin/env bash
# psd_serve's HTTP/JSON endpoint under load (issue 17): wrk (Debian's, with
# a Lua script that POSTs one Fashion-MNIST test image per request) against
# POST /v2/models/fashion/infer, for each --max_batch_size in BATCHES and
# each connection count in CONCURRENCY; prints throughput and wrk's p50 and
# p99 latency per cell, and the speed-up of every batch size over max batch
# 1 (unbatched) at the highest concurrency. Then the gRPC endpoint with raw
# tensors, driven by oip_classify (C++; 2,000 test images, one per request,
# CONCURRENCY requests in flight): throughput only. Target (docs/PERFORMANCE.md): at
# concurrency 64, >= 5x the unbatched throughput with p99 <= 10 ms.
#
#   tests/bench/serve_bench.sh [--quick] [--model FILE] [--duration S]
#
# --model: a `psd_ctl export` file (default out/fashion_mnist_mlp.safetensors
# from deploy/run_local.sh, else a random MLP 784-256-128-10: timing does
# not depend on the weights). --quick: batches 1 32, concurrency 1 16, 2 s.
# Installs wrk with apt-get when missing (the test suite does not need it).
# Plaintext on loopback (--insecure), so the numbers are the server's, not
# TLS's.
set -euo pipefail
cd "$(dirname "$0")/../.."

BATCHES="1 8 32 128"
CONCURRENCY="1 16 64"
DURATION=5
MODEL=out/fashion_mnist_mlp.safetensors
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) BATCHES="1 32"; CONCURRENCY="1 16"; DURATION=2; shift ;;
    --model) MODEL=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "serve_bench: unknown argument $1" >&2; exit 2 ;;
  esac
done

if ! command -v wrk >/dev/null; then
  echo "==> installing wrk (apt-get)"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get install -y --no-install-recommends wrk >/dev/null
fi
bazel build --noshow_progress //server/serving:psd_serve //server/serving:oip_classify \
  2>&1 | grep -vE '^(INFO|Target|  bazel-bin)' || true
BIN=bazel-bin/server/serving
source deploy/processes.sh
WORK=$(mktemp -d /tmp/psd-serve-bench.XXXXXX)
PIDS=()
trap 'stop_processes ${PIDS[@]+"${PIDS[@]}"}; rm -rf "$WORK"' EXIT

if [ ! -s "$MODEL" ]; then
  MODEL=$WORK/random.safetensors
  python3 - "$MODEL" <<'PY'
import json, random, struct, sys
random.seed(1)
sizes = [784, 256, 128, 10]
header, blobs, offset = {}, [], 0
for i in range(3):
    for name, shape in ((f"layer{i}.weight", [sizes[i], sizes[i + 1]]),
                        (f"layer{i}.bias", [sizes[i + 1]])):
        n = shape[0] * (shape[1] if len(shape) > 1 else 1)
        scale = sizes[i] ** -0.5
        blob = struct.pack(f"<{n}f", *(random.gauss(0, scale) for _ in range(n)))
        header[name] = {"dtype": "F32", "shape": shape,
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
text = json.dumps(header).encode()
text += b" " * (-len(text) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
PY
  echo "==> model: a random MLP 784-256-128-10 ($MODEL)"
else
  echo "==> model: $MODEL"
fi

# One test image per request, as OIP JSON.
mkdir -p "$WORK/json"
"$BIN/oip_classify" --model_name=fashion --write_json="$WORK/json" --limit=1 --rows=1
BODY=$WORK/json/request_0.json
cat >"$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$BODY", "rb")
wrk.body = f:read("*a")
f:close()
LUA

echo "==> $(date -u '+%F %T UTC'), $(nproc) CPUs ($(lscpu | sed -n 's/^Model name: *//p')), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "==> wrk ${DURATION}s per cell, one image (784 FP32) per request, body $(wc -c <"$BODY") bytes"
printf '%-10s %-6s %12s %10s %10s %8s\n' max_batch conns "req/s" "p50 ms" "p99 ms" errors
declare -A RPS GRPC
for batch in $BATCHES; do
  # Unbatched (max batch 1) runs each request at once; batched ones wait
  # up to 500 us for company.
  delay=500
  [ "$batch" = 1 ] && delay=0
  "$BIN/psd_serve" --insecure --model_file="$MODEL" --model_name=fashion \
    --listen=127.0.0.1:0 --port_file="$WORK/port.$batch" \
    --http_listen=127.0.0.1:0 --http_port_file="$WORK/http.$batch" --http_threads=80 \
    --max_batch_size="$batch" --max_queue_delay_microseconds=$delay \
    --max_queue_size=4096 --blas_threads=1 2>"$WORK/serve.$batch.log" &
  pid=$!
  PIDS+=($pid)
  wait_port $pid "$WORK/port.$batch" >/dev/null
  url=http://127.0.0.1:$(cat "$WORK/http.$batch")/v2/models/fashion/infer
  for conns in $CONCURRENCY; do
    threads=$(( conns < 2 ? 1 : 2 ))
    wrk -t$threads -c"$conns" -d"${DURATION}s" --latency -s "$WORK/post.lua" "$url" \
      >"$WORK/wrk.$batch.$conns" 2>&1
    out=$WORK/wrk.$batch.$conns
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    # wrk's percentiles: "50%  1.23ms" (us, ms or s).
    pct() { awk -v p="$1" '$1 == p {v = $2; if (v ~ /us$/) {sub(/us$/, "", v); v /= 1000}
      else if (v ~ /ms$/) {sub(/ms$/, "", v)} else if (v ~ /s$/) {sub(/s$/, "", v); v *= 1000}
      printf "%.2f", v}' "$out"; }
    errors=$(awk '/Non-2xx/ {print $NF} /Socket errors/ {print}' "$out" | tr '\n' ' ')
    printf '%-10s %-6s %12s %10s %10s %8s\n' "$batch" "$conns" "$rps" "$(pct 50%)" "$(pct 99%)" "${errors:-0}"
    RPS[$batch.$conns]=$rps
  done
  # gRPC, raw tensors: images per second over 2,000 single-image requests.
  for conns in $CONCURRENCY; do
    GRPC[$batch.$conns]=$("$BIN/oip_classify" --insecure --server="127.0.0.1:$(cat "$WORK/port.$batch")" \
      --model_name=fashion --limit=2000 --rows=1 --concurrency="$conns" |
      awk '/^requests_per_second/ {printf "%.0f", $2}')
  done
  stop_processes $pid
done
echo "==> gRPC (oip_classify: raw FP32, 1 image per request, 2,000 requests, timed without its start-up)"
printf '%-10s %-6s %12s\n' max_batch conns "req/s"
for batch in $BATCHES; do
  for conns in $CONCURRENCY; do
    printf '%-10s %-6s %12s\n' "$batch" "$conns" "${GRPC[$batch.$conns]}"
  done
done
top=${CONCURRENCY##* }
base=${RPS[1.$top]:-}
if [ -n "$base" ]; then
  for batch in $BATCHES; do
    awk -v b="$batch" -v r="${RPS[$batch.$top]}" -v u="$base" -v c="$top" \
      'BEGIN { printf "max_batch %s at %s connections: %.2fx unbatched\n", b, c, r / u }'
  done
fi
