// `megabridge export`: Megatron shards back to a HF checkpoint.
#include <optional>

#include "cli_commands.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "pipelines/export_pipeline.hpp"
#include "pipelines/step_driver.hpp"

namespace {

struct ExportCommand : CliCommand {
  std::string config, megatron_path, hf_path, experts, mtp_experts, max_shard_size, dtype,
      hf_config, device, io;
  std::optional<uint64_t> buffer_mb;
  bool no_verify = false, overwrite = false, allow_overflow = false;

  void add(CLI::App* c) {
    c->add_option("--config", config, kConfigHelp);
    c->add_option("--megatron-path", megatron_path, "megabridge Megatron output directory");
    c->add_option("--hf-path", hf_path, "output HF checkpoint directory");
    c->add_option("--experts", experts,
                  "decoder expert layout: fused or per_expert (default: as the source)");
    c->add_option("--mtp-experts", mtp_experts,
                  "MTP expert layout: fused or per_expert (default: as the source)");
    c->add_option("--max-shard-size", max_shard_size,
                  "split files at this size, e.g. 5GB (default: the source's file map)");
    c->add_option("--dtype", dtype, "keep (default: the source dtypes), bf16, fp16 or fp32");
    c->add_option("--buffer-mb", buffer_mb, "staging memory per rank in MiB (default 256)")
        ->check(kBufferMb);
    c->add_flag("--allow-overflow", allow_overflow, kAllowOverflowHelp);
    c->add_flag("--no-verify-checksums", no_verify, "skip the shard checksum check");
    c->add_flag("--overwrite", overwrite, "replace an existing output directory");
    add_device_option(c, device);
    add_io_option(c, io);
    c->add_option(
        "--hf-config", hf_config,
        "the model's HF config.json, for a torch_dist checkpoint not written by megabridge");
  }

  mb::ExportOptions resolve() const {
    mb::ExportOptions o;  // a --config file arrives as flags (expand_config)
    if (!megatron_path.empty()) o.megatron_path = megatron_path;
    if (!hf_path.empty()) o.hf_path = hf_path;
    if (!experts.empty()) o.experts = mb::expert_layout_from_name(experts);
    if (!mtp_experts.empty()) o.mtp_experts = mb::expert_layout_from_name(mtp_experts);
    if (!max_shard_size.empty()) {
      try {
        o.max_shard_bytes = mb::parse_size(max_shard_size);
      } catch (const mb::Error& e) {
        throw mb::Error("--max-shard-size: {}", e.what());
      }
    }
    if (!dtype.empty()) o.dtype = mb::parse_dtype_option(dtype);
    if (buffer_mb) o.buffer_bytes = mb::buffer_mb_to_bytes(*buffer_mb, "--buffer-mb");
    if (allow_overflow) o.allow_overflow = true;
    if (no_verify) o.verify_checksums = false;
    if (overwrite) o.overwrite = true;
    if (!hf_config.empty()) o.hf_config = hf_config;
    if (!device.empty()) o.device = device;
    if (!io.empty()) o.io = mb::parse_io_mode(io);
    MB_CHECK(!o.megatron_path.empty(), "no Megatron checkpoint given: use --megatron-path");
    MB_CHECK(!o.hf_path.empty(), "no output directory given: use --hf-path");
    return o;
  }

  int run(Action action, mb::MpiContext& mpi) override {
    const mb::ExportOptions o = resolve();
    if (action != Action::Execute) return drive(action, mb::make_export_step(o), mpi);
    return mb::run_export(o, mpi);
  }
};

}  // namespace

std::unique_ptr<CliCommand> add_export_command(CLI::App& app) {
  auto c = std::make_unique<ExportCommand>();
  c->cmd = app.add_subcommand("export", "convert Megatron shards back to a HF checkpoint");
  c->add(c->cmd);
  return c;
}
