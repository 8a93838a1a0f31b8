// `megabridge verify A B`: two checkpoints compared tensor by tensor.
#include <cmath>
#include <optional>

#include "cli_commands.hpp"
#include "core/error.hpp"
#include "pipelines/step_driver.hpp"
#include "pipelines/verify_pipeline.hpp"

namespace {

void check_tolerance(double v, const char* option) {
  MB_CHECK(std::isfinite(v) && v >= 0, "{} {} is out of range: expected a finite number >= 0",
           option, v);
}

struct VerifyCommand : CliCommand {
  mb::VerifyOptions opt;
  std::optional<uint64_t> buffer_mb;
  bool no_checksums = false;
  std::string config;  // expand_config reads it before parsing

  void add(CLI::App* c) {
    c->add_option("A", opt.a, "a HF checkpoint or megabridge output")->required();
    c->add_option("B", opt.b, "a HF checkpoint or megabridge output")->required();
    c->add_option("--atol", opt.atol, "absolute tolerance (default 0: bit-exact)");
    c->add_option("--rtol", opt.rtol, "relative tolerance (default 0: bit-exact)");
    c->add_option("--buffer-mb", buffer_mb, "staging memory per rank in MiB")->check(kBufferMb);
    add_device_option(c, opt.device);
    c->add_flag("--no-verify-checksums", no_checksums, "skip the shard checksum check");
    c->add_option("--hf-config", opt.hf_config,
                  "HF config.json for a torch_dist side not written by megabridge (default: the "
                  "HF side's)");
    c->add_option("--config", config, kConfigHelp);
  }

  int run(Action action, mb::MpiContext& mpi) override {
    if (buffer_mb) opt.buffer_bytes = mb::buffer_mb_to_bytes(*buffer_mb, "--buffer-mb");
    check_tolerance(opt.atol, "--atol");
    check_tolerance(opt.rtol, "--rtol");
    opt.verify_checksums = !no_checksums;
    if (action != Action::Execute) return drive(action, mb::make_verify_step(opt), mpi);
    return mb::run_verify(opt, mpi);
  }
};

}  // namespace

std::unique_ptr<CliCommand> add_verify_command(CLI::App& app) {
  auto c = std::make_unique<VerifyCommand>();
  c->cmd = app.add_subcommand("verify",
                              "compare two checkpoints (HF/HF or HF/Megatron) tensor by tensor");
  c->add(c->cmd);
  return c;
}
