// Fuzzes the job config parser and validation: the text the psd_ctl CLI and
// LoadJobConfigFile read (protobuf text format, or JSON when it starts with
// '{'), and the binary JobConfig a client sends to the coordinator's
// SubmitJob, then what CoordinatorState::SubmitJob does with it
// (ApplyJobConfigDefaults, ValidateJobConfig, the job's step counts) and what
// starting the job computes (ModelParameters, BuildPlacement).
//
// Invariants checked: a parse error is INVALID_ARGUMENT naming the source;
// defaults are idempotent; a valid config stays valid and equal through
// text and JSON round trips, its step counts are within the documented
// bounds, and its placement covers every parameter exactly.
#include <cstdint>
#include <string>
#include <vector>

#include <google/protobuf/text_format.h>
#include <google/protobuf/util/field_comparator.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/message_differencer.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/job_config.h"
#include "common/placement.h"
#include "tests/fuzz/fuzz_util.h"

namespace psd {
namespace {

// Makes every -0 float field 0 (protobuf's JSON parser reads -0 as 0;
// psd treats them alike).
void ZeroSigns(google::protobuf::Message* m) {
  const google::protobuf::Reflection* r = m->GetReflection();
  std::vector<const google::protobuf::FieldDescriptor*> fields;
  r->ListFields(*m, &fields);
  for (const google::protobuf::FieldDescriptor* f : fields) {
    using FD = google::protobuf::FieldDescriptor;
    if (f->is_repeated()) {
      for (int i = 0; i < r->FieldSize(*m, f); ++i) {
        if (f->cpp_type() == FD::CPPTYPE_MESSAGE) {
          ZeroSigns(r->MutableRepeatedMessage(m, f, i));
        } else if (f->cpp_type() == FD::CPPTYPE_FLOAT &&
                   r->GetRepeatedFloat(*m, f, i) == 0) {
          r->SetRepeatedFloat(m, f, i, 0.0f);
        }
      }
    } else if (f->cpp_type() == FD::CPPTYPE_MESSAGE) {
      ZeroSigns(r->MutableMessage(m, f));
    } else if (f->cpp_type() == FD::CPPTYPE_FLOAT && r->GetFloat(*m, f) == 0) {
      if (f->has_presence()) {
        r->SetFloat(m, f, 0.0f);
      } else {
        r->ClearField(m, f);
      }
    }
  }
}

// Equal field by field, a NaN equal to a NaN, and -0 to 0.
bool Same(JobConfig a, JobConfig b) {
  ZeroSigns(&a);
  ZeroSigns(&b);
  google::protobuf::util::DefaultFieldComparator comparator;
  comparator.set_treat_nan_as_equal(true);
  google::protobuf::util::MessageDifferencer differencer;
  differencer.set_field_comparator(&comparator);
  return differencer.Compare(a, b);
}

void CheckValid(const JobConfig& config) {
  // What SubmitJob computes.
  const int64_t steps_per_epoch = StepsPerEpoch(config, TrainExamples(config));
  FUZZ_REQUIRE(steps_per_epoch >= 0 && steps_per_epoch <= 60000,
               absl::StrCat(steps_per_epoch));
  FUZZ_REQUIRE(steps_per_epoch * config.epochs() <= kMaxTotalSteps,
               absl::StrCat(steps_per_epoch, " x ", config.epochs()));
  FUZZ_REQUIRE(CheckJobId("name", config.name()).ok(), config.name());
  for (const ParameterSpec& p : ModelParameters(config.model())) {
    ConsistencyOf(config, p.name());
  }
  HasAsyncParameters(config);
  UpdatesPerStep(config);

  // Round trips: text and JSON, as a client would resubmit it (fields
  // unknown to this JobConfig, from a binary input, are not in either).
  JobConfig known = config;
  known.DiscardUnknownFields();
  std::string text;
  FUZZ_REQUIRE(google::protobuf::TextFormat::PrintToString(known, &text),
               "text print");
  absl::StatusOr<JobConfig> from_text = ParseJobConfig(text, "round trip");
  FUZZ_REQUIRE(from_text.ok(), from_text.status().ToString());
  FUZZ_REQUIRE(Same(*from_text, known), text);
  std::string json;
  FUZZ_REQUIRE(google::protobuf::util::MessageToJsonString(known, &json).ok(),
               "json print");
  absl::StatusOr<JobConfig> from_json = ParseJobConfig(json, "round trip");
  FUZZ_REQUIRE(from_json.ok(), from_json.status().ToString());
  FUZZ_REQUIRE(Same(*from_json, known), json);

  // Starting the job: its placement on 1 to 3 shards covers each parameter.
  const std::vector<ParameterSpec> params = ModelParameters(config.model());
  const int32_t shards = 1 + static_cast<int32_t>(config.seed() % 3);
  absl::StatusOr<Placement> placement =
      BuildPlacement(params, config.partition_bytes(), shards);
  FUZZ_REQUIRE(placement.ok(), placement.status().ToString());
  std::vector<int64_t> covered(params.size(), 0);
  for (const Partition& part : placement->partitions()) {
    FUZZ_REQUIRE(part.parameter() >= 0 &&
                     part.parameter() < static_cast<int>(params.size()),
                 part.DebugString());
    FUZZ_REQUIRE(part.num_elements() > 0 &&
                     part.num_elements() * 4 <= config.partition_bytes(),
                 part.DebugString());
    FUZZ_REQUIRE(part.offset() == covered[part.parameter()],
                 part.DebugString());
    covered[part.parameter()] += part.num_elements();
  }
  for (size_t i = 0; i < params.size(); ++i) {
    int64_t n = 1;
    for (int64_t d : params[i].shape()) n *= d;
    FUZZ_REQUIRE(covered[i] == n, params[i].DebugString());
  }
}

void Check(JobConfig config) {
  // As CoordinatorState::SubmitJob.
  ApplyJobConfigDefaults(&config);
  JobConfig again = config;
  ApplyJobConfigDefaults(&again);
  FUZZ_REQUIRE(Same(again, config),
               "ApplyJobConfigDefaults is not idempotent");
  const absl::Status valid = ValidateJobConfig(config);
  if (!valid.ok()) {
    // Malformed, or too big a model (a size limit).
    FUZZ_REQUIRE(valid.code() == absl::StatusCode::kInvalidArgument ||
                     valid.code() == absl::StatusCode::kResourceExhausted,
                 valid.ToString());
    fuzz::RequireClearError(valid);
    return;
  }
  CheckValid(config);
}

}  // namespace
}  // namespace psd

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  // A config file (text or JSON), as psd_ctl and LoadJobConfigFile read it.
  absl::StatusOr<psd::JobConfig> parsed = psd::ParseJobConfig(input, "fuzz");
  if (parsed.ok()) {
    psd::Check(*parsed);
  } else {
    FUZZ_REQUIRE(parsed.status().code() == absl::StatusCode::kInvalidArgument,
                 parsed.status().ToString());
    FUZZ_REQUIRE(absl::StartsWith(parsed.status().message(), "fuzz: "),
                 parsed.status().ToString());
  }
  // The same bytes as a serialized JobConfig, as SubmitJob receives it.
  psd::JobConfig binary;
  if (binary.ParseFromString(input)) psd::Check(binary);
  return 0;
}
