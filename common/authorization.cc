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
constexpr RoleSet kServe = Bit(Role::kServe);
constexpr RoleSet kActors = Bit(Role::kUser) | Bit(Role::kAdmin);
constexpr RoleSet kPeople = kActors | Bit(Role::kViewer);
constexpr RoleSet kAnyRole =
    kCoordinator | kServer | kWorker | kPeople | kServe;

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
    // Users read a job's parameters to export them (psd_ctl export);
    // psd_serve reads a finished job's to serve it.
    add("psd.v1.ParameterServer", {"Pull"}, kWorker | kActors | kServe);
    add("psd.v1.ParameterServer",
        {"CreateJob", "DropJob", "RestoreJob", "SetView", "SnapshotJob",
         "SyncBackup"},
        kCoordinator);
    add("psd.v1.ParameterServer", {"Replicate", "InstallPartition"}, kServer);
    add("psd.v1.ParameterServer", {"GetServerStatus", "ListSnapshots"},
        kCoordinator | kServer | kPeople);
    // Sparse jobs (issue 25): the coordinator creates and drops a job's
    // tables; people read them (psd_ctl tables).
    add("psd.v1.EmbeddingServer", {"PullRows", "PushRows"}, kWorker);
    add("psd.v1.EmbeddingServer", {"CreateTable", "DropTable", "SnapshotTable"},
        kWorker | kCoordinator);
    add("psd.v1.EmbeddingServer", {"TableStatus"},
        kWorker | kCoordinator | kServer | kPeople);
    add("psd.v1.EmbeddingServer", {"ReplicateRows"}, kServer);
    // Export of a sparse job's tables (psd_ctl export): a user only of a
    // job it submitted (EmbeddingService::ExportRows checks).
    add("psd.v1.EmbeddingServer", {"ExportRows"},
        kWorker | kActors | kServe);
    add("psd.v1.Coordinator", {"RegisterServer"}, kServer);
    add("psd.v1.Coordinator", {"RegisterWorker", "ReportProgress"}, kWorker);
    add("psd.v1.Coordinator", {"Heartbeat"}, kServer | kWorker);
    add("psd.v1.Coordinator", {"GetClusterView"}, kAnyRole);
    add("psd.v1.JobService",
        {"SubmitJob", "CancelJob", "DeleteJob", "SnapshotJob", "ReshardJob"},
        kActors);
    add("psd.v1.JobService", {"GetJob", "ListJobs", "WatchJob"},
        kPeople | kServe);
    // psd_serve (server/serving): the Open Inference Protocol, for people
    // and programs with a psd identity.
    add("inference.GRPCInferenceService",
        {"ServerLive", "ServerReady", "ServerMetadata", "ModelReady",
         "ModelMetadata", "ModelInfer"},
        kPeople | kWorker);
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
  for (Role role : kAllRoles) {
    if (roles & Bit(role)) names.push_back(RoleName(role));
  }
  // "a", "a or b", "a, b or c".
  if (names.size() <= 2) return absl::StrJoin(names, " or ");
  return absl::StrCat(
      absl::StrJoin(names.begin(), names.end() - 1, ", "), " or ",
      names.back());
}

// Who a caller is: the bearer token of its "authorization" metadata
// (`authorization`, null when it sent none) when it sent one, else its
// certificate's psd identity (`certificate_uri`, empty when none); sets
// `described` to how errors name it. Errors: UNAUTHENTICATED for a token
// that is malformed or unknown, or sent to a process without `tokens`.
absl::StatusOr<std::optional<SpiffeId>> IdentifyCaller(
    const absl::string_view* authorization, const std::string& certificate_uri,
    const TokenTable* tokens, std::string* described) {
  if (authorization == nullptr) {
    *described = certificate_uri;
    if (certificate_uri.empty()) return std::optional<SpiffeId>();
    return ParseSpiffeId(certificate_uri);
  }
  std::optional<absl::string_view> token = BearerToken(*authorization);
  if (!token.has_value()) {
    return absl::UnauthenticatedError("authorization: not 'Bearer <token>'");
  }
  if (tokens == nullptr) {
    return absl::UnauthenticatedError(
        "authorization: this process takes no bearer tokens (it runs "
        "without --auth_tokens_file); use a client certificate");
  }
  std::optional<SpiffeId> caller = tokens->Find(*token);
  if (!caller.has_value()) {
    return absl::UnauthenticatedError("authorization: unknown bearer token");
  }
  *described = absl::StrCat("the bearer token of ", PrincipalName(*caller));
  return caller;
}

// The URI of the peer's certificate ("peer_spiffe_id"), "" when none.
std::string CertificateUri(const grpc::AuthContext& auth) {
  std::string uri;
  for (const grpc::string_ref& value : auth.FindPropertyValues("peer_spiffe_id")) {
    uri.assign(value.data(), value.size());
  }
  return uri;
}

// Note: gRPC gives every call of a connection the connection's AuthContext
// (one object, shared), so the processor must not add properties to it:
// concurrent calls would race, and properties would pile up per call.
// CallerOf identifies the caller again from the call's own metadata.
class RoleAuthorizer final : public grpc::AuthMetadataProcessor {
 public:
  explicit RoleAuthorizer(std::shared_ptr<const TokenTable> tokens)
      : tokens_(std::move(tokens)) {}

  // Runs inline on gRPC's thread: it only looks up tables.
  bool IsBlocking() const override { return false; }

  grpc::Status Process(const InputMetadata& auth_metadata,
                       grpc::AuthContext* context, OutputMetadata*,
                       OutputMetadata*) override {
    auto path = auth_metadata.find(":path");
    absl::string_view method =
        path == auth_metadata.end()
            ? absl::string_view()
            : absl::string_view(path->second.data(), path->second.size());
    if (OpenMethod(method)) return grpc::Status::OK;
    absl::string_view authorization;
    auto header = auth_metadata.find("authorization");
    if (header != auth_metadata.end()) {
      authorization =
          absl::string_view(header->second.data(), header->second.size());
    }
    std::string described;
    absl::StatusOr<std::optional<SpiffeId>> caller = IdentifyCaller(
        header == auth_metadata.end() ? nullptr : &authorization,
        CertificateUri(*context), tokens_.get(), &described);
    absl::Status decided =
        caller.ok() ? AuthorizeCall(method, *caller, described)
                    : caller.status();
    if (decided.ok()) return grpc::Status::OK;
    return grpc::Status(static_cast<grpc::StatusCode>(decided.code()),
                        std::string(decided.message()));
  }

 private:
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
  const TlsOptions* tls = ConfiguredTls();
  if (tls == nullptr) return std::nullopt;  // plaintext: no identities
  std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (auth == nullptr) return std::nullopt;
  const auto& metadata = context.client_metadata();
  auto header = metadata.find("authorization");
  absl::string_view authorization;
  if (header != metadata.end()) {
    authorization =
        absl::string_view(header->second.data(), header->second.size());
  }
  std::string described;
  // The processor accepted this call, so a token it carries is known.
  absl::StatusOr<std::optional<SpiffeId>> caller = IdentifyCaller(
      header == metadata.end() ? nullptr : &authorization,
      CertificateUri(*auth), tls->tokens.get(), &described);
  return caller.ok() ? *caller : std::nullopt;
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
