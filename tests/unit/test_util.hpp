// Helpers shared by the unit tests.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/direct_io.hpp"
#include "core/dtype.hpp"
#include "core/file.hpp"
#include "core/shape.hpp"
#include "formats/safetensors/hf_checkpoint.hpp"
#include "formats/safetensors/safetensors_writer.hpp"
#include "layout/import_plan.hpp"
#include "model/qwen35_config.hpp"
#include "model/qwen35_hf_schema.hpp"

namespace mb {

// The spec's row-parallel HF weights (split by columns at TP > 1, so each TP
// shard holds a column window of every row), from the names alone: attention
// and GDN output projections, the MLPs' down projections (dense, shared
// expert, experts), the vision blocks' attention projection and second MLP
// layer, and the second layer of the vision merger (Megatron's projector MLP:
// RowParallelLinear).
inline bool hf_row_parallel(const std::string& n) {
  const auto has = [&n](const char* part) { return n.find(part) != std::string::npos; };
  if (has("experts.down_proj")) return true;  // fused [E, H, I]
  if (n.size() < 7 || n.compare(n.size() - 7, 7, ".weight") != 0) return false;
  if (has("visual.")) return has(".attn.proj.") || has(".linear_fc2.");
  return has("o_proj.") || has("down_proj.") || has("out_proj.");
}

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "mbtest-XXXXXX").string();
    path = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

inline void write_bytes(const std::filesystem::path& p, const std::string& s) {
  File f(p, File::Mode::Write);
  f.pwrite_exact(s.data(), s.size(), 0);
}

// Bytes that differ at every position (a counter alone repeats every 256).
inline std::string distinct_bytes(uint64_t n, uint64_t seed = 1) {
  std::string s(n, '\0');
  uint64_t x = 0x9E3779B97F4A7C15ull * seed;
  for (uint64_t i = 0; i < n; ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    s[i] = static_cast<char>(x >> 24);
  }
  return s;
}

// True where `dir` takes O_DIRECT (ext4, xfs; not every tmpfs).
inline bool direct_io_supported(const std::filesystem::path& dir) {
  write_bytes(dir / "probe", std::string(4096, 'x'));
  return InputFile(dir / "probe", IoMode::Direct).direct();
}

struct TinyTensor {
  std::string name;
  DType dtype;
  Shape shape;
};

// A safetensors file whose bytes are a counter, so every element is distinct.
inline void write_tiny_safetensors(const std::filesystem::path& p, const std::vector<TinyTensor>& ts) {
  std::vector<SafetensorsEntry> entries;
  for (const auto& t : ts) entries.push_back({t.name, t.dtype, t.shape, 0, 0});
  SafetensorsWriter w(p, entries);
  for (size_t i = 0; i < w.entries().size(); ++i) {
    const auto& e = w.entries()[i];
    std::vector<unsigned char> bytes(e.end - e.begin);
    for (size_t k = 0; k < bytes.size(); ++k) bytes[k] = static_cast<unsigned char>(k * 7 + i);
    w.write(i, 0, bytes.data(), bytes.size());
  }
  w.finish();
}

inline nlohmann::json load_json(const std::string& name) {
  return nlohmann::json::parse(read_text_file(std::string(MEGABRIDGE_SOURCE_DIR) + "/configs/hf/" + name));
}

// A catalogue with the schema's tensors; offsets are fake (nothing is read).
inline HfCatalog catalog_from_schema(const ModelConfig& m, ExpertLayouts experts, bool head) {
  HfCatalog c;
  c.dir = "/nonexistent";
  c.files = {"model.safetensors-00001-of-00001.safetensors"};
  c.file_sizes = {0};
  uint64_t off = 0;
  for (const auto& s : qwen35_hf_schema(m, experts, head)) {
    HfTensor t{s.name, s.dtype, s.shape, 0, off, numel(s.shape) * dtype_size(s.dtype)};
    off += t.nbytes;
    c.tensors.push_back(t);
  }
  std::sort(c.tensors.begin(), c.tensors.end(),
            [](const HfTensor& a, const HfTensor& b) { return a.name < b.name; });
  return c;
}

// A small geometry from a real config: fewer layers and experts, same shapes otherwise.
inline ModelConfig small(const std::string& name, uint64_t layers, uint64_t experts = 0) {
  nlohmann::json j = load_json(name);
  j["text_config"]["num_hidden_layers"] = layers;
  auto lt = j["text_config"]["layer_types"];
  j["text_config"]["layer_types"] =
      nlohmann::json(std::vector<nlohmann::json>(lt.begin(), lt.begin() + static_cast<long>(layers)));
  if (experts) j["text_config"]["num_experts"] = experts;
  j["vision_config"]["depth"] = 2;
  return parse_model_config(j, name);
}

// The 35B-A3B geometry cut to `layers`, its HF catalogue from the schema, and
// its import plan at TP·PP·EP·ETP on `ranks` ranks.
struct MoePlan {
  ModelConfig model;
  HfCatalog catalog;
  ImportPlan plan;
};
inline MoePlan moe_plan(uint64_t layers, uint64_t tp, uint64_t pp, uint64_t ep, uint64_t etp,
                        int ranks) {
  MoePlan out;
  out.model = small("qwen3.5-35b-a3b.json", layers);
  out.catalog = catalog_from_schema(out.model, {}, !out.model.tied);
  ParallelLayout l;
  l.tp = tp, l.pp = pp, l.ep = ep, l.etp = etp;
  out.plan = build_import_plan(out.model, out.catalog, PlanRequest{l, std::nullopt, true, ranks});
  return out;
}

}  // namespace mb
