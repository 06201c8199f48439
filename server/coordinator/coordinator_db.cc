#include "server/coordinator/coordinator_db.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace psd {

namespace {

constexpr char kJobPrefix[] = "job/";

absl::Status FromRocks(const rocksdb::Status& status, const std::string& what) {
  if (status.ok()) return absl::OkStatus();
  if (status.IsNoSpace()) {
    return absl::ResourceExhaustedError(absl::StrCat(what, ": ", status.ToString()));
  }
  return absl::UnavailableError(absl::StrCat(what, ": ", status.ToString()));
}

}  // namespace

CoordinatorDb::CoordinatorDb(std::unique_ptr<rocksdb::DB> db)
    : db_(std::move(db)) {}

CoordinatorDb::~CoordinatorDb() = default;

absl::StatusOr<std::unique_ptr<CoordinatorDb>> CoordinatorDb::Open(
    const std::string& dir) {
  rocksdb::Options options;
  options.create_if_missing = true;
  options.paranoid_checks = true;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status status = rocksdb::DB::Open(options, dir, &raw);
  if (!status.ok()) {
    return FromRocks(status, absl::StrCat("cannot open the job database ", dir));
  }
  return std::unique_ptr<CoordinatorDb>(
      new CoordinatorDb(std::unique_ptr<rocksdb::DB>(raw)));
}

absl::Status CoordinatorDb::Put(const JobRecord& record) {
  rocksdb::WriteOptions options;
  options.sync = true;
  return FromRocks(
      db_->Put(options, absl::StrCat(kJobPrefix, record.status().job_id()),
               record.SerializeAsString()),
      absl::StrCat("saving job ", record.status().job_id()));
}

absl::Status CoordinatorDb::Delete(const std::string& job_id) {
  rocksdb::WriteOptions options;
  options.sync = true;
  return FromRocks(db_->Delete(options, absl::StrCat(kJobPrefix, job_id)),
                   absl::StrCat("deleting job ", job_id));
}

absl::StatusOr<std::vector<JobRecord>> CoordinatorDb::LoadAll() {
  rocksdb::ReadOptions options;
  options.verify_checksums = true;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(options));
  std::vector<JobRecord> records;
  for (it->Seek(kJobPrefix); it->Valid(); it->Next()) {
    const std::string key = it->key().ToString();
    if (!absl::StartsWith(key, kJobPrefix)) break;
    JobRecord record;
    if (!record.ParseFromArray(it->value().data(),
                               static_cast<int>(it->value().size()))) {
      return absl::DataLossError(
          absl::StrCat("job database: record ", key, " does not parse"));
    }
    records.push_back(std::move(record));
  }
  if (!it->status().ok()) {
    return absl::DataLossError(
        absl::StrCat("job database: ", it->status().ToString()));
  }
  return records;
}

}  // namespace psd
