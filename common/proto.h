// The psd.v1 protocol messages and stubs (proto/*.proto), visible in
// namespace psd, so code says JobConfig rather than v1::JobConfig.
#ifndef PSD_COMMON_PROTO_H_
#define PSD_COMMON_PROTO_H_

#include "proto/coordinator.grpc.pb.h"
#include "proto/coordinator.pb.h"
#include "proto/job.pb.h"
#include "proto/parameter_server.grpc.pb.h"
#include "proto/parameter_server.pb.h"
#include "proto/psd_tensor.pb.h"

namespace psd {
using namespace ::psd::v1;  // NOLINT(build/namespaces)
}  // namespace psd

#endif  // PSD_COMMON_PROTO_H_
