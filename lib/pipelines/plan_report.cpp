#include "pipelines/plan_report.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <set>
#include <vector>

#include "checkpoint/side_by_side.hpp"
#include "engine/read_once.hpp"

namespace mb {
namespace {
std::string gib(uint64_t b) {
  return fmt::format("{:.3f} GiB", static_cast<double>(b) / (1ull << 30));
}
uint64_t cover(uint64_t begin, uint64_t end, uint64_t a) {  // aligned cover of [begin, end)
  return begin == end ? 0 : (end + a - 1) / a * a - begin / a * a;
}

// Merges row intervals and returns how many rows they cover.
uint64_t union_rows(std::vector<std::pair<uint64_t, uint64_t>> v) {
  std::sort(v.begin(), v.end());
  uint64_t n = 0, b = 0, e = 0;
  bool open = false;
  for (const auto& [r0, r1] : v) {
    if (open && r0 <= e) {
      e = std::max(e, r1);
      continue;
    }
    if (open) n += e - b;
    b = r0, e = r1, open = true;
  }
  if (open) n += e - b;
  return n;
}
}  // namespace

StorageReads storage_reads(const ImportPlan& plan, const std::vector<SourceGeometry>& sources,
                           IoMode mode, uint64_t side_by_side_buffer, uint64_t align) {
  StorageReads out;
  // Each rank's reads, job by job, as it will make them.
  std::vector<std::pair<int, const std::vector<Segment>*>> jobs;
  std::vector<std::pair<int, ConversionStep>> steps;
  if (side_by_side_buffer > 0) {
    steps = every_rank_steps(plan, side_by_side_buffer);
    for (const auto& [r, st] : steps) jobs.push_back({r, &st.segments});
  } else {
    for (const auto& s : plan.shards)
      for (const auto& t : s.tensors) jobs.push_back({s.rank, &t.segments});
  }
  // Page-cache reads per source tensor: the row intervals of every rank, and
  // of each rank alone (narrow windows are read in whole row spans).
  std::map<uint32_t, std::vector<std::pair<uint64_t, uint64_t>>> node;
  std::map<std::pair<int, uint32_t>, std::vector<std::pair<uint64_t, uint64_t>>> per_rank;
  for (const auto& [rank, segments] : jobs)
    for (const auto& g : *segments) {
      const SourceGeometry& h = sources.at(g.src);
      const uint64_t rb = h.row_bytes, piece = g.cols * h.elem_bytes;
      const uint64_t base = h.offset + g.src_row * rb + g.src_col * h.elem_bytes;
      const bool full = piece == rb;
      if (mode != IoMode::Buffered && full) {
        out.direct += cover(base, base + g.rows * rb, align);
      } else if (mode != IoMode::Buffered && column_window_direct(piece, rb)) {
        for (uint64_t r = 0; r < g.rows; ++r)
          out.direct += cover(base + r * rb, base + r * rb + piece, align);
      } else {
        node[g.src].push_back({g.src_row, g.src_row + g.rows});
        per_rank[{rank, g.src}].push_back({g.src_row, g.src_row + g.rows});
      }
    }
  for (auto& [id, v] : node) out.page_cache_one_node += union_rows(v) * sources.at(id).row_bytes;
  for (auto& [key, v] : per_rank)
    out.page_cache_node_per_rank += union_rows(v) * sources.at(key.second).row_bytes;
  return out;
}

StorageReads import_storage_reads(const ImportPlan& plan, IoMode mode, uint64_t side_by_side_buffer,
                                  uint64_t align) {
  std::vector<SourceGeometry> sources;
  sources.reserve(plan.catalog.tensors.size());
  for (const HfTensor& h : plan.catalog.tensors)
    sources.push_back({h.offset, h.row_bytes(), dtype_size(h.dtype)});
  return storage_reads(plan, sources, mode, side_by_side_buffer, align);
}

std::string plan_report(const ImportPlan& plan, bool per_shard, IoMode mode, bool read_once,
                        uint64_t buffer_bytes) {
  std::string out;
  const ModelConfig& m = plan.model;
  out +=
      fmt::format("model      {} ({} layers, hidden {}, {})\n", m.architecture, m.text.num_layers,
                  m.text.hidden, m.is_moe() ? fmt::format("{} experts", m.text.experts) : "dense");
  out += fmt::format("source     {} ({} tensors in {} files, {})\n", plan.catalog.dir.string(),
                     plan.catalog.tensors.size(), plan.catalog.files.size(),
                     gib(plan.catalog.total_bytes()));
  const std::string mtp_experts =
      m.text.mtp_layers > 0 ? std::string(expert_layout_name(plan.experts.mtp)) : "none";
  if (m.is_moe())
    out += fmt::format("experts    decoder {}, MTP {}\n", expert_layout_name(plan.experts.main),
                       mtp_experts);
  if (m.text.mtp_layers > 0)
    out += fmt::format("mtp        {} layer\n", m.text.mtp_layers);
  else if (plan.mtp_not_converted > 0)
    out += fmt::format("mtp        none: config.json declares {}, the checkpoint holds no mtp.* "
                       "tensor\n",
                       plan.mtp_not_converted);
  out += fmt::format("layout     {} = {} shards on {} ranks\n", plan.layout.describe(),
                     plan.shards.size(), plan.world_size);
  const auto stages = stage_layers(plan.layout, m.text.num_layers);
  for (size_t p = 0; p < stages.size(); ++p)
    out += fmt::format("  stage {}  layers [{}, {})\n", p, stages[p].begin, stages[p].end);
  if (per_shard) {
    out += "shard                        rank  tensors        read     written\n";
    for (const auto& s : plan.shards)
      out += fmt::format("{:<28} {:>4} {:>8} {:>11} {:>11}\n", s.coord.file_name(), s.rank,
                         s.tensors.size(), gib(s.bytes_read()), gib(s.bytes_written()));
  }
  out += "rank  shards  tensors        read     written\n";
  uint64_t max_w = 0, sum_w = 0, total_r = 0;
  for (int r = 0; r < plan.world_size; ++r) {
    uint64_t shards = 0, tensors = 0, rd = 0, wr = 0;
    for (const auto& s : plan.shards)
      if (s.rank == r) {
        ++shards;
        tensors += s.tensors.size();
        rd += s.bytes_read();
        wr += s.bytes_written();
      }
    out += fmt::format("{:>4} {:>7} {:>8} {:>11} {:>11}\n", r, shards, tensors, gib(rd), gib(wr));
    max_w = std::max(max_w, wr);
    sum_w += wr;
    total_r += rd;
  }
  const double mean = static_cast<double>(sum_w) / static_cast<double>(plan.world_size);
  out += fmt::format("total read {} ({:.2f}x the checkpoint), written {}\n", gib(total_r),
                     static_cast<double>(total_r) /
                         static_cast<double>(std::max<uint64_t>(plan.catalog.total_bytes(), 1)),
                     gib(sum_w));
  const double total = static_cast<double>(std::max<uint64_t>(plan.catalog.total_bytes(), 1));
  const auto x = [&](uint64_t b) { return static_cast<double>(b) / total; };
  if (read_once) {
    out += fmt::format("storage    --read-once: {} ({:.3f}x the checkpoint), each byte once\n",
                       gib(read_once_read_bytes(plan)), x(read_once_read_bytes(plan)));
  } else {
    const StorageReads r = import_storage_reads(plan, mode, buffer_bytes);
    out += fmt::format(
        "storage    --io {}: {} ({:.3f}x the checkpoint) with the ranks on one node, {} ({:.3f}x) "
        "with a node per rank; {} direct, {} through the page cache (once per node)\n",
        io_mode_name(mode), gib(r.one_node()), x(r.one_node()), gib(r.node_per_rank()),
        x(r.node_per_rank()), gib(r.direct), gib(r.page_cache_one_node));
    out += fmt::format(
        "           (HDF5 output; --read-once, and torch_dist output, which stores every "
        "element once, read {}, {:.3f}x)\n",
        gib(read_once_read_bytes(plan)), x(read_once_read_bytes(plan)));
  }
  out += fmt::format("balance    busiest rank writes {:.2f}x the mean\n",
                     mean > 0 ? static_cast<double>(max_w) / mean : 1.0);
  return out;
}

}  // namespace mb
