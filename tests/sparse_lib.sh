# Shared by the tests of sparse jobs (issue 25): the small DLRM job they
# train on generated click data (4 fields over two 10^6 x 8 tables, 4
# dense features, bottom MLP 16-8, top MLP 16-1, Adagrad 0.02, BSP, 2
# workers).
# write_dlrm_job FILE NAME TRAIN TEST BATCH EPOCHS [LINE...]: writes the
# job, with the config LINEs (e.g. a snapshot policy) at the end.
write_dlrm_job() {
  local file=$1 name=$2 train=$3 test=$4 batch=$5 epochs=$6
  shift 6
  cat >"$file" <<JOB
name: "$name"
model {
  kind: DLRM
  init_seed: 1
  tables { name: "users" num_rows: 1000000 dim: 8
           initializer { kind: NORMAL scale: 0.05 seed: 7 }
           optimizer { kind: ADAGRAD learning_rate: 0.02 } }
  tables { name: "items" num_rows: 1000000 dim: 8
           initializer { kind: NORMAL scale: 0.05 seed: 8 }
           optimizer { kind: ADAGRAD learning_rate: 0.02 } }
  fields { name: "f0" table: "users" }
  fields { name: "f1" table: "users" }
  fields { name: "f2" table: "items" }
  fields { name: "f3" table: "items" }
  num_dense_features: 4
  bottom_mlp: [16, 8]
  top_mlp: [16]
}
dataset { name: "planted-clicks" train_limit: $train test_limit: $test }
optimizer { kind: ADAGRAD learning_rate: 0.02 }
consistency: BSP
batch_size: $batch
epochs: $epochs
workers: 2
seed: 42
JOB
  local line
  for line in "$@"; do echo "$line" >>"$file"; done
}

# sums JOB: waits for SUCCEEDED; prints the dense part's export checksum
# and each table's checksum (psd_ctl tables), on one line.
sums() {
  "${CTL[@]}" watch "$1" >"$WORK/$1.watch" || { tail -5 "$WORK/$1.watch" >&2; fail "job $1 did not succeed"; }
  "${CTL[@]}" export "$1" "$WORK/$1.safetensors" >"$WORK/$1.export" || fail "export $1"
  "${CTL[@]}" tables "$1" >"$WORK/$1.tables" || { cat "$WORK/$1.tables" >&2; fail "tables of $1"; }
  echo "$(grep -o 'crc32:[0-9a-f]*' "$WORK/$1.export")" \
    $(sed -n 's/^table \([a-z]*\):.*checksum \([0-9a-f]*\)$/\1:\2/p' "$WORK/$1.tables")
}
