#include "server/snapshot/snapshot_format.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/snapshot/rocksdb_util.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "snapshot records are little-endian; this code copies floats "
              "as they are in memory");

namespace psd {
namespace {

std::string StepKeyPart(int64_t step) { return absl::StrFormat("%020d", step); }

}  // namespace

std::string SnapshotManifestKey(const std::string& job_id, int64_t step) {
  return absl::StrCat(ManifestPrefix(job_id), StepKeyPart(step));
}

std::string SnapshotPartitionKey(const std::string& job_id, int64_t step,
                                 int32_t partition_id) {
  return absl::StrCat(PartitionPrefix(job_id, step),
                      absl::StrFormat("%010d", partition_id));
}

// [m/<job>/, m/<job>0): '0' is the byte after '/'.
std::string ManifestPrefix(const std::string& job_id) {
  return absl::StrCat("m/", job_id, "/");
}

std::string PartitionPrefix(const std::string& job_id, int64_t step) {
  return absl::StrCat("p/", job_id, "/", StepKeyPart(step), "/");
}

int64_t ParseStep(rocksdb::Slice s) {
  if (s.size() != 20) return -1;
  int64_t v = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c < '0' || c > '9') return -1;
    if (v > (std::numeric_limits<int64_t>::max() - (c - '0')) / 10) return -1;
    v = v * 10 + (c - '0');
  }
  return v;
}

absl::Status CheckJobId(const std::string& job_id) {
  if (job_id.empty()) {
    return absl::InvalidArgumentError("job_id: empty");
  }
  if (job_id.find('/') != std::string::npos ||
      job_id.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("job_id: \"", job_id, "\" contains '/' or NUL"));
  }
  return absl::OkStatus();
}

absl::Status PrepareForWrite(ShardSnapshot* snapshot, const std::string& what) {
  SnapshotManifest& m = snapshot->manifest;
  const int64_t step = m.step();
  std::map<int32_t, int64_t> num_elements;  // from the placement
  for (const Partition& p : m.placement().partitions()) {
    num_elements[p.id()] = p.num_elements();
  }
  std::sort(snapshot->partitions.begin(), snapshot->partitions.end(),
            [](const PartitionSnapshot& a, const PartitionSnapshot& b) {
              return a.id < b.id;
            });
  for (size_t i = 0; i < snapshot->partitions.size(); ++i) {
    const PartitionSnapshot& p = snapshot->partitions[i];
    const std::string pwhat = absl::StrCat(what, " partition ", p.id);
    if (i > 0 && snapshot->partitions[i - 1].id == p.id) {
      return absl::InvalidArgumentError(
          absl::StrCat(pwhat, ": partition given twice"));
    }
    auto found = num_elements.find(p.id);
    if (p.id < 0 || found == num_elements.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(pwhat, ": not in the manifest's placement"));
    }
    if (static_cast<int64_t>(p.weights.size()) != found->second) {
      return absl::InvalidArgumentError(absl::StrCat(
          pwhat, ": ", p.weights.size(), " weights, but the placement has ",
          found->second, " elements"));
    }
    if (p.weights.empty() ? !p.slots.empty()
                          : p.slots.size() % p.weights.size() != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          pwhat, ": optimizer slots have ", p.slots.size(),
          " elements, not a multiple of the weights' ",
          p.weights.size()));
    }
    if (!p.clocks.empty()) {
      if (static_cast<int64_t>(p.clocks.size()) != m.config().workers()) {
        return absl::InvalidArgumentError(absl::StrCat(
            pwhat, ": ", p.clocks.size(), " clocks, the job has ",
            m.config().workers(), " worker ranks"));
      }
      for (int64_t c : p.clocks) {
        if (c < step) {
          return absl::InvalidArgumentError(absl::StrCat(
              pwhat, ": a rank's clock ", c, " is below the step"));
        }
      }
      if (p.updates < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(pwhat, ": updates < 0"));
      }
    }
  }
  m.clear_async_partitions();
  for (const PartitionSnapshot& p : snapshot->partitions) {
    if (p.clocks.empty()) continue;
    AsyncPartitionClocks* a = m.add_async_partitions();
    a->set_partition_id(p.id);
    a->set_updates(p.updates);
    for (int64_t c : p.clocks) a->add_clocks(c);
  }
  return absl::OkStatus();
}

RecordHeader MakeRecordHeader(const PartitionSnapshot& p) {
  RecordHeader h;
  h.magic = kRecordMagic;
  h.id = p.id;
  h.num_weights = p.weights.size();
  h.num_slot_elements = p.slots.size();
  return h;
}

uint32_t RecordCrc32(const RecordHeader& header, const PartitionSnapshot& p) {
  uint32_t crc = Crc32(0, &header, sizeof(header));
  crc = Crc32(crc, p.weights.data(), sizeof(float) * p.weights.size());
  return Crc32(crc, p.slots.data(), sizeof(float) * p.slots.size());
}

absl::StatusOr<std::string> EncodeManifest(const SnapshotManifest& m,
                                           const std::string& what) {
  std::string manifest_value(4, '\0');
  if (!m.AppendToString(&manifest_value)) {
    return absl::InternalError(
        absl::StrCat(what, ": cannot serialize the manifest"));
  }
  const uint32_t mcrc =
      Crc32(0, manifest_value.data() + 4, manifest_value.size() - 4);
  std::memcpy(&manifest_value[0], &mcrc, 4);
  return manifest_value;
}

