// psd._psd: the C++ half of the Python client (issue 18). It wraps psd's own
// worker pieces, not a second implementation of the protocol: Membership
// (registration and heartbeats, common/membership.h), ParameterClient (the
// data plane, worker/ps_client.h), SendProgress (worker/progress.h) and the
// data order (worker/dataset.h). Tensors cross as Python buffers (numpy
// arrays that share memory with torch tensors): Pull writes straight into
// them and Push reads straight from them, with the GIL released.
//
// The Python API is psd.torch (worker/python/psd/torch.py); this module is
// its implementation detail.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <google/protobuf/text_format.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/job_config.h"
#include "common/membership.h"
#include "common/placement.h"
#include "common/process.h"
#include "common/proto.h"
#include "common/rpc.h"
#include "common/safetensors.h"
#include "common/transport_security.h"
#include "worker/dataset.h"
#include "worker/progress.h"
#include "worker/ps_client.h"

namespace py = pybind11;

namespace psd {
namespace {

// Raises a Python exception of `type` with `message`.
[[noreturn]] void Raise(PyObject* type, const std::string& message) {
  PyErr_SetString(type, message.c_str());
  throw py::error_already_set();
}

// Raises the Python exception that fits `status`: ValueError for bad
// arguments, ConnectionError for an unreachable peer, TimeoutError for a
// deadline, RuntimeError otherwise. `what` prefixes the message.
void RaiseIfError(const absl::Status& status, const std::string& what) {
  if (status.ok()) return;
  const std::string message = absl::StrCat(what, ": ", status.ToString());
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
      Raise(PyExc_ValueError, message);
    case absl::StatusCode::kUnavailable:
      Raise(PyExc_ConnectionError, message);
    case absl::StatusCode::kDeadlineExceeded:
      Raise(PyExc_TimeoutError, message);
    default:
      Raise(PyExc_RuntimeError, message);
  }
}

// Transport security is process-wide (common/transport_security.h): set
// once, by the first Worker; later ones must ask for the same.
absl::Mutex tls_mu;
std::optional<std::string> tls_setting ABSL_GUARDED_BY(tls_mu);

void ConfigureSecurity(const std::string& ca, const std::string& cert,
                       const std::string& key, bool insecure) {
  const bool any = !ca.empty() || !cert.empty() || !key.empty();
  if (any && insecure) {
    Raise(PyExc_ValueError,
          "insecure=True and tls_ca_file/tls_cert_file/tls_key_file are "
          "exclusive");
  }
  if (!any && !insecure) {
    Raise(PyExc_ValueError,
          "tls_ca_file, tls_cert_file and tls_key_file are required (mutual "
          "TLS), or insecure=True for plaintext");
  }
  if (any && (ca.empty() || cert.empty() || key.empty())) {
    Raise(PyExc_ValueError,
          "tls_ca_file, tls_cert_file and tls_key_file go together");
  }
  const std::string setting =
      insecure ? "insecure" : absl::StrCat(ca, "\n", cert, "\n", key);
  absl::MutexLock lock(&tls_mu);
  if (tls_setting.has_value()) {
    if (*tls_setting != setting) {
      Raise(PyExc_ValueError,
            "this process already connected with other transport security "
            "options (they are process-wide)");
    }
    return;
  }
  if (!insecure) {
    TlsOptions options;
    options.ca_file = ca;
    options.cert_file = cert;
    options.key_file = key;
    RaiseIfError(ConfigureTls(options), "transport security");
  }
  tls_setting = setting;
}

// Float32, C-contiguous buffers, one per parameter, checked against the
// parameters' sizes; messages name the parameter.
class Buffers {
 public:
  Buffers(const py::list& list, const std::vector<std::string>& names,
          const std::vector<int64_t>& sizes, bool writable) {
    if (list.size() != sizes.size()) {
      Raise(PyExc_ValueError,
            absl::StrCat("expected ", sizes.size(), " tensors, got ",
                         list.size()));
    }
    for (size_t i = 0; i < sizes.size(); ++i) {
      py::buffer buffer = py::reinterpret_borrow<py::object>(list[i]);
      infos_.push_back(buffer.request(writable));
      const py::buffer_info& info = infos_.back();
      if (info.itemsize != 4 ||
          info.format != py::format_descriptor<float>::format()) {
        Raise(PyExc_TypeError,
              absl::StrCat("parameter \"", names[i],
                           "\": only float32 is supported, got format '",
                           info.format, "'"));
      }
      int64_t expected_stride = 4;
      for (int d = static_cast<int>(info.ndim) - 1; d >= 0; --d) {
        if (info.shape[d] > 1 && info.strides[d] != expected_stride) {
          Raise(PyExc_ValueError, absl::StrCat("parameter \"", names[i],
                                               "\": not contiguous"));
        }
        expected_stride *= info.shape[d];
      }
      if (info.size != sizes[i]) {
        Raise(PyExc_ValueError,
              absl::StrCat("parameter \"", names[i], "\": ", info.size,
                           " elements, the job has ", sizes[i]));
      }
      pointers_.push_back(static_cast<float*>(info.ptr));
    }
  }
  const std::vector<float*>& pointers() const { return pointers_; }

