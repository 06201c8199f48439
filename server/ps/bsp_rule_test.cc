// The BSP rule through ParameterStore: a step is applied once every rank
// pushed, in rank order whatever the arrival order, each push once, and
// deterministic for every optimizer.
#include "server/ps/parameter_store.h"

#include <map>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "absl/time/clock.h"
#include "common/job_config.h"
#include "common/tensor.h"
#include "server/ps/parameter_store_test_util.h"

namespace psd {
namespace store_test {
namespace {

TEST_CASE("ParameterStore: a BSP step is applied once every rank has pushed, "
          "as SGD on the rank-ordered mean",
          "[store][bsp]") {
  Fixture f(3);
  const Params before = f.Latest();
  f.PushOk(0, 0);
  f.PushOk(2, 0);
  int64_t step = -1;
  CHECK(Bitwise(f.Latest(&step), before));
  CHECK(step == 0);

  auto last = f.store.Push(f.MakePush(1, 0));
  REQUIRE(last.ok());
  CHECK_FALSE(last->duplicate());
  CHECK(last->applied_step() == 1);
  const Params after = f.Latest(&step);
  CHECK(step == 1);

  // w1 = w0 - lr * ((g0 + g1 + g2) / 3), lr = 0.1, no momentum or decay.
  for (const Partition& part : f.placement.partitions()) {
    INFO("partition " << part.id());
    for (int64_t k = 0; k < part.num_elements(); ++k) {
      const double mean = (static_cast<double>(Grad(0, 0, part.id(), k)) +
                           Grad(1, 0, part.id(), k) + Grad(2, 0, part.id(), k)) /
                          3.0;
      const double want = before.at(part.id())[k] - 0.1 * mean;
      if (after.at(part.id())[k] != Approx(want).margin(1e-6)) {
        FAIL("element " << k << ": got " << after.at(part.id())[k]
                        << ", want " << want);
      }
    }
  }
}

TEST_CASE("ParameterStore: the order pushes arrive in does not change the "
          "result, bit for bit",
          "[store][bsp]") {
  // Momentum on, so the velocity path is covered too; two steps.
  for (int workers : {2, 3}) {
    INFO("workers " << workers);
    Fixture in_order(workers, 0.9f);
    Fixture reversed(workers, 0.9f);
    for (int64_t step = 0; step < 2; ++step) {
      for (int r = 0; r < workers; ++r) in_order.PushOk(r, step);
      for (int r = workers - 1; r >= 0; --r) reversed.PushOk(r, step);
    }
    int64_t s1 = 0, s2 = 0;
    const Params a = in_order.Latest(&s1);
    const Params b = reversed.Latest(&s2);
    CHECK(s1 == 2);
    CHECK(s2 == 2);
    CHECK(Bitwise(a, b));
    CHECK_FALSE(Bitwise(a, Initial(in_order.config, in_order.placement)));
  }
}

TEST_CASE("ParameterStore: a retried push is acknowledged and never applied "
          "twice",
          "[store][dedup]") {
  Fixture f(2);
  Fixture reference(2);
  reference.PushOk(0, 0);
  reference.PushOk(1, 0);
  const Params want = reference.Latest();

  f.PushOk(0, 0);
  const Params before = f.Latest();
  // Retry before the step is applied; with other values, to see that the
  // first push's gradients are the ones kept.
  auto retry = f.store.Push(f.MakePush(0, 0, /*salt=*/1.0f));
  REQUIRE(retry.ok());
  CHECK(retry->duplicate());
  CHECK(retry->applied_step() == 0);
  CHECK(Bitwise(f.Latest(), before));

  f.PushOk(1, 0);
  int64_t step = 0;
  const Params applied = f.Latest(&step);
  CHECK(step == 1);
  CHECK(Bitwise(applied, want));

  // Retries after the step is applied, from both ranks.
  for (int rank : {0, 1, 1}) {
    auto late = f.store.Push(f.MakePush(rank, 0, /*salt=*/0.5f));
    REQUIRE(late.ok());
    CHECK(late->duplicate());
    CHECK(late->applied_step() == 1);
    CHECK(Bitwise(f.Latest(&step), applied));
    CHECK(step == 1);
  }
}

// Issue 7: each optimizer keeps BSP deterministic. The same multi-rank
// pushes, arriving in different orders, give bit-identical parameters.
TEST_CASE(
    "ParameterStore: with every optimizer, the order pushes arrive in "
    "does not change the result, bit for bit",
    "[store][bsp][optimizer]") {
  struct Kind {
    const char* name;
    void (*set)(OptimizerSpec*);
  };
  const Kind kinds[] = {
      {"SGD", [](OptimizerSpec* o) { o->set_weight_decay(1e-3f); }},
      {"momentum",
       [](OptimizerSpec* o) {
         o->set_momentum(0.9f);
         o->set_weight_decay(1e-3f);
       }},
      {"Nesterov",
       [](OptimizerSpec* o) {
         o->set_momentum(0.9f);
         o->set_nesterov(true);
         o->mutable_schedule()->set_kind(LearningRateSchedule::STEP);
         o->mutable_schedule()->set_step_size(1);
       }},
      {"Adagrad",
       [](OptimizerSpec* o) {
         o->set_kind(OptimizerSpec::ADAGRAD);
         o->set_initial_accumulator_value(0.1f);
         o->set_clip_value(0.05f);
       }},
      {"Adam",
       [](OptimizerSpec* o) {
         o->set_kind(OptimizerSpec::ADAM);
         o->set_learning_rate(0.01f);
         o->set_weight_decay(1e-3f);
         o->mutable_schedule()->set_kind(LearningRateSchedule::COSINE);
       }},
      {"AdamW",
       [](OptimizerSpec* o) {
         o->set_kind(OptimizerSpec::ADAMW);
         o->set_learning_rate(0.01f);
         o->set_weight_decay(0.01f);
         o->set_clip_value(0.05f);
         o->mutable_schedule()->set_kind(LearningRateSchedule::COSINE);
         o->mutable_schedule()->set_decay_steps(3);
       }},
  };
  constexpr int64_t kSteps = 3;
  for (int workers : {2, 3}) {
    Fixture shape(workers);  // builds the pushes and pulls; its own job unused
    Params previous;         // the last kind's result, to tell kinds apart
    for (const Kind& kind : kinds) {
      INFO("workers " << workers << ", optimizer " << kind.name);
      JobConfig config = Config(workers);
      kind.set(config.mutable_optimizer());
      // Three stores, three arrival orders per step: by rank, reversed, and
      // rotated by the step.
      ParameterStore stores[3];
      for (ParameterStore& store : stores) {
        auto created = store.CreateJob(CreateRequest(config));
        REQUIRE(created.ok());
      }
      for (int64_t step = 0; step < kSteps; ++step) {
        for (int i = 0; i < workers; ++i) {
          const int orders[3] = {i, workers - 1 - i,
                                 static_cast<int>((i + step + 1) % workers)};
          for (int o = 0; o < 3; ++o) {
            auto pushed = stores[o].Push(shape.MakePush(orders[o], step));
            REQUIRE(pushed.ok());
            CHECK_FALSE(pushed->duplicate());
          }
        }
      }
      Params got[3];
      for (int o = 0; o < 3; ++o) {
        PullResponse response;
        absl::Status status = stores[o].Pull(
            shape.MakePull(0, /*latest=*/true), absl::Now() + absl::Seconds(60),
            [] { return false; }, &response);
        REQUIRE(status.ok());
        CHECK(response.step() == kSteps);
        got[o] = Fixture::Decode(response);
      }
      CHECK(Bitwise(got[0], got[1]));
      CHECK(Bitwise(got[0], got[2]));
      CHECK_FALSE(Bitwise(got[0], Initial(config, shape.placement)));
      CHECK_FALSE(Bitwise(got[0], previous));
      for (const auto& [id, values] : got[0]) {
        for (float v : values) REQUIRE(std::isfinite(v));
      }
      previous = got[0];
    }
  }
}

}  // namespace
}  // namespace store_test
}  // namespace psd
