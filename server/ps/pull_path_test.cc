// ParameterStore pulls: waiting for a step, deadlines, cancellation,
// DropJob, and the pulls refused before any work (bad steps, partitions,
// sizes).
#include "server/ps/parameter_store.h"

#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/tensor.h"
#include "server/ps/parameter_store_test_util.h"

namespace psd {
namespace store_test {
namespace {

TEST_CASE("ParameterStore: a pull waits for the step until the last rank "
          "pushes",
          "[store][pull]") {
  Fixture f(2);
  // Nothing pushed yet: a pull of step 1 with a short deadline times out.
  PullResponse early;
  absl::Status status =
      f.store.Pull(f.MakePull(1), absl::Now() + absl::Milliseconds(50),
                   [] { return false; }, &early);
  CHECK(status.code() == absl::StatusCode::kDeadlineExceeded);

  absl::Notification waiting;  // the pull has checked the step and waits
  absl::Notification done;
  absl::Status pulled;
  PullResponse response;
  std::thread puller([&] {
    pulled = f.store.Pull(
        f.MakePull(1), absl::InfiniteFuture(),
        [&] {
          if (!waiting.HasBeenNotified()) waiting.Notify();
          return false;
        },
        &response);
    done.Notify();
  });
  waiting.WaitForNotification();
  f.PushOk(1, 0);
  CHECK_FALSE(done.HasBeenNotified());  // rank 0 has not pushed yet
  f.PushOk(0, 0);
  puller.join();
  REQUIRE(pulled.ok());
  CHECK(response.step() == 1);
  CHECK(Bitwise(Fixture::Decode(response), f.Latest()));
}

TEST_CASE("ParameterStore: a pull with a deadline in the past times out",
          "[store][pull]") {
  Fixture f(2);
  PullResponse response;
  absl::Status status =
      f.store.Pull(f.MakePull(1), absl::Now() - absl::Seconds(1),
                   [] { return false; }, &response);
  CHECK(status.code() == absl::StatusCode::kDeadlineExceeded);
  // A step already reached is returned even then.
  PullResponse now;
  CHECK(f.store
            .Pull(f.MakePull(0), absl::Now() - absl::Seconds(1),
                  [] { return false; }, &now)
            .ok());
}

TEST_CASE("ParameterStore: a pull ends with CANCELLED when the client cancels",
          "[store][pull]") {
  Fixture f(2);
  PullResponse response;
  absl::Status status = f.store.Pull(f.MakePull(1), absl::InfiniteFuture(),
                                     [] { return true; }, &response);
  CHECK(status.code() == absl::StatusCode::kCancelled);
}

TEST_CASE("ParameterStore: DropJob wakes a waiting pull with CANCELLED",
          "[store][pull]") {
  Fixture f(2);
  absl::Notification waiting;
  absl::Status pulled;
  std::thread puller([&] {
    PullResponse response;
    pulled = f.store.Pull(
        f.MakePull(1), absl::InfiniteFuture(),
        [&] {
          if (!waiting.HasBeenNotified()) waiting.Notify();
          return false;
        },
        &response);
  });
  waiting.WaitForNotification();
  REQUIRE(f.store.DropJob(kJob).ok());
  puller.join();
  CHECK(pulled.code() == absl::StatusCode::kCancelled);

  // The job is gone.
  CHECK(f.store.DropJob(kJob).code() == absl::StatusCode::kNotFound);
  CHECK(f.store.Push(f.MakePush(0, 0)).status().code() ==
        absl::StatusCode::kNotFound);
  PullResponse response;
  CHECK(f.store
            .Pull(f.MakePull(0, true), absl::InfiniteFuture(),
                  [] { return false; }, &response)
            .code() == absl::StatusCode::kNotFound);
}

// Issue 23 item 1: a pull's step is a peer's number; -1 once matched the
// "no previous weights" sentinel and read an empty vector (SIGSEGV).
TEST_CASE("ParameterStore: pulls of a negative step, of no partition, of a "
          "partition twice or of too much are refused",
          "[store][pull][bounds]") {
  Fixture f(2);
  PullResponse response;
  auto pull = [&](const PullRequest& request) {
    return f.store.Pull(request, absl::Now() + absl::Seconds(5),
                        [] { return false; }, &response);
  };
  absl::Status status = pull(f.MakePull(-1));
  CHECK(status.code() == absl::StatusCode::kInvalidArgument);
  CHECK(StartsWith(status.message(), "step: must be >= 0, got -1"));

  PullRequest empty = f.MakePull(0);
  empty.clear_partition_ids();
  status = pull(empty);
  CHECK(status.code() == absl::StatusCode::kInvalidArgument);
  CHECK(StartsWith(status.message(), "partition_ids: empty"));

  PullRequest twice = f.MakePull(0);
  twice.add_partition_ids(0);
  status = pull(twice);
  CHECK(status.code() == absl::StatusCode::kInvalidArgument);
  CHECK(StartsWith(status.message(),
                   absl::StrCat("partition_ids[", twice.partition_ids_size() - 1,
                                "]: partition 0 appears twice")));

  // After a step is applied the previous weights are kept; -1 still matches
  // nothing, and the finished job's (dropped training state) neither.
  f.PushOk(0, 0);
  f.PushOk(1, 0);
  CHECK(pull(f.MakePull(-1)).code() == absl::StatusCode::kInvalidArgument);
  CHECK(pull(f.MakePull(0)).ok());
  CHECK(pull(f.MakePull(1)).ok());
  REQUIRE(f.store.DropJob(kJob, /*keep_parameters=*/true).ok());
  CHECK(pull(f.MakePull(-1)).code() == absl::StatusCode::kInvalidArgument);
  CHECK(pull(f.MakePull(0)).code() == absl::StatusCode::kFailedPrecondition);
  f.Latest();
}

TEST_CASE("ParameterStore: a pull whose answer would exceed "
          "max_pull_bytes is refused before it is built",
          "[store][pull][bounds]") {
  ParameterStoreOptions options;
  options.max_pull_bytes = 8192;  // two of the test job's 4096-byte partitions
  ParameterStore store(options);
  REQUIRE(store.CreateJob(CreateRequest(Config(1))).ok());
  PullRequest pull;
  pull.set_job_id(kJob);
  pull.set_view_epoch(kEpoch);
  pull.add_partition_ids(0);
  pull.add_partition_ids(1);
  PullResponse response;
  auto run = [&] {
    return store.Pull(pull, absl::Now() + absl::Seconds(5),
                      [] { return false; }, &response);
  };
  CHECK(run().ok());
  pull.add_partition_ids(2);
  absl::Status status = run();
  CHECK(status.code() == absl::StatusCode::kResourceExhausted);
  CHECK(StartsWith(status.message(), "partition_ids: the answer would exceed "
                                     "8192 bytes at partition_ids[2]"));
}

// Issue 14: JobConfig.parameter_dtype = BFLOAT16 pulls half the bytes.
TEST_CASE("ParameterStore: a BFLOAT16 pull returns each weight rounded to "
          "bfloat16, and bad dtypes are refused",
          "[store][pull][bfloat16]") {
  Fixture f(1);
  f.PushOk(0, 0);
  PullResponse wide, half;
  PullRequest request = f.MakePull(1);
  REQUIRE(f.store.Pull(request, absl::Now() + absl::Seconds(5),
                       [] { return false; }, &wide).ok());
  request.set_dtype(BFLOAT16);
  REQUIRE(f.store.Pull(request, absl::Now() + absl::Seconds(5),
                       [] { return false; }, &half).ok());
  REQUIRE(wide.parameters_size() == half.parameters_size());
  for (int i = 0; i < wide.parameters_size(); ++i) {
    const Tensor& w = wide.parameters(i).tensor();
    const Tensor& h = half.parameters(i).tensor();
    CHECK(h.dtype() == BFLOAT16);
    CHECK(h.data().size() * 2 == w.data().size());
    const int64_t n = w.shape(0);
    Tensor expected;
    EncodeBfloat16(Float32Data(w), n, &expected);
    CHECK(h.data() == expected.data());
  }

  PullResponse response;
  request.set_dtype(static_cast<DType>(7));
  absl::Status status = f.store.Pull(request, absl::Now() + absl::Seconds(5),
                                     [] { return false; }, &response);
  CHECK(status.code() == absl::StatusCode::kInvalidArgument);
  CHECK(StartsWith(status.message(), "dtype: want FLOAT32 or BFLOAT16"));

  request.set_dtype(BFLOAT16);
  request.mutable_shared_region()->set_name("/psd-test");
  status = f.store.Pull(request, absl::Now() + absl::Seconds(5),
                        [] { return false; }, &response);
  CHECK(status.code() == absl::StatusCode::kInvalidArgument);
  CHECK(StartsWith(status.message(), "dtype: BFLOAT16 cannot be pulled "
                                     "through shared_region"));
}

}  // namespace
}  // namespace store_test
}  // namespace psd
