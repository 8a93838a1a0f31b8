// `megabridge reshard`: Megatron shards to another parallel layout.
#include <optional>

#include "cli_commands.hpp"
#include "pipelines/reshard_pipeline.hpp"
#include "pipelines/step_driver.hpp"

namespace {

struct ReshardCommand : CliCommand {
  mb::ReshardOptions opt;
  std::optional<uint64_t> first, last, buffer_mb;
  std::string io, config;  // config: expand_config reads it before parsing
  bool no_checksums = false;

  void add_layout(CLI::App* c) {
    c->add_option("--tp", opt.layout.tp, "target tensor-parallel size")->check(kParallelSize);
    c->add_option("--pp", opt.layout.pp, "target pipeline-parallel size")->check(kParallelSize);
    c->add_option("--ep", opt.layout.ep, "target expert-parallel size")->check(kParallelSize);
    c->add_option("--etp", opt.layout.etp, "target expert tensor-parallel size")
        ->check(kParallelSize);
    c->add_option("--first-stage-layers", first, "layers on the first stage")->check(kLayerCount);
    c->add_option("--last-stage-layers", last, "layers on the last stage")->check(kLayerCount);
  }

  void add(CLI::App* c) {
    c->add_option("--megatron-path", opt.src, "megabridge Megatron output")->required();
    c->add_option("--out", opt.out, "output directory")->required();
    add_layout(c);
    c->add_option("--buffer-mb", buffer_mb, "staging memory per rank in MiB")->check(kBufferMb);
    add_device_option(c, opt.device);
    add_io_option(c, io);
    c->add_flag("--no-verify-checksums", no_checksums, "skip the shard checksum check");
    c->add_flag("--overwrite", opt.overwrite, "replace an existing output directory");
    c->add_flag(
        "--resume", opt.resume,
        "continue an interrupted run, keeping the shards it committed (checked by checksum)");
    c->add_option("--config", config, kConfigHelp);
  }

  int run(Action action, mb::MpiContext& mpi) override {
    opt.layout.first_stage_layers = first;
    opt.layout.last_stage_layers = last;
    if (buffer_mb) opt.buffer_bytes = mb::buffer_mb_to_bytes(*buffer_mb, "--buffer-mb");
    if (!io.empty()) opt.io = mb::parse_io_mode(io);
    opt.verify_checksums = !no_checksums;
    if (action != Action::Execute) return drive(action, mb::make_reshard_step(opt), mpi);
    return mb::run_reshard(opt, mpi);
  }
};

}  // namespace

std::unique_ptr<CliCommand> add_reshard_command(CLI::App& app) {
  auto c = std::make_unique<ReshardCommand>();
  c->cmd = app.add_subcommand(
      "reshard", "convert Megatron shards to another parallel layout, without HF in between");
  c->add(c->cmd);
  return c;
}
