#include "failover/server_list.h"

#include <algorithm>

#include "common/error_reasons.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"

namespace tern::failover {
namespace {

using std::chrono::milliseconds;

constexpr milliseconds kFirstBackoff{100};
constexpr milliseconds kMaxBackoff{1000};

std::string_view Trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
  return text;
}

}  // namespace

StatusOr<std::vector<std::string>> ParseServerAddresses(std::string_view flag,
                                                        std::string_view text) {
  const std::string name(flag);
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t comma = text.find(',', start);
    const std::string_view entry = Trim(text.substr(
        start, comma == std::string_view::npos ? std::string_view::npos : comma - start));
    if (entry.empty()) {
      return InvalidArgumentError(name + ": \"" + std::string(text) +
                                  "\" has an empty address (expected HOST:PORT[,HOST:PORT...])");
    }
    const size_t colon = entry.rfind(':');
    if (colon == std::string_view::npos || colon + 1 == entry.size()) {
      return InvalidArgumentError(name + ": \"" + std::string(entry) + "\" is not HOST:PORT");
    }
    if (std::find(out.begin(), out.end(), entry) == out.end()) out.emplace_back(entry);
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return out;
}

std::optional<google::rpc::ErrorInfo> TernErrorInfoOf(const grpc::Status& status) {
  google::rpc::Status details;
  if (status.error_details().empty() || !details.ParseFromString(status.error_details())) {
    return std::nullopt;
  }
  for (const google::protobuf::Any& any : details.details()) {
    google::rpc::ErrorInfo info;
    if (any.UnpackTo(&info) && info.domain() == error_reason::kErrorDomain) return info;
  }
  return std::nullopt;
}

LeaderHint LeaderHintOf(const grpc::Status& status) {
  LeaderHint hint;
  if (status.error_code() != grpc::StatusCode::UNAVAILABLE) return hint;
  const std::optional<google::rpc::ErrorInfo> info = TernErrorInfoOf(status);
  if (info && (info->reason() == error_reason::kNotLeader ||
               info->reason() == error_reason::kLeadershipLost)) {
    hint.not_leader = true;
    auto it = info->metadata().find("leader_address");
    if (it != info->metadata().end()) hint.leader_address = it->second;
  }
  return hint;
}

StatusOr<std::shared_ptr<ServerList>> ServerList::Create(std::vector<std::string> addresses,
                                                         const ChannelFactory& make_channel) {
  if (addresses.empty()) return InvalidArgumentError("no ternd address given");
  std::vector<std::shared_ptr<grpc::ChannelInterface>> channels;
  for (const std::string& address : addresses) {
    TERN_ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> channel, make_channel(address));
    channels.push_back(std::move(channel));
  }
  return std::shared_ptr<ServerList>(new ServerList(std::move(addresses), std::move(channels)));
}

std::shared_ptr<ServerList> ServerList::Single(std::string address,
                                               std::shared_ptr<grpc::ChannelInterface> channel) {
  return std::shared_ptr<ServerList>(new ServerList({std::move(address)}, {std::move(channel)}));
}

ServerList::Target ServerList::Current() const {
  std::lock_guard<std::mutex> lock(mu_);
  return {current_, channels_[current_]};
}

milliseconds ServerList::BackoffLocked() const {
  // failures_ counts this failure too: the first whole round waits 100 ms.
  const int rounds = std::max(1, failures_ / static_cast<int>(addresses_.size()));
  milliseconds delay = kFirstBackoff;
  for (int i = 1; i < rounds && delay < kMaxBackoff; ++i) delay *= 2;
  return std::min(delay, kMaxBackoff);
}

std::optional<milliseconds> ServerList::OnFailure(const Target& used, const grpc::Status& status) {
  if (status.error_code() != grpc::StatusCode::UNAVAILABLE) return std::nullopt;
  const LeaderHint hint = LeaderHintOf(status);
  const size_t n = addresses_.size();
  std::lock_guard<std::mutex> lock(mu_);
  if (n == 1) {
    if (hint.not_leader) {
      takeover_ = true;
    } else if (!takeover_) {
      return std::nullopt;
    }
    ++failures_;
    return BackoffLocked();
  }
  ++failures_;
  if (used.index != current_) return milliseconds(0);  // another call moved on already
  if (hint.not_leader && !hint.leader_address.empty()) {
    const auto it = std::find(addresses_.begin(), addresses_.end(), hint.leader_address);
    if (it != addresses_.end()) {
      const size_t leader = static_cast<size_t>(it - addresses_.begin());
      current_ = leader;
      // The leader named itself (it is taking over right now), or the
      // servers keep naming each other: wait a little.
      if (leader == used.index || failures_ > 2 * static_cast<int>(n)) return BackoffLocked();
      return milliseconds(0);
    }
  }
  current_ = (used.index + 1) % n;
  if (failures_ % static_cast<int>(n) == 0) return BackoffLocked();  // a whole round failed
  return milliseconds(0);
}

void ServerList::OnSuccess(const Target& /*used*/) {
  std::lock_guard<std::mutex> lock(mu_);
  failures_ = 0;
  takeover_ = false;
}

}  // namespace tern::failover
