// Output that is invisible until complete: everything is written under a
// staging directory next to the target and renamed into place only after
// every rank has succeeded. A killed job leaves only "<name>.partial".
//
// What it promises (docs/operations.md, "What is safe"):
// * the target is where `--out` really points: a symlink is followed, the
//   output lands in its target and the link stays;
// * one job per output: rank 0 holds an exclusive lock (OutputLock) from
//   prepare() to commit() or its death;
// * --overwrite replaces only an output megabridge committed (it carries
//   kOutputMarker, listing every entry it wrote) and nothing else; the old
//   output is moved aside under a name made for this job, then removed;
// * a resumed job must have the same plan and unchanged source files.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/path_safety.hpp"

namespace mb {

class OutputLock;

// Written into every committed output: which command wrote it, and every
// file and directory it holds (so that --overwrite can tell ours from a
// user's). JSON; its presence is how megabridge recognises its own outputs.
inline constexpr const char* kOutputMarker = ".megabridge-output.json";

class StagedOutput {
 public:
  // `command` is recorded in the output's marker (import, export, ...).
  explicit StagedOutput(std::filesystem::path target, std::string command = {});
  ~StagedOutput();

  const std::filesystem::path& target() const { return target_; }
  const std::filesystem::path& staging() const { return staging_; }

  // Refuses an output (as given, and its staging directory) that equals,
  // contains or lies inside one of `inputs`. Call before prepare().
  void check_apart_from(const std::vector<NamedPath>& inputs) const;

  // Refuses a target that already holds files (unless overwrite, and then
  // only one that megabridge wrote), takes the output's lock, and makes the
  // staging directory ready: a stale one from a dead job is emptied, or with
  // `resume` kept when it was left by the same job (same `fingerprint`) and
  // none of `inputs` (name -> file_identity) changed since; returns true then.
  bool prepare(bool overwrite, bool resume = false, const std::string& fingerprint = {},
               const nlohmann::json& inputs = nlohmann::json::object()) const;
  // Marks a piece of the staged output as complete (`<file>.done`, holding
  // `record`), and reads such a mark back (empty if absent).
  void mark_done(const std::string& file, const std::string& record) const;
  std::string done_record(const std::string& file) const;

  // Makes the staged output the target: renames it into place, replacing an
  // existing target when overwrite was allowed, and releases the lock.
  void commit() const;

  // A file every commit of this process writes into the output before it
  // is renamed into place (empty name: none), its content made by `content`
  // from the staging directory once everything else is in it: `megabridge
  // run` records which step made an output and what it holds, so that
  // --resume knows it is finished and unchanged.
  static void set_commit_stamp(std::string name,
                               std::function<std::string(const std::filesystem::path&)> content);

 private:
  std::filesystem::path given_;
  std::filesystem::path target_;
  std::filesystem::path staging_;
  std::string command_;
  mutable bool overwrite_ = false;
  mutable std::unique_ptr<OutputLock> lock_;
};

// Throws unless `dir` is an output megabridge committed and holds nothing
// else: its kOutputMarker lists every entry (files as files, directories as
// directories). Names the first stranger.
void check_output_is_ours(const std::filesystem::path& dir);

}  // namespace mb
