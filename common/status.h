// Status helpers shared by every component.
//
// Errors inside psd are absl::Status / absl::StatusOr<T>. They become
// grpc::Status only at a service edge (ToGrpcStatus), and come back with
// FromGrpcStatus on the client side; the message is kept unchanged.
#ifndef PSD_COMMON_STATUS_H_
#define PSD_COMMON_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// Debian's abseil (20220623) has no ABSL_RETURN_IF_ERROR: this is ours.
#define PSD_RETURN_IF_ERROR(expr)                \
  do {                                           \
    ::absl::Status psd_status_ = (expr);         \
    if (!psd_status_.ok()) return psd_status_;   \
  } while (0)

#define PSD_STATUS_CONCAT_INNER_(a, b) a##b
#define PSD_STATUS_CONCAT_(a, b) PSD_STATUS_CONCAT_INNER_(a, b)

// PSD_ASSIGN_OR_RETURN(auto x, FunctionReturningStatusOr());
#define PSD_ASSIGN_OR_RETURN(lhs, expr)                                  \
  PSD_ASSIGN_OR_RETURN_IMPL_(PSD_STATUS_CONCAT_(psd_or_, __LINE__), lhs, \
                             expr)
#define PSD_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()

namespace psd {

// Same code, same message. absl and gRPC share the canonical code numbers.
grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace psd

#endif  // PSD_COMMON_STATUS_H_
