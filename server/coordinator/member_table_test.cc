#include "server/coordinator/member_table.h"

#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace psd {
namespace {

TEST_CASE("MemberTable: ids name the kind, grow across kinds and end in one "
          "incarnation",
          "[coordinator][membership]") {
  MemberTable members;
  const absl::Time before = absl::Now();
  const std::string server = members.Add(/*server=*/true, "10.0.0.1:7000");
  const std::string worker = members.Add(/*server=*/false, "10.0.0.2:7001");
  CHECK(server.rfind("server-0001.", 0) == 0);
  CHECK(worker.rfind("worker-0002.", 0) == 0);
  CHECK(server.substr(server.find('.')) == worker.substr(worker.find('.')));

  MemberTable::Member* s = members.Find(/*server=*/true, server);
  REQUIRE(s != nullptr);
  CHECK(s->address == "10.0.0.1:7000");
  CHECK(s->last_seen >= before);
  CHECK(s->job_id.empty());
  CHECK(members.Find(/*server=*/false, server) == nullptr);  // another kind
  CHECK(members.Find(/*server=*/true, "server-9999.0000") == nullptr);
  CHECK(members.servers().size() == 1);
  CHECK(members.workers().size() == 1);
}

TEST_CASE("MemberTable: a heartbeat marks a known member seen; silent ones "
          "are listed until erased",
          "[coordinator][membership]") {
  MemberTable members;
  const std::string a = members.Add(/*server=*/false, "a:1");
  const std::string b = members.Add(/*server=*/false, "b:1");
  const std::string s = members.Add(/*server=*/true, "s:1");
  const absl::Time long_ago = absl::Now() - absl::Seconds(10);
  for (const std::string& id : {a, b}) {
    members.Find(/*server=*/false, id)->last_seen = long_ago;
  }
  members.Find(/*server=*/true, s)->last_seen = long_ago;

  MemberTable::Member* touched = members.Touch(/*server=*/false, b);
  REQUIRE(touched != nullptr);
  CHECK(touched->last_seen > long_ago);
  CHECK(members.Touch(/*server=*/false, "worker-9999.0000") == nullptr);
  CHECK(members.Touch(/*server=*/false, s) == nullptr);  // a server's id

  const absl::Time cutoff = absl::Now() - absl::Seconds(1);
  CHECK(members.Silent(/*server=*/false, cutoff) ==
        std::vector<std::string>{a});
  CHECK(members.Silent(/*server=*/true, cutoff) ==
        std::vector<std::string>{s});

  members.Erase(/*server=*/false, a);
  members.Erase(/*server=*/false, "worker-9999.0000");  // no-op
  CHECK(members.Silent(/*server=*/false, cutoff).empty());
  CHECK(members.Find(/*server=*/false, a) == nullptr);
  CHECK(members.Find(/*server=*/false, b) != nullptr);
}

TEST_CASE("MemberTable: a coordinator stall is not counted against members, "
          "and never moves one into the future",
          "[coordinator][membership]") {
  MemberTable members;
  const std::string old_server = members.Add(/*server=*/true, "s:1");
  const std::string recent_worker = members.Add(/*server=*/false, "w:1");
  const absl::Time now = absl::Now();
  members.Find(/*server=*/true, old_server)->last_seen =
      now - absl::Seconds(5);
  members.Find(/*server=*/false, recent_worker)->last_seen =
      now - absl::Milliseconds(100);

  members.CompensateStall(now, absl::Seconds(2));
  CHECK(members.Find(/*server=*/true, old_server)->last_seen ==
        now - absl::Seconds(3));
  CHECK(members.Find(/*server=*/false, recent_worker)->last_seen == now);
}

TEST_CASE("MemberTable: servers are found by their data directory's uid",
          "[coordinator][membership]") {
  MemberTable members;
  const std::string first = members.Add(/*server=*/true, "s:1");
  const std::string second = members.Add(/*server=*/true, "s:2");
  const std::string other = members.Add(/*server=*/true, "s:3");
  const std::string worker = members.Add(/*server=*/false, "w:1");
  members.Find(/*server=*/true, first)->uid = "uid-a";
  members.Find(/*server=*/true, second)->uid = "uid-a";
  members.Find(/*server=*/true, other)->uid = "uid-b";
  members.Find(/*server=*/false, worker)->uid = "uid-a";  // not a server

  CHECK(members.ServersWithUid("uid-a") ==
        std::vector<std::string>{first, second});
  CHECK(members.ServersWithUid("uid-b") == std::vector<std::string>{other});
  CHECK(members.ServersWithUid("uid-c").empty());
}

}  // namespace
}  // namespace psd
