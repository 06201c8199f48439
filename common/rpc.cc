#include "common/rpc.h"

#include <unistd.h>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/support/server_interceptor.h>

#include "absl/strings/str_cat.h"
#include "common/process.h"
#include "common/transport_security.h"

namespace psd {
namespace {

using grpc::experimental::InterceptionHookPoints;

// Request bytes that do not parse as the method's message: gRPC answers
// INTERNAL "" (sync methods) or UNIMPLEMENTED "" (callback methods: Push,
// Pull, Replicate, PushRows, PullRows, ReplicateRows), though the method exists. This
// makes it what the caller needs to know, as the health service answers:
// INVALID_ARGUMENT "could not parse request".
class ParseErrorInterceptor final : public grpc::experimental::Interceptor {
 public:
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            InterceptionHookPoints::POST_RECV_MESSAGE) &&
        methods->GetRecvMessage() == nullptr) {
      unparsed_ = true;
    }
    // Only the statuses gRPC gives an unparsed request: a request never
    // read for another reason (RESOURCE_EXHAUSTED "Server Threadpool
    // Exhausted", a deadline, a cancellation) keeps its own.
    if (unparsed_ &&
        methods->QueryInterceptionHookPoint(
            InterceptionHookPoints::PRE_SEND_STATUS) &&
        (methods->GetSendStatus().error_code() == grpc::StatusCode::INTERNAL ||
         methods->GetSendStatus().error_code() ==
             grpc::StatusCode::UNIMPLEMENTED)) {
      methods->ModifySendStatus(grpc::Status(
          grpc::StatusCode::INVALID_ARGUMENT,
          "could not parse request: its bytes are not the method's message"));
    }
    methods->Proceed();
  }

 private:
  bool unparsed_ = false;
};

class ParseErrorInterceptorFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo*) override {
    return new ParseErrorInterceptor;
  }
};

}  // namespace

absl::StatusOr<RpcServer> StartRpcServer(
    const RpcServerOptions& options,
    const std::vector<grpc::Service*>& services) {
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  RpcServer result;
  result.health = std::make_unique<HealthService>();
  builder.RegisterService(result.health.get());
  builder.SetOption(result.health->ServiceListOption());
  builder.AddListeningPort(options.listen_address,
                           ServerCredentials(), &result.port);
  // No SO_REUSEPORT: a second process on a port in use must fail, not
  // silently share the port.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  grpc::ResourceQuota quota("psd");
  quota.SetMaxThreads(options.max_threads);
  builder.SetResourceQuota(quota);
  std::vector<
      std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
      interceptors;
  interceptors.push_back(std::make_unique<ParseErrorInterceptorFactory>());
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  for (grpc::Service* service : services) builder.RegisterService(service);
  result.server = builder.BuildAndStart();
  if (result.server == nullptr || result.port == 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", options.listen_address,
        " (address in use, or not an address of this host?)"));
  }
  return result;
}

grpc::ChannelArguments ChannelArguments() {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  args.SetInt("grpc.http2.lookahead_bytes", 64 << 20);
  args.SetInt("grpc.http2.write_buffer_size", 64 << 20);
  args.SetInt("grpc.http2.max_frame_size", 16777215);
  args.SetInt("grpc.http2.bdp_probe", 0);
  args.SetInt("grpc.experimental.tcp_read_chunk_size", 4 << 20);
  // A distinct channel per call site: no sharing of one TCP connection
  // between unrelated clients in one process.
  args.SetInt("grpc.use_local_subchannel_pool", 1);
  // Name resolution (gRPC's c-ares resolver) gives up after 6 s, not
  // gRPC's 120 s, and may run again 1 s after the last, not 30 s: a
  // resolution whose datagrams were lost (a DNS server or the path to it
  // briefly unreachable) then costs seconds, not minutes of calls that wait
  // for an address until their deadlines. 6 s is c-ares's first try at the
  // first nameserver (resolv.conf's default timeout, 5 s) and time for a
  // second nameserver to answer. docs/PERFORMANCE.md, "Containers".
  args.SetInt(GRPC_ARG_DNS_ARES_QUERY_TIMEOUT_MS, 6000);
  args.SetInt(GRPC_ARG_DNS_MIN_TIME_BETWEEN_RESOLUTIONS_MS, 1000);
  return args;
}

std::shared_ptr<grpc::Channel> MakeChannel(
    const std::string& address, const grpc::ChannelArguments& args) {
  return grpc::CreateCustomChannel(address, ChannelCredentials(),
                                   args);
}

int ServeUntilShutdownSignal(RpcServer* rpc, const std::string& port_file,
                             std::chrono::milliseconds drain) {
  if (!port_file.empty()) {
    absl::Status written =
        WriteFileAtomically(port_file, std::to_string(rpc->port));
    if (!written.ok()) {
      Log()->error("--port_file: {}", written.ToString());
      rpc->server->Shutdown();
      return 1;
    }
  }
  const int sig = WaitForShutdownSignal();
  Log()->info("signal {}: draining in-flight calls and shutting down", sig);
  rpc->health->Shutdown();
  rpc->server->Shutdown(DeadlineIn(drain));
  return 0;
}

std::string AdvertisedAddress(const std::string& listen_address, int port) {
  const size_t colon = listen_address.rfind(':');
  std::string host = colon == std::string::npos
                         ? listen_address
                         : listen_address.substr(0, colon);
  if (host.empty() || host == "0.0.0.0" || host == "[::]") {
    // Bound to every interface: others reach us by this host's name.
    char name[256] = {0};
    host = gethostname(name, sizeof(name) - 1) == 0 && name[0] != '\0'
               ? std::string(name)
               : std::string("127.0.0.1");
  }
  return absl::StrCat(host, ":", port);
}

}  // namespace psd
