// The flags that psd_server and psd_worker share as members of the cluster
// (the coordinator has none of them), defined in every binary that links
// this library:
//   --coordinator         the coordinator's host:port (required)
//   --heartbeat_ms        heartbeat period to the coordinator (default 250)
//   --connect_timeout_ms  how long to try to reach it (default 10000)
// --help lists them with the binary's own flags (see RunProcess in
// common/process_main.h). --advertise stays in each main file: its help text
// names the kind of member.
#ifndef PSD_COMMON_MEMBER_FLAGS_H_
#define PSD_COMMON_MEMBER_FLAGS_H_

#include "absl/status/statusor.h"
#include "common/membership.h"

namespace psd {

// MembershipOptions for a member of `role`, with coordinator, heartbeat_ms
// and connect_timeout_ms from the flags; the caller sets the rest
// (advertised_address, fill_register, fill_heartbeat).
// Errors: INVALID_ARGUMENT "--coordinator is required (host:port of
// psd_coordinator)" when --coordinator is empty.
absl::StatusOr<MembershipOptions> MembershipOptionsFromFlags(
    MembershipOptions::Role role);

}  // namespace psd

#endif  // PSD_COMMON_MEMBER_FLAGS_H_
