#include "formats/safetensors/hf_checkpoint.hpp"

#include <algorithm>
#include <cmath>
#include <set>

#include <fmt/ranges.h>

#include "core/error.hpp"
#include "core/file.hpp"
#include "core/log.hpp"
#include "formats/safetensors/safetensors_header.hpp"

namespace mb {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {
constexpr const char* kIndexName = "model.safetensors.index.json";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
}  // namespace

bool is_hf_side_file(const std::string& name) {
  static const std::set<std::string> known = {
      "tokenizer.json",          "tokenizer.model",       "tokenizer_config.json",
      "vocab.json",              "vocab.txt",             "merges.txt",
      "special_tokens_map.json", "added_tokens.json",     "generation_config.json",
      "chat_template.json",      "chat_template.jinja",   "preprocessor_config.json",
      "processor_config.json",   "video_preprocessor_config.json"};
  return known.count(name) > 0;
}

bool side_file_is_safe(const fs::path& dir, const std::string& name, std::string& why) {
  std::error_code ec;
  const fs::path p = dir / name;
  const fs::file_status own = fs::symlink_status(p, ec);
  if (fs::is_regular_file(own)) return true;
  if (!fs::is_symlink(own)) {
    why = "not a regular file";
    return false;
  }
  const fs::path real = fs::canonical(p, ec);
  if (ec || !fs::is_regular_file(fs::status(real, ec))) {
    why = "a symlink to something that is not a regular file";
    return false;
  }
  const fs::path home = fs::canonical(dir, ec);
  const auto inside = [&](const fs::path& d) {
    auto ir = real.begin();
    for (auto id = d.begin(); id != d.end(); ++id, ++ir)
      if (ir == real.end() || *ir != *id) return false;
    return true;
  };
  if (inside(home)) return true;
  // The HF hub cache: <repo>/snapshots/<rev>/<name> -> ../../blobs/<hash>.
  if (home.parent_path().filename() == "snapshots" && real.parent_path().filename() == "blobs" &&
      real.parent_path().parent_path() == home.parent_path().parent_path())
    return true;
  why = fmt::format("a symlink to {}, outside the checkpoint", real.string());
  return false;
}

const HfTensor* HfCatalog::find(const std::string& name) const {
  auto it = std::lower_bound(tensors.begin(), tensors.end(), name,
                             [](const HfTensor& t, const std::string& n) { return t.name < n; });
  return (it != tensors.end() && it->name == name) ? &*it : nullptr;
}

uint32_t HfCatalog::id(const std::string& name) const {
  const HfTensor* t = find(name);
  MB_CHECK(t != nullptr, "{}: tensor '{}' is missing from the checkpoint", dir.string(), name);
  return static_cast<uint32_t>(t - tensors.data());
}

uint64_t HfCatalog::total_bytes() const {
  uint64_t n = 0;
  for (const auto& t : tensors) n += t.nbytes;
  return n;
}

HfCatalog read_hf_catalog(const fs::path& dir) {
  HfCatalog c;
  c.dir = dir;
  MB_CHECK(fs::is_directory(dir), "HF checkpoint directory {} does not exist", dir.string());
  const fs::path index_path = dir / kIndexName;
  std::map<std::string, std::string> weight_map;  // tensor -> file
  if (fs::exists(index_path)) {
    c.has_index = true;
    json j;
    try {
      j = json::parse(read_text_file(index_path));
    } catch (const json::parse_error& e) {
      throw Error("{}: malformed JSON: {}", index_path.string(), e.what());
    }
    MB_CHECK(j.is_object() && j.contains("weight_map") && j.at("weight_map").is_object(),
             "{}: has no weight_map object", index_path.string());
    for (auto it = j.at("weight_map").begin(); it != j.at("weight_map").end(); ++it) {
      MB_CHECK(it.value().is_string(), "{}: weight_map entry for '{}' is not a file name",
               index_path.string(), it.key());
      const std::string file = it.value().get<std::string>();
      resolve_inside(dir, file, fmt::format("{}: weight_map entry for '{}'", index_path.string(), it.key()));
      weight_map[it.key()] = file;
    }
    if (j.contains("metadata") && j.at("metadata").is_object() &&
        j.at("metadata").contains("total_size")) {
      // Some releases write total_size as a float (e.g. 55562855904.0).
      const json& ts = j.at("metadata").at("total_size");
      MB_CHECK(ts.is_number(), "{}: metadata.total_size is not a number: {}", index_path.string(),
               ts.dump());
      // Negative, fractional or huge values are refused: converting such a
      // double to uint64_t is undefined behaviour (found by fuzzing).
      bool whole = false;
      if (ts.is_number_unsigned()) {
        whole = true;
      } else if (ts.is_number_integer()) {
        whole = ts.get<int64_t>() >= 0;
      } else {
        const double d = ts.get<double>();
        whole = d >= 0 && d < 0x1p64 && d == std::floor(d);
      }
      MB_CHECK(whole, "{}: metadata.total_size must be a whole number of bytes >= 0, got {}",
               index_path.string(), ts.dump());
      c.declared_total_size = ts.is_number_float() ? static_cast<uint64_t>(ts.get<double>())
                                                   : ts.get<uint64_t>();
    }
    std::set<std::string> files;
    for (const auto& [name, file] : weight_map) files.insert(file);
    c.files.assign(files.begin(), files.end());
  } else {
    std::vector<std::string> found;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_regular_file() && ends_with(e.path().filename().string(), ".safetensors"))
        found.push_back(e.path().filename().string());
    MB_CHECK(!found.empty(), "{}: no {} and no .safetensors file", dir.string(), kIndexName);
    MB_CHECK(found.size() == 1, "{}: {} safetensors files but no {} to say which tensor is where",
             dir.string(), found.size(), kIndexName);
    c.files = found;
  }

