#!/usr/bin/env bash
# Users, tokens and job ownership on a mutual-TLS cluster (issue 15), with
# real processes (replication factor 2) and certificates from
# deploy/make_certs.sh:
#  - a bearer token (--auth_tokens_file on the coordinator and servers,
#    psd_ctl --token_file over TLS without a client certificate) stands for
#    its role: a view token lists but cannot submit; a submit token submits,
#    and its job records user/<name>;
#  - one user cannot cancel, delete or export another's job
#    (PERMISSION_DENIED naming the submitter); the submitter and an admin
#    can;
#  - an unknown token, and no credential at all, are UNAUTHENTICATED;
#  - --max_jobs bounds the jobs held (RESOURCE_EXHAUSTED);
#  - a server certificate outside the job's view cannot Replicate to one of
#    its servers; the view's own identity passes that check.
source tests/cluster_lib.sh

CERTS=$WORK/certs
deploy/make_certs.sh "$CERTS" coordinator server worker user-alice user-bob \
  admin-root server-rogue
TOKENS=$WORK/tokens
carol=$(openssl rand -hex 24)
dash=$(openssl rand -hex 24)
umask 077
cat >"$TOKENS" <<TOK
# TOKEN ROLE NAME
$carol submit carol
$dash view dashboards
TOK
echo "$carol" >"$WORK/carol.token"
echo "$dash" >"$WORK/dash.token"
openssl rand -hex 24 >"$WORK/unknown.token"

write_short_job "$WORK/short.textproto"
TLS_DIR=$CERTS
COORDINATOR_ARGS=(--auth_tokens_file="$TOKENS" --max_jobs=3 --replication_factor=2)
SERVER_ARGS=(--auth_tokens_file="$TOKENS")
start_cluster users 2 2

# as WHO ARGS...: psd_ctl as certificate user-alice, user-bob, admin-root,
# or as token carol, dash, unknown (TLS without a client certificate), or
# none (TLS, no credential).
as() {
  local who=$1 id=()
  shift
  case "$who" in
    user-* | admin-*) id=(--tls_cert_file="$CERTS/$who.pem" --tls_key_file="$CERTS/$who.key") ;;
    none) ;;
    *) id=(--token_file="$WORK/$who.token") ;;
  esac
  "$BIN/deploy/psd_ctl" --coordinator="$COORDINATOR" --timeout_s=10 \
    --tls_ca_file="$CERTS/ca.pem" "${id[@]}" "$@" 2>&1
}
# refused WHAT PATTERN ARGS...: the psd_ctl call fails and says PATTERN.
refused() {
  local what=$1 pattern=$2 out
  shift 2
  out=$(as "$@") && fail "$what succeeded: $out"
  echo "$out" | grep_all -E "$pattern" || fail "$what: $out"
}

# Alice's job, trained and exported by her.
alice_job=$(as user-alice submit "$WORK/short.textproto") || fail "alice submit: $alice_job"
as user-alice watch "$alice_job" >"$WORK/alice.watch" || fail "alice's job did not succeed"
as user-alice export "$alice_job" "$WORK/alice.safetensors" >/dev/null ||
  fail "alice cannot export her own job"
as user-alice get "$alice_job" | grep_all '"submittedBy": "user/alice"' ||
  fail "alice's job does not record her: $(as user-alice get "$alice_job")"

# Bob may see it but not act on it.
as user-bob get "$alice_job" >/dev/null || fail "bob cannot get alice's job"
for action in cancel delete; do
  refused "bob's $action of alice's job" \
    "PERMISSION_DENIED.*submitted by user/alice; only its submitter or an admin may $action it; the caller is user/bob" \
    user-bob "$action" "$alice_job"
done
refused "bob's export of alice's job" "PERMISSION_DENIED.*submitted by user/alice.*export" \
  user-bob export "$alice_job" "$WORK/bob.safetensors"
[ ! -s "$WORK/bob.safetensors" ] || fail "bob's export wrote a file"
echo "bob: may get alice's job; may not cancel, delete or export it"

# Tokens.
as dash list | grep_all "\"jobId\": \"$alice_job\"" || fail "the view token cannot list"
refused "a view token's submit" "PERMISSION_DENIED.*needs the role user or admin.*viewer/dashboards" \
  dash submit "$WORK/short.textproto"
