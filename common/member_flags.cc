#include "common/member_flags.h"

#include <string>

#include "absl/flags/flag.h"
#include "absl/status/status.h"

ABSL_FLAG(std::string, coordinator, "",
          "Coordinator address, host:port (required).");
ABSL_FLAG(int, heartbeat_ms, 250, "Heartbeat period to the coordinator, ms.");
ABSL_FLAG(int, connect_timeout_ms, 10000,
          "Give up when the coordinator cannot be reached for this long, ms.");

namespace psd {

absl::StatusOr<MembershipOptions> MembershipOptionsFromFlags(
    MembershipOptions::Role role) {
  MembershipOptions options;
  options.coordinator = absl::GetFlag(FLAGS_coordinator);
  if (options.coordinator.empty()) {
    return absl::InvalidArgumentError(
        "--coordinator is required (host:port of psd_coordinator)");
  }
  options.role = role;
  options.heartbeat_ms = absl::GetFlag(FLAGS_heartbeat_ms);
  options.connect_timeout_ms = absl::GetFlag(FLAGS_connect_timeout_ms);
  return options;
}

}  // namespace psd
