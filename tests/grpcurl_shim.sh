#!/usr/bin/env bash
# A stand-in for grpcurl, for tests: translates the grpcurl command lines of
# docs/OPERATIONS.md and README.md into `buf curl` (grpcurl is not packaged
# for Debian; buf curl speaks the same protocol and takes the same JSON).
# Supports: -plaintext, -cacert FILE, -cert FILE, -key FILE (TLS, as
# grpcurl: without -plaintext the call is https), -H 'NAME: VALUE' (a
# header, e.g. a bearer token), -d DATA (or -d @ for stdin), -format json|text,
# -import-path DIR, -proto FILE, -max-time S, then ADDRESS and list
# [SERVICE] | describe X | METHOD. Answers carry grpcurl's keys, the proto
# field names (job_id), and -format text refuses '#' comments as grpcurl
# does (tests/grpcurl_shim_format.py, next to this file). Needs PSD_BUF (the
# buf binary), PSD_PROTO_DIR (our proto/ folder) and python3-protobuf.
set -euo pipefail
data=""
import_path=""
proto=""
timeout=""
format=json
scheme=https
tls=()
headers=()
here=$(dirname "$0")
while [ $# -gt 0 ]; do
  case "$1" in
    -plaintext) scheme=http; shift ;;
    -cacert) tls+=(--cacert "$2"); shift 2 ;;
    -cert) tls+=(--cert "$2"); shift 2 ;;
    -key) tls+=(--key "$2"); shift 2 ;;
    -H) headers+=(-H "$2"); shift 2 ;;
    -d) data=$2; shift 2 ;;
    -import-path) import_path=$2; shift 2 ;;
    -proto) proto=$2; shift 2 ;;
    -max-time) timeout=$2; shift 2 ;;
    -format) format=$2; shift 2 ;;
    -*) echo "grpcurl shim: unsupported option $1" >&2; exit 64 ;;
    *) break ;;
  esac
done
address=$1
shift
args=(curl --protocol grpc)
if [ "$scheme" = http ]; then args+=(--http2-prior-knowledge); else args+=(${tls[@]+"${tls[@]}"}); fi
[ -n "$proto" ] && args+=(--schema "${import_path:+$import_path/}$proto")
[ -n "$timeout" ] && args+=(--connect-timeout "$timeout")
case "${1:-}" in
  list | describe)
    if [ $# -lt 2 ]; then
      exec "$PSD_BUF" "${args[@]}" --list-services "$scheme://$address"
    fi
    # buf curl lists methods through reflection only for all services at
    # once, and fails on the health service (reflection cannot describe it).
    # So: check the server's reflection lists the service, then print its
    # methods from our .proto files (PSD_PROTO_DIR).
    # Up to 3 tries: on a loaded machine a reflection listing can come back
    # short (seen once in CI).
    for try in 1 2 3; do
      "$PSD_BUF" "${args[@]}" --list-services "$scheme://$address" | grep -qx "$2" && break
      [ "$try" = 3 ] && { echo "grpcurl shim: $address does not serve $2" >&2; exit 1; }
      sleep 0.5
    done
    "$PSD_BUF" curl --schema "$PSD_PROTO_DIR" --list-methods | grep "^$2/"
    exit 0 ;;
  "") echo "grpcurl shim: no method" >&2; exit 64 ;;
esac
method=$1
if [ "$data" = "@" ]; then
  tmp=$(mktemp)
  cat >"$tmp"
  data="@$tmp"
fi
if [ "$format" = text ] && [ -n "$data" ]; then
  json=$(mktemp)
  if [ "${data:0:1}" = "@" ]; then
    /usr/bin/python3 "$here/grpcurl_shim_format.py" text-to-json "$method" <"${data:1}" >"$json"
  else
    printf '%s' "$data" | /usr/bin/python3 "$here/grpcurl_shim_format.py" text-to-json "$method" >"$json"
  fi
  data="@$json"
fi
[ -n "$data" ] && args+=(-d "$data")
args+=(${headers[@]+"${headers[@]}"})
out=$(mktemp)
"$PSD_BUF" "${args[@]}" "$scheme://$address/$method" >"$out"
/usr/bin/python3 "$here/grpcurl_shim_format.py" proto-names "$method" <"$out"
