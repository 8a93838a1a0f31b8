// The step stamp: what `megabridge run` writes into every output a pipeline
// step commits (.megabridge-step.json), and the judgement `run --resume`
// makes from it. A finished step is skipped only when its output is
// committed, was made with the options the step has now, every source it
// read still has the identity it had (size, mtime, ctime, inode: the same
// identity a single command's --resume checks, core/path_safety.hpp), and
// the output still holds exactly the files the stamp lists, unchanged.
// docs/pipelines.md, "--resume".
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace mb {

inline constexpr const char* kStepStamp = ".megabridge-step.json";

using StepValues = std::vector<std::pair<std::string, std::string>>;

// False for the keys that cannot change what a step writes: how it is run
// (resume, overwrite, log_level, quiet) and how fast (buffer_mb, device, io:
// every engine and I/O mode writes the same bytes). Changing those does not
// make a finished step run again.
bool changes_output(const std::string& key);

// Absolute path -> identity of each path (a file or a directory: a
// directory's identity changes when an entry is added, removed or renamed).
// A path that does not exist is recorded as {"exists": false}.
nlohmann::json source_identities(const std::vector<std::filesystem::path>& paths);

// Every file and directory under `dir`, relative path -> identity, except at
// its top the stamp, the ownership record and the output lock (written or
// removed after the stamp).
nlohmann::json output_identities(const std::filesystem::path& dir);

// The stamp's text. `sources` is null when they are unknown (then --resume
// never skips the step); the output's identities are taken from `staging`,
// which must hold everything but the stamp and the ownership record.
std::string make_step_stamp(const std::string& pipeline, size_t step, const std::string& command,
                            const StepValues& values, const nlohmann::json& sources,
                            const std::filesystem::path& staging);

struct StampVerdict {
  bool finished = false;
  std::string why;  // one line: what matches, or the first thing that does not
};

// Whether `out` holds the committed, unchanged output of a step with
// `command` and `values`. Reads only.
StampVerdict judge_step_output(const std::filesystem::path& out, const std::string& command,
                               const StepValues& values);

}  // namespace mb