 private:
  std::vector<py::buffer_info> infos_;
  std::vector<float*> pointers_;
};

// A worker of one job: registers with the coordinator, waits for a rank,
// and talks to the job's parameter servers. Receives view changes (a
// primary failed over) from the heartbeats, as psd_worker's agent does.
class Worker : public ViewSource {
 public:
  struct Options {
    std::string coordinator;
    int connect_timeout_ms = 10000;
    int assignment_timeout_ms = 600000;
    bool pull_with_push = true;
  };

  explicit Worker(Options options) : options_(std::move(options)) {}
  ~Worker() override { Close(); }

  // Registers and waits for an assignment. REQUIRES: the GIL is released.
  absl::Status Start() {
    RpcServerOptions rpc_options;  // health and reflection, 127.0.0.1:0
    auto rpc = StartRpcServer(rpc_options, {});
    if (!rpc.ok()) return rpc.status();
    rpc_ = std::make_unique<RpcServer>(*std::move(rpc));
    MembershipOptions m;
    m.coordinator = options_.coordinator;
    m.role = MembershipOptions::Role::kWorker;
    m.connect_timeout_ms = options_.connect_timeout_ms;
    m.advertised_address =
        AdvertisedAddress(rpc_options.listen_address, rpc_->port);
    m.fill_register = [this](RegisterRequest* r) {
      r->add_model_kinds(ModelSpec::EXTERNAL);  // psd.torch trains these only
      absl::MutexLock lock(&mu_);
      if (!assignment_.has_value()) return;
      r->set_job_id(assignment_->job_id());
      r->set_rank(assignment_->rank());
    };
    m.fill_heartbeat = [this](HeartbeatRequest* r) {
      absl::MutexLock lock(&mu_);
      if (!view_.has_value()) return;
      r->set_held_job_id(view_->job_id());
      r->set_held_view_epoch(view_->view_epoch());
    };
    membership_ = std::make_unique<Membership>(
        m, [this](const HeartbeatResponse& r) { OnHeartbeat(r); });
    if (absl::Status s = membership_->Start(); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("coordinator ",
                                                 options_.coordinator, ": ",
                                                 s.message()));
    }
    {
      absl::MutexLock lock(&mu_);
      auto has = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return next_.has_value();
      };
      if (!mu_.AwaitWithTimeout(
              absl::Condition(&has),
              absl::Milliseconds(options_.assignment_timeout_ms))) {
        return absl::DeadlineExceededError(absl::StrCat(
            "no job gave this worker a rank within ",
            options_.assignment_timeout_ms / 1000, " s"));
      }
      assignment_ = next_;
      view_ = next_;
      latest_epoch_ = next_->view_epoch();
    }
    const Assignment& a = *assignment_;
    if (a.config().model().kind() != ModelSpec::EXTERNAL) {
      return absl::FailedPreconditionError(absl::StrCat(
          "job ", a.job_id(),
          ": model.kind is not EXTERNAL (an MLP job is for psd_worker)"));
    }
    ParameterClientOptions client_options;
    client_options.cancel = &cancel_;
    client_options.views = this;
    client_options.pull_with_push = options_.pull_with_push;
    auto client = ParameterClient::Create(a, client_options);
    if (!client.ok()) return client.status();
    client_ = *std::move(client);
    for (const ParameterSpec& p : a.placement().parameters()) {
      shapes_.emplace_back(p.shape().begin(), p.shape().end());
    }
    start_step_ = a.start_step();
    if (a.resume_from_servers()) {
      // A replacement for a worker that died: resume at this rank's clock
      // on the servers (as worker/trainer.cc does).
      std::vector<std::vector<float>> scratch;
      int64_t step = 0, clock = 0;
      if (absl::Status s =
              client_->Pull(0, /*latest=*/true, &scratch, &step, &clock);
          !s.ok()) {
        return s;
      }
      start_step_ = clock;
    }
    return absl::OkStatus();
  }

  void Close() {
    cancel_ = true;
    client_.reset();
    membership_.reset();
    if (rpc_ != nullptr) rpc_->server->Shutdown();
    rpc_.reset();
  }

  // ViewSource.
  int64_t LatestEpoch() override { return latest_epoch_.load(); }
  std::optional<Assignment> AwaitNewer(int64_t epoch,
                                       absl::Duration timeout) override {
    absl::MutexLock lock(&mu_);
    auto newer = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return view_.has_value() && view_->view_epoch() > epoch;
    };
    mu_.AwaitWithTimeout(absl::Condition(&newer), timeout);
    if (newer()) return view_;
    return std::nullopt;
  }

  const Assignment& assignment() const { return *assignment_; }
  const JobConfig& config() const { return assignment_->config(); }
  int64_t start_step() const { return start_step_; }
  const std::vector<std::vector<int64_t>>& shapes() const { return shapes_; }
  ParameterClient* client() { return client_.get(); }

  // Sends progress; true when training must stop (worker/progress.h).
  bool Report(const ReportProgressRequest& request) {
    ReportProgressRequest r = request;
    r.set_job_id(assignment_->job_id());
    r.set_rank(assignment_->rank());
    return SendProgress(membership_.get(), r, cancel_);
  }

  bool cancelled() const { return cancel_.load(); }

 private:
  void OnHeartbeat(const HeartbeatResponse& response) {
    absl::MutexLock lock(&mu_);
    if (response.cancelled() && assignment_.has_value()) cancel_ = true;
    if (!response.has_assignment()) return;
    const Assignment& a = response.assignment();
    if (!assignment_.has_value()) {
      if (!next_.has_value()) next_ = a;
      return;
    }
    if (a.job_id() == assignment_->job_id() &&
        (!view_.has_value() || a.view_epoch() > view_->view_epoch())) {
      view_ = a;
      latest_epoch_ = a.view_epoch();
    }
  }

  const Options options_;
  std::unique_ptr<RpcServer> rpc_;
  std::unique_ptr<Membership> membership_;
  std::unique_ptr<ParameterClient> client_;
  std::atomic<bool> cancel_{false};
  std::atomic<int64_t> latest_epoch_{0};
  int64_t start_step_ = 0;
  std::vector<std::vector<int64_t>> shapes_;
  absl::Mutex mu_;
  std::optional<Assignment> next_ ABSL_GUARDED_BY(mu_);
  std::optional<Assignment> assignment_;  // set once, before client_
  std::optional<Assignment> view_ ABSL_GUARDED_BY(mu_);
};

