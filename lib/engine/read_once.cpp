#include "engine/read_once.hpp"

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <numeric>

#include "checkpoint/safetensors_source.hpp"
#include "checkpoint/shard_writer.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "core/hash.hpp"
#include "core/log.hpp"
#include "dist/forwarder.hpp"
#include "dist/mpi_context.hpp"
#include "dist/progress.hpp"
#include "dist/test_hooks.hpp"
#include "formats/hdf5/hdf5_checksum.hpp"
#include "formats/hdf5/hdf5_shard.hpp"
#include "transforms/cast_overflow.hpp"

namespace mb {
namespace fs = std::filesystem;

namespace {

// One destination of HF elements: a segment of a local tensor of a shard.
struct Demand {
  int rank;
  uint32_t shard, tensor;
  Segment seg;  // src = the HF tensor
};

// A rectangle of an HF tensor that one consumer needs in one block, and every
// place on that consumer it goes to.
struct Rect {
  uint64_t row0, rows, col0, cols;
  std::vector<const Demand*> uses;
  uint64_t bytes(size_t es) const { return rows * cols * es; }
};

struct Schedule {
  std::vector<std::vector<Demand>> demands;  // per HF tensor
  std::vector<int> owner;                    // per HF tensor
  std::vector<uint32_t> order;               // HF tensors in file/offset order
};

Schedule make_schedule(const ImportPlan& plan) {
  Schedule s;
  const size_t n = plan.catalog.tensors.size();
  s.demands.resize(n);
  for (uint32_t i = 0; i < plan.shards.size(); ++i)
    for (uint32_t k = 0; k < plan.shards[i].tensors.size(); ++k)
      for (const Segment& g : plan.shards[i].tensors[k].segments)
        s.demands[g.src].push_back({plan.shards[i].rank, i, k, g});
  s.order.resize(n);
  std::iota(s.order.begin(), s.order.end(), 0);
  std::sort(s.order.begin(), s.order.end(), [&](uint32_t a, uint32_t b) {
    const HfTensor &x = plan.catalog.tensors[a], &y = plan.catalog.tensors[b];
    return x.file != y.file ? x.file < y.file : x.offset < y.offset;
  });
  // The owner is the rank that needs the most of the tensor (so the most
  // stays local). Among ranks that need as much (both halves of a TP split, a
  // norm every rank holds), the one that owns the fewest bytes so far, in
  // read order: ties to the lowest rank made rank 0 read nearly everything
  // (a TP2·ETP2 import: 11.40 GB on rank 0, 0.03 GB on rank 1), one node's
  // storage and network for the whole checkpoint when ranks span nodes.
  s.owner.assign(n, 0);
  std::map<int, uint64_t> owned;
  for (uint32_t x : s.order) {
    std::map<int, uint64_t> need;
    for (const Demand& d : s.demands[x]) need[d.rank] += d.seg.rows * d.seg.cols;
    if (need.empty()) continue;  // nobody reads it
    uint64_t best = 0;
    for (const auto& [r, b] : need)
      if (b > best || (b == best && owned[r] < owned[s.owner[x]])) best = b, s.owner[x] = r;
    owned[s.owner[x]] += plan.catalog.tensors[x].nbytes;
  }
  return s;
}

// The rectangles rank `rank` needs from rows [r0, r1) of tensor x, each once,
// in a deterministic order both sides agree on.
std::vector<Rect> rects_for(const std::vector<Demand>& demands, int rank, uint64_t r0, uint64_t r1) {
  std::vector<Rect> out;
  std::map<std::tuple<uint64_t, uint64_t, uint64_t, uint64_t>, size_t> seen;
  for (const Demand& d : demands) {
    if (d.rank != rank) continue;
    const uint64_t a = std::max(r0, d.seg.src_row), b = std::min(r1, d.seg.src_row + d.seg.rows);
    if (a >= b) continue;
    const auto key = std::make_tuple(a, b - a, d.seg.src_col, d.seg.cols);
    auto [it, fresh] = seen.emplace(key, out.size());
    if (fresh) out.push_back({a, b - a, d.seg.src_col, d.seg.cols, {}});
    out[it->second].uses.push_back(&d);
  }
  return out;
}

}  // namespace

uint64_t direct_mode_read_bytes(const ImportPlan& plan) {
  uint64_t n = 0;
  for (const auto& s : plan.shards) n += s.bytes_read();
  return n;
}

uint64_t read_once_read_bytes(const ImportPlan& plan) {
  std::vector<bool> used(plan.catalog.tensors.size(), false);
  for (const auto& s : plan.shards)
    for (const auto& t : s.tensors)
      for (const auto& g : t.segments) used[g.src] = true;
  uint64_t n = 0;
  for (size_t i = 0; i < used.size(); ++i)
    if (used[i]) n += plan.catalog.tensors[i].nbytes;
  return n;
}

std::vector<ShardResult> run_read_once_hdf5(const ImportPlan& plan, MpiContext& mpi, Forwarder& fwd,
                                            const fs::path& staging, uint64_t buffer_bytes,
                                            const IoConfig& io, Progress& progress,
                                            ReadOnceStats& stats, bool allow_overflow) {
  const int me = mpi.rank();
  const Schedule sched = make_schedule(plan);
  SafetensorsSource source(plan.catalog, io);

  // All my shard files, with every dataset created up front.
  std::map<uint32_t, std::unique_ptr<Hdf5ShardUpdater>> files;
  for (size_t si : plan.shards_of_rank(me)) {
    const ShardPlan& s = plan.shards[si];
    const ShardFileInfo info = shard_file_info(plan.layout, plan.model.architecture, s.coord);
    std::vector<ShardDatasetInfo> ds;
    for (const LocalTensor& t : s.tensors) ds.push_back({t.name, t.global_name, t.shape, t.global_shape, t.dtype, {}});
    files[static_cast<uint32_t>(si)] = std::make_unique<Hdf5ShardUpdater>(
        staging / (s.coord.file_name() + ".tmp"), info, ds);
  }

  // A quarter of the buffer each: the block read, a message, and the converted rectangle.
  const uint64_t part = std::max<uint64_t>(buffer_bytes / 4, 4096);
  std::vector<unsigned char> block, message, converted;
  uint64_t not_invertible = 0;

  // Writes one received or local rectangle to every place it goes.
  auto apply = [&](const Rect& r, const unsigned char* data, DType src_dtype) {
    for (const Demand* d : r.uses) {
      const LocalTensor& t = plan.shards[d->shard].tensors[d->tensor];
      const uint64_t n = r.rows * r.cols;
      const unsigned char* out = data;
      if (t.op != ElementOp::None || t.dtype != src_dtype) {
        converted.resize(n * dtype_size(t.dtype));
        if (t.op != ElementOp::None && t.dtype == src_dtype)
          not_invertible += count_not_invertible(t.op, src_dtype, data, n);
        transform_elements(t.op, src_dtype, data, t.dtype, converted.data(), n);
        uint64_t first = 0;
        double value = 0;
        if (!allow_overflow && cast_can_overflow(src_dtype, t.dtype))
          if (const uint64_t k = count_cast_overflow(src_dtype, data, t.dtype, converted.data(), n,
                                                     &first, &value))
            throw Error(
                "{} (counted in the first rectangle that overflowed, e.g. {:.8g})",
                cast_overflow_message(t.global_name, src_dtype, t.dtype, k, first, value, false),
                value);
        out = converted.data();
      }
      files.at(d->shard)->write_rect(d->tensor, d->seg.dst_row + (r.row0 - d->seg.src_row), r.rows,
                                     d->seg.dst_col + (r.col0 - d->seg.src_col), r.cols, out);
      progress.add_bytes(n * dtype_size(t.dtype));
    }
  };

  for (uint32_t x : sched.order) {
    const auto& demands = sched.demands[x];
    if (demands.empty()) continue;
    const HfTensor& h = plan.catalog.tensors[x];
    const size_t es = dtype_size(h.dtype);
    const int owner = sched.owner[x];
    bool involved = owner == me;
    for (const Demand& d : demands) involved = involved || d.rank == me;
    if (!involved) continue;
    std::vector<int> consumers;
    for (const Demand& d : demands)
      if (std::find(consumers.begin(), consumers.end(), d.rank) == consumers.end()) consumers.push_back(d.rank);
    std::sort(consumers.begin(), consumers.end());
    const uint64_t rows_per_block = std::max<uint64_t>(1, part / std::max<uint64_t>(h.row_bytes(), 1));
    for (uint64_t r0 = 0; r0 < h.rows(); r0 += rows_per_block) {
      const uint64_t r1 = std::min(h.rows(), r0 + rows_per_block);
      if (owner == me) {
        block.resize((r1 - r0) * h.row_bytes());
        source.read(x, r0, r1 - r0, 0, h.cols(), block.data(), h.row_bytes());
        stats.storage_bytes += block.size();
      }
      for (int c : consumers) {
        if (c != me && owner != me) continue;
        const std::vector<Rect> rects = rects_for(demands, c, r0, r1);
        // Messages of at most `part` bytes, cut at rectangle boundaries; both
        // sides compute the same cuts.
        size_t first = 0;
        while (first < rects.size()) {
          size_t last = first;
          uint64_t bytes = 0;
          while (last < rects.size() && (last == first || bytes + rects[last].bytes(es) <= part))
            bytes += rects[last++].bytes(es);
          if (owner == me) {  // pack the rows of each rectangle from the block
            message.resize(bytes);
            unsigned char* p = message.data();
            for (size_t i = first; i < last; ++i) {
              const Rect& r = rects[i];
              for (uint64_t row = 0; row < r.rows; ++row) {
                std::memcpy(p, block.data() + (r.row0 - r0 + row) * h.row_bytes() + r.col0 * es, r.cols * es);
                p += r.cols * es;
              }
            }
            if (c != me) {
              std::vector<Forwarder::Op> ops{{true, c, message.data(), bytes}};
              fwd.run(ops);
              stats.sent_bytes += bytes;
            }
          } else {
            message.resize(bytes);
            std::vector<Forwarder::Op> ops{{false, owner, message.data(), bytes}};
            fwd.run(ops);
            stats.received_bytes += bytes;
          }
          if (c == me) {
            const unsigned char* p = message.data();
            for (size_t i = first; i < last; ++i) {
              apply(rects[i], p, h.dtype);
              p += rects[i].bytes(es);
            }
          }
          first = last;
        }
      }
    }
    test_hook_after_tensor(me);
  }

  // Checksums, then commit each file under its final name.
  std::vector<ShardResult> results;
  for (auto& [si, f] : files) {
    const ShardPlan& s = plan.shards[si];
    ShardResult r;
    r.coord = s.coord;
    r.file = s.coord.file_name();
    std::map<std::string, uint64_t> hashed;  // read back once here: not again for the file checksum
    for (size_t k = 0; k < s.tensors.size(); ++k) {
      r.tensors.push_back({s.tensors[k].name, f->finish_dataset(k, part)});
      hashed[s.tensors[k].name] = hash_from_hex(r.tensors.back().xxh3);
      progress.add_tensor();
    }
    f->close();
    const fs::path tmp = staging / (r.file + ".tmp"), final_path = staging / r.file;
    {
      File fd(tmp, File::Mode::ReadWrite);
      fd.fsync();
    }
    fs::rename(tmp, final_path);
    r.bytes = fs::file_size(final_path);
    r.xxh3 = hash_hex(hdf5_file_checksum(final_path, hashed).digest);
    r.checksum = kHdf5RegionChecksum;
    results.push_back(std::move(r));
  }
  if (not_invertible > 0)
    log::warn("{} element(s) of GDN norms do not survive -1 and +1 bit-exactly (magnitudes below 0.5)",
              not_invertible);
  if (!results.empty()) results.front().bytes_read = stats.storage_bytes;
  return results;
}

}  // namespace mb
