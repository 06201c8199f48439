#include "server/coordinator/member_table.h"

#include <algorithm>
#include <random>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace psd {

MemberTable::MemberTable()
    : incarnation_(absl::StrFormat("%04x", std::random_device()() & 0xffff)) {}

std::string MemberTable::Add(bool server, const std::string& address) {
  const std::string id = absl::StrFormat(
      "%s-%04d.%s", server ? "server" : "worker", next_member_++, incarnation_);
  Member& member = Of(server)[id];
  member.address = address;
  member.last_seen = absl::Now();
  return id;
}

MemberTable::Member* MemberTable::Find(bool server, const std::string& id) {
  auto it = Of(server).find(id);
  return it == Of(server).end() ? nullptr : &it->second;
}

MemberTable::Member* MemberTable::Touch(bool server, const std::string& id) {
  Member* member = Find(server, id);
  if (member != nullptr) member->last_seen = absl::Now();
  return member;
}

std::vector<std::string> MemberTable::ServersWithUid(
    const std::string& uid) const {
  std::vector<std::string> ids;
  for (const auto& [id, member] : servers_) {
    if (member.uid == uid) ids.push_back(id);
  }
  return ids;
}

std::vector<std::string> MemberTable::Silent(bool server,
                                             absl::Time cutoff) const {
  std::vector<std::string> ids;
  for (const auto& [id, member] : Of(server)) {
    if (member.last_seen < cutoff) ids.push_back(id);
  }
  return ids;
}

void MemberTable::CompensateStall(absl::Time now, absl::Duration stalled) {
  for (auto* members : {&servers_, &workers_}) {
    for (auto& [id, member] : *members) {
      member.last_seen = std::min(now, member.last_seen + stalled);
    }
  }
}

void MemberTable::Erase(bool server, const std::string& id) {
  Of(server).erase(id);
}

ServerInfo ServerInfoOf(const std::string& id,
                        const MemberTable::Member& member) {
  ServerInfo info;
  info.set_id(id);
  info.set_address(member.address);
  info.set_uid(member.uid);
  info.set_identity(member.identity);
  return info;
}

}  // namespace psd
