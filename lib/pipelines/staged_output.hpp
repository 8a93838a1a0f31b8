// Output that is invisible until complete: everything is written under a
// staging directory next to the target and renamed into place only after
// every rank has succeeded. A killed job leaves only "<name>.partial".
#pragma once

#include <filesystem>

namespace mb {

class StagedOutput {
 public:
  explicit StagedOutput(std::filesystem::path target);

  const std::filesystem::path& target() const { return target_; }
  const std::filesystem::path& staging() const { return staging_; }

  // Refuses a target that already holds files (unless overwrite), removes a
  // stale staging directory from an earlier failed run, and creates a fresh one.
  // With `resume`, a staging directory left by an interrupted run of the same
  // job (same `fingerprint`) is kept; returns true in that case.
  bool prepare(bool overwrite, bool resume = false, const std::string& fingerprint = {}) const;
  // Marks a piece of the staged output as complete (`<file>.done`, holding
  // `record`), and reads such a mark back (empty if absent).
  void mark_done(const std::string& file, const std::string& record) const;
  std::string done_record(const std::string& file) const;

  // Makes the staged output the target: renames it into place, replacing an
  // existing target when overwrite was allowed.
  void commit() const;

  // A file every commit of this process writes into the output before it
  // is renamed into place (empty: none): `megabridge run` records which
  // step made an output, so that --resume knows it is finished.
  static void set_commit_stamp(std::string name, std::string content);

 private:
  std::filesystem::path target_;
  std::filesystem::path staging_;
};

}  // namespace mb
