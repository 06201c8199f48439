#include "worker/progress.h"

#include <chrono>

#include "absl/time/clock.h"
#include "common/process.h"
#include "common/rpc.h"

namespace psd {

bool SendProgress(Membership* membership, ReportProgressRequest request,
                  const std::atomic<bool>& cancel) {
  const absl::Time give_up = absl::Now() + absl::Minutes(2);
  while (true) {
    request.set_member_id(membership->member_id());
    ReportProgressResponse response;
    grpc::ClientContext context;
    context.set_deadline(DeadlineIn(std::chrono::seconds(5)));
    grpc::Status status = membership->coordinator()->ReportProgress(
        &context, request, &response);
    if (status.error_code() == grpc::StatusCode::NOT_FOUND ||
        status.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
      Log()->error("job {}: stopping, the coordinator refuses its progress: {}",
                   request.job_id(), status.error_message());
      return true;
    }
    if (status.ok()) return response.cancelled();
    Log()->warn("progress report failed: {}", status.error_message());
    // A rank's last report (done, or released by an elastic worker) is
    // retried: it ends the job or hands the rank on.
    const bool last = request.done() || request.released();
    if (!last || absl::Now() > give_up || cancel.load()) {
      return false;
    }
    absl::SleepFor(absl::Milliseconds(250));
  }
}

}  // namespace psd
