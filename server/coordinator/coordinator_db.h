// The coordinator's persistent job table: a RocksDB in its --data_dir.
#ifndef PSD_SERVER_COORDINATOR_COORDINATOR_DB_H_
#define PSD_SERVER_COORDINATOR_COORDINATOR_DB_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/proto.h"

namespace rocksdb {
class DB;
}

namespace psd {

// Jobs by id (key "job/<id>", value a serialized JobRecord). Writes are
// synced, so a job acknowledged to the user survives a crash. Thread-safe
// (RocksDB is).
class CoordinatorDb {
 public:
  // Opens or creates the database at `dir`. Errors: UNAVAILABLE naming the
  // path and RocksDB's message.
  static absl::StatusOr<std::unique_ptr<CoordinatorDb>> Open(
      const std::string& dir);
  ~CoordinatorDb();

  absl::Status Put(const JobRecord& record);
  absl::Status Delete(const std::string& job_id);
  // Every job, in key order. A record that does not parse is a DATA_LOSS
  // error naming its key: never silently dropped.
  absl::StatusOr<std::vector<JobRecord>> LoadAll();

 private:
  explicit CoordinatorDb(std::unique_ptr<rocksdb::DB> db);
  std::unique_ptr<rocksdb::DB> db_;
};

}  // namespace psd

#endif  // PSD_SERVER_COORDINATOR_COORDINATOR_DB_H_