absl::StatusOr<SnapshotManifest> DecodeManifest(rocksdb::Slice value,
                                                const std::string& job_id,
                                                int64_t step,
                                                const std::string& what) {
  if (value.size() < 4) {
    return absl::DataLossError(
        absl::StrCat(what, ": manifest truncated (", value.size(), " bytes)"));
  }
  uint32_t stored;
  std::memcpy(&stored, value.data(), 4);
  const uint32_t computed = Crc32(0, value.data() + 4, value.size() - 4);
  if (stored != computed) {
    return absl::DataLossError(
        absl::StrCat(what, ": manifest checksum mismatch (stored ",
                     Hex32(stored), ", computed ", Hex32(computed), ")"));
  }
  SnapshotManifest m;
  if (!m.ParseFromArray(value.data() + 4, static_cast<int>(value.size() - 4))) {
    return absl::DataLossError(absl::StrCat(what, ": manifest does not parse"));
  }
  if (m.job_id() != job_id || m.step() != step) {
    return absl::DataLossError(absl::StrCat(what, ": manifest is of job ",
                                            m.job_id(), " step ", m.step()));
  }
  if (m.partition_ids_size() != m.partition_crc32_size()) {
    return absl::DataLossError(absl::StrCat(
        what, ": manifest has ", m.partition_ids_size(), " partition ids but ",
        m.partition_crc32_size(), " checksums"));
  }
  std::set<int32_t> async;  // partitions with clocks
  for (const AsyncPartitionClocks& a : m.async_partitions()) {
    const std::string awhat =
        absl::StrCat(what, " partition ", a.partition_id(), ": clocks");
    if (std::find(m.partition_ids().begin(), m.partition_ids().end(),
                  a.partition_id()) == m.partition_ids().end()) {
      return absl::DataLossError(
          absl::StrCat(awhat, " of a partition not in the snapshot"));
    }
    if (!async.insert(a.partition_id()).second) {
      return absl::DataLossError(absl::StrCat(awhat, " given twice"));
    }
    if (a.clocks_size() != m.config().workers()) {
      return absl::DataLossError(
          absl::StrCat(awhat, ": ", a.clocks_size(), " of them, the job has ",
                       m.config().workers(), " worker ranks"));
    }
    for (int64_t c : a.clocks()) {
      if (c < step) {
        return absl::DataLossError(absl::StrCat(
            awhat, ": a rank's clock ", c, " is below the snapshot's step"));
      }
    }
    if (a.updates() < 0) {
      return absl::DataLossError(
          absl::StrCat(awhat, ": update count ", a.updates(), " < 0"));
    }
  }
  return m;
}

absl::StatusOr<PartitionSnapshot> DecodePartitionRecord(
    rocksdb::Slice value, int32_t id, int64_t num_elements, uint32_t want_crc,
    const std::string& pwhat) {
  if (value.size() < kRecordHeaderBytes) {
    return absl::DataLossError(
        absl::StrCat(pwhat, ": record truncated (", value.size(), " bytes)"));
  }
  const uint32_t got = Crc32(0, value.data(), value.size());
  if (want_crc != got) {
    return absl::DataLossError(
        absl::StrCat(pwhat, ": checksum mismatch (stored ", Hex32(want_crc),
                     ", computed ", Hex32(got), ")"));
  }
  RecordHeader h;
  std::memcpy(&h, value.data(), sizeof(h));
  if (h.magic != kRecordMagic || h.id != id) {
    return absl::DataLossError(
        absl::StrCat(pwhat, ": record header names partition ", h.id,
                     " (magic ", Hex32(h.magic), ")"));
  }
  if (static_cast<int64_t>(h.num_weights) != num_elements ||
      (h.num_weights == 0 ? h.num_slot_elements != 0
                        : h.num_slot_elements % h.num_weights != 0)) {
    return absl::DataLossError(
        absl::StrCat(pwhat, ": record has ", h.num_weights, " weights and ",
                     h.num_slot_elements, " optimizer-slot elements; the placement has ",
                     num_elements, " elements"));
  }
  // The sizes against the floats the record holds, without overflow: a
  // forged header must not make it allocate what it claims.
  const uint64_t floats = (value.size() - kRecordHeaderBytes) / sizeof(float);
  if ((value.size() - kRecordHeaderBytes) % sizeof(float) != 0 ||
      h.num_weights > floats || h.num_slot_elements != floats - h.num_weights) {
    return absl::DataLossError(absl::StrCat(
        pwhat, ": record is ", value.size(), " bytes, its header says ",
        h.num_weights, " weights and ", h.num_slot_elements,
        " optimizer-slot elements of 4 bytes after ", kRecordHeaderBytes));
  }
  PartitionSnapshot p;
  p.id = id;
  p.weights.resize(h.num_weights);
  p.slots.resize(h.num_slot_elements);
  // std::copy_n, not memcpy: an empty vector's data() may be null (a
  // partition with no optimizer slots), which memcpy must not be given.
  const char* src = value.data() + kRecordHeaderBytes;
  std::copy_n(src, sizeof(float) * h.num_weights,
              reinterpret_cast<char*>(p.weights.data()));
  std::copy_n(src + sizeof(float) * h.num_weights,
              sizeof(float) * h.num_slot_elements,
              reinterpret_cast<char*>(p.slots.data()));
  return p;
}

}  // namespace psd
