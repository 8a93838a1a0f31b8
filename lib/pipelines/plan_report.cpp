#include "pipelines/plan_report.hpp"

#include "pipelines/read_once.hpp"

#include <algorithm>

#include <fmt/format.h>

namespace mb {
namespace {
std::string gib(uint64_t b) { return fmt::format("{:.3f} GiB", static_cast<double>(b) / (1ull << 30)); }
}  // namespace

std::string plan_report(const ImportPlan& plan, bool per_shard) {
  std::string out;
  const ModelConfig& m = plan.model;
  out += fmt::format("model      {} ({} layers, hidden {}, {})\n", m.architecture,
                     m.text.num_layers, m.text.hidden,
                     m.is_moe() ? fmt::format("{} experts", m.text.experts) : "dense");
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
  out += fmt::format("storage    direct mode reads {}, read-once mode {} ({:.3f}x the checkpoint)\n",
                     gib(direct_mode_read_bytes(plan)), gib(read_once_read_bytes(plan)),
                     static_cast<double>(read_once_read_bytes(plan)) /
                         static_cast<double>(std::max<uint64_t>(plan.catalog.total_bytes(), 1)));
  out += fmt::format("balance    busiest rank writes {:.2f}x the mean\n",
                     mean > 0 ? static_cast<double>(max_w) / mean : 1.0);
  return out;
}

}  // namespace mb
