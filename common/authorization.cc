#include "common/authorization.h"

#include <initializer_list>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace psd {
namespace {

// A set of roles as bits.
using RoleSet = unsigned;

constexpr RoleSet Bit(Role role) { return 1u << static_cast<unsigned>(role); }

constexpr RoleSet kCoordinator = Bit(Role::kCoordinator);
constexpr RoleSet kServer = Bit(Role::kServer);
constexpr RoleSet kWorker = Bit(Role::kWorker);
constexpr RoleSet kPeople = Bit(Role::kUser) | Bit(Role::kAdmin);
constexpr RoleSet kAnyRole = kCoordinator | kServer | kWorker | kPeople;

// Who may call each method; the table of authorization.h.
const absl::flat_hash_map<std::string, RoleSet>& MethodRoles() {
  static const auto* const roles = [] {
    auto* m = new absl::flat_hash_map<std::string, RoleSet>;
    auto add = [m](absl::string_view service,
                   std::initializer_list<absl::string_view> methods,
                   RoleSet who) {
      for (absl::string_view method : methods) {
        (*m)[absl::StrCat("/", service, "/", method)] = who;
      }
    };
    add("psd.v1.ParameterServer", {"Push", "AttachSharedMemory"}, kWorker);
    // Users read a job's parameters to export them (psd_ctl export).
    add("psd.v1.ParameterServer", {"Pull"}, kWorker | kPeople);
    add("psd.v1.ParameterServer",
        {"CreateJob", "DropJob", "RestoreJob", "SetView", "SnapshotJob",
         "SyncBackup"},
        kCoordinator);
    add("psd.v1.ParameterServer", {"Replicate", "InstallPartition"}, kServer);
    add("psd.v1.ParameterServer", {"GetServerStatus", "ListSnapshots"},
        kCoordinator | kServer | kPeople);
    add("psd.v1.EmbeddingServer",
        {"CreateTable", "PullRows", "PushRows", "DropTable", "TableStatus",
         "SnapshotTable"},
        kWorker);
    add("psd.v1.EmbeddingServer", {"ReplicateRows"}, kServer);
    add("psd.v1.Coordinator", {"RegisterServer"}, kServer);
    add("psd.v1.Coordinator", {"RegisterWorker", "ReportProgress"}, kWorker);
    add("psd.v1.Coordinator", {"Heartbeat"}, kServer | kWorker);
    add("psd.v1.Coordinator", {"GetClusterView"}, kAnyRole);
    add("psd.v1.JobService",
        {"SubmitJob", "GetJob", "ListJobs", "CancelJob", "WatchJob",
         "DeleteJob", "SnapshotJob"},
        kPeople);
    return m;
  }();
  return *roles;
}

std::string RoleList(RoleSet roles) {
  std::vector<absl::string_view> names;
  for (Role role : {Role::kCoordinator, Role::kServer, Role::kWorker,
                    Role::kUser, Role::kAdmin}) {
    if (roles & Bit(role)) names.push_back(RoleName(role));
  }
  return absl::StrJoin(names, " or ");
}

class RoleAuthorizer final : public grpc::AuthMetadataProcessor {
 public:
  // Runs inline on gRPC's thread: it only looks up a table.
  bool IsBlocking() const override { return false; }

  grpc::Status Process(const InputMetadata& auth_metadata,
                       grpc::AuthContext* context, OutputMetadata*,
                       OutputMetadata*) override {
    auto path = auth_metadata.find(":path");
    absl::string_view method =
        path == auth_metadata.end()
            ? absl::string_view()
            : absl::string_view(path->second.data(), path->second.size());
    std::string uri;
    for (const grpc::string_ref& value :
         context->FindPropertyValues("peer_spiffe_id")) {
      uri.assign(value.data(), value.size());
    }
    absl::Status decided = AuthorizeCall(
        method, uri.empty() ? std::nullopt : ParseSpiffeId(uri), uri);
    if (decided.ok()) return grpc::Status::OK;
    return grpc::Status(static_cast<grpc::StatusCode>(decided.code()),
                        std::string(decided.message()));
  }
};

}  // namespace

absl::Status AuthorizeCall(absl::string_view method,
                           const std::optional<SpiffeId>& peer,
                           absl::string_view peer_uri) {
  // Open to anyone: probes, and grpcurl finding the (public) API.
  if (absl::StartsWith(method, "/grpc.health.v1.Health/") ||
      absl::StartsWith(method, "/grpc.reflection.")) {
    return absl::OkStatus();
  }
  if (!peer.has_value()) {
    return absl::UnauthenticatedError(absl::StrCat(
        method, " needs a client certificate with a psd identity (a URI SAN "
        "spiffe://psd/<role>/...); the caller showed ",
        peer_uri.empty() ? "none" : absl::StrCat("'", peer_uri, "'")));
  }
  const auto& table = MethodRoles();
  auto it = table.find(method);
  if (it == table.end()) {
    return absl::PermissionDeniedError(
        absl::StrCat("no role may call ", method));
  }
  if ((it->second & Bit(peer->role)) == 0) {
    return absl::PermissionDeniedError(absl::StrCat(
        method, " needs the role ", RoleList(it->second), "; the caller is ",
        peer_uri, " (role ", RoleName(peer->role), ")"));
  }
  return absl::OkStatus();
}

std::shared_ptr<grpc::AuthMetadataProcessor> MakeRoleAuthorizer() {
  return std::make_shared<RoleAuthorizer>();
}

}  // namespace psd
