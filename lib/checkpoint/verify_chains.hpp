// Who checks which rows of each source tensor when a conversion checks the
// source's per-tensor checksums from the bytes as it reads them (export and
// reshard). A checksum is one XXH3 stream over the tensor's rows in order, and
// the rows are often read by several ranks (a TP2 reshard: rank 0 the first
// half, rank 1 the second). Rather than every rank reading the whole tensor
// again, the rows are cut into a chain of links, each hashed by a rank that
// reads those rows anyway; a link's rank hands the hash state on to the next
// link's rank (HashRelay), and the last link's rank compares the digest with
// the manifest. Every rank computes the same chains from the plan.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <utility>
#include <vector>

#include "transforms/segment.hpp"

namespace mb {

struct ChainLink {
  int rank = 0;
  uint64_t row0 = 0, row1 = 0;  // rows [row0, row1) of the source tensor (2-D view)
};
// Per source tensor, links in row order covering [0, rows); empty for a
// tensor no rank reads (nothing of it is converted, so nothing is checked).
using VerifyChains = std::vector<std::vector<ChainLink>>;

// One job's reads: the segments a rank copies (src = source tensor id).
struct SourceReads {
  int rank = 0;
  const std::vector<Segment>* segments = nullptr;
};

// `source_rows`: each source tensor's rows. A link goes to a rank that reads
// its rows (any columns): from each row, the rank whose read rows reach
// furthest (the current link's rank on a tie, else the lowest), so links are
// few. Rows nobody reads join the link before them (or, at the start, the
// first link); its rank reads them for the check.
VerifyChains build_verify_chains(const std::vector<uint64_t>& source_rows,
                                 const std::vector<SourceReads>& reads);

// The same rule for one range [0, extent) of anything (rows, or the bytes of
// a torch_dist chunk): `by_rank` holds the ranges each rank reads, in any
// order, overlapping or not.
using ReadRanges = std::map<int, std::vector<std::pair<uint64_t, uint64_t>>>;
std::vector<ChainLink> build_chain(uint64_t extent, ReadRanges by_rank);

// One rank's walk along one chain, shared by the sources that check as they
// read (Hdf5ShardSource over a tensor's rows, TorchDistSource over a chunk's
// bytes; positions are in their unit). `link`: this rank's next link;
// `next`: the hash covers [0, next); `broken`: a link went out of order and
// is finished after the conversion; `wait_s`: how long start() may wait for a
// state while converting, set to 0 after the first miss. The callbacks are the
// source's: start(wait_s) takes up the link (its state from the previous
// link's rank; false if it did not come) and sets `next` to its start;
// end() closes it (hands the state on, or checks the digest) and moves `link`.
struct ChainWalk {
  const std::vector<ChainLink>& links;
  size_t& link;
  uint64_t& next;
  bool& broken;
  double& wait_s;

  // Whether a read of [a, b) continues this rank's link, so that its units
  // are to be hashed as read (advance). Units of the link that the read
  // skips (read later, or never) go to fill(from, to) first, which reads
  // them and advances.
  template <class Start, class Fill>
  bool prepare(uint64_t a, uint64_t b, Start&& start, Fill&& fill) {
    while (!broken && link < links.size()) {
      const ChainLink& l = links[link];
      if (b <= std::max(next, l.row0)) return false;  // hashed, or another rank's
      if (next < l.row0 && !start(wait_s)) {
        wait_s = 0;  // late once: stop waiting while converting
        broken = true;
        return false;
      }
      if (a <= next) return true;
      fill(next, std::min(a, l.row1));
    }
    return false;
  }

  // Units [a, b) have been read: hash(from, to) what continues the link,
  // ending (and starting) links on the way.
  template <class Start, class Hash, class End>
  void advance(uint64_t a, uint64_t b, Start&& start, Hash&& hash, End&& end) {
    while (!broken && link < links.size()) {
      const ChainLink& l = links[link];
      if (next < l.row0) {        // the link has not started
        if (b <= l.row0) return;  // units before it: another rank's
        if (a > l.row0 || !start(wait_s)) {
          // Its first units were skipped, or the state did not come in
          // time: the finish after the conversion continues it.
          if (a <= l.row0) wait_s = 0;
          broken = true;
          return;
        }
      }
      if (a > next) {  // units of the link skipped
        broken = true;
        return;
      }
      if (next >= b) return;  // read again, already hashed
      const uint64_t to = std::min(b, l.row1);
      hash(next, to);
      next = to;
      if (to < l.row1) return;
      end();
    }
  }
};

// Which of a source's asks for whole rows (RowSource::prefetch) it may load
// ahead (DirectReadQueue) while it checks its checksums as it reads. A rank
// that reads a tensor's rows out of order (an expert fc1 at ETP2: shard 0's
// gate and up rows, then shard 1's) hashes the rows a read skips ahead of it,
// through the page cache (fills), and its later read of them goes there:
// loaded ahead as well, they came from storage twice (1.4 GB more in a TP1
// -> TP2·ETP2 reshard of the benchmark checkpoint). So rows are loaded ahead
// only at or after the furthest rows already asked of their tensor.
class RowsAskedInOrder {
 public:
  // Whether rows [row0, row0 + rows) of tensor `id` continue what was asked
  // of it so far (recorded if so).
  bool ask(uint32_t id, uint64_t row0, uint64_t rows) {
    uint64_t& end = end_[id];
    if (row0 < end) return false;
    end = row0 + rows;
    return true;
  }

 private:
  std::map<uint32_t, uint64_t> end_;  // per tensor, the end of the furthest rows asked
};

}  // namespace mb
