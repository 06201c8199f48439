// Who may call which psd method, decided from the caller's certificate
// (common/transport_security.h) or bearer token (common/auth_tokens.h) on
// every call, before the method runs.
//
// The rules, by the caller's role (the URI SAN spiffe://psd/<role>/..., or
// the token's role: submit = user, view = viewer, admin = admin):
//   psd.v1.ParameterServer
//     Push, AttachSharedMemory                       worker
//     Pull                                           worker, serve, user,
//                                                    admin (psd_ctl export;
//                                                    a user only of a job
//                                                    it submitted, see
//                                                    AuthorizeJobAction;
//                                                    psd_serve --job: any)
//     CreateJob, DropJob, RestoreJob, SetView,
//     SnapshotJob, SyncBackup                        coordinator
//     Replicate, InstallPartition                    server (in the job's
//                                                    view: checked by the
//                                                    server, see
//                                                    ServerInfo.identity)
//     GetServerStatus, ListSnapshots                 coordinator, server,
//                                                    user, viewer, admin
//   psd.v1.EmbeddingServer
//     PullRows, PushRows                             worker
//     CreateTable, DropTable, SnapshotTable          worker, coordinator
//                                                    (a sparse job's tables)
//     TableStatus                                    worker, coordinator,
//                                                    server, user, viewer,
//                                                    admin (psd_ctl tables)
//     ReplicateRows                                  server
//     ExportRows                                     worker, serve, user,
//                                                    admin (psd_ctl export;
//                                                    a user only of a job
//                                                    it submitted, as Pull)
//   psd.v1.Coordinator
//     RegisterServer                                 server
//     RegisterWorker, ReportProgress                 worker
//     Heartbeat                                      server, worker
//     GetClusterView                                 any role (serve too)
//   psd.v1.JobService
//     SubmitJob                                      user, admin
//     CancelJob, DeleteJob, SnapshotJob,
//     ReshardJob                                     user (its own jobs,
//                                                    AuthorizeJobAction),
//                                                    admin
//     GetJob, ListJobs, WatchJob                     user, viewer, admin,
//                                                    serve
//   inference.GRPCInferenceService (psd_serve)      user, viewer, admin,
//                                                    worker
//   grpc.health.v1.Health, grpc.reflection.*         anyone, even without a
//                                                    certificate (probes,
//                                                    grpcurl's discovery)
// A method not listed is refused. A call without a psd identity, or with
// an unknown or malformed bearer token, gets UNAUTHENTICATED; a call whose
// role is not allowed gets PERMISSION_DENIED naming the method, the
// caller's identity and the roles it needs. A token, when sent, decides
// over the certificate.
#ifndef PSD_COMMON_AUTHORIZATION_H_
#define PSD_COMMON_AUTHORIZATION_H_

#include <memory>
#include <optional>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/auth_tokens.h"
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
// :path, the "authorization" metadata (checked against `tokens`; null: no
// token is taken) and the peer's "peer_spiffe_id", and applies
// AuthorizeCall. Thread-safe.
std::shared_ptr<grpc::AuthMetadataProcessor> MakeRoleAuthorizer(
    std::shared_ptr<const TokenTable> tokens);

// Who made the call, found as MakeRoleAuthorizer found it (its bearer
// token, else its certificate; the processor cannot pass it on: gRPC shares
// one AuthContext among a connection's calls); nullopt on a plaintext port
// (--insecure: no identities, everyone may do anything) and for callers
// without a psd identity (only the open health and reflection calls).
std::optional<SpiffeId> CallerOf(const grpc::ServerContextBase& context);

// SpiffeUri(*CallerOf(context)), or "" when CallerOf is nullopt.
std::string CallerIdentity(const grpc::ServerContextBase& context);

// "user/alice", "admin/root", "viewer/dash": how a job records who
// submitted it (JobStatus.submitted_by).
std::string PrincipalName(const SpiffeId& id);

// "spiffe://psd/" + PrincipalName(id): a certificate's identity
// (ServerInfo.identity).
std::string SpiffeUri(const SpiffeId& id);

// Whether `caller` may `action` ("cancel", "delete", "snapshot", "export")
// job `job_id`, submitted by `submitted_by` (a PrincipalName; empty when
// it was submitted on a plaintext cluster). Yes for an admin, for the
// submitter, and for anyone on a plaintext port (caller nullopt).
// Errors: PERMISSION_DENIED naming the job, its submitter and the caller.
absl::Status AuthorizeJobAction(const std::optional<SpiffeId>& caller,
                                absl::string_view submitted_by,
                                absl::string_view action,
                                absl::string_view job_id);

}  // namespace psd

#endif  // PSD_COMMON_AUTHORIZATION_H_
