#include "checkpoint/staged_output.hpp"

#include <stdlib.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <map>
#include <vector>

#include "core/error.hpp"
#include "core/file.hpp"
#include "core/log.hpp"
#include "core/output_lock.hpp"
#include "dist/mpi_context.hpp"
#include "dist/test_hooks.hpp"

namespace mb {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {
constexpr const char* kJobFile = ".megabridge-job";

bool non_empty_dir(const fs::path& p) {
  return fs::is_directory(p) && fs::directory_iterator(p) != fs::directory_iterator();
}

const char* entry_type(const fs::file_status& s) {
  switch (s.type()) {
    case fs::file_type::regular:
      return "file";
    case fs::file_type::directory:
      return "dir";
    case fs::file_type::symlink:
      return "symlink";
    default:
      return "other";
  }
}

// Our own bookkeeping, never listed in the marker.
bool bookkeeping(const fs::path& rel) {
  return rel == kOutputMarker || rel == kLockFileName || rel == kJobFile;
}

// Every file and directory under `dir`, relative, with its type (symlinks are
// not followed).
std::map<std::string, std::string> inventory(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (auto it = fs::recursive_directory_iterator(dir); it != fs::recursive_directory_iterator();
       ++it) {
    const fs::path rel = it->path().lexically_relative(dir);
    if (bookkeeping(rel)) continue;
    out[rel.generic_string()] = entry_type(it->symlink_status());
  }
  return out;
}

std::string now_utc() {
  const std::time_t now = std::time(nullptr);
  char when[32];
  std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return when;
}

// A job's resume record: the plan's fingerprint and each source's identity.
json job_record(const std::string& fingerprint, const json& inputs) {
  return {{"job", fingerprint}, {"inputs", inputs}};
}

void check_same_inputs(const fs::path& staging, const json& had, const json& now) {
  const auto why = [&](const std::string& name, const std::string& what) {
    return Error(
        "cannot resume {}: source file {} {} since the interrupted run, so its finished "
        "shards could mix two checkpoints; run without --resume to start over",
        staging.string(), name, what);
  };
  for (const auto& [name, id] : had.items()) {
    if (!now.contains(name)) throw why(name, "is no longer read");
    for (const auto& [field, value] : id.items())
      if (now.at(name).value(field, json()) != value)
        throw why(name, fmt::format("changed ({} was {}, is {})", field, value.dump(),
                                    now.at(name).value(field, json()).dump()));
  }
  for (const auto& [name, id] : now.items())
    if (!had.contains(name)) throw why(name, "is new");
}
}  // namespace

void check_output_is_ours(const fs::path& dir) {
  const fs::path marker = dir / kOutputMarker;
  const auto not_ours = [&](const std::string& why) {
    return Error(
        "{} was not written by megabridge ({}); --overwrite replaces only an output "
        "megabridge committed: remove it yourself or choose another output directory",
        dir.string(), why);
  };
  std::error_code ec;
  if (!fs::is_regular_file(fs::symlink_status(marker, ec)))
    throw not_ours(fmt::format("it has no {}", kOutputMarker));
  json m;
  try {
    m = json::parse(read_text_file(marker));
  } catch (const std::exception& e) {
    throw not_ours(fmt::format("{} is unreadable: {}", kOutputMarker, e.what()));
  }
  if (!m.is_object() || m.value("tool", std::string()) != "megabridge" || !m.contains("entries") ||
      !m.at("entries").is_object())
    throw not_ours(fmt::format("{} is not megabridge's", kOutputMarker));
  const json& listed = m.at("entries");
  for (const auto& [rel, type] : inventory(dir)) {
    const auto it = listed.find(rel);
    if (it == listed.end() || !it->is_string() || it->get<std::string>() != type)
      throw Error(
          "{} holds {}, which megabridge did not write; --overwrite replaces only what "
          "megabridge wrote: move {} out of it, or remove {} yourself",
          dir.string(), rel, rel, dir.string());
  }
}

StagedOutput::StagedOutput(fs::path target, std::string command)
    : given_(std::move(target)),
      target_(resolve_output_path(given_)),
      command_(std::move(command)) {
  staging_ = target_.parent_path() / (target_.filename().string() + ".partial");
}

StagedOutput::~StagedOutput() = default;

namespace {
std::string g_stamp_name;
std::function<std::string(const fs::path&)> g_stamp;
}  // namespace

void StagedOutput::set_commit_stamp(std::string name,
                                    std::function<std::string(const fs::path&)> content) {
  g_stamp_name = std::move(name);
  g_stamp = std::move(content);
}

void StagedOutput::check_apart_from(const std::vector<NamedPath>& inputs) const {
  check_output_apart({given_, "output"}, inputs);
  check_output_apart({staging_, "staging directory"}, inputs);
}

bool StagedOutput::prepare(bool overwrite, bool resume, const std::string& fingerprint,
                           const json& inputs) const {
  std::error_code ec;
  const fs::file_status st = fs::status(target_, ec);
  if (fs::exists(st) && !fs::is_directory(st))
    throw Error("output path {} exists and is not a directory", target_.string());
  const bool replacing = non_empty_dir(target_);
  if (replacing && !overwrite)
    throw Error("output directory {} already holds files; pass --overwrite to replace it",
                target_.string());
  if (replacing) check_output_is_ours(target_);
  overwrite_ = overwrite;
  fs::create_directories(target_.parent_path(), ec);
  if (ec) throw Error("cannot create {}: {}", target_.parent_path().string(), ec.message());

  bool created = false;
  lock_ = std::make_unique<OutputLock>(staging_, target_, created);
  const fs::path job = staging_ / kJobFile;
  if (!created) {
    if (resume && fs::exists(job)) {
      json had;
      try {
        had = json::parse(read_text_file(job));
      } catch (const std::exception&) {
        had = json::object();  // an older megabridge's record: not resumable
      }
      MB_CHECK(
          had.is_object() && had.value("job", std::string()) == fingerprint,
          "{} was left by a different job (other source, layout or options); remove it, or run "
          "without --resume to start over",
          staging_.string());
      check_same_inputs(staging_, had.value("inputs", json::object()), inputs);
      test_hook_after_lock();
      return true;
    }
    // A dead job's unfinished output (ours: the lock proved nobody writes it).
    bool any = false;
    for (const auto& e : fs::directory_iterator(staging_)) {
      if (e.path().filename() == kLockFileName) continue;
      any = true;
      fs::remove_all(e.path(), ec);
      if (ec) throw Error("cannot remove the stale {}: {}", e.path().string(), ec.message());
    }
    if (any)
      log::info("removed the unfinished output a stopped job left in {}{}", staging_.string(),
                resume ? "" : " (import --resume continues one instead)");
  }
  write_file_atomic(job, job_record(fingerprint, inputs).dump());
  test_hook_after_lock();
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
  MB_CHECK(lock_ != nullptr, "internal: commit of {} without prepare", target_.string());
  std::error_code ec;
  // The resume bookkeeping does not belong in the finished output.
  fs::remove(staging_ / kJobFile, ec);
  fs::remove_all(staging_ / kErrorLogDir, ec);  // a resumed run's earlier errors
  std::vector<fs::path> done;
  for (const auto& e : fs::recursive_directory_iterator(staging_))
    if (e.path().extension() == ".done") done.push_back(e.path());
  for (const auto& p : done) fs::remove(p, ec);
  // The step stamp is part of what we wrote: the marker lists it, so that
  // --overwrite of a pipeline step's output accepts it as ours.
  if (!g_stamp_name.empty() && g_stamp)
    write_file_atomic(staging_ / g_stamp_name, g_stamp(staging_));
  json entries = json::object();
  for (const auto& [rel, type] : inventory(staging_)) entries[rel] = type;
  write_file_atomic(staging_ / kOutputMarker, json{{"tool", "megabridge"},
                                                   {"version", MEGABRIDGE_VERSION},
                                                   {"command", command_},
                                                   {"committed", now_utc()},
                                                   {"entries", std::move(entries)}}
                                                      .dump(1) +
                                                  "\n");
  fsync_directory(staging_);
  const auto rename_or_throw = [](const fs::path& from, const fs::path& to) {
    std::error_code e;
    fs::rename(from, to, e);
    if (e) throw Error("cannot rename {} to {}: {}", from.string(), to.string(), e.message());
  };
  if (fs::exists(fs::symlink_status(target_, ec))) {
    if (!non_empty_dir(target_)) {
      // An empty directory holds nothing to lose (it may be a mount point's
      // subdirectory made for us); rmdir refuses if a file appeared since.
      fs::remove(target_, ec);
      if (ec)
        throw Error("cannot replace the empty directory {}: {}", target_.string(), ec.message());
      rename_or_throw(staging_, target_);
    } else {
      MB_CHECK(overwrite_, "{} was filled by someone else while this job ran; the output is in {}",
               target_.string(), staging_.string());
      check_output_is_ours(target_);
      // The old output goes aside into a directory made for this job
      // (mkdtemp: a fresh, unique name no user owns), so that the target is
      // never half old, half new and nothing of the user's is touched.
      std::string tmpl =
          (target_.parent_path() / (target_.filename().string() + ".megabridge-old-XXXXXX"))
              .string();
      if (::mkdtemp(tmpl.data()) == nullptr)
        throw Error("cannot create a directory next to {} to move the old output aside: {}",
                    target_.string(), std::strerror(errno));
      const fs::path aside_dir = tmpl, aside = aside_dir / target_.filename();
      rename_or_throw(target_, aside);
      try {
        rename_or_throw(staging_, target_);
      } catch (...) {
        fs::rename(aside, target_, ec);  // put the old output back
        throw;
      }
      fs::remove_all(aside_dir, ec);
      if (ec) log::warn("the replaced output is left in {}: {}", aside_dir.string(), ec.message());
    }
  } else {
    rename_or_throw(staging_, target_);
  }
  lock_->release_in(target_);
  lock_.reset();
  fsync_directory(target_.parent_path());
}

}  // namespace mb
