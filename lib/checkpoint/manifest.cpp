#include "checkpoint/manifest.hpp"

#include <algorithm>
#include <ctime>

#include "core/error.hpp"
#include "core/file.hpp"

namespace mb {
using nlohmann::json;

json shard_result_to_json(const ShardResult& r) {
  json ts = json::array();
  for (const auto& t : r.tensors) ts.push_back({t.name, t.xxh3});
  return {{"tp", r.coord.tp},     {"pp", r.coord.pp},   {"ep", r.coord.ep},
          {"file", r.file},       {"bytes", r.bytes},   {"xxh3", r.xxh3},
          {"checksum", r.checksum}, {"bytes_read", r.bytes_read}, {"tensors", std::move(ts)}};
}

ShardResult shard_result_from_json(const json& j) {
  ShardResult r;
  r.coord = {j.at("tp").get<uint64_t>(), j.at("pp").get<uint64_t>(), j.at("ep").get<uint64_t>()};
  r.file = j.at("file").get<std::string>();
  r.bytes = j.at("bytes").get<uint64_t>();
  r.xxh3 = j.at("xxh3").get<std::string>();
  r.checksum = j.value("checksum", std::string());  // records of older versions: whole file
  r.bytes_read = j.at("bytes_read").get<uint64_t>();
  for (const auto& t : j.at("tensors"))
    r.tensors.push_back({t.at(0).get<std::string>(), t.at(1).get<std::string>()});
  return r;
}

json source_description(const ImportPlan& plan) {
  json source;
  source["hf_path"] = plan.catalog.dir.string();
  source["files"] = plan.catalog.files;
  source["has_index"] = plan.catalog.has_index;
  source["index_total_size"] =
      plan.catalog.declared_total_size ? json(*plan.catalog.declared_total_size) : json(nullptr);
  source["extra_files"] = plan.catalog.extra_files;
  source["expert_layouts"] = {{"main", expert_layout_name(plan.experts.main)},
                              {"mtp", expert_layout_name(plan.experts.mtp)}};
  json tensors = json::array();
  for (const auto& t : plan.catalog.tensors)
    tensors.push_back({{"name", t.name},
                       {"dtype", dtype_name(t.dtype)},
                       {"shape", t.shape},
                       {"file", plan.catalog.files[t.file]}});
  source["tensors"] = std::move(tensors);
  source["unconsumed"] = plan.unconsumed;
  return source;
}

json manifest_files(const std::vector<ShardResult>& results) {
  std::vector<ShardResult> sorted = results;
  std::sort(sorted.begin(), sorted.end(),
            [](const ShardResult& a, const ShardResult& b) { return a.file < b.file; });
  json files = json::array();
  for (const auto& r : sorted) {
    json ts = json::array();
    for (const auto& t : r.tensors) ts.push_back({{"name", t.name}, {"xxh3", t.xxh3}});
    files.push_back({{"path", r.file},
                     {"tp", r.coord.tp},
                     {"pp", r.coord.pp},
                     {"ep", r.coord.ep},
                     {"tensor_count", r.tensors.size()},
                     {"bytes", r.bytes},
                     {"xxh3", r.xxh3},
                     {"checksum", r.checksum.empty() ? "xxh3-64" : r.checksum},
                     {"tensors", std::move(ts)}});
  }
  return files;
}

json mtp_record(const ImportPlan& plan) {
  const uint64_t converted = plan.model.text.mtp_layers;
  json r = {{"declared", converted + plan.mtp_not_converted}, {"converted", converted}};
  if (plan.mtp_not_converted > 0)
    r["note"] =
        "the source config.json declared MTP but the checkpoint held no mtp.* tensor (as "
        "transformers' save_pretrained writes it): converted without MTP; hf_config says "
        "mtp_num_hidden_layers 0";
  return r;
}

uint64_t mtp_not_converted(const json& manifest) {
  const json& model = manifest.at("model");
  if (!model.contains("mtp")) return 0;  // manifests written before the record existed
  const json& r = model.at("mtp");
  return r.at("declared").get<uint64_t>() - r.at("converted").get<uint64_t>();
}

json build_manifest(const ImportPlan& plan, const std::string& shard_format, json files,
                    const json& source) {
  uint64_t count = 0, bytes = 0;
  // The files' checksum scheme (each HDF5 entry names its own too; readers
  // take an entry's over this one, and "xxh3-64" where neither is given).
  const std::string scheme =
      files.empty() ? std::string("xxh3-64") : files.front().value("checksum", std::string("xxh3-64"));
  for (const auto& f : files) {
    count += f.at("tensor_count").get<uint64_t>();
    bytes += f.at("bytes").get<uint64_t>();
  }
  const std::time_t now = std::time(nullptr);
  char when[32];
  std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return {{"format", kManifestFormat},
          {"tool", {{"name", "megabridge"}, {"version", MEGABRIDGE_VERSION}}},
          {"created", when},
          {"shard_format", shard_format},
          {"checksum", scheme},
          {"model",
           {{"architecture", plan.model.architecture},
            {"hf_config", plan.config_json},
            {"megatron_config", "megatron_config.yaml"},
            {"mtp", mtp_record(plan)}}},
          {"layout", layout_to_json(plan.layout)},
          {"dtype", plan.cast ? json(dtype_name(*plan.cast)) : json("keep")},
          {"source", source},
          {"file_count", files.size()},
          {"tensor_count", count},
          {"total_bytes", bytes},
          {"files", std::move(files)}};
}

json read_manifest(const std::filesystem::path& dir) {
  const auto path = dir / kManifestName;
  MB_CHECK(std::filesystem::exists(path),
           "{} has no {}: not a megabridge output, or the conversion did not finish",
           dir.string(), kManifestName);
  json j;
  try {
    j = json::parse(read_text_file(path));
  } catch (const json::parse_error& e) {
    throw Error("{}: malformed JSON: {}", path.string(), e.what());
  }
  MB_CHECK(j.is_object() && j.value("format", std::string{}) == kManifestFormat,
           "{}: not a {} manifest", path.string(), kManifestFormat);
  return j;
}

}  // namespace mb
