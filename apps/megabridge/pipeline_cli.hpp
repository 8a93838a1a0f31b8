// `megabridge run FILE.yaml` and `<command> --config FILE.yaml`: the command
// line side of YAML pipelines (lib/pipelines/pipeline_config.hpp reads them).
// Each step is parsed as the command line it stands for, through the same
// CLI definitions as a single command, so a step's keys are exactly the
// command's long options.
#pragma once

#include <CLI/CLI.hpp>

#include <memory>
#include <string>
#include <vector>

#include "pipelines/pipeline_config.hpp"

namespace mb {
class MpiContext;
class Step;
}  // namespace mb

enum class Action {
  Execute,   // run the command
  Validate,  // parse and resolve its options only
  DryRun,    // print its plan summary, converting nothing
  Specs,     // record every command's options (set_command_specs) and return
};

// main.cpp: one command line, parsed into a fresh CLI tree.
int megabridge_main(std::vector<std::string> args, mb::MpiContext& mpi, Action action);

struct RunFlags {
  std::string file;
  bool dry_run = false, resume = false;
  void add(CLI::App* run);
};

// Every subcommand's options, read off its CLI definition, with the nested
// blocks and negated keys of the single-job files.
std::vector<mb::CommandSpec> command_specs(const CLI::App& app);
void set_command_specs(std::vector<mb::CommandSpec> specs);

// Replaces `<command> --config FILE` by the file's options as flags, placed
// before the command line's own so that those override the file's. A value
// of the file that the command refuses (out of range, malformed) is reported
// as the file's: "job.yaml: buffer_mb 17592186044416 is out of range: ...".
std::vector<std::string> expand_config(const std::vector<std::string>& args, mb::MpiContext& mpi);

// Validate: nothing; DryRun: the step's plan summary on rank 0.
int drive(Action action, std::unique_ptr<mb::Step> step, mb::MpiContext& mpi);

int run_pipeline(const RunFlags& flags, mb::MpiContext& mpi);
