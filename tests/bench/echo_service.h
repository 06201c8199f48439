// The plain gRPC baseline of the push/pull benchmarks (push_pull_bench,
// cluster_push_pull_client): psd.bench.Echo returns the request's bytes
// (one copy on the server, as any sync handler makes).
#ifndef PSD_TESTS_BENCH_ECHO_SERVICE_H_
#define PSD_TESTS_BENCH_ECHO_SERVICE_H_

#include "tests/bench/echo.grpc.pb.h"

namespace psd {

class EchoService final : public bench::Echo::Service {
 public:
  grpc::Status Echo(grpc::ServerContext*, const bench::EchoMessage* request,
                    bench::EchoMessage* response) override {
    response->set_data(request->data());
    return grpc::Status::OK;
  }
};

}  // namespace psd

#endif  // PSD_TESTS_BENCH_ECHO_SERVICE_H_
