// Hands checksum hash states between ranks (see checkpoint/verify_chains.hpp):
// a rank that hashed its rows of a tensor sends the XXH3 state to the rank
// holding the next rows. Sends never block; a receive waits for the state of
// one tensor from one peer, up to a timeout. The messages travel on a
// communicator of their own, so they never meet the job's other traffic.
#pragma once

#include <cstdint>
#include <list>
#include <map>
#include <optional>
#include <string>
#include <utility>

namespace mb {

class MpiContext;

class HashRelay {
 public:
  // Collective: every rank constructs it at the same point.
  explicit HashRelay(MpiContext& mpi);
  // Waits for this rank's sends to complete (their receivers always take them)
  // and frees the communicator (collective), except while an exception unwinds.
  ~HashRelay();
  HashRelay(const HashRelay&) = delete;
  HashRelay& operator=(const HashRelay&) = delete;

  void send(int peer, uint32_t id, const std::string& state);
  // The state of tensor `id` from `peer`, waiting at most `timeout_s` seconds
  // (negative: until it comes); nullopt if it did not come in time.
  std::optional<std::string> receive(int peer, uint32_t id, double timeout_s);
  int rank() const { return rank_; }

 private:
  void drain(int peer);  // moves every message that has arrived from `peer` into mailbox_

  int rank_ = 0;
  void* comm_ = nullptr;  // MPI_Comm, kept out of this header
  struct Pending;         // a send in flight (hash_relay.cpp)
  std::list<Pending> sends_;  // a list: the buffers must not move while in flight
  std::map<std::pair<int, uint32_t>, std::string> mailbox_;
};

}  // namespace mb
