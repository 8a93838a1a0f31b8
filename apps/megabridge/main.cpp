// megabridge: Qwen3.5 checkpoints between HuggingFace safetensors and
// Megatron-Core's parallel layout. See README.md for usage. Each subcommand's
// options are defined in its own file (cli_commands.hpp); this file wires
// them into one command line.
#include <CLI/CLI.hpp>
#include <malloc.h>
#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cli_commands.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "dist/mpi_context.hpp"
#include "pipeline_cli.hpp"

namespace {

// The options every level accepts (before or after the subcommand).
struct LogFlags {
  std::string level;  // empty: keep the level (a pipeline's steps inherit run's)
  bool quiet = false;

  void add(CLI::App* c) {
    c->add_option("--log-level", level, "debug, info, warn, error or off");
    c->add_flag("--quiet,-q", quiet, "only warnings and errors");
  }
  void apply() const {
    if (quiet)
      mb::log::set_level(mb::log::Level::Warn);
    else if (!level.empty())
      mb::log::set_level(mb::log::parse_level(level));
  }
};

// Parses args into app. Returns the exit code when the command line was not
// one to run (--help: 0, an error: 2), else nothing.
std::optional<int> parse(CLI::App& app, std::vector<std::string> args, mb::MpiContext& mpi,
                         Action action) {
  try {
    std::reverse(args.begin(), args.end());  // CLI11 takes a vector last argument first
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    if (action != Action::Execute) throw mb::Error("{}", e.what());
    // Every rank exits alike (mpirun reports whichever ends first): 0 for
    // --help, 2 for a bad command line (CLI11's own codes vary, e.g. 105).
    const int code = mpi.is_root() ? app.exit(e) : e.get_exit_code();
    return code == 0 ? 0 : 2;
  }
  return std::nullopt;
}

}  // namespace

// One command line (a step of a pipeline is one too), parsed into a fresh
// CLI tree so that no value carries over from an earlier step.
int megabridge_main(std::vector<std::string> args, mb::MpiContext& mpi, Action action) {
  CLI::App app{"megabridge: Qwen3.5 checkpoints between HuggingFace and Megatron-Core"};
  app.require_subcommand(1);
  // A --config file's flags come first; the command line's, later, win.
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  LogFlags log_flags;
  log_flags.add(&app);

  std::vector<std::unique_ptr<CliCommand>> commands;
  for (auto add : {add_import_command, add_plan_command, add_synth_command, add_export_command,
                   add_verify_command, add_reshard_command, add_bench_command})
    commands.push_back(add(app));
  RunFlags run_flags;
  CLI::App* run_cmd = app.add_subcommand(
      "run", "run a YAML pipeline of steps (import, verify, reshard, export, ...) in one MPI job");
  run_flags.add(run_cmd);
  for (const auto& c : commands) log_flags.add(c->cmd);
  log_flags.add(run_cmd);

  if (action == Action::Specs) {
    set_command_specs(command_specs(app));
    return 0;
  }
  if (const auto code = parse(app, std::move(args), mpi, action)) return *code;
  try {
    log_flags.apply();
    if (*run_cmd) return run_pipeline(run_flags, mpi);
    for (const auto& c : commands)
      if (*c->cmd) return c->run(action, mpi);
  } catch (const std::exception& e) {
    if (action != Action::Execute) throw;
    mb::log::error("{}", e.what());
    return 2;
  }
  return 0;
}

int main(int argc, char** argv) {
  // Memory per rank is bounded by --buffer-mb, but glibc's dynamic mmap
  // threshold would defeat it: once an 8 MiB I/O buffer is freed, buffers up
  // to that size come from the heap, which fragments and does not shrink (a
  // 2-rank torch_dist export peaked at 420 MiB with a 256 MiB buffer, 329 MiB
  // with this). A fixed threshold keeps every large buffer an mmap of its own.
  mallopt(M_MMAP_THRESHOLD, 128 << 10);
  mb::MpiContext mpi(&argc, &argv);
  megabridge_main({}, mpi, Action::Specs);
  std::vector<std::string> args(argv + 1, argv + argc);
  try {
    args = expand_config(args, mpi);
  } catch (const std::exception& e) {
    if (mpi.is_root()) mb::log::error("{}", e.what());
    return 2;
  }
  return megabridge_main(args, mpi, Action::Execute);
}
