// api_burst: a burst of concurrent job-API calls against a coordinator, for
// tests/control_plane_test.sh (issue 23 item 3). --threads callers, each on
// its own channel, keep --in_flight calls at once for --seconds: SubmitJob
// (with a config the coordinator refuses: no job is made) and ListJobs.
// Prints how many calls got each status code, one "CODE COUNT" line each.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/synchronization/mutex.h"
#include "common/proto.h"
#include "common/rpc.h"

ABSL_FLAG(std::string, coordinator, "", "Coordinator address, host:port.");
ABSL_FLAG(int, threads, 200, "Concurrent callers.");
ABSL_FLAG(int, in_flight, 8, "Calls each caller keeps in flight at once.");
ABSL_FLAG(double, seconds, 5, "How long the burst lasts, s.");

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string address = absl::GetFlag(FLAGS_coordinator);
  if (address.empty()) {
    std::fprintf(stderr, "api_burst: --coordinator is required\n");
    return 2;
  }
  const auto end = std::chrono::steady_clock::now() +
                   std::chrono::milliseconds(static_cast<int64_t>(
                       absl::GetFlag(FLAGS_seconds) * 1000));
  absl::Mutex mu;
  std::map<int, int64_t> codes;
  std::vector<std::thread> threads;
  for (int t = 0; t < absl::GetFlag(FLAGS_threads); ++t) {
    threads.emplace_back([&, t] {
      grpc::ChannelArguments args = psd::ChannelArguments();
      args.SetInt("psd.burst_channel", t);  // a connection per thread
      auto stub = psd::JobService::NewStub(psd::MakeChannel(address, args));
      const psd::ListJobsRequest list_request;
      std::map<int, int64_t> mine;
      const int batch = absl::GetFlag(FLAGS_in_flight);
      psd::JobConfig bad_config;
      bad_config.set_name("not a valid name");
      while (std::chrono::steady_clock::now() < end) {
        // `batch` calls at once, half SubmitJob, half ListJobs.
        std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
        std::vector<psd::SubmitJobResponse> submitted(batch);
        std::vector<psd::ListJobsResponse> listed(batch);
        std::vector<grpc::Status> statuses(batch);
        // A mutex, not absl::BlockingCounter: under --config=tsan, TSan sees
        // absl::Mutex (tests/sanitizers/tsan_runtime), not BlockingCounter.
        absl::Mutex pending_mu;
        int pending = batch;
        auto finish = [&](int i, grpc::Status status) {
          statuses[i] = std::move(status);
          absl::MutexLock lock(&pending_mu);
          --pending;
        };
        for (int i = 0; i < batch; ++i) {
          contexts.push_back(std::make_unique<grpc::ClientContext>());
          contexts.back()->set_deadline(psd::DeadlineIn(std::chrono::seconds(5)));
          if (i % 2 == 0) {
            stub->async()->SubmitJob(contexts.back().get(), &bad_config,
                                     &submitted[i], [&finish, i](grpc::Status s) {
                                       finish(i, std::move(s));
                                     });
          } else {
            stub->async()->ListJobs(contexts.back().get(), &list_request,
                                    &listed[i], [&finish, i](grpc::Status s) {
                                      finish(i, std::move(s));
                                    });
          }
        }
        {
          absl::MutexLock lock(&pending_mu);
          pending_mu.Await(absl::Condition(
              +[](int* n) { return *n == 0; }, &pending));
        }
        for (const grpc::Status& status : statuses) ++mine[status.error_code()];
      }
      absl::MutexLock lock(&mu);
      for (const auto& [code, n] : mine) codes[code] += n;
    });
  }
  for (std::thread& t : threads) t.join();
  for (const auto& [code, n] : codes) {
    std::printf("%d %lld\n", code, static_cast<long long>(n));
  }
  return 0;
}
