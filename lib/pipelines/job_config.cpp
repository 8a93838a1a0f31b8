#include "pipelines/job_config.hpp"

#include <yaml-cpp/yaml.h>

#include <set>

#include "core/error.hpp"

namespace mb {
namespace {
void check_keys(const YAML::Node& node, const std::set<std::string>& allowed,
                const std::string& where, const std::string& file) {
  MB_CHECK(node.IsMap(), "{}: '{}' must be a mapping", file, where);
  for (const auto& kv : node) {
    const std::string key = kv.first.as<std::string>();
    if (!allowed.count(key)) {
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
      throw Error("{}: unknown key '{}' in {} (expected one of: {})", file, key, where, list);
    }
  }
}

template <typename T>
T get(const YAML::Node& n, const std::string& key, const std::string& file) {
  try {
    return n[key].as<T>();
  } catch (const YAML::Exception& e) {
    throw Error("{}: bad value for '{}': {}", file, key, e.what());
  }
}
}  // namespace

namespace {
YAML::Node load_yaml(const std::string& file) {
  try {
    return YAML::LoadFile(file);
  } catch (const YAML::Exception& e) {
    throw Error("{}: {}", file, e.what());
  }
}

IoMode get_io_mode(const YAML::Node& root, const std::string& file) {
  try {
    return parse_io_mode(get<std::string>(root, "io", file));
  } catch (const Error& e) {
    throw Error("{}: {}", file, e.what());
  }
}
}  // namespace

std::optional<DType> parse_dtype_option(const std::string& s) {
  if (s.empty() || s == "keep" || s == "auto" || s == "source") return std::nullopt;
  auto t = dtype_from_user(s);
  MB_CHECK(t && dtype_is_castable(*t),
           "unknown dtype '{}' (expected keep, bf16, fp16 or fp32; import also takes model)", s);
  return t;
}

uint64_t buffer_mb_to_bytes(uint64_t mb, const std::string& option) {
  MB_CHECK(mb >= 1 && mb <= kMaxBufferMb, "{} {} is out of range: expected 1 to {} (MiB)", option,
           mb, kMaxBufferMb);
  return mb << 20;
}

ImportOptions load_import_job(const std::filesystem::path& yaml_path) {
  const std::string file = yaml_path.string();
  const YAML::Node root = load_yaml(file);
  ImportOptions o;
  check_keys(root,
             {"source", "target", "parallel", "dtype", "buffer_mb", "strict", "overwrite", "resume",
              "read_once", "device", "io", "allow_overflow"},
             "the job file", file);
  if (root["source"]) {
    check_keys(root["source"], {"hf_path"}, "source", file);
    if (root["source"]["hf_path"]) o.hf_path = get<std::string>(root["source"], "hf_path", file);
  }
  if (root["target"]) {
    check_keys(root["target"], {"path", "format"}, "target", file);
    if (root["target"]["path"]) o.out = get<std::string>(root["target"], "path", file);
    if (root["target"]["format"]) o.format = get<std::string>(root["target"], "format", file);
  }
  if (root["parallel"]) {
    const YAML::Node p = root["parallel"];
    check_keys(p, {"tp", "pp", "ep", "etp", "first_stage_layers", "last_stage_layers"}, "parallel",
               file);
    if (p["tp"]) o.layout.tp = get<uint64_t>(p, "tp", file);
    if (p["pp"]) o.layout.pp = get<uint64_t>(p, "pp", file);
    if (p["ep"]) o.layout.ep = get<uint64_t>(p, "ep", file);
    if (p["etp"]) o.layout.etp = get<uint64_t>(p, "etp", file);
    if (p["first_stage_layers"])
      o.layout.first_stage_layers = get<uint64_t>(p, "first_stage_layers", file);
    if (p["last_stage_layers"])
      o.layout.last_stage_layers = get<uint64_t>(p, "last_stage_layers", file);
  }
  if (root["dtype"]) set_import_dtype(o, get<std::string>(root, "dtype", file));
  if (root["buffer_mb"])
    o.buffer_bytes =
        buffer_mb_to_bytes(get<uint64_t>(root, "buffer_mb", file), file + ": buffer_mb");
  if (root["allow_overflow"]) o.allow_overflow = get<bool>(root, "allow_overflow", file);
  if (root["strict"]) o.strict = get<bool>(root, "strict", file);
  if (root["overwrite"]) o.overwrite = get<bool>(root, "overwrite", file);
  if (root["resume"]) o.resume = get<bool>(root, "resume", file);
  if (root["read_once"]) o.read_once = get<bool>(root, "read_once", file);
  if (root["device"]) o.device = get<std::string>(root, "device", file);
  if (root["io"]) o.io = get_io_mode(root, file);
  return o;
}

ExportOptions load_export_job(const std::filesystem::path& yaml_path) {
  const std::string file = yaml_path.string();
  const YAML::Node root = load_yaml(file);
  ExportOptions o;
  check_keys(root,
             {"source", "target", "dtype", "buffer_mb", "verify_checksums", "overwrite", "device",
              "io", "allow_overflow"},
             "the job file", file);
  if (root["source"]) {
    check_keys(root["source"], {"megatron_path"}, "source", file);
    if (root["source"]["megatron_path"])
      o.megatron_path = get<std::string>(root["source"], "megatron_path", file);
  }
  if (root["target"]) {
    const YAML::Node t = root["target"];
    check_keys(t, {"hf_path", "experts", "mtp_experts", "max_shard_size"}, "target", file);
    if (t["hf_path"]) o.hf_path = get<std::string>(t, "hf_path", file);
    if (t["experts"]) o.experts = expert_layout_from_name(get<std::string>(t, "experts", file));
    if (t["mtp_experts"]) o.mtp_experts = expert_layout_from_name(get<std::string>(t, "mtp_experts", file));
    if (t["max_shard_size"]) {
      try {
        o.max_shard_bytes = parse_size(get<std::string>(t, "max_shard_size", file));
      } catch (const Error& e) {
        throw Error("{}: target.max_shard_size: {}", file, e.what());
      }
    }
  }
  if (root["dtype"]) o.dtype = parse_dtype_option(get<std::string>(root, "dtype", file));
  if (root["buffer_mb"])
    o.buffer_bytes =
        buffer_mb_to_bytes(get<uint64_t>(root, "buffer_mb", file), file + ": buffer_mb");
  if (root["allow_overflow"]) o.allow_overflow = get<bool>(root, "allow_overflow", file);
  if (root["verify_checksums"]) o.verify_checksums = get<bool>(root, "verify_checksums", file);
  if (root["overwrite"]) o.overwrite = get<bool>(root, "overwrite", file);
  if (root["device"]) o.device = get<std::string>(root, "device", file);
  if (root["io"]) o.io = get_io_mode(root, file);
  return o;
}

}  // namespace mb