refused "an unknown token" "UNAUTHENTICATED.*unknown bearer token" unknown list
refused "no credential" "UNAUTHENTICATED" none list
carol_job=$(as carol submit "$WORK/short.textproto") || fail "carol (token) submit: $carol_job"
as carol get "$carol_job" | grep_all '"submittedBy": "user/carol"' || fail "carol's job does not record her"
refused "alice's cancel of carol's job" "PERMISSION_DENIED.*submitted by user/carol" \
  user-alice cancel "$carol_job"
as carol cancel "$carol_job" >/dev/null || fail "carol cannot cancel her own job"
echo "tokens: view lists but cannot submit; submit token owns its job; unknown and none refused"

# Replicate to a server of alice's job (finished, still held there), as a
# server certificate outside its view, and as the view's own identity.
if [ -n "${PSD_BUF:-}" ] && [ -x "$PSD_BUF" ]; then
  export BUF_CACHE_DIR="$WORK/buf-cache"
  server=$(as user-alice view | python3 -c '
import json, sys
print(json.load(sys.stdin)["servers"][0]["address"])')
  replicate_as() {
    "$PSD_BUF" curl --protocol grpc --cacert "$CERTS/ca.pem" --cert "$CERTS/$1.pem" \
      --key "$CERTS/$1.key" -d "{\"jobId\":\"$alice_job\",\"viewEpoch\":1,\"step\":0}" \
      "https://$server/psd.v1.ParameterServer/Replicate" 2>&1
  }
  out=$(replicate_as server-rogue) && fail "a server outside the view replicated: $out"
  echo "$out" | grep_all -i "permission_denied" || fail "Replicate from outside the view: $out"
  echo "$out" | grep_all "spiffe://psd/server/rogue is not a server of job" ||
    fail "Replicate from outside the view: $out"
  out=$(replicate_as server) || true
  if echo "$out" | grep_all -i "permission_denied"; then
    fail "the view's own identity was refused: $out"
  fi
  echo "replication: a server certificate outside the view refused; the view's passes ($out)"
  # The token as grpcurl sends it (docs/OPERATIONS.md), through the shim.
  grpcurl() {
    PSD_PROTO_DIR="$PWD/proto" tests/grpcurl_shim.sh "$@"
  }
  out=$(grpcurl -cacert "$CERTS/ca.pem" -H "authorization: Bearer $dash" \
    -d "{\"job_id\": \"$alice_job\"}" "$COORDINATOR" psd.v1.JobService/GetJob 2>&1) ||
    fail "grpcurl with the view token: $out"
  echo "$out" | grep_all '"submitted_by": "user/alice"' || fail "grpcurl with the view token: $out"
  out=$(grpcurl -cacert "$CERTS/ca.pem" -H "authorization: Bearer $dash" \
    -d "{\"job_id\": \"$alice_job\"}" "$COORDINATOR" psd.v1.JobService/CancelJob 2>&1) &&
    fail "the view token cancelled a job: $out"
  echo "$out" | grep_all -i "permission_denied" || fail "CancelJob with the view token: $out"
  echo "grpcurl -H 'authorization: Bearer ...': the view token gets a job, cannot cancel it"
else
  echo "SKIP (Replicate checks): buf not available (PSD_BUF unset); tests/run_tests.sh installs it"
fi

# Limits: alice's and carol's jobs are held, with --max_jobs=3.
third=$(as user-bob submit "$WORK/short.textproto") || fail "a third job was refused: $third"
refused "a fourth job" "RESOURCE_EXHAUSTED.*--max_jobs 3" user-bob submit "$WORK/short.textproto"
as user-bob cancel "$third" >/dev/null || fail "bob cannot cancel his own job"
# An admin may act on anyone's job.
as admin-root delete "$alice_job" >/dev/null || fail "the admin cannot delete alice's job"
as user-bob submit "$WORK/short.textproto" >/dev/null || fail "no room after a delete"
echo "limits: the fourth job refused (RESOURCE_EXHAUSTED), room again after the admin's delete"

echo "PASS"
