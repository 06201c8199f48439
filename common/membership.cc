#include "common/membership.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/process.h"
#include "common/rpc.h"
#include "common/status.h"

namespace psd {

Membership::Membership(MembershipOptions options, Listener listener)
    : options_(std::move(options)),
      listener_(std::move(listener)),
      stub_(Coordinator::NewStub(MakeChannel(options_.coordinator))) {}

Membership::~Membership() {
  stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

std::string Membership::member_id() const {
  absl::MutexLock lock(&mu_);
  return member_id_;
}

absl::Status Membership::RegisterOnce(int timeout_ms) {
  RegisterRequest request;
  request.set_address(options_.advertised_address);
  request.set_protocol_version(PROTOCOL_VERSION_1);
  if (options_.fill_register) options_.fill_register(&request);
  RegisterResponse response;
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(std::chrono::milliseconds(timeout_ms)));
  context.set_wait_for_ready(true);
  grpc::Status status =
      options_.role == MembershipOptions::Role::kServer
          ? stub_->RegisterServer(&context, request, &response)
          : stub_->RegisterWorker(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  absl::MutexLock lock(&mu_);
  member_id_ = response.member_id();
  return absl::OkStatus();
}

absl::Status Membership::Start() {
  const absl::Time give_up =
      absl::Now() + absl::Milliseconds(options_.connect_timeout_ms);
  absl::Status status;
  while (true) {
    const int left = static_cast<int>(
        absl::ToInt64Milliseconds(give_up - absl::Now()));
    if (left <= 0) break;
    status = RegisterOnce(std::min(left, 2000));
    if (status.ok()) break;
    if (status.code() != absl::StatusCode::kUnavailable &&
        status.code() != absl::StatusCode::kDeadlineExceeded) {
      return status;  // a refusal: retrying will not help
    }
    absl::SleepFor(absl::Milliseconds(200));
  }
  if (!status.ok() || member_id().empty()) {
    return absl::UnavailableError(absl::StrCat(
        "cannot reach the coordinator at ", options_.coordinator, " within ",
        options_.connect_timeout_ms, " ms: ", status.message()));
  }
  Log()->info("registered with coordinator {} as {}", options_.coordinator,
              member_id());
  thread_ = std::thread([this] { HeartbeatLoop(); });
  return absl::OkStatus();
}

void Membership::HeartbeatLoop() {
  bool warned = false;
  while (!stop_.WaitForNotificationWithTimeout(
      absl::Milliseconds(options_.heartbeat_ms))) {
    HeartbeatRequest request;
    request.set_member_id(member_id());
    if (options_.fill_heartbeat) options_.fill_heartbeat(&request);
    HeartbeatResponse response;
    grpc::ClientContext context;
    context.set_deadline(DeadlineIn(std::chrono::milliseconds(2000)));
    grpc::Status status = stub_->Heartbeat(&context, request, &response);
    if (status.ok()) {
      if (warned) Log()->info("coordinator reachable again");
      warned = false;
      listener_(response);
    } else if (status.error_code() == grpc::StatusCode::NOT_FOUND) {
      Log()->warn("coordinator does not know member {}: registering again",
                  request.member_id());
      absl::Status again = RegisterOnce(2000);
      if (!again.ok()) Log()->warn("register again failed: {}", again.ToString());
    } else if (!warned) {
      Log()->warn("heartbeat to {} failed: {} (training goes on; retrying)",
                  options_.coordinator, status.error_message());
      warned = true;
    }
  }
}

}  // namespace psd
