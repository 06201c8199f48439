// Test tool: damages the newest snapshot of a job in a psd_server's
// snapshot database (<data_dir>/snapshots), the way a bad disk would: it
// flips bytes in the middle of one partition record's weights, leaving the
// record's length and the manifest alone. The server must then detect it
// (checksum) and fall back to an older snapshot.
//
//   corrupt_snapshot DB_DIR JOB_ID    prints the damaged step
//
// With --manifest, it damages RocksDB's own MANIFEST instead (the file
// CURRENT names): bytes in its first record flip, so its checksum fails and
// the database cannot be opened at all (DATA_LOSS).
//
//   corrupt_snapshot --manifest DB_DIR    prints the damaged file's path
#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>

#include <rocksdb/db.h>

namespace {

int DamageManifest(const std::string& dir) {
  std::ifstream current(dir + "/CURRENT");
  std::string name;
  if (!std::getline(current, name) || name.empty()) {
    std::fprintf(stderr, "corrupt_snapshot: no CURRENT in %s\n", dir.c_str());
    return 1;
  }
  const std::string path = dir + "/" + name;
  std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(file)),
                    std::istreambuf_iterator<char>());
  // A log record: a 7-byte header (CRC-32, length, type), then its data.
  if (!file || bytes.size() < 32) {
    std::fprintf(stderr, "corrupt_snapshot: cannot read %s\n", path.c_str());
    return 1;
  }
  for (size_t i = 12; i < 20; ++i) bytes[i] ^= 0x5a;
  file.clear();
  file.seekp(0);
  file.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!file.flush()) {
    std::fprintf(stderr, "corrupt_snapshot: cannot write %s\n", path.c_str());
    return 1;
  }
  std::printf("%s\n", path.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--manifest") {
    return DamageManifest(argv[2]);
  }
  if (argc != 3) {
    std::fprintf(stderr,
                 "usage: corrupt_snapshot DB_DIR JOB_ID\n"
                 "       corrupt_snapshot --manifest DB_DIR\n");
    return 2;
  }
  rocksdb::DB* raw = nullptr;
  rocksdb::Status status = rocksdb::DB::Open(rocksdb::Options(), argv[1], &raw);
  if (!status.ok()) {
    std::fprintf(stderr, "corrupt_snapshot: %s\n", status.ToString().c_str());
    return 1;
  }
  std::unique_ptr<rocksdb::DB> db(raw);
  const std::string prefix = std::string("p/") + argv[2] + "/";
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions()));
  // The newest step's records sort last: seek past the prefix and step back.
  it->SeekForPrev(prefix + "\xff");
  if (!it->Valid() || it->key().ToString().rfind(prefix, 0) != 0) {
    std::fprintf(stderr, "corrupt_snapshot: no partition records for %s\n", argv[2]);
    return 1;
  }
  const std::string key = it->key().ToString();
  std::string value = it->value().ToString();
  if (value.size() < 64) {
    std::fprintf(stderr, "corrupt_snapshot: record %s too short\n", key.c_str());
    return 1;
  }
  for (size_t i = value.size() / 2; i < value.size() / 2 + 8; ++i) value[i] ^= 0x5a;
  status = db->Put(rocksdb::WriteOptions(), key, value);
  if (!status.ok()) {
    std::fprintf(stderr, "corrupt_snapshot: %s\n", status.ToString().c_str());
    return 1;
  }
  // key = p/<job>/<step>/<id>
  const std::string rest = key.substr(prefix.size());
  std::printf("%lld\n", std::stoll(rest.substr(0, rest.find('/'))));
  return 0;
}
