#include "pipelines/staged_output.hpp"

#include <vector>

#include "core/error.hpp"
#include "core/file.hpp"
#include "dist/mpi_context.hpp"

namespace mb {
namespace fs = std::filesystem;

namespace {
fs::path normalised(fs::path p) {
  p = fs::absolute(p).lexically_normal();
  if (!p.has_filename()) p = p.parent_path();  // drop a trailing slash
  return p;
}

bool non_empty_dir(const fs::path& p) {
  return fs::is_directory(p) && fs::directory_iterator(p) != fs::directory_iterator();
}
}  // namespace

StagedOutput::StagedOutput(fs::path target) : target_(normalised(std::move(target))) {
  staging_ = target_.parent_path() / (target_.filename().string() + ".partial");
}

namespace {
constexpr const char* kJobFile = ".megabridge-job";
}

bool StagedOutput::prepare(bool overwrite, bool resume, const std::string& fingerprint) const {
  if (fs::exists(target_) && !fs::is_directory(target_))
    throw Error("output path {} exists and is not a directory", target_.string());
  if (non_empty_dir(target_) && !overwrite)
    throw Error("output directory {} already holds files; pass --overwrite to replace it",
                target_.string());
  std::error_code ec;
  fs::create_directories(target_.parent_path(), ec);
  if (ec) throw Error("cannot create {}: {}", target_.parent_path().string(), ec.message());
  if (resume && fs::is_directory(staging_)) {
    const fs::path job = staging_ / kJobFile;
    const std::string had = fs::exists(job) ? read_text_file(job) : std::string();
    MB_CHECK(had == fingerprint,
             "{} was left by a different job (other source, layout or options); remove it, or run "
             "without --resume to start over",
             staging_.string());
    return true;
  }
  fs::remove_all(staging_, ec);
  if (ec) throw Error("cannot remove stale {}: {}", staging_.string(), ec.message());
  fs::create_directory(staging_, ec);
  if (ec) throw Error("cannot create staging directory {}: {}", staging_.string(), ec.message());
  write_file_atomic(staging_ / kJobFile, fingerprint);
  return false;
}

void StagedOutput::mark_done(const std::string& file, const std::string& record) const {
  write_file_atomic(staging_ / (file + ".done"), record);
}

std::string StagedOutput::done_record(const std::string& file) const {
  const fs::path p = staging_ / (file + ".done");
  return fs::exists(p) ? read_text_file(p) : std::string();
}

void StagedOutput::commit() const {
  std::error_code ec;
  // The resume bookkeeping does not belong in the finished output.
  fs::remove(staging_ / kJobFile, ec);
  fs::remove_all(staging_ / kErrorLogDir, ec);  // a resumed run's earlier errors
  std::vector<fs::path> done;
  for (const auto& e : fs::recursive_directory_iterator(staging_))
    if (e.path().extension() == ".done") done.push_back(e.path());
  for (const auto& p : done) fs::remove(p, ec);
  fsync_directory(staging_);
  if (fs::exists(target_)) {
    // Move the old output aside first so that the target is never half old, half new.
    const fs::path old = target_.parent_path() / (target_.filename().string() + ".old");
    fs::remove_all(old, ec);
    fs::rename(target_, old, ec);
    if (ec) throw Error("cannot move the old {} aside: {}", target_.string(), ec.message());
    fs::rename(staging_, target_, ec);
    if (ec) throw Error("cannot rename {} to {}: {}", staging_.string(), target_.string(), ec.message());
    fs::remove_all(old, ec);
  } else {
    fs::rename(staging_, target_, ec);
    if (ec) throw Error("cannot rename {} to {}: {}", staging_.string(), target_.string(), ec.message());
  }
  fsync_directory(target_.parent_path());
}

}  // namespace mb
