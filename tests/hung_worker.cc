// hung_worker: a worker that is alive but makes no progress, for
// tests/progress_test.sh (issue 23 item 5). It registers with the
// coordinator and sends heartbeats every 250 ms, so it is never expired,
// takes the rank it is given, and never pulls or pushes: what a worker
// stuck in a deadlock, a hung GPU kernel or a stuck filesystem looks like
// to the rest of the cluster. Runs until killed. Prints its member id and,
// once, the job and rank it was given.
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "common/proto.h"
#include "common/rpc.h"

ABSL_FLAG(std::string, coordinator, "", "Coordinator address, host:port.");

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  auto stub = psd::Coordinator::NewStub(
      psd::MakeChannel(absl::GetFlag(FLAGS_coordinator)));
  psd::RegisterRequest request;
  request.set_address("127.0.0.1:1");  // serves nothing
  request.set_protocol_version(psd::PROTOCOL_VERSION_1);
  psd::RegisterResponse registered;
  for (int attempt = 0;; ++attempt) {
    grpc::ClientContext context;
    context.set_deadline(psd::DeadlineIn(std::chrono::seconds(2)));
    if (stub->RegisterWorker(&context, request, &registered).ok()) break;
    if (attempt == 50) {
      std::fprintf(stderr, "hung_worker: cannot register\n");
      return 1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  std::printf("registered as %s\n", registered.member_id().c_str());
  std::fflush(stdout);
  bool told = false;
  while (true) {
    psd::HeartbeatRequest beat;
    beat.set_member_id(registered.member_id());
    psd::HeartbeatResponse response;
    grpc::ClientContext context;
    context.set_deadline(psd::DeadlineIn(std::chrono::seconds(2)));
    if (stub->Heartbeat(&context, beat, &response).ok() && !told &&
        !response.assignment().job_id().empty()) {
      std::printf("given job %s rank %d; not training it\n",
                  response.assignment().job_id().c_str(),
                  response.assignment().rank());
      std::fflush(stdout);
      told = true;
    }
    if (response.cancelled()) {
      std::printf("told to stop its job\n");
      std::fflush(stdout);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
}
