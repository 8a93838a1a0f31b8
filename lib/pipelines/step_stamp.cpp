#include "pipelines/step_stamp.hpp"

#include <fmt/format.h>

#include <ctime>
#include <map>
#include <set>

#include "checkpoint/staged_output.hpp"
#include "core/file.hpp"
#include "core/hash.hpp"
#include "core/output_lock.hpp"
#include "core/path_safety.hpp"

namespace mb {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::map<std::string, std::string> output_values(const StepValues& values) {
  std::map<std::string, std::string> m;
  for (const auto& [k, v] : values)
    if (changes_output(k)) m[k] = v;
  return m;
}

json identity_or_absent(const fs::path& p) {
  std::error_code ec;
  if (!fs::exists(p, ec)) return {{"exists", false}};
  return file_identity(p);
}

// "2026-12-01T18:05:24.123456789Z" for a time in ns since the epoch.
std::string utc_ns(int64_t ns) {
  const std::time_t s = static_cast<std::time_t>(ns / 1000000000);
  std::tm tm{};
  gmtime_r(&s, &tm);
  char when[32];
  std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
  return fmt::format("{}.{:09d}Z", when, ns % 1000000000);
}

std::string field_value(const std::string& field, const json& v) {
  if ((field == "mtime_ns" || field == "ctime_ns") && v.is_number_integer())
    return utc_ns(v.get<int64_t>());
  return v.dump();
}

// How `what` changed from identity `had` to `now`: "X changed: mtime
// 2026-... -> 2020-..., ctime ...", "X is gone" (empty: the same).
std::string identity_change(const std::string& what, const json& had, const json& now) {
  if (had.value("exists", true) != now.value("exists", true))
    return what + (now.value("exists", true) ? " exists now, it did not" : " is gone");
  std::string out;
  std::set<std::string> fields;
  for (const auto& [f, v] : had.items()) fields.insert(f);
  for (const auto& [f, v] : now.items()) fields.insert(f);
  for (const auto& f : fields) {
    const json a = had.value(f, json()), b = now.value(f, json());
    if (a == b) continue;
    std::string name = f;
    if (name.size() > 3 && name.compare(name.size() - 3, 3, "_ns") == 0)
      name.resize(name.size() - 3);
    out += fmt::format("{}{} {} -> {}", out.empty() ? "" : ", ", name, field_value(f, a),
                       field_value(f, b));
  }
  return out.empty() ? out : what + " changed: " + out;
}

std::string and_more(size_t more, const char* what) {
  return more ? fmt::format(" (and {} more {} changed)", more, what) : std::string();
}

}  // namespace

bool changes_output(const std::string& key) {
  static const std::set<std::string> neutral = {"resume",    "overwrite", "log_level", "quiet",
                                                "buffer_mb", "device",    "io"};
  return !neutral.count(key);
}

json source_identities(const std::vector<fs::path>& paths) {
  json ids = json::object();
  for (const auto& p : paths) {
    const fs::path a = fs::absolute(p).lexically_normal();
    ids[a.string()] = identity_or_absent(a);
  }
  return ids;
}

json output_identities(const fs::path& dir) {
  json ids = json::object();
  for (auto it = fs::recursive_directory_iterator(dir); it != fs::recursive_directory_iterator();
       ++it) {
    const fs::path rel = it->path().lexically_relative(dir);
    if (rel == kStepStamp || rel == kOutputMarker || rel == kLockFileName) continue;
    ids[rel.generic_string()] = identity_or_absent(it->path());
  }
  return ids;
}

std::string make_step_stamp(const std::string& pipeline, size_t step, const std::string& command,
                            const StepValues& values, const json& sources,
                            const fs::path& staging) {
  const std::string key = json(output_values(values)).dump();
  json j = {{"pipeline", pipeline},
            {"step", step},
            {"command", command},
            {"fingerprint", hash_hex(hash_bytes(key.data(), key.size()))}};
  j["values"] = json::object();
  for (const auto& [k, v] : values) j["values"][k] = v;
  if (!sources.is_null()) j["sources"] = sources;
  j["output"] = output_identities(staging);
  return j.dump(1) + "\n";
}

StampVerdict judge_step_output(const fs::path& out, const std::string& command,
                               const StepValues& values) {
  const std::string o = out.string();
  std::error_code ec;
  if (!fs::exists(out, ec)) return {false, fmt::format("{} is not committed yet", o)};
  const fs::path file = out / kStepStamp;
  if (!fs::exists(file, ec))
    return {false, fmt::format("{} holds no {}: no pipeline step committed it", o, kStepStamp)};
  json st;
  try {
    st = json::parse(read_text_file(file));
    if (!st.is_object()) throw std::runtime_error("not a JSON object");
  } catch (const std::exception& e) {
    return {false, fmt::format("{} is unreadable: {}", file.string(), e.what())};
  }
  const std::string had_cmd = st.value("command", std::string());
  if (had_cmd != command)
    return {false, fmt::format("{} was committed by megabridge {}, not {}", o, had_cmd, command)};

  // The options, one difference each.
  std::map<std::string, std::string> had;
  if (st.contains("values") && st.at("values").is_object())
    for (const auto& [k, v] : st.at("values").items())
      if (changes_output(k) && v.is_string()) had[k] = v.get<std::string>();
  const auto now = output_values(values);
  std::string diffs;
  for (const auto& [k, v] : now) {
    const auto it = had.find(k);
    if (it == had.end())
      diffs += fmt::format("; {} is {}, was not set", k, v);
    else if (it->second != v)
      diffs += fmt::format("; {} is {}, was {}", k, v, it->second);
  }
  for (const auto& [k, v] : had)
    if (!now.count(k)) diffs += fmt::format("; {} is not set, was {}", k, v);
  if (!diffs.empty())
    return {false, fmt::format("{} was committed with other options: {}", o, diffs.substr(2))};

  if (!st.contains("sources") || !st.at("sources").is_object() || !st.contains("output") ||
      !st.at("output").is_object())
    return {false, fmt::format("{} records no identity of the step's sources and output (an older "
                               "megabridge wrote it)",
                               file.string())};

  // Every source as the step read it.
  std::string first;
  size_t changed = 0;
  for (const auto& [path, id] : st.at("sources").items()) {
    const std::string c = identity_change("source " + path, id, identity_or_absent(path));
    if (c.empty()) continue;
    if (!changed++) first = fmt::format("since {} was committed, {}", o, c);
  }
  if (changed) return {false, first + and_more(changed - 1, "source(s)")};

  // The output as the step committed it: the same entries, unchanged.
  const json& listed = st.at("output");
  json here;
  try {
    here = output_identities(out);
  } catch (const std::exception& e) {
    return {false, fmt::format("cannot list {}: {}", o, e.what())};
  }
  for (const auto& [rel, id] : listed.items()) {
    const auto it = here.find(rel);
    const std::string c = identity_change("output entry " + (out / rel).string(), id,
                                          it == here.end() ? json{{"exists", false}} : *it);
    if (c.empty()) continue;
    if (!changed++) first = fmt::format("since {} was committed, {}", o, c);
  }
  for (const auto& [rel, id] : here.items()) {
    if (listed.contains(rel)) continue;
    if (!changed++)
      first = fmt::format("since {} was committed, {} appeared in it (the step did not write it)",
                          o, (out / rel).string());
  }
  if (changed) return {false, first + and_more(changed - 1, "output entr(ies)")};

  return {true, fmt::format("{} is committed and matches this step ({} option(s), {} source(s), "
                            "{} output entr(ies) unchanged)",
                            o, now.size(), st.at("sources").size(), listed.size())};
}

}  // namespace mb
