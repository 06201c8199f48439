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
constexpr RoleSet kActors = Bit(Role::kUser) | Bit(Role::kAdmin);
constexpr RoleSet kPeople = kActors | Bit(Role::kViewer);
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
    add("psd.v1.ParameterServer", {"Pull"}, kWorker | kActors);
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
        {"SubmitJob", "CancelJob", "DeleteJob", "SnapshotJob"}, kActors);
    add("psd.v1.JobService", {"GetJob", "ListJobs", "WatchJob"}, kPeople);
    return m;
  }();
  return *roles;
}

// Open to anyone: probes, and grpcurl finding the (public) API.
bool OpenMethod(absl::string_view method) {
  return absl::StartsWith(method, "/grpc.health.v1.Health/") ||
         absl::StartsWith(method, "/grpc.reflection.");
}

std::string RoleList(RoleSet roles) {
  std::vector<absl::string_view> names;
  for (Role role : {Role::kCoordinator, Role::kServer, Role::kWorker,
                    Role::kUser, Role::kViewer, Role::kAdmin}) {
    if (roles & Bit(role)) names.push_back(RoleName(role));
  }
  // "a", "a or b", "a, b or c".
  if (names.size() <= 2) return absl::StrJoin(names, " or ");
  return absl::StrCat(
      absl::StrJoin(names.begin(), names.end() - 1, ", "), " or ",
      names.back());
}

// AuthContext properties the authorizer records for CallerOf. Set on the
// server side only: a peer cannot send them.
constexpr char kCallerRole[] = "psd_caller_role";
constexpr char kCallerName[] = "psd_caller_name";

class RoleAuthorizer final : public grpc::AuthMetadataProcessor {
 public:
  explicit RoleAuthorizer(std::shared_ptr<const TokenTable> tokens)
      : tokens_(std::move(tokens)) {}

  // Runs inline on gRPC's thread: it only looks up tables.
  bool IsBlocking() const override { return false; }

  grpc::Status Process(const InputMetadata& auth_metadata,
                       grpc::AuthContext* context, OutputMetadata* consumed,
                       OutputMetadata*) override {
    auto path = auth_metadata.find(":path");
    absl::string_view method =
        path == auth_metadata.end()
            ? absl::string_view()
            : absl::string_view(path->second.data(), path->second.size());
    std::optional<SpiffeId> caller;
    std::string described;
    auto authorization = auth_metadata.find("authorization");
    if (authorization != auth_metadata.end() && !OpenMethod(method)) {
      absl::string_view value(authorization->second.data(),
                              authorization->second.size());
      std::optional<absl::string_view> token = BearerToken(value);
      if (!token.has_value()) {
        return Refuse(absl::UnauthenticatedError(
            "authorization: not 'Bearer <token>'"));
      }
      if (tokens_ == nullptr) {
        return Refuse(absl::UnauthenticatedError(
            "authorization: this process takes no bearer tokens (it runs "
            "without --auth_tokens_file); use a client certificate"));
      }
      caller = tokens_->Find(*token);
      if (!caller.has_value()) {
        return Refuse(absl::UnauthenticatedError(
            "authorization: unknown bearer token"));
      }
      described = absl::StrCat("the bearer token of ", PrincipalName(*caller));
      consumed->insert({"authorization", std::string(value)});
    } else {
      for (const grpc::string_ref& value :
           context->FindPropertyValues("peer_spiffe_id")) {
        described.assign(value.data(), value.size());
      }
      if (!described.empty()) caller = ParseSpiffeId(described);
    }
    absl::Status decided = AuthorizeCall(method, caller, described);
    if (!decided.ok()) return Refuse(decided);
    if (caller.has_value()) {
      context->AddProperty(kCallerRole, std::string(RoleName(caller->role)));
      context->AddProperty(kCallerName, caller->name);
    }
    return grpc::Status::OK;
  }

 private:
  static grpc::Status Refuse(const absl::Status& status) {
    return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                        std::string(status.message()));
  }

  const std::shared_ptr<const TokenTable> tokens_;
};

}  // namespace

absl::Status AuthorizeCall(absl::string_view method,
                           const std::optional<SpiffeId>& peer,
                           absl::string_view peer_uri) {
  if (OpenMethod(method)) return absl::OkStatus();
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

std::shared_ptr<grpc::AuthMetadataProcessor> MakeRoleAuthorizer(
    std::shared_ptr<const TokenTable> tokens) {
  return std::make_shared<RoleAuthorizer>(std::move(tokens));
}

std::optional<SpiffeId> CallerOf(const grpc::ServerContextBase& context) {
  std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (auth == nullptr) return std::nullopt;
  std::string role, name;
  for (const grpc::string_ref& value : auth->FindPropertyValues(kCallerRole)) {
    role.assign(value.data(), value.size());
  }
  for (const grpc::string_ref& value : auth->FindPropertyValues(kCallerName)) {
    name.assign(value.data(), value.size());
  }
  if (role.empty()) return std::nullopt;
  return ParseSpiffeId(absl::StrCat("spiffe://psd/", role,
                                    name.empty() ? "" : "/", name));
}

std::string CallerIdentity(const grpc::ServerContextBase& context) {
  std::optional<SpiffeId> caller = CallerOf(context);
  return caller.has_value() ? SpiffeUri(*caller) : std::string();
}

std::string PrincipalName(const SpiffeId& id) {
  return id.name.empty() ? std::string(RoleName(id.role))
                         : absl::StrCat(RoleName(id.role), "/", id.name);
}

std::string SpiffeUri(const SpiffeId& id) {
  return absl::StrCat("spiffe://psd/", PrincipalName(id));
}

absl::Status AuthorizeJobAction(const std::optional<SpiffeId>& caller,
                                absl::string_view submitted_by,
                                absl::string_view action,
                                absl::string_view job_id) {
  if (!caller.has_value() || caller->role == Role::kAdmin) {
    return absl::OkStatus();
  }
  const std::string who = PrincipalName(*caller);
  if (caller->role == Role::kUser && !submitted_by.empty() &&
      who == submitted_by) {
    return absl::OkStatus();
  }
  return absl::PermissionDeniedError(absl::StrCat(
      "job \"", job_id, "\" was submitted by ",
      submitted_by.empty() ? "an unauthenticated caller (plaintext)"
                           : submitted_by,
      "; only ", submitted_by.empty() ? "" : "its submitter or ",
      "an admin may ", action, " it; the caller is ", who));
}

}  // namespace psd
