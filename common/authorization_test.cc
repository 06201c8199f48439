#include "common/authorization.h"

#include <catch2/catch.hpp>

#include "absl/strings/match.h"
#include "common/transport_security.h"

namespace psd {
namespace {

TEST_CASE("ParseSpiffeId: psd identities, and everything else refused",
          "[authorization]") {
  auto server = ParseSpiffeId("spiffe://psd/server");
  REQUIRE(server.has_value());
  CHECK(server->role == Role::kServer);
  CHECK(server->name.empty());
  auto alice = ParseSpiffeId("spiffe://psd/user/alice");
  REQUIRE(alice.has_value());
  CHECK(alice->role == Role::kUser);
  CHECK(alice->name == "alice");
  CHECK(ParseSpiffeId("spiffe://psd/worker/w-1.a_b:7").has_value());
  for (const char* bad :
       {"", "spiffe://psd/", "spiffe://psd/root", "spiffe://other/server",
        "https://psd/server", "spiffe://psd/user", "spiffe://psd/admin/",
        "spiffe://psd/user/a/b", "spiffe://psd/user/al ice",
        "spiffe://psd/server/x%2F"}) {
    INFO(bad);
    CHECK_FALSE(ParseSpiffeId(bad).has_value());
  }
}

absl::Status Call(const char* method, const char* uri) {
  return AuthorizeCall(method, ParseSpiffeId(uri), uri);
}

TEST_CASE("AuthorizeCall: each role reaches its own methods only",
          "[authorization]") {
  CHECK(Call("/psd.v1.ParameterServer/Push", "spiffe://psd/worker").ok());
  CHECK(Call("/psd.v1.ParameterServer/Replicate", "spiffe://psd/server").ok());
  CHECK(Call("/psd.v1.ParameterServer/DropJob", "spiffe://psd/coordinator")
            .ok());
  CHECK(Call("/psd.v1.JobService/SubmitJob", "spiffe://psd/user/alice").ok());
  CHECK(Call("/psd.v1.Coordinator/GetClusterView", "spiffe://psd/worker").ok());

  absl::Status replicate =
      Call("/psd.v1.ParameterServer/Replicate", "spiffe://psd/worker");
  CHECK(replicate.code() == absl::StatusCode::kPermissionDenied);
  CHECK(absl::StrContains(replicate.message(), "needs the role server"));
  CHECK(absl::StrContains(replicate.message(), "spiffe://psd/worker"));

  absl::Status drop =
      Call("/psd.v1.ParameterServer/DropJob", "spiffe://psd/user/alice");
  CHECK(drop.code() == absl::StatusCode::kPermissionDenied);
  CHECK(absl::StrContains(drop.message(), "coordinator"));
  CHECK(Call("/psd.v1.JobService/CancelJob", "spiffe://psd/worker").code() ==
        absl::StatusCode::kPermissionDenied);
  CHECK(Call("/psd.v1.ParameterServer/NoSuchMethod", "spiffe://psd/admin/root")
            .code() == absl::StatusCode::kPermissionDenied);
}

TEST_CASE("AuthorizeCall: no identity is UNAUTHENTICATED, but health is open",
          "[authorization]") {
  absl::Status anonymous =
      AuthorizeCall("/psd.v1.JobService/CancelJob", std::nullopt, "");
  CHECK(anonymous.code() == absl::StatusCode::kUnauthenticated);
  CHECK(absl::StrContains(anonymous.message(), "CancelJob"));
  CHECK(Call("/psd.v1.ParameterServer/Push", "spiffe://evil/worker").code() ==
        absl::StatusCode::kUnauthenticated);
  CHECK(AuthorizeCall("/grpc.health.v1.Health/Check", std::nullopt, "").ok());
  CHECK(AuthorizeCall(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            std::nullopt, "")
            .ok());
}

}  // namespace
}  // namespace psd
