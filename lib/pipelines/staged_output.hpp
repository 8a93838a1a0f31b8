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
  void prepare(bool overwrite) const;
  // Makes the staged output the target: renames it into place, replacing an
  // existing target when overwrite was allowed.
  void commit() const;

 private:
  std::filesystem::path target_;
  std::filesystem::path staging_;
};

}  // namespace mb
