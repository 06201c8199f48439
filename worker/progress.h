// Reporting a rank's progress to the coordinator, shared by psd_worker and
// the Python client (worker/python/psd).
#ifndef PSD_WORKER_PROGRESS_H_
#define PSD_WORKER_PROGRESS_H_

#include <atomic>

#include "common/membership.h"
#include "common/proto.h"

namespace psd {

// Sends `request` (member_id is filled in) to the coordinator's
// ReportProgress, 5 s deadline. Returns true when training must stop: the
// job was cancelled, or the coordinator refuses the report (NOT_FOUND,
// FAILED_PRECONDITION: it does not know the job or this rank, so nobody
// would use the work). Other failures are logged and return false (the data
// plane does not need the coordinator), except that a final report
// (request.done(), or request.released(): an elastic worker handing a rank
// on) is retried every 250 ms for up to 2 minutes unless `cancel` becomes
// true: it is what ends the job or hands the rank on.
bool SendProgress(Membership* membership, ReportProgressRequest request,
                  const std::atomic<bool>& cancel);

}  // namespace psd

#endif  // PSD_WORKER_PROGRESS_H_
