// ParameterStore pushes refused whole, before any of them is taken: a bad
// step, epoch, job or rank, malformed tensors, non-finite values.
#include "server/ps/parameter_store.h"

#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "common/tensor.h"
#include "server/ps/parameter_store_test_util.h"

namespace psd {
namespace store_test {
namespace {

TEST_CASE("ParameterStore: pushes with a bad step, epoch, job or rank are "
          "refused",
          "[store][errors]") {
  Fixture f(2);
  const Params before = f.Latest();

  PushRequest future = f.MakePush(0, 1);
  auto status = f.store.Push(future).status();
  CHECK(status.code() == absl::StatusCode::kFailedPrecondition);
  CHECK(Contains(status.message(), "step"));

  PushRequest epoch = f.MakePush(0, 0);
  epoch.set_view_epoch(kEpoch + 1);  // this server's view is behind
  status = f.store.Push(epoch).status();
  CHECK(status.code() == absl::StatusCode::kUnavailable);
  CHECK(Contains(status.message(), "view_epoch"));
  epoch.set_view_epoch(kEpoch - 1);  // the pusher's view is behind
  status = f.store.Push(epoch).status();
  CHECK(status.code() == absl::StatusCode::kAborted);
  CHECK(Contains(status.message(), "view_epoch"));

  PushRequest job = f.MakePush(0, 0);
  job.set_job_id("no-such-job");
  status = f.store.Push(job).status();
  CHECK(status.code() == absl::StatusCode::kNotFound);
  CHECK(Contains(status.message(), "no-such-job"));

  for (int rank : {-1, 2, 1000}) {
    INFO("rank " << rank);
    status = f.store.Push(f.MakePush(rank, 0)).status();
    CHECK(status.code() == absl::StatusCode::kInvalidArgument);
    CHECK(Contains(status.message(), "worker_rank"));
  }

  PushRequest negative = f.MakePush(0, 0);
  negative.set_step(-1);
  CHECK(f.store.Push(negative).status().code() ==
        absl::StatusCode::kInvalidArgument);

  PushRequest unknown_partition = f.MakePush(0, 0);
  unknown_partition.mutable_gradients(1)->set_partition_id(999);
  status = f.store.Push(unknown_partition).status();
  CHECK(status.code() == absl::StatusCode::kFailedPrecondition);
  CHECK(Contains(status.message(), "gradients[1]"));

  PushRequest twice = f.MakePush(0, 0);
  *twice.add_gradients() = twice.gradients(0);
  status = f.store.Push(twice).status();
  CHECK(status.code() == absl::StatusCode::kInvalidArgument);
  CHECK(Contains(status.message(), "appears twice"));

  int64_t step = -1;
  CHECK(Bitwise(f.Latest(&step), before));
  CHECK(step == 0);
  // Nothing was taken: both ranks can still push step 0, and it applies.
  f.PushOk(0, 0);
  f.PushOk(1, 0);
  f.Latest(&step);
  CHECK(step == 1);
}

TEST_CASE("ParameterStore: malformed gradient tensors are refused, naming the "
          "gradients index",
          "[store][errors]") {
  Fixture f(2);
  const Params before = f.Latest();
  struct Case {
    const char* what;
    void (*spoil)(Tensor*);
    const char* field;
  };
  const Case cases[] = {
      {"wrong shape",
       [](Tensor* t) {
         t->set_shape(0, t->shape(0) + 1);
         t->mutable_data()->append(4, '\0');
       },
       ".shape"},
      {"2-D shape", [](Tensor* t) { t->add_shape(1); }, ".shape"},
      {"wrong dtype", [](Tensor* t) { t->set_dtype(DTYPE_UNSPECIFIED); },
       ".dtype"},
      {"short data", [](Tensor* t) { t->mutable_data()->resize(t->data().size() - 4); },
       ".data"},
      {"ragged data", [](Tensor* t) { t->mutable_data()->resize(t->data().size() - 1); },
       ".data"},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    PushRequest request = f.MakePush(1, 0);
    c.spoil(request.mutable_gradients(2)->mutable_tensor());
    absl::Status status = f.store.Push(request).status();
    CHECK(status.code() == absl::StatusCode::kInvalidArgument);
    CHECK(StartsWith(status.message(), "gradients[2]"));
    CHECK(Contains(status.message(), c.field));
  }
  int64_t step = -1;
  CHECK(Bitwise(f.Latest(&step), before));
  CHECK(step == 0);
}

TEST_CASE("ParameterStore: NaN and Inf gradients are refused and never "
          "applied",
          "[store][errors]") {
  Fixture f(2);
  Fixture reference(2);
  reference.PushOk(0, 0);
  reference.PushOk(1, 0);
  const Params want = reference.Latest();

  const Params before = f.Latest();
  f.PushOk(0, 0);
  const float bad_values[] = {std::numeric_limits<float>::quiet_NaN(),
                              std::numeric_limits<float>::infinity(),
                              -std::numeric_limits<float>::infinity()};
  for (float bad : bad_values) {
    INFO("value " << bad);
    PushRequest request = f.MakePush(1, 0);
    std::string* data = request.mutable_gradients(3)->mutable_tensor()->mutable_data();
    std::memcpy(&(*data)[5 * sizeof(float)], &bad, sizeof(float));
    absl::Status status = f.store.Push(request).status();
    CHECK(status.code() == absl::StatusCode::kInvalidArgument);
    CHECK(StartsWith(status.message(), "gradients[3]"));
    CHECK(Contains(status.message(), "element 5"));
    int64_t step = -1;
    CHECK(Bitwise(f.Latest(&step), before));
    CHECK(step == 0);
  }
  // The rank's valid push is then taken as if the bad ones never came.
  f.PushOk(1, 0);
  int64_t step = -1;
  CHECK(Bitwise(f.Latest(&step), want));
  CHECK(step == 1);
}

TEST_CASE("ParameterStore: a push with one valid and one invalid partition is "
          "rejected whole",
          "[store][errors]") {
  Fixture f(2);
  Fixture reference(2);
  reference.PushOk(0, 0);
  reference.PushOk(1, 0);
  const Params want = reference.Latest();

  // Rank 1: partition 0 valid (but with other values), partition 1 bad.
  PushRequest mixed = f.MakePush(1, 0, /*salt=*/2.0f);
  while (mixed.gradients_size() > 2) mixed.mutable_gradients()->RemoveLast();
  mixed.mutable_gradients(1)->mutable_tensor()->mutable_data()->resize(8);
  CHECK(f.store.Push(mixed).status().code() ==
        absl::StatusCode::kInvalidArgument);
  // Same with the bad partition first and a NaN.
  PushRequest mixed_nan = f.MakePush(1, 0, /*salt=*/2.0f);
  float nan = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(mixed_nan.mutable_gradients(0)->mutable_tensor()->mutable_data()->data(),
              &nan, sizeof(float));
  CHECK(f.store.Push(mixed_nan).status().code() ==
        absl::StatusCode::kInvalidArgument);

  f.PushOk(0, 0);
  auto valid = f.store.Push(f.MakePush(1, 0));
  REQUIRE(valid.ok());
  CHECK_FALSE(valid->duplicate());
  CHECK(valid->applied_step() == 1);
  CHECK(Bitwise(f.Latest(), want));
}

}  // namespace
}  // namespace store_test
}  // namespace psd
