// Who may call which psd method, decided from the caller's certificate
// (common/transport_security.h) on every call, before the method runs.
//
// The rules, by the caller's role (the URI SAN spiffe://psd/<role>/...):
//   psd.v1.ParameterServer
//     Push, AttachSharedMemory                       worker
//     Pull                                           worker, user, admin
//                                                    (psd_ctl export)
//     CreateJob, DropJob, RestoreJob, SetView,
//     SnapshotJob, SyncBackup                        coordinator
//     Replicate, InstallPartition                    server
//     GetServerStatus, ListSnapshots                 coordinator, server,
//                                                    user, admin
//   psd.v1.EmbeddingServer
//     CreateTable, PullRows, PushRows, DropTable,
//     TableStatus, SnapshotTable                     worker
//     ReplicateRows                                  server
//   psd.v1.Coordinator
//     RegisterServer                                 server
//     RegisterWorker, ReportProgress                 worker
//     Heartbeat                                      server, worker
//     GetClusterView                                 any role
//   psd.v1.JobService (every method)                 user, admin
//   grpc.health.v1.Health, grpc.reflection.*         anyone, even without a
//                                                    certificate (probes,
//                                                    grpcurl's discovery)
// A method not listed is refused. A call without a psd identity gets
// UNAUTHENTICATED; a call whose role is not allowed gets PERMISSION_DENIED
// naming the method, the caller's identity and the roles it needs.
#ifndef PSD_COMMON_AUTHORIZATION_H_
#define PSD_COMMON_AUTHORIZATION_H_

#include <memory>
#include <optional>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/transport_security.h"

namespace psd {

// Decides a call to `method` ("/package.Service/Method", gRPC's :path) by
// a caller with identity `peer` (its SPIFFE ID, or nullopt when it showed
// no certificate or one without a psd identity; `peer_uri` is the raw URI
// for messages, empty when none).
// Errors: UNAUTHENTICATED, PERMISSION_DENIED as above.
absl::Status AuthorizeCall(absl::string_view method,
                           const std::optional<SpiffeId>& peer,
                           absl::string_view peer_uri);

// The processor that TLS server credentials run on every call: reads the
// :path and the peer's "peer_spiffe_id" and applies AuthorizeCall.
// Thread-safe (it holds no state).
std::shared_ptr<grpc::AuthMetadataProcessor> MakeRoleAuthorizer();

}  // namespace psd

#endif  // PSD_COMMON_AUTHORIZATION_H_
