// The coordinator's table of registered members (parameter servers and
// workers): their ids, addresses and last heartbeats. (The members' side of
// registration and heartbeats is common/membership.h.)
#ifndef PSD_SERVER_COORDINATOR_MEMBER_TABLE_H_
#define PSD_SERVER_COORDINATOR_MEMBER_TABLE_H_

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "common/proto.h"

namespace psd {

// The registered servers and workers, each under an id this table makes
// up, with when each was last heard from. It knows nothing of jobs: what a
// member joining or leaving does to them is CoordinatorState's (it calls
// Add, Touch, Silent, Erase and CompensateStall, and reads and edits the
// records, under its own lock).
//
// Not thread-safe: CoordinatorState keeps one, guarded by its mutex.
//
// Example:
//   MemberTable members;
//   const std::string id = members.Add(/*server=*/false, "10.0.0.5:7000");
//   members.Touch(/*server=*/false, id);  // a heartbeat
//   for (const std::string& gone :
//        members.Silent(/*server=*/false, absl::Now() - absl::Seconds(2))) {
//     members.Erase(/*server=*/false, gone);
//   }
class MemberTable {
 public:
  struct Member {
    std::string address;
    absl::Time last_seen;
    // Workers only: the job and rank held, "" when idle.
    std::string job_id;
    int32_t rank = 0;
    // Servers only: the data directory's uid, and the jobs held in memory
    // when it registered.
    std::string uid;
    std::vector<std::string> live_jobs;
    // Servers only: ServerInfo.identity (mutual TLS), "" in plaintext.
    std::string identity;
    // Servers only: RegisterRequest.table_memory_bytes (0 = no bound).
    int64_t table_memory_bytes = 0;
    // Workers only: a job whose rank was taken from this worker for making
    // no progress (WatchProgress); it is never given a rank of it again.
    std::string stalled_in;
    // Workers only: it said it is leaving (SIGTERM, ReportProgressRequest.
    // leaving); it is given no ranks, and its heartbeats stop soon.
    bool leaving = false;
    // Workers only: the ModelSpec kinds it trains (RegisterRequest.
    // model_kinds; MLP when it named none).
    std::set<int32_t> model_kinds;

    // Workers only: whether it trains jobs of `model`'s kind.
    bool Trains(const ModelSpec& model) const {
      return model_kinds.count(model.kind()) > 0;
    }
  };

  // Chooses this table's incarnation at random (see Add).
  MemberTable();
  MemberTable(const MemberTable&) = delete;
  MemberTable& operator=(const MemberTable&) = delete;

  // Adds a member at `address`, last seen now, and returns its new id:
  // "server-0007.3f2a" or "worker-0008.3f2a", a number that grows with
  // every Add (servers and workers alike), then the incarnation, so that
  // ids of an earlier run of the coordinator (still used by its members
  // until they register again) never collide with this run's.
  std::string Add(bool server, const std::string& address);

  // The member's record, or null for an unknown id. Valid until the member
  // is erased.
  Member* Find(bool server, const std::string& id);

  // A heartbeat: marks the member seen now. Returns its record, or null
  // for an unknown (or expired) id.
  Member* Touch(bool server, const std::string& id);

  // The ids of the servers registered from the data directory `uid`, in
  // id order.
  std::vector<std::string> ServersWithUid(const std::string& uid) const;

  // The ids (in id order) of the servers or workers last seen before
  // `cutoff`: the members whose heartbeats stopped.
  std::vector<std::string> Silent(bool server, absl::Time cutoff) const;

  // Pause compensation: the coordinator did not run for `stalled` (up to
  // `now`), so neither did its heartbeat handlers, and every member's
  // silence over that time is the coordinator's: each last_seen moves
  // `stalled` later, to `now` at most.
  void CompensateStall(absl::Time now, absl::Duration stalled);

  // Forgets the member. No-op for an unknown id.
  void Erase(bool server, const std::string& id);

  // Every server and every worker, by id. Callers read and edit the
  // records in place. (operator[] adds a record for an unknown id.)
  std::map<std::string, Member>& servers() { return servers_; }
  std::map<std::string, Member>& workers() { return workers_; }
  const std::map<std::string, Member>& servers() const { return servers_; }
  const std::map<std::string, Member>& workers() const { return workers_; }

 private:
  std::map<std::string, Member>& Of(bool server) {
    return server ? servers_ : workers_;
  }
  const std::map<std::string, Member>& Of(bool server) const {
    return server ? servers_ : workers_;
  }

  // Ends every member id (see Add). Constant after construction.
  const std::string incarnation_;
  int64_t next_member_ = 1;
  std::map<std::string, Member> servers_;
  std::map<std::string, Member> workers_;
};

// A server member as the cluster view and assignments show it.
ServerInfo ServerInfoOf(const std::string& id, const MemberTable::Member& member);


}  // namespace psd

#endif  // PSD_SERVER_COORDINATOR_MEMBER_TABLE_H_
