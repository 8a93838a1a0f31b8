#include "formats/safetensors/safetensors_header.hpp"

#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.hpp"
#include "core/file.hpp"

namespace mb {
namespace {
using nlohmann::json;

bool mul_overflows(uint64_t a, uint64_t b, uint64_t& out) {
  return __builtin_mul_overflow(a, b, &out);
}

SafetensorsEntry parse_entry(const std::string& name, const json& v, const std::string& file) {
  MB_CHECK(v.is_object(), "{}: header entry for tensor '{}' is not an object", file, name);
  MB_CHECK(v.contains("dtype") && v.at("dtype").is_string(), "{}: tensor '{}' has no dtype string",
           file, name);
  const std::string dt = v.at("dtype").get<std::string>();
  auto dtype = dtype_from_name(dt);
  MB_CHECK(dtype.has_value(), "{}: tensor '{}' has unknown dtype '{}'", file, name, dt);
  MB_CHECK(v.contains("shape") && v.at("shape").is_array(), "{}: tensor '{}' has no shape list",
           file, name);
  SafetensorsEntry e;
  e.name = name;
  e.dtype = *dtype;
  uint64_t count = 1;
  for (const auto& d : v.at("shape")) {
    MB_CHECK(d.is_number_unsigned() || (d.is_number_integer() && d.get<int64_t>() >= 0),
             "{}: tensor '{}' has a bad dimension {} in shape {}", file, name, d.dump(),
             v.at("shape").dump());
    const uint64_t dim = d.get<uint64_t>();
    MB_CHECK(!mul_overflows(count, dim, count), "{}: tensor '{}' shape {} overflows", file, name,
             v.at("shape").dump());
    e.shape.push_back(dim);
  }
  MB_CHECK(v.contains("data_offsets") && v.at("data_offsets").is_array() &&
               v.at("data_offsets").size() == 2,
           "{}: tensor '{}' has no [begin, end] data_offsets", file, name);
  const json& off = v.at("data_offsets");
  for (const auto& o : off)
    MB_CHECK(o.is_number_unsigned() || (o.is_number_integer() && o.get<int64_t>() >= 0),
             "{}: tensor '{}' has bad data_offsets {}", file, name, off.dump());
  e.begin = off[0].get<uint64_t>();
  e.end = off[1].get<uint64_t>();
  MB_CHECK(e.begin <= e.end, "{}: tensor '{}' has data_offsets {} with begin > end", file, name,
           off.dump());
  uint64_t bytes = 0;
  MB_CHECK(!mul_overflows(count, dtype_size(e.dtype), bytes), "{}: tensor '{}' is too large", file,
           name);
  MB_CHECK(e.end - e.begin == bytes,
           "{}: tensor '{}' ({} {}) needs {} bytes but data_offsets {} span {} bytes", file, name,
           dt, shape_str(e.shape), bytes, off.dump(), e.end - e.begin);
  return e;
}
}  // namespace

SafetensorsHeader parse_safetensors_header(std::string_view json_text, uint64_t file_size,
                                           const std::string& file) {
  SafetensorsHeader h;
  h.header_bytes = json_text.size();
  h.data_start = 8 + h.header_bytes;
  MB_CHECK(h.data_start <= file_size, "{}: header length {} is larger than the file ({} bytes)",
           file, h.header_bytes, file_size);
  json j;
  try {
    // nlohmann keeps the last of two equal keys silently; a duplicated
    // tensor would then surface as a "gap" before some unrelated tensor.
    std::set<std::string> keys;
    j = json::parse(json_text, [&](int depth, json::parse_event_t event, json& parsed) {
      if (depth == 1 && event == json::parse_event_t::key) {
        const std::string& k = parsed.get_ref<const std::string&>();
        MB_CHECK(keys.insert(k).second,
                 "{}: the header lists '{}' twice (a duplicated key): the file is corrupt or was "
                 "not written by a safetensors writer",
                 file, k);
      }
      return true;
    });
  } catch (const json::parse_error& e) {
    throw Error("{}: malformed safetensors header JSON: {}", file, e.what());
  }
  MB_CHECK(j.is_object(), "{}: safetensors header is not a JSON object", file);
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "__metadata__") {
      MB_CHECK(it.value().is_object(), "{}: __metadata__ is not an object", file);
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        MB_CHECK(m.value().is_string(), "{}: __metadata__ value for '{}' is not a string", file,
                 m.key());
        h.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    h.entries.push_back(parse_entry(it.key(), it.value(), file));
  }
  std::sort(h.entries.begin(), h.entries.end(), [](const auto& a, const auto& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  const uint64_t data_size = file_size - h.data_start;
  uint64_t expected = 0;
  for (size_t i = 0; i < h.entries.size(); ++i) {
    const auto& e = h.entries[i];
    MB_CHECK(e.end <= data_size,
             "{}: tensor '{}' has data_offsets [{}, {}) beyond the end of the data ({} bytes): the "
             "file is truncated or the header is corrupt",
             file, e.name, e.begin, e.end, data_size);
    if (e.begin < expected)
      throw Error("{}: tensor '{}' data_offsets [{}, {}) overlap tensor '{}'", file, e.name,
                  e.begin, e.end, h.entries[i - 1].name);
    MB_CHECK(e.begin == expected, "{}: gap of {} bytes before tensor '{}' (data_offsets [{}, {}))",
             file, e.begin - expected, e.name, e.begin, e.end);
    expected = e.end;
  }
  MB_CHECK(expected == data_size,
           "{}: the data section has {} bytes but the tensors cover {}: {} trailing bytes", file,
           data_size, expected, data_size - expected);
  return h;
}

SafetensorsHeader read_safetensors_header(const std::filesystem::path& path) {
  File f(path, File::Mode::Read);
  const uint64_t size = f.size();
  MB_CHECK(size >= 8, "{}: file has {} bytes, too short for a safetensors header", path.string(),
           size);
  unsigned char len_bytes[8];
  f.pread_exact(len_bytes, 8, 0, "header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];
  MB_CHECK(n <= kMaxSafetensorsHeader, "{}: header length {} exceeds the {} byte limit",
           path.string(), n, kMaxSafetensorsHeader);
  MB_CHECK(n <= size - 8,
           "{}: header length {} is larger than the file ({} bytes): truncated or not safetensors",
           path.string(), n, size);
  std::string text(n, '\0');
  f.pread_exact(text.data(), n, 8, "header");
  return parse_safetensors_header(text, size, path.string());
}

void sort_like_safetensors(std::vector<SafetensorsEntry>& entries) {
  std::stable_sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) {
    const size_t sa = dtype_size(a.dtype), sb = dtype_size(b.dtype);
    return sa != sb ? sa > sb : a.name < b.name;
  });
}

std::string build_safetensors_header(std::vector<SafetensorsEntry>& entries,
                                     const std::map<std::string, std::string>& metadata) {
  // nlohmann's default object is sorted by key; keep our own order by building
  // the JSON text by hand from ordered parts.
  std::string body = "{";
  bool first = true;
  if (!metadata.empty()) {
    body += "\"__metadata__\":" + json(metadata).dump();
    first = false;
  }
  uint64_t offset = 0;
  for (auto& e : entries) {
    e.begin = offset;
    e.end = offset + numel(e.shape) * dtype_size(e.dtype);
    offset = e.end;
    json v;
    v["dtype"] = std::string(dtype_name(e.dtype));
    v["shape"] = e.shape;
    v["data_offsets"] = {e.begin, e.end};
    if (!first) body += ",";
    first = false;
    // Field order as the reference writer emits it: dtype, shape, data_offsets.
    body += json(e.name).dump() + ":{\"dtype\":" + v["dtype"].dump() +
            ",\"shape\":" + v["shape"].dump() + ",\"data_offsets\":" + v["data_offsets"].dump() +
            "}";
  }
  body += "}";
  while ((body.size() % 8) != 0) body += ' ';
  std::string out(8, '\0');
  uint64_t n = body.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + body;
}

}  // namespace mb