  std::map<std::string, size_t> seen;  // tensor -> file index, to catch duplicates
  for (uint32_t fi = 0; fi < c.files.size(); ++fi) {
    const fs::path path = resolve_inside(dir, c.files[fi], "shard file");
    // The error_code overload: a name the OS refuses (too long, ...) must be an
    // mb::Error naming the shard, not a std::filesystem_error (found by fuzzing).
    std::error_code ec;
    const bool exists = fs::exists(path, ec);
    MB_CHECK(!ec, "{}: shard file {} listed in the index cannot be accessed: {}", dir.string(),
             c.files[fi], ec.message());
    MB_CHECK(exists, "{}: shard file {} listed in the index does not exist", dir.string(),
             c.files[fi]);
    const SafetensorsHeader h = read_safetensors_header(path);
    const uint64_t file_size = fs::file_size(path, ec);
    MB_CHECK(!ec, "{}: cannot get the size of shard file {}: {}", dir.string(), c.files[fi],
             ec.message());
    c.file_sizes.push_back(file_size);
    for (const auto& e : h.entries) {
      if (c.has_index) {
        auto it = weight_map.find(e.name);
        MB_CHECK(it != weight_map.end(), "{}: contains tensor '{}' which {} does not list",
                 path.string(), e.name, kIndexName);
        MB_CHECK(it->second == c.files[fi],
                 "{}: contains tensor '{}' but {} places it in {}", path.string(), e.name,
                 kIndexName, it->second);
      }
      auto [it, inserted] = seen.emplace(e.name, fi);
      MB_CHECK(inserted, "tensor '{}' appears in both {} and {}", e.name, c.files[it->second],
               c.files[fi]);
      HfTensor t;
      t.name = e.name;
      t.dtype = e.dtype;
      t.shape = e.shape;
      t.file = fi;
      t.offset = h.data_start + e.begin;
      t.nbytes = e.end - e.begin;
      c.tensors.push_back(std::move(t));
    }
  }
  for (const auto& [name, file] : weight_map)
    MB_CHECK(seen.count(name), "{}: lists tensor '{}' in {}, but that file does not contain it",
             index_path.string(), name, file);
  std::sort(c.tensors.begin(), c.tensors.end(),
            [](const HfTensor& a, const HfTensor& b) { return a.name < b.name; });
  if (c.declared_total_size && *c.declared_total_size != c.total_bytes())
    log::warn("{}: metadata.total_size is {} but the tensors hold {} bytes", index_path.string(),
              *c.declared_total_size, c.total_bytes());

  std::vector<std::string> left;  // files that are not carried into an output
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.empty() || name[0] == '.') continue;
    if (ends_with(name, ".safetensors")) {
      if (e.is_regular_file() && std::find(c.files.begin(), c.files.end(), name) == c.files.end())
        log::warn("{}: {} is not referenced by {}; ignoring it", dir.string(), name, kIndexName);
      continue;
    }
    if (name == kIndexName || name == "config.json") continue;
    if (!is_hf_side_file(name)) {
      if (!e.is_directory()) left.push_back(name);
      continue;
    }
    std::string why;
    if (side_file_is_safe(dir, name, why))
      c.extra_files.push_back(name);
    else
      log::warn("{}: not copying {}: {}", dir.string(), name, why);
  }
  std::sort(c.extra_files.begin(), c.extra_files.end());
  std::sort(left.begin(), left.end());
  if (!left.empty())
    log::debug("{}: not HF side files, not copied: {}", dir.string(), fmt::join(left, ", "));
  return c;
}

json catalog_to_json(const HfCatalog& c) {
  json j;
  j["dir"] = c.dir.string();
  j["files"] = c.files;
  j["file_sizes"] = c.file_sizes;
  j["has_index"] = c.has_index;
  j["declared_total_size"] = c.declared_total_size ? json(*c.declared_total_size) : json(nullptr);
  j["extra_files"] = c.extra_files;
  json ts = json::array();
  for (const auto& t : c.tensors)
    ts.push_back({t.name, std::string(dtype_name(t.dtype)), t.shape, t.file, t.offset, t.nbytes});
  j["tensors"] = std::move(ts);
  return j;
}

HfCatalog catalog_from_json(const json& j) {
  HfCatalog c;
  c.dir = j.at("dir").get<std::string>();
  c.files = j.at("files").get<std::vector<std::string>>();
  c.file_sizes = j.at("file_sizes").get<std::vector<uint64_t>>();
  c.has_index = j.at("has_index").get<bool>();
  if (!j.at("declared_total_size").is_null())
    c.declared_total_size = j.at("declared_total_size").get<uint64_t>();
  c.extra_files = j.at("extra_files").get<std::vector<std::string>>();
  for (const auto& t : j.at("tensors")) {
    HfTensor x;
    x.name = t.at(0).get<std::string>();
    x.dtype = *dtype_from_name(t.at(1).get<std::string>());
    x.shape = t.at(2).get<Shape>();
    x.file = t.at(3).get<uint32_t>();
    x.offset = t.at(4).get<uint64_t>();
    x.nbytes = t.at(5).get<uint64_t>();
    c.tensors.push_back(std::move(x));
  }
  return c;
}

}  // namespace mb
