#include "pipelines/synth.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

#include "checkpoint/staged_output.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "core/hash.hpp"
#include "core/log.hpp"
#include "formats/safetensors/safetensors_writer.hpp"

namespace mb {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {
// splitmix64: fast, and reproducible for a given seed and tensor name.
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
};

// Values look like trained weights (small magnitudes, both signs); the GDN
// norm weight is near 1 as in real checkpoints. Only bit patterns of finite
// numbers are produced.
void fill_random(Rng& rng, DType t, bool near_one, unsigned char* p, uint64_t n) {
  const size_t es = dtype_size(t);
  for (uint64_t i = 0; i < n; ++i) {
    const uint64_t r = rng.next();
    const uint32_t sign = near_one ? 0u : static_cast<uint32_t>(r & 1u);
    const uint32_t exp = near_one ? 126u + static_cast<uint32_t>((r >> 1) & 1u)
                                  : 118u + static_cast<uint32_t>((r >> 1) % 6u);  // 2^-9 .. 2^-4
    const uint32_t man = static_cast<uint32_t>(r >> 8) & 0x7fffffu;
    const uint32_t bits = (sign << 31) | (exp << 23) | man;
    float f;
    std::memcpy(&f, &bits, 4);
    switch (t) {
      case DType::BF16: {
        uint16_t h = f32_to_bf16(f);
        std::memcpy(p + i * es, &h, 2);
        break;
      }
      case DType::F16: {
        uint16_t h = f32_to_f16(f);
        std::memcpy(p + i * es, &h, 2);
        break;
      }
      case DType::F32: std::memcpy(p + i * es, &f, 4); break;
      default: throw Error("synth: unsupported dtype {}", dtype_name(t));
    }
  }
}
}  // namespace

json synth_config(const SynthOptions& o) {
  json cfg = o.hf_config;
  json& text = cfg.at("text_config");
  if (o.num_layers) {
    const uint64_t n = *o.num_layers;
    MB_CHECK(n >= 1, "synth: need at least one layer");
    text["num_hidden_layers"] = n;
    if (text.contains("layer_types")) {
      json lt = text.at("layer_types");
      MB_CHECK(lt.size() >= n, "synth: config has only {} layer_types", lt.size());
      text["layer_types"] = json(std::vector<json>(lt.begin(), lt.begin() + static_cast<long>(n)));
    }
  }
  if (o.vision_depth) cfg.at("vision_config")["depth"] = *o.vision_depth;
  return cfg;
}

SynthResult synthesize_checkpoint(const SynthOptions& o) {
  const json cfg = synth_config(o);
  const ModelConfig m = parse_model_config(cfg, "synth config");
  const auto schema = qwen35_hf_schema(m, o.experts, !m.tied);

  // Files in the official naming, filled in schema order up to the shard size.
  std::vector<std::vector<size_t>> files(1);
  uint64_t fill = 0;
  for (size_t i = 0; i < schema.size(); ++i) {
    const uint64_t b = numel(schema[i].shape) * dtype_size(schema[i].dtype);
    if (fill > 0 && fill + b > o.max_shard_bytes) {
      files.emplace_back();
      fill = 0;
    }
    files.back().push_back(i);
    fill += b;
  }
  // Staged and locked like the other commands' outputs; never written into a
  // directory that already holds files (there is no --overwrite here).
  const StagedOutput out(o.out, "synth");
  out.check_apart_from({{o.config_path, "--hf-config"}});
  out.prepare(/*overwrite=*/false);
  const fs::path dir = out.staging();
  const size_t nf = files.size();
  json weight_map = json::object();
  SynthResult result;
  std::vector<unsigned char> buf(std::max<uint64_t>(o.buffer_bytes, 1 << 16));
  for (size_t f = 0; f < nf; ++f) {
    const std::string name = fmt::format("model.safetensors-{:05d}-of-{:05d}.safetensors", f + 1, nf);
    std::vector<SafetensorsEntry> entries;
    for (size_t i : files[f]) entries.push_back({schema[i].name, schema[i].dtype, schema[i].shape, 0, 0});
    SafetensorsWriter w(dir / (name + ".tmp"), entries);
    for (size_t k = 0; k < w.entries().size(); ++k) {
      const SafetensorsEntry& e = w.entries()[k];
      const bool near_one = e.name.find("linear_attn.norm.weight") != std::string::npos;
      Rng rng{o.seed ^ hash_bytes(e.name.data(), e.name.size())};
      const size_t es = dtype_size(e.dtype);
      const uint64_t total = e.end - e.begin, step = (buf.size() / es) * es;
      for (uint64_t off = 0; off < total; off += step) {
        const uint64_t n = std::min(step, total - off);
        fill_random(rng, e.dtype, near_one, buf.data(), n / es);
        w.write(k, off, buf.data(), n);
      }
      weight_map[e.name] = name;
      result.bytes += total;
      ++result.tensors;
    }
    w.finish();
    fs::rename(dir / (name + ".tmp"), dir / name);
    log::info("synth: wrote {} ({} tensors)", name, w.entries().size());
  }
  result.files = nf;
  const json index = {{"metadata", {{"total_size", result.bytes}}}, {"weight_map", weight_map}};
  write_file_atomic(dir / "model.safetensors.index.json", index.dump(2) + "\n");
  write_file_atomic(dir / "config.json", cfg.dump(2) + "\n");
  write_file_atomic(dir / "generation_config.json",
                    json{{"_from_model_config", true}, {"do_sample", true}}.dump(2) + "\n");
  out.commit();
  return result;
}

}  // namespace mb
