#!/bin/bash
# //worker:click_data_tool end to end: writes a small generated data set
# as Criteo TSV, prints its Bayes levels as one JSON line, refuses bad
# flags (exit 2) and an unwritable --out_dir (exit 1); --help exits 0.
set -u
TOOL=worker/click_data_tool
OUT="${TEST_TMPDIR:-$(mktemp -d)}/data"
mkdir -p "$OUT"
fail() { echo "FAIL: $*" >&2; exit 1; }

"$TOOL" --fields=5 --dense=3 --train=300 --test=120 --seed=4 \
  --out_dir="$OUT" >"$OUT/stdout" || fail "tool exited with $?"
grep -Eq '^\{"train": 300, "test": 120, "fields": 5, "dense": 3, "bayes_log_loss": 0\.[0-9]+, "bayes_auc": 0\.[0-9]+, "bayes_accuracy": 0\.[0-9]+, "majority_rate": 0\.[0-9]+\}$' \
  "$OUT/stdout" || { cat "$OUT/stdout"; fail "unexpected JSON line"; }
[ "$(wc -l <"$OUT/train.tsv")" -eq 300 ] || fail "train.tsv: not 300 lines"
[ "$(wc -l <"$OUT/test.tsv")" -eq 120 ] || fail "test.tsv: not 120 lines"
# label, 3 integers, 5 categoricals: 9 tab-separated columns.
awk -F'\t' 'NF != 9 || ($1 != 0 && $1 != 1) { bad = 1 } END { exit bad }' \
  "$OUT/train.tsv" || fail "train.tsv: a line is not label + 3 + 5 columns"
cut -f5-9 "$OUT/train.tsv" | tr '\t' '\n' | grep -v '^$' |
  grep -Evq '^[0-9a-f]{8,}$' && fail "train.tsv: a categorical column is not hex"
# The same options give the same files.
mkdir -p "$OUT/again"
"$TOOL" --fields=5 --dense=3 --train=300 --test=120 --seed=4 \
  --out_dir="$OUT/again" >/dev/null || fail "second run failed"
cmp -s "$OUT/train.tsv" "$OUT/again/train.tsv" || fail "not deterministic"

"$TOOL" --fields=0 --out_dir="$OUT" 2>"$OUT/err"
[ $? -eq 2 ] || fail "--fields=0: want exit 2"
grep -q 'fields: must be in' "$OUT/err" || fail "--fields=0: no message"
"$TOOL" --fields=2 2>/dev/null
[ $? -eq 2 ] || fail "no --out_dir: want exit 2"
"$TOOL" --fields=2 --train=1 --test=1 --out_dir="$OUT/missing/dir" 2>"$OUT/err"
[ $? -eq 1 ] || fail "missing --out_dir: want exit 1"
grep -q 'missing/dir/train.tsv: cannot create' "$OUT/err" || fail "no path in the error"
# --help lists the tool's flags (and exits as absl's --help does).
"$TOOL" --help >"$OUT/help" 2>&1
grep -q -- '--out_dir' "$OUT/help" || fail "--help does not list --out_dir"
echo PASS
