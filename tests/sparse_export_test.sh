#!/usr/bin/env bash
# Export of a sparse job's tables (issue 25): `psd_ctl export JOB FILE`
# writes the dense part to FILE and each embedding table to
# FILE-stem.TABLE.safetensors ("ids" I64 [n] ascending, "rows" F32 [n, dim],
# the initializer in the metadata), reading every shard once through
# EmbeddingServer.ExportRows. On a mutual-TLS cluster of 2 servers (R=1) a
# small SPARSE_LR job and a small DLRM job run to SUCCEEDED; then:
#  * every table file has unique ascending ids < num_rows, rows of the
#    table's dim, finite values, and as many rows as `psd_ctl tables`
#    counts; its metadata names the table, dim, num_rows and initializer;
#  * exporting again gives byte-identical files (and checksums);
#  * the dense part is written as before (its tensors are there);
#  * an admin may export alice's job; bob (another user) may not;
#  * an unknown job fails with a message naming it;
#  * on 3 servers with R=2 (each shard on 2 servers, read once) the
#    export holds bitwise the same rows as on 2 servers with R=1.
source tests/cluster_lib.sh
source tests/sparse_lib.sh
source tests/replicated_lib.sh

TLS_DIR=$WORK/certs
deploy/make_certs.sh "$TLS_DIR" coordinator server worker user-alice user-bob admin-root >/dev/null

cat >"$WORK/lr.textproto" <<'JOB'
name: "lr"
model {
  kind: SPARSE_LR
  tables { name: "weights" num_rows: 1000000 dim: 1
           initializer { kind: ZERO } }
  fields { name: "f0" table: "weights" }
  fields { name: "f1" table: "weights" }
  fields { name: "f2" table: "weights" }
  fields { name: "f3" table: "weights" }
}
dataset { name: "planted-clicks" train_limit: 20000 test_limit: 2000 }
optimizer { kind: ADAGRAD learning_rate: 0.1 }
consistency: BSP
batch_size: 250
epochs: 2
workers: 2
seed: 42
JOB

write_dlrm_job "$WORK/dlrm.textproto" dlrm 20000 2000 250 2

