#include "common/health.h"

#include <string>

#include <catch2/catch.hpp>
#include <google/protobuf/descriptor.h>
#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "common/rpc.h"

namespace psd {
namespace {

using grpc::health::v1::Health;
using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

grpc::Status Check(Health::Stub* stub, const std::string& service,
                   HealthCheckResponse* response) {
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(std::chrono::seconds(10)));
  HealthCheckRequest request;
  request.set_service(service);
  return stub->Check(&context, request, response);
}

TEST_CASE("Health: SERVING for the server and its services, NOT_FOUND for "
          "others, NOT_SERVING after Shutdown; Watch sees the change",
          "[health]") {
  // Reflection describes services from the generated pool: it is there.
  CHECK(google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(
            "grpc.health.v1.Health") != nullptr);
  auto rpc = StartRpcServer(RpcServerOptions{}, {});
  REQUIRE(rpc.ok());
  auto stub = Health::NewStub(
      MakeChannel(absl::StrCat("127.0.0.1:", rpc->port)));
  HealthCheckResponse response;
  REQUIRE(Check(stub.get(), "", &response).ok());
  CHECK(response.status() == HealthCheckResponse::SERVING);
  REQUIRE(Check(stub.get(), "grpc.health.v1.Health", &response).ok());
  CHECK(response.status() == HealthCheckResponse::SERVING);
  CHECK(Check(stub.get(), "no.such.Service", &response).error_code() ==
        grpc::StatusCode::NOT_FOUND);

  grpc::ClientContext watch;
  watch.set_deadline(DeadlineIn(std::chrono::seconds(10)));
  HealthCheckRequest all;
  auto reader = stub->Watch(&watch, all);
  REQUIRE(reader->Read(&response));
  CHECK(response.status() == HealthCheckResponse::SERVING);
  rpc->health->Shutdown();
  REQUIRE(reader->Read(&response));
  CHECK(response.status() == HealthCheckResponse::NOT_SERVING);
  CHECK_FALSE(reader->Read(&response));
  CHECK(reader->Finish().ok());
  REQUIRE(Check(stub.get(), "", &response).ok());
  CHECK(response.status() == HealthCheckResponse::NOT_SERVING);
  rpc->server->Shutdown();
}

}  // namespace
}  // namespace psd
