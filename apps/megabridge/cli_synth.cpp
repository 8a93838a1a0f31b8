// `megabridge synth`: a random HF checkpoint with the real shapes of a
// released size.
#include <nlohmann/json.hpp>
#include <optional>

#include "cli_commands.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "core/log.hpp"
#include "dist/mpi_context.hpp"
#include "pipelines/synth.hpp"

namespace {

struct SynthCommand : CliCommand {
  std::string config, out, experts = "fused", mtp_experts = "per_expert";
  std::optional<uint64_t> layers, depth;
  uint64_t shard_mb = 5120, seed = 1;

  void add(CLI::App* c) {
    c->add_option("--hf-config", config, "a config.json, e.g. configs/hf/qwen3.5-35b-a3b.json")
        ->required();
    c->add_option("--out", out, "output directory")->required();
    c->add_option("--layers", layers, "keep the first N decoder layers")->check(kLayerCount);
    c->add_option("--vision-depth", depth, "keep the first N vision blocks")->check(kLayerCount);
    c->add_option("--experts", experts, "decoder expert layout: fused or per_expert");
    c->add_option("--mtp-experts", mtp_experts, "MTP expert layout: fused or per_expert");
    c->add_option("--max-shard-mb", shard_mb, "shard file size target (default 5120)")
        ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 32));
    c->add_option("--seed", seed, "random seed");
  }

  int run(Action action, mb::MpiContext& mpi) override {
    if (action != Action::Execute || !mpi.is_root()) return 0;
    mb::SynthOptions o;
    try {
      o.hf_config = nlohmann::json::parse(mb::read_text_file(config));
    } catch (const nlohmann::json::parse_error& e) {
      throw mb::Error("{}: malformed JSON: {}", config, e.what());
    }
    o.num_layers = layers;
    o.vision_depth = depth;
    o.experts.main = mb::expert_layout_from_name(experts);
    o.experts.mtp = mb::expert_layout_from_name(mtp_experts);
    o.max_shard_bytes = shard_mb << 20;
    o.seed = seed;
    o.out = out;
    o.config_path = config;
    const mb::SynthResult r = mb::synthesize_checkpoint(o);
    mb::log::info("synth: {} tensors, {:.3f} GB in {} files under {}", r.tensors,
                  static_cast<double>(r.bytes) / 1e9, r.files, out);
    return 0;
  }
};

}  // namespace

std::unique_ptr<CliCommand> add_synth_command(CLI::App& app) {
  auto c = std::make_unique<SynthCommand>();
  c->cmd = app.add_subcommand(
      "synth", "write a random HF checkpoint with the real shapes of a released size");
  c->add(c->cmd);
  return c;
}