# check JOB TABLES...: exports JOB twice and checks the table files.
check() {
  local job=$1
  shift
  "${CTL[@]}" watch "$job" >"$WORK/$job.watch" || { tail -5 "$WORK/$job.watch" >&2; fail "job $job did not succeed"; }
  "${CTL[@]}" tables "$job" >"$WORK/$job.tables" || { cat "$WORK/$job.tables" >&2; fail "tables of $job"; }
  "${CTL[@]}" export "$job" "$WORK/$job.safetensors" >"$WORK/$job.export" ||
    fail "export $job"
  cat "$WORK/$job.export"
  mkdir -p "$WORK/$job.again"
  "${CTL[@]}" export "$job" "$WORK/$job.again/$job.safetensors" >"$WORK/$job.export2" ||
    fail "export $job again"
  local t
  for t in "$@"; do
    cmp "$WORK/$job.$t.safetensors" "$WORK/$job.again/$job.$t.safetensors" ||
      fail "two exports of table $t of $job differ"
  done
  # The dense part's checksum (one "crc32:" on the output, as before) and
  # each table's.
  [ "$(grep -c 'crc32:' "$WORK/$job.export")" = 1 ] || fail "want one crc32: line"
  [ "$(grep -o 'crc32:[0-9a-f]*\|rows: [0-9a-f]*)' "$WORK/$job.export")" = \
    "$(grep -o 'crc32:[0-9a-f]*\|rows: [0-9a-f]*)' "$WORK/$job.export2")" ] ||
    fail "two exports of $job print different checksums"
  python3 - "$WORK" "$job" "$@" <<'PY' || fail "table files of $job"
import json, math, re, struct, sys
work, job, tables = sys.argv[1], sys.argv[2], sys.argv[3:]

def read(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    meta = header.pop("__metadata__", {})
    out = {}
    for name, t in header.items():
        b, e = t["data_offsets"]
        out[name] = (t["dtype"], t["shape"], body[b:e])
    return meta, out

# The dense part is there, as before.
meta, dense = read(f"{work}/{job}.safetensors")
assert dense and all(t[0] == "F32" for t in dense.values()), dense.keys()
want_rows = {}
for line in open(f"{work}/{job}.tables"):
    m = re.match(r"table (\S+): \d+ shards held, (\d+) rows", line)
    if m:
        want_rows[m.group(1)] = int(m.group(2))
printed = {}
for line in open(f"{work}/{job}.export"):
    m = re.match(r"table (\S+): (\d+) rows of dim (\d+) to \S+ \(CRC-32 of ids and rows: [0-9a-f]{8}\)$", line)
    if m:
        printed[m.group(1)] = int(m.group(2))
for table in tables:
    meta, t = read(f"{work}/{job}.{table}.safetensors")
    assert set(t) == {"ids", "rows"}, t.keys()
    dim, num_rows, n = int(meta["dim"]), int(meta["num_rows"]), int(meta["rows"])
    assert meta["table"] == table and meta["job_id"] == job, meta
    init = json.loads(meta["initializer"])
    assert "kind" in init, init
    dtype, shape, ids_b = t["ids"]
    assert dtype == "I64" and shape == [n], (dtype, shape, n)
    ids = struct.unpack(f"<{n}q", ids_b)
    assert all(a < b for a, b in zip(ids, ids[1:])), "ids not ascending and unique"
    assert n == 0 or (ids[0] >= 0 and ids[-1] < num_rows), (ids[:1], ids[-1:])
    dtype, shape, rows_b = t["rows"]
    assert dtype == "F32" and shape == [n, dim], (dtype, shape)
    rows = struct.unpack(f"<{n * dim}f", rows_b)
    assert all(math.isfinite(v) for v in rows), "a value is not finite"
    assert n > 0 and n == want_rows[table] == printed[table], (n, want_rows, printed)
    # Trained rows moved away from the initializer (ZERO for the LR table).
    assert any(v != 0 for v in rows), "every row is still zero"
    print(f"{job} table {table}: {n} rows of dim {dim}, ids {ids[0]}..{ids[-1]}, "
          f"initializer {meta['initializer']}")
PY
}

start_replicated a 2 2 1
lr=$(submit "$WORK/lr.textproto")
check "$lr" weights
dlrm=$(submit "$WORK/dlrm.textproto")
check "$dlrm" users items

# An admin may export alice's job; bob, another user, may not.
"$BIN/deploy/psd_ctl" --coordinator="$COORDINATOR" $(tls_flags "$TLS_DIR" admin-root) \
  export "$lr" "$WORK/admin.safetensors" >"$WORK/admin.out" || fail "admin export"
cmp "$WORK/$lr.weights.safetensors" "$WORK/admin.weights.safetensors" ||
  fail "the admin's export differs"
if "$BIN/deploy/psd_ctl" --coordinator="$COORDINATOR" $(tls_flags "$TLS_DIR" user-bob) \
  export "$lr" "$WORK/bob.safetensors" >"$WORK/bob.out" 2>&1; then
  fail "bob exported alice's job"
fi
grep -q PERMISSION_DENIED "$WORK/bob.out" || { cat "$WORK/bob.out"; fail "bob: no PERMISSION_DENIED"; }
[ ! -e "$WORK/bob.weights.safetensors" ] || fail "bob got a table file"
echo "bob refused: $(head -1 "$WORK/bob.out" | cut -c1-160)"

# An unknown job: a clear message naming it.
if "${CTL[@]}" export no-such-job "$WORK/none.safetensors" >"$WORK/none.out" 2>&1; then
  fail "exported an unknown job"
fi
grep -q "NOT_FOUND.*no-such-job" "$WORK/none.out" || { cat "$WORK/none.out"; fail "no NOT_FOUND naming the job"; }
echo "unknown job: $(head -1 "$WORK/none.out")"
stop_cluster

# same_rows A B: two table files hold the same ids and rows (bitwise).
same_rows() {
  python3 - "$1" "$2" <<'PY' || fail "$1 and $2 hold different rows"
import json, struct, sys
def tensors(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    return {k: data[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]
            for k, v in header.items() if k != "__metadata__"}
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
assert a == b, (len(a["ids"]) // 8, len(b["ids"]) // 8)
PY
}

# --- R=2 on 3 servers (3 shards, 2 replicas each): a BSP job's tables are
# a function of the job, so the export, each shard read from one of its
# two replicas, holds the same rows as on 2 servers.
start_replicated b 3 2 2
lr2=$(submit "$WORK/lr.textproto")
"${CTL[@]}" watch "$lr2" >"$WORK/b.watch" || fail "job $lr2 on 3 servers did not succeed"
mkdir -p "$WORK/b1"
"${CTL[@]}" export "$lr2" "$WORK/b1/lr.safetensors" >"$WORK/b1.export" || fail "export on 3 servers"
grep '^table' "$WORK/b1.export"
same_rows "$WORK/$lr.weights.safetensors" "$WORK/b1/lr.weights.safetensors"
stop_cluster
echo PASS
