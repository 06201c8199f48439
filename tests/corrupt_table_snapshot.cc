// Test tool: damages the newest N generations of one table's embedding
// snapshots (server/embedding/embedding_snapshot.h) in a server's
// <data_dir>/embeddings, by flipping one byte of each one's first row batch
// (its dedup record when it has no rows), so that reading them gives
// DATA_LOSS. The server must not be running. Prints the generations
// damaged, one a line.
//   corrupt_table_snapshot DB_DIR JOB_ID TABLE N
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <rocksdb/db.h>

#include "server/embedding/embedding_snapshot.h"

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: corrupt_table_snapshot DB_DIR JOB_ID TABLE N\n");
    return 2;
  }
  const std::string job = argv[2], table = argv[3];
  const int n = std::atoi(argv[4]);
  rocksdb::DB* raw = nullptr;
  rocksdb::Status status = rocksdb::DB::Open(rocksdb::Options(), argv[1], &raw);
  if (!status.ok()) {
    std::fprintf(stderr, "corrupt_table_snapshot: %s\n", status.ToString().c_str());
    return 1;
  }
  std::unique_ptr<rocksdb::DB> db(raw);
  // Manifests m/<job>/<table>/<gen>, oldest first.
  const std::string prefix = "m/" + job + "/" + table + "/";
  std::vector<int64_t> gens;
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    gens.push_back(std::atoll(it->key().ToString().substr(prefix.size()).c_str()));
  }
  if (static_cast<int>(gens.size()) < n) {
    std::fprintf(stderr, "corrupt_table_snapshot: %zu generations of %s, want %d\n",
                 gens.size(), table.c_str(), n);
    return 1;
  }
  for (int i = 0; i < n; ++i) {
    const int64_t g = gens[gens.size() - 1 - i];
    std::string key = psd::EmbeddingSnapshotBatchKey(job, table, g, 0);
    std::string value;
    status = db->Get(rocksdb::ReadOptions(), key, &value);
    if (status.IsNotFound()) {
      key = psd::EmbeddingSnapshotDedupKey(job, table, g);
      status = db->Get(rocksdb::ReadOptions(), key, &value);
    }
    if (!status.ok() || value.empty()) {
      std::fprintf(stderr, "corrupt_table_snapshot: %s: %s\n", key.c_str(),
                   status.ToString().c_str());
      return 1;
    }
    value[value.size() / 2] ^= 0x5a;
    rocksdb::WriteOptions wo;
    wo.sync = true;
    status = db->Put(wo, key, value);
    if (!status.ok()) {
      std::fprintf(stderr, "corrupt_table_snapshot: %s\n", status.ToString().c_str());
      return 1;
    }
    std::printf("%lld\n", static_cast<long long>(g));
  }
  return 0;
}
