// The subcommands of the megabridge command line, one file each
// (cli_import.cpp, cli_export.cpp, ...). Each add_*_command() defines its
// subcommand's options on the app, bound to the returned object, and the
// object's run() turns the parsed options into the command's options and
// runs it. main.cpp wires them together.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <memory>
#include <string>

#include "pipeline_cli.hpp"
#include "pipelines/job_config.hpp"

namespace mb {
class MpiContext;
}  // namespace mb

class CliCommand {
 public:
  virtual ~CliCommand() = default;
  // Execute: run the command; Validate / DryRun: resolve its options and
  // drive its step (drive() in pipeline_cli.hpp).
  virtual int run(Action action, mb::MpiContext& mpi) = 0;

  CLI::App* cmd = nullptr;  // the subcommand; true once parsed when it was given
};

// In the order they appear in --help.
std::unique_ptr<CliCommand> add_import_command(CLI::App& app);
std::unique_ptr<CliCommand> add_plan_command(CLI::App& app);
std::unique_ptr<CliCommand> add_synth_command(CLI::App& app);
std::unique_ptr<CliCommand> add_export_command(CLI::App& app);
std::unique_ptr<CliCommand> add_verify_command(CLI::App& app);
std::unique_ptr<CliCommand> add_reshard_command(CLI::App& app);
std::unique_ptr<CliCommand> add_bench_command(CLI::App& app);

// Option definitions several commands share (cli_options.cpp). Range checks
// carry messages that name the option and the value. Layout sizes beyond
// 2^20 fit no model; validate_layout says why a smaller one does not fit
// this one.
inline const CLI::Range kParallelSize(uint64_t{1}, uint64_t{1} << 20);
inline const CLI::Range kLayerCount(uint64_t{1}, uint64_t{1} << 20);
inline const CLI::Range kBufferMb(uint64_t{1}, mb::kMaxBufferMb);

inline constexpr const char* kAllowOverflowHelp =
    "let a --dtype cast turn values too large for the target type into Inf (refused by default)";
inline constexpr const char* kConfigHelp = "YAML job file, a one-step pipeline; flags override it";

void add_device_option(CLI::App* c, std::string& device);
void add_io_option(CLI::App* c, std::string& io);
