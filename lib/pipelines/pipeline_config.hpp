// YAML pipelines (`megabridge run FILE.yaml`) and single-step job files
// (`<command> --config FILE.yaml`): vars, defaults and steps, checked against
// each command's options before anything runs. Every problem in a file is
// reported at once, one "file:line: message" per problem. docs/pipelines.md
// describes the format.
#pragma once

#include <cstddef>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace mb {

// One option a step may set, named as the command's long option with '-'
// written '_' (`--hf-path` is `hf_path`).
struct OptionSpec {
  enum class Kind { Flag, UInt, Number, Text };
  std::string key;
  Kind kind = Kind::Text;
  std::string option;                // "--hf-path"; empty for a positional argument
  std::vector<std::string> choices;  // empty: any value of the kind
};

struct CommandSpec {
  std::string name;
  std::vector<OptionSpec> options;  // positionals in their order
  // The nested blocks of the single-job files: "parallel.tp" -> "tp",
  // "target.path" -> "out".
  std::map<std::string, std::string> aliases;
  // Keys that are a flag's negation: "strict" -> "not_strict"
  // (strict: false sets --not-strict).
  std::map<std::string, std::string> negated;

  const OptionSpec* find(const std::string& key) const;
};

struct PipelineStep {
  size_t index = 0;  // 1-based
  std::string command;
  int line = 0;
  // Every key the step sets, defaults included, variables expanded, nested
  // blocks flattened to their option's key; in option order.
  std::vector<std::pair<std::string, std::string>> values;
  std::vector<std::string> args;  // the same as command-line arguments

  const std::string* value(const std::string& key) const;
};

struct Pipeline {
  std::string file;
  std::vector<PipelineStep> steps;
};

// Looks a variable up in the environment (${env:NAME}); tests pass their own.
using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;
std::optional<std::string> process_env(const std::string& name);

// A pipeline: `vars`, `defaults` and `steps`. Throws mb::Error listing every
// problem of the file (unknown keys and steps, undefined variables, wrong types).
Pipeline load_pipeline(const std::filesystem::path& file, const std::vector<CommandSpec>& commands,
                       const EnvLookup& env = process_env);

// A single-job file for `command --config FILE`: the body of one step (the
// keys at the top level, with optional `vars`), or a pipeline of exactly one
// step of this command.
PipelineStep load_single_step(const std::filesystem::path& file, const CommandSpec& command,
                              const EnvLookup& env = process_env);

// The step fully expanded, as `--dry-run` prints it (YAML).
std::string describe_step(const PipelineStep& step, size_t steps);

}  // namespace mb
