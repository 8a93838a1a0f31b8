// Serialisation of the import plan: rank 0 broadcasts it (as msgpack of this
// JSON), and import hashes it (less the shards) into its resume fingerprint.
#include "layout/import_plan.hpp"

namespace mb {

nlohmann::json local_tensor_to_json(const LocalTensor& t) {
  return {{"name", t.name},
          {"global_name", t.global_name},
          {"shape", t.shape},
          {"global_shape", t.global_shape},
          {"dtype", dtype_name(t.dtype)},
          {"source_dtype", dtype_name(t.source_dtype)},
          {"op", op_name(t.op)},
          {"xform", static_cast<int>(t.xform)},
          {"split", static_cast<int>(t.split)},
          {"expert", t.expert},
          {"canonical", t.canonical},
          {"segments", segments_to_json(t.segments)}};
}

LocalTensor local_tensor_from_json(const nlohmann::json& j) {
  LocalTensor t;
  t.name = j.at("name").get<std::string>();
  t.global_name = j.at("global_name").get<std::string>();
  t.shape = j.at("shape").get<Shape>();
  t.global_shape = j.at("global_shape").get<Shape>();
  t.dtype = *dtype_from_name(j.at("dtype").get<std::string>());
  t.source_dtype = *dtype_from_name(j.at("source_dtype").get<std::string>());
  t.op = op_from_name(j.at("op").get<std::string>());
  t.xform = static_cast<Xform>(j.at("xform").get<int>());
  t.split = static_cast<Split>(j.at("split").get<int>());
  t.expert = j.at("expert").get<bool>();
  t.canonical = j.at("canonical").get<bool>();
  t.segments = segments_from_json(j.at("segments"));
  return t;
}

nlohmann::json plan_to_json(const ImportPlan& p) {
  nlohmann::json shards = nlohmann::json::array();
  for (const auto& s : p.shards) {
    nlohmann::json ts = nlohmann::json::array();
    for (const auto& t : s.tensors) ts.push_back(local_tensor_to_json(t));
    shards.push_back({{"tp", s.coord.tp},
                      {"pp", s.coord.pp},
                      {"ep", s.coord.ep},
                      {"rank", s.rank},
                      {"tensors", std::move(ts)}});
  }
  return {
      {"config", p.config_json},
      {"layout", layout_to_json(p.layout)},
      {"catalog", catalog_to_json(p.catalog)},
      {"experts",
       {{"main", expert_layout_name(p.experts.main)}, {"mtp", expert_layout_name(p.experts.mtp)}}},
      {"cast", p.cast ? nlohmann::json(dtype_name(*p.cast)) : nlohmann::json(nullptr)},
      {"unconsumed", p.unconsumed},
      {"mtp_not_converted", p.mtp_not_converted},
      {"world_size", p.world_size},
      {"shards", std::move(shards)}};
}

ImportPlan plan_from_json(const nlohmann::json& j) {
  ImportPlan p;
  p.config_json = j.at("config");
  p.model = parse_model_config(p.config_json, "config.json (broadcast)");
  p.layout = layout_from_json(j.at("layout"));
  p.catalog = catalog_from_json(j.at("catalog"));
  p.experts.main = expert_layout_from_name(j.at("experts").at("main").get<std::string>());
  p.experts.mtp = expert_layout_from_name(j.at("experts").at("mtp").get<std::string>());
  if (!j.at("cast").is_null()) p.cast = dtype_from_name(j.at("cast").get<std::string>());
  p.unconsumed = j.at("unconsumed").get<std::vector<std::string>>();
  p.mtp_not_converted = j.at("mtp_not_converted").get<uint64_t>();
  p.world_size = j.at("world_size").get<int>();
  for (const auto& sj : j.at("shards")) {
    ShardPlan s;
    s.coord = {sj.at("tp").get<uint64_t>(), sj.at("pp").get<uint64_t>(),
               sj.at("ep").get<uint64_t>()};
    s.rank = sj.at("rank").get<int>();
    for (const auto& tj : sj.at("tensors")) s.tensors.push_back(local_tensor_from_json(tj));
    p.shards.push_back(std::move(s));
  }
  return p;
}

}  // namespace mb
