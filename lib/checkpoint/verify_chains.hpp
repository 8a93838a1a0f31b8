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

#include <cstdint>
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

}  // namespace mb