const char* ConsistencyName(Consistency c) {
  switch (c) {
    case ASP:
      return "ASP";
    case SSP:
      return "SSP";
    default:
      return "BSP";
  }
}

py::array_t<float> ToArray(const std::vector<float>& v, int64_t rows,
                           int64_t cols) {
  py::array_t<float> a({rows, cols});
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

py::array_t<int64_t> ToArray(const std::vector<int32_t>& v) {
  py::array_t<int64_t> a(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

}  // namespace
}  // namespace psd

PYBIND11_MODULE(_psd, m) {
  using psd::Worker;
  m.doc() = "psd's C++ worker client (use psd.torch)";
  // psd's log lines (registration, failover, retries) go to stderr, as in
  // every psd process.
  psd::SetUpLogging("psd.torch", "info").IgnoreError();

  py::class_<Worker>(m, "Worker")
      .def(py::init([](const std::string& coordinator,
                       const std::string& tls_ca_file,
                       const std::string& tls_cert_file,
                       const std::string& tls_key_file, bool insecure,
                       int connect_timeout_ms, int assignment_timeout_ms,
                       bool pull_with_push) {
             if (coordinator.empty()) {
               psd::Raise(PyExc_ValueError,
                          "coordinator: required (host:port of "
                          "psd_coordinator)");
             }
             psd::ConfigureSecurity(tls_ca_file, tls_cert_file, tls_key_file,
                                    insecure);
             Worker::Options options;
             options.coordinator = coordinator;
             options.connect_timeout_ms = connect_timeout_ms;
             options.assignment_timeout_ms = assignment_timeout_ms;
             options.pull_with_push = pull_with_push;
             auto worker = std::make_unique<Worker>(options);
             absl::Status status;
             {
               py::gil_scoped_release release;
               status = worker->Start();
             }
             psd::RaiseIfError(status, "psd.init");
             return worker;
           }),
           py::arg("coordinator"), py::arg("tls_ca_file") = "",
           py::arg("tls_cert_file") = "", py::arg("tls_key_file") = "",
           py::arg("insecure") = false, py::arg("connect_timeout_ms") = 10000,
           py::arg("assignment_timeout_ms") = 600000,
           py::arg("pull_with_push") = true)
      .def_property_readonly(
          "job_id", [](Worker& w) { return w.assignment().job_id(); })
      .def_property_readonly("rank",
                             [](Worker& w) { return w.assignment().rank(); })
      .def_property_readonly("workers",
                             [](Worker& w) { return w.config().workers(); })
      .def_property_readonly("batch_size",
                             [](Worker& w) { return w.config().batch_size(); })
      .def_property_readonly("epochs",
                             [](Worker& w) { return w.config().epochs(); })
      .def_property_readonly("seed", [](Worker& w) { return w.config().seed(); })
      .def_property_readonly(
          "consistency",
          [](Worker& w) {
            return std::string(psd::ConsistencyName(w.config().consistency()));
          })
      .def_property_readonly("dataset",
                             [](Worker& w) { return w.config().dataset().name(); })
      .def_property_readonly("train_examples",
                             [](Worker& w) { return psd::TrainExamples(w.config()); })
      .def_property_readonly("steps_per_epoch",
                             [](Worker& w) {
                               return psd::StepsPerEpoch(
                                   w.config(), psd::TrainExamples(w.config()));
                             })
      .def_property_readonly("start_step", &Worker::start_step)
      .def_property_readonly(
          "parameter_names",
          [](Worker& w) { return w.client()->parameter_names(); })
      .def_property_readonly("parameter_shapes", &Worker::shapes)
      .def_property_readonly("config_text",
                             [](Worker& w) {
                               std::string text;
                               google::protobuf::TextFormat::PrintToString(
                                   w.config(), &text);
                               return text;
                             })
      .def_property_readonly("cancelled", &Worker::cancelled)
      .def(
          "pull",
          [](Worker& w, int64_t step, const py::list& out) {
            psd::ParameterClient* c = w.client();
            psd::Buffers buffers(out, c->parameter_names(),
                                 c->parameter_sizes(), /*writable=*/true);
            absl::Status status;
            {
              py::gil_scoped_release release;
              status = c->Pull(step, /*latest=*/false, buffers.pointers());
            }
            psd::RaiseIfError(status, absl::StrCat("pull of step ", step));
          },
          "Writes the parameters for `step` into the float32 buffers.")
      .def(
          "push",
          [](Worker& w, int64_t step, const py::list& grads) {
            psd::ParameterClient* c = w.client();
            psd::Buffers buffers(grads, c->parameter_names(),
                                 c->parameter_sizes(), /*writable=*/false);
            absl::Status status;
            {
              py::gil_scoped_release release;
              status = c->BeginPush(step);
              for (size_t i = 0; status.ok() && i < buffers.pointers().size();
                   ++i) {
                status = c->PushTensor(static_cast<int32_t>(i),
                                       buffers.pointers()[i],
                                       c->parameter_sizes()[i]);
              }
              const absl::Status finished = c->FinishPush();
              if (status.ok()) status = finished;
            }
            psd::RaiseIfError(status, absl::StrCat("push of step ", step));
          },
          "Pushes the float32 gradients of `step`.")
      .def(
          "report",
          [](Worker& w, int32_t epoch, int64_t step, double loss,
             double samples_per_sec, bool done,
             std::optional<double> test_accuracy) {
            psd::ReportProgressRequest r;
            r.set_epoch(epoch);
            r.set_step(step);
            r.set_loss(static_cast<float>(loss));
            r.set_samples_per_sec(static_cast<float>(samples_per_sec));
            r.set_done(done);
            if (test_accuracy.has_value()) {
              r.set_has_test_accuracy(true);
              r.set_test_accuracy(static_cast<float>(*test_accuracy));
            }
            py::gil_scoped_release release;
            return w.Report(r);
          },
          py::arg("epoch"), py::arg("step"), py::arg("loss"),
          py::arg("samples_per_sec"), py::arg("done"),
          py::arg("test_accuracy") = py::none(),
          "Reports progress; True when training must stop.")
      .def(
          "fail",
          [](Worker& w, const std::string& error) {
            psd::ReportProgressRequest r;
            r.set_error(error);
            py::gil_scoped_release release;
            w.Report(r);
          },
          "Reports that this rank failed, with `error`.")
      .def("close", [](Worker& w) {
        py::gil_scoped_release release;
        w.Close();
      });

  m.def(
      "epoch_order",
      [](int32_t size, int32_t rank, int32_t workers, uint64_t seed,
         int32_t epoch) {
        if (workers < 1 || rank < 0 || rank >= workers || size < 0) {
          psd::Raise(PyExc_ValueError,
                     absl::StrCat("rank ", rank, " of ", workers,
                                  " workers, size ", size));
        }
        return psd::ToArray(psd::EpochOrder(
            psd::ShardIndices(size, rank, workers), seed, epoch, rank));
      },
      "The example indices rank `rank` visits in `epoch`, as psd_worker "
      "(worker/dataset.h: ShardIndices, EpochOrder).");

  m.def(
      "read_safetensors",
      [](const std::string& path) {
        auto contents = psd::ReadSafetensors(path);
        psd::RaiseIfError(contents.status(), "read_safetensors");
        py::dict tensors;
        for (const psd::NamedTensor& t : contents->tensors) {
          py::array_t<float> a(t.shape);
          std::copy(t.values.begin(), t.values.end(), a.mutable_data());
          tensors[py::str(t.name)] = a;
        }
        char crc[16];
        snprintf(crc, sizeof(crc), "crc32:%08x",
                 psd::ParameterChecksum(contents->tensors));
        return py::make_tuple(tensors, contents->metadata, std::string(crc));
      },
      "A psd safetensors file (psd_ctl export, common/safetensors.h): "
      "({name: float32 array}, metadata, checksum 'crc32:XXXXXXXX' as "
      "psd_ctl prints it).");

  m.def(
      "load_fashion_mnist",
      [](const std::string& dir, int32_t train_limit, int32_t test_limit) {
        const std::string train = dir + "/train-images-idx3-ubyte.gz";
        auto norm = psd::ComputeNormalization(train, 0);
        psd::RaiseIfError(norm.status(), "load_fashion_mnist");
        auto tr = psd::LoadDataset(train, dir + "/train-labels-idx1-ubyte.gz",
                                   train_limit, 10, *norm);
        psd::RaiseIfError(tr.status(), "load_fashion_mnist");
        auto te = psd::LoadDataset(dir + "/t10k-images-idx3-ubyte.gz",
                                   dir + "/t10k-labels-idx1-ubyte.gz",
                                   test_limit, 10, *norm);
        psd::RaiseIfError(te.status(), "load_fashion_mnist");
        return py::make_tuple(psd::ToArray(tr->features, tr->size, tr->dim),
                              psd::ToArray(tr->labels),
                              psd::ToArray(te->features, te->size, te->dim),
                              psd::ToArray(te->labels));
      },
      py::arg("dir") = "/usr/share/datasets/fashion-mnist",
      py::arg("train_limit") = 0, py::arg("test_limit") = 0,
      "Fashion-MNIST as psd_worker loads it: (train_x [n, 784] float32, "
      "train_y [n] int64, test_x, test_y), x = (pixel/255 - mean) / std with "
      "the training set's statistics.");
}
