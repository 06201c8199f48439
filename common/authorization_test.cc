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
  CHECK(Call("/inference.GRPCInferenceService/ModelInfer",
             "spiffe://psd/viewer/dash")
            .ok());
  CHECK(Call("/inference.GRPCInferenceService/ModelInfer",
             "spiffe://psd/coordinator")
            .code() == absl::StatusCode::kPermissionDenied);

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

TEST_CASE("AuthorizeCall: the serve role reads jobs and changes nothing",
          "[authorization]") {
  auto serve = ParseSpiffeId("spiffe://psd/serve/fashion");
  REQUIRE(serve.has_value());
  CHECK(serve->role == Role::kServe);
  for (const char* allowed :
       {"/psd.v1.ParameterServer/Pull", "/psd.v1.JobService/GetJob",
        "/psd.v1.Coordinator/GetClusterView"}) {
    INFO(allowed);
    CHECK(Call(allowed, "spiffe://psd/serve").ok());
  }
  for (const char* refused :
       {"/psd.v1.ParameterServer/Push", "/psd.v1.ParameterServer/Replicate",
        "/psd.v1.JobService/SubmitJob", "/psd.v1.JobService/CancelJob",
        "/psd.v1.Coordinator/RegisterServer",
        "/psd.v1.Coordinator/RegisterWorker",
        "/inference.GRPCInferenceService/ModelInfer"}) {
    INFO(refused);
    CHECK(Call(refused, "spiffe://psd/serve").code() ==
          absl::StatusCode::kPermissionDenied);
  }
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

TEST_CASE("AuthorizeCall: a viewer reads jobs, submits and cancels nothing",
          "[authorization]") {
  const char* viewer = "spiffe://psd/viewer/dash";
  CHECK(Call("/psd.v1.JobService/GetJob", viewer).ok());
  CHECK(Call("/psd.v1.JobService/WatchJob", viewer).ok());
  CHECK(Call("/psd.v1.ParameterServer/GetServerStatus", viewer).ok());
  absl::Status submit = Call("/psd.v1.JobService/SubmitJob", viewer);
  CHECK(submit.code() == absl::StatusCode::kPermissionDenied);
  CHECK(absl::StrContains(submit.message(), "needs the role user or admin"));
  CHECK(Call("/psd.v1.JobService/CancelJob", viewer).code() ==
        absl::StatusCode::kPermissionDenied);
  CHECK(Call("/psd.v1.ParameterServer/Pull", viewer).code() ==
        absl::StatusCode::kPermissionDenied);
  CHECK_FALSE(ParseSpiffeId("spiffe://psd/viewer").has_value());
}

TEST_CASE("TokenTable: parses roles and names, refuses bad lines",
          "[authorization]") {
  auto table = TokenTable::Parse(
      "# comment\n"
      "\n"
      "aaaaaaaaaaaaaaaa1 submit alice\n"
      "  bbbbbbbbbbbbbbbb2\tview dash  \n"
      "cccccccccccccccc3 admin root\n",
      "tokens");
  REQUIRE(table.ok());
  CHECK(table->size() == 3);
  auto alice = table->Find("aaaaaaaaaaaaaaaa1");
  REQUIRE(alice.has_value());
  CHECK(alice->role == Role::kUser);
  CHECK(PrincipalName(*alice) == "user/alice");
  CHECK(table->Find("bbbbbbbbbbbbbbbb2")->role == Role::kViewer);
  CHECK(table->Find("cccccccccccccccc3")->role == Role::kAdmin);
  CHECK_FALSE(table->Find("aaaaaaaaaaaaaaaa").has_value());
  CHECK_FALSE(table->Find("").has_value());

  struct Bad {
    const char* text;
    const char* says;
  };
  for (const Bad& bad : {
           Bad{"aaaaaaaaaaaaaaaa1 submit\n", "tokens:1: expected"},
           Bad{"\nshort submit alice\n", "tokens:2: the token is shorter"},
           Bad{"aaaaaaaaaaaaaaaa1 owner alice\n", "is not admin, submit"},
           Bad{"aaaaaaaaaaaaaaaa1 view al/ice\n", "name 'al/ice'"},
           Bad{"aaaaaaaaaaaaaaaa1 view a\naaaaaaaaaaaaaaaa1 admin b\n",
               "tokens:2: this token is given on an earlier line"},
       }) {
    INFO(bad.text);
    auto parsed = TokenTable::Parse(bad.text, "tokens");
    REQUIRE_FALSE(parsed.ok());
    CHECK(parsed.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(absl::StrContains(parsed.status().message(), bad.says));
  }
  CHECK(TokenTable::Load("/nonexistent/tokens").status().code() ==
        absl::StatusCode::kInvalidArgument);
}

TEST_CASE("BearerToken: the RFC 6750 header form only", "[authorization]") {
  CHECK(BearerToken("Bearer abc").value() == "abc");
  CHECK(BearerToken("bearer  abc ").value() == "abc");
  CHECK_FALSE(BearerToken("Basic abc").has_value());
  CHECK_FALSE(BearerToken("Bearer ").has_value());
  CHECK_FALSE(BearerToken("abc").has_value());
}

TEST_CASE("AuthorizeJobAction: the submitter or an admin, nobody else",
          "[authorization]") {
  auto alice = ParseSpiffeId("spiffe://psd/user/alice");
  auto bob = ParseSpiffeId("spiffe://psd/user/bob");
  auto root = ParseSpiffeId("spiffe://psd/admin/root");
  auto dash = ParseSpiffeId("spiffe://psd/viewer/alice");
  CHECK(AuthorizeJobAction(alice, "user/alice", "cancel", "j-1").ok());
  CHECK(AuthorizeJobAction(root, "user/alice", "cancel", "j-1").ok());
  CHECK(AuthorizeJobAction(std::nullopt, "user/alice", "cancel", "j-1").ok());
  absl::Status denied = AuthorizeJobAction(bob, "user/alice", "cancel", "j-1");
  CHECK(denied.code() == absl::StatusCode::kPermissionDenied);
  CHECK(absl::StrContains(denied.message(),
                          "job \"j-1\" was submitted by user/alice"));
  CHECK(absl::StrContains(denied.message(), "the caller is user/bob"));
  // A viewer of the same name is not the submitter.
  CHECK(AuthorizeJobAction(dash, "user/alice", "export", "j-1").code() ==
        absl::StatusCode::kPermissionDenied);
  // Submitted in plaintext: admins only.
  CHECK(AuthorizeJobAction(alice, "", "delete", "j-1").code() ==
        absl::StatusCode::kPermissionDenied);
}

TEST_CASE("AuthorizeCall: ExportRows for workers, serve, users and admins",
          "[authorization]") {
  const char* method = "/psd.v1.EmbeddingServer/ExportRows";
  CHECK(Call(method, "spiffe://psd/worker").ok());
  CHECK(Call(method, "spiffe://psd/serve/fashion").ok());
  CHECK(Call(method, "spiffe://psd/user/alice").ok());
  CHECK(Call(method, "spiffe://psd/admin/root").ok());
  CHECK(Call(method, "spiffe://psd/viewer/dash").code() ==
        absl::StatusCode::kPermissionDenied);
  CHECK(Call(method, "spiffe://psd/coordinator").code() ==
        absl::StatusCode::kPermissionDenied);
}

}  // namespace
}  // namespace psd
