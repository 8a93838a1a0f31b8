#include "checkpoint/megatron_checkpoint.hpp"

#include <algorithm>
#include <cstring>
#include <iterator>
#include <memory>
#include <numeric>
#include <set>

#include "checkpoint/manifest.hpp"
#include "checkpoint/manifest_check.hpp"
#include "checkpoint/torch_dist_source.hpp"
#include "core/direct_read_queue.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "core/hash.hpp"
#include "core/log.hpp"
#include "core/output_lock.hpp"
#include "core/region_checksum.hpp"
#include "core/row_window.hpp"
#include "dist/hash_relay.hpp"
#include "dist/mpi_context.hpp"
#include "dist/test_hooks.hpp"
#include "formats/hdf5/hdf5_checksum.hpp"
#include "formats/torch_dist/distcp_checksum.hpp"
#include "model/qwen35_dist_keys.hpp"

namespace mb {
namespace fs = std::filesystem;
using nlohmann::json;

HfCatalog virtual_catalog(const json& source_tensors, const std::vector<std::string>& files) {
  HfCatalog c;
  c.files = files;
  c.file_sizes.assign(files.size(), 0);
  for (const auto& t : source_tensors) {
    HfTensor x;
    x.name = t.at("name").get<std::string>();
    auto dt = dtype_from_name(t.at("dtype").get<std::string>());
    MB_CHECK(dt.has_value(), "manifest: tensor '{}' has unknown dtype {}", x.name, t.at("dtype").dump());
    x.dtype = *dt;
    x.shape = t.at("shape").get<Shape>();
    x.nbytes = numel(x.shape) * dtype_size(x.dtype);
    const std::string file = t.value("file", std::string{});
    auto it = std::find(files.begin(), files.end(), file);
    x.file = it == files.end() ? 0 : static_cast<uint32_t>(it - files.begin());
    c.tensors.push_back(std::move(x));
  }
  std::sort(c.tensors.begin(), c.tensors.end(),
            [](const HfTensor& a, const HfTensor& b) { return a.name < b.name; });
  return c;
}

namespace {
// The iteration directory Megatron would load: from the tracker file, else
// the directory itself or its single iter_* child.
fs::path find_iter_dir(const fs::path& dir) {
  const fs::path tracker = dir / "latest_checkpointed_iteration.txt";
  if (fs::exists(tracker)) {
    std::string t = read_text_file(tracker);
    while (!t.empty() && std::isspace(static_cast<unsigned char>(t.back()))) t.pop_back();
    if (t == "release") return dir / "release";
    try {
      return dir / fmt::format("iter_{:07d}", std::stoull(t));
    } catch (...) {
      throw Error("{}: expected an iteration number or 'release', got '{}'", tracker.string(), t);
    }
  }
  if (fs::exists(dir / ".metadata")) return dir;
  std::vector<fs::path> iters;
  if (fs::is_directory(dir))
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_directory() && e.path().filename().string().rfind("iter_", 0) == 0) iters.push_back(e.path());
  MB_CHECK(iters.size() == 1, "{}: no torch_dist checkpoint found (no latest_checkpointed_iteration.txt, "
           ".metadata or single iter_* directory)", dir.string());
  return iters.front();
}

DcpMetadata load_dcp(const fs::path& iter_dir) {
  const fs::path md = iter_dir / ".metadata";
  MB_CHECK(fs::exists(md), "{} is missing: the torch_dist checkpoint is incomplete", md.string());
  return read_dcp_metadata(read_text_file(md), md.string());
}

// torch_dist stores what the model holds, whatever dtype the writer used:
// take each local tensor's dtype from its checkpoint key.
void adopt_stored_dtypes(MegatronCheckpoint& ck) {
  for (ShardPlan& s : ck.shards)
    for (LocalTensor& t : s.tensors) {
      for (const DistPiece& p : dist_pieces(t, ck.model, ck.layout, s.coord)) {
        auto it = ck.dcp.tensors.find(p.key);
        if (it == ck.dcp.tensors.end()) continue;  // reported by check_torch_dist
        t.dtype = it->second.dtype;
      }
      t.source_dtype = t.dtype;
      for (const Segment& g : t.segments)
        if (t.canonical) ck.source.tensors.at(g.src).dtype = t.dtype;
    }
}
}  // namespace

std::vector<NamedPath> checkpoint_files(const MegatronCheckpoint& ck) {
  std::vector<NamedPath> out = {{ck.dir, "--megatron-path"}, {ck.dir / "hf", "HF side directory"}};
  for (const auto& f : ck.manifest.at("files"))
    out.push_back({ck.dir / f.at("path").get<std::string>(), "shard file"});
  return out;
}

std::vector<fs::path> checkpoint_sources(const MegatronCheckpoint& ck) {
  std::vector<fs::path> out;
  for (const auto& e : fs::recursive_directory_iterator(ck.dir))
    if (e.path().filename() != kLockFileName) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

bool is_torch_dist_dir(const fs::path& dir) {
  if (fs::exists(dir / kManifestName)) {
    try {
      return read_manifest(dir).value("shard_format", std::string{}) == "torch_dist";
    } catch (...) {
      return false;
    }
  }
  if (fs::exists(dir / "latest_checkpointed_iteration.txt") || fs::exists(dir / ".metadata")) return true;
  if (fs::is_directory(dir))
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_directory() && fs::exists(e.path() / ".metadata")) return true;
  return false;
}

uint64_t canonical_bytes(const MegatronCheckpoint& ck) {
  uint64_t n = 0;
  for (const ShardPlan& s : ck.shards) n += s.canonical_bytes();
  return n;
}

MegatronCheckpoint open_megatron_checkpoint(const fs::path& dir, const ForeignCheckpointOptions* foreign) {
  MegatronCheckpoint ck;
  ck.dir = dir;
  if (!fs::exists(dir / kManifestName) && is_torch_dist_dir(dir)) {
    // A torch_dist checkpoint from Megatron-Core or PyTorch: the model comes
    // from a HF config.json; the tensors are planned as one TP1·PP1·EP1 rank,
    // which reads whole Megatron tensors from whatever chunks were written.
    MB_CHECK(foreign && !foreign->hf_config.empty(),
             "{} is a torch_dist checkpoint without a megabridge manifest: pass --hf-config "
             "(the model's HF config.json) to read it",
             dir.string());
    ck.format = "torch_dist";
    ck.foreign = true;
    ck.iter_dir = find_iter_dir(dir);
    ck.dcp = load_dcp(ck.iter_dir);
    ck.model = load_model_config(foreign->hf_config);
    // A model built without MTP (mtp_num_layers 0, as megabridge imports a
    // checkpoint that transformers saved) next to a config.json that declares
    // it: read it as the model it is.
    const bool any_mtp =
        std::any_of(ck.dcp.tensors.begin(), ck.dcp.tensors.end(),
                    [](const auto& kv) {
                      return kv.first.rfind("mtp.", 0) == 0 || kv.first.find(".mtp.") != std::string::npos;
                    });
    if (ck.model.text.mtp_layers > 0 && !any_mtp) {
      ck.mtp_not_converted = ck.model.text.mtp_layers;
      ck.model = without_mtp(ck.model);
    }
    ck.experts = foreign->experts;
    json tensors = json::array();
    for (const auto& t : qwen35_hf_schema(ck.model, ck.experts, !ck.model.tied))
      tensors.push_back({{"name", t.name}, {"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"file", ""}});
    ck.manifest = {{"shard_format", "torch_dist"},
                   {"model", {{"hf_config", ck.model.raw}}},
                   {"layout", layout_to_json(ck.layout)},
                   {"dtype", "keep"},
                   {"files", json::array()},
                   {"source",
                    {{"hf_path", ""}, {"files", json::array()}, {"extra_files", json::array()},
                     {"expert_layouts", {{"main", expert_layout_name(ck.experts.main)},
                                         {"mtp", expert_layout_name(ck.experts.mtp)}}},
                     {"tensors", tensors}, {"unconsumed", json::array()}}}};
    ck.source = virtual_catalog(tensors, {});
    for (const ShardCoord& c : all_shards(ck.layout))
      ck.shards.push_back({c, 0, plan_shard_tensors(ck.model, ck.source, ck.experts, ck.layout, c, std::nullopt)});
    adopt_stored_dtypes(ck);
    // The catalogue's dtypes changed: refresh the synthesised source description.
    for (auto& t : ck.manifest["source"]["tensors"])
      t["dtype"] = dtype_name(ck.source.find(t.at("name").get<std::string>())->dtype);
    return ck;
  }

  ck.manifest = read_manifest(dir);
  const json& m = ck.manifest;
  const std::string where = (dir / kManifestName).string();
  try {
    ck.format = m.at("shard_format").get<std::string>();
    MB_CHECK(ck.format == "hdf5" || ck.format == "torch_dist", "unknown shard format '{}'", ck.format);
    ck.model = parse_model_config(m.at("model").at("hf_config"), where + " (model.hf_config)");
    ck.mtp_not_converted = mtp_not_converted(m);
    ck.layout = layout_from_json(m.at("layout"));
    const std::string dtype = m.at("dtype").get<std::string>();
    if (dtype != "keep") ck.cast = dtype_from_name(dtype);
    const json& src = m.at("source");
    ck.experts.main = expert_layout_from_name(src.at("expert_layouts").at("main").get<std::string>());
    ck.experts.mtp = expert_layout_from_name(src.at("expert_layouts").at("mtp").get<std::string>());
    ck.source = virtual_catalog(src.at("tensors"), src.at("files").get<std::vector<std::string>>());
    ck.source.dir = src.at("hf_path").get<std::string>();
    ck.source.extra_files = src.at("extra_files").get<std::vector<std::string>>();
  } catch (const json::exception& e) {
    throw Error("{}: malformed manifest: {}", where, e.what());
  }
  if (const std::string p = model_config_mismatch(ck.model, ck.source, ck.experts); !p.empty())
    throw Error("{}: {}: the manifest was edited or does not belong to these shards", where, p);
  validate_layout(ck.layout, ck.model);
  std::set<std::string> listed;
  for (const auto& f : m.at("files")) listed.insert(f.at("path").get<std::string>());
  std::set<std::string> expected;
  for (const ShardCoord& c : all_shards(ck.layout)) {
    expected.insert(c.file_name());
    ShardPlan s;
    s.coord = c;
    s.tensors = plan_shard_tensors(ck.model, ck.source, ck.experts, ck.layout, c, ck.cast);
    ck.shards.push_back(std::move(s));
  }
  if (ck.format == "torch_dist") {
    ck.iter_dir = find_iter_dir(dir);
    ck.dcp = load_dcp(ck.iter_dir);
    return ck;
  }
  if (listed != expected) {
    // Name the files: equal counts with other names (a layout field edited
    // from TP4 to PP4) must not read as "4 files, but 4 shards".
    std::vector<std::string> extra, missing;
    std::set_difference(listed.begin(), listed.end(), expected.begin(), expected.end(),
                        std::back_inserter(extra));
    std::set_difference(expected.begin(), expected.end(), listed.begin(), listed.end(),
                        std::back_inserter(missing));
    std::string detail;
    if (!extra.empty())
      detail +=
          fmt::format("it lists {} ({} file{} in all) that layout {} does not have", extra.front(),
                      extra.size(), extra.size() == 1 ? "" : "s", ck.layout.describe());
    if (!missing.empty())
      detail += fmt::format("{}it does not list {} ({} file{} in all) that layout {} needs",
                            detail.empty() ? "" : ", and ", missing.front(), missing.size(),
                            missing.size() == 1 ? "" : "s", ck.layout.describe());
    throw Error(
        "{}: the recorded layout does not match the listed shard files: {}; the manifest "
        "was edited or does not belong to these shards",
        where, detail);
  }
  return ck;
}

namespace {
// Hashes `path` under the scheme its manifest entry names (else the
// manifest's, else the whole-file "xxh3-64" of older manifests) and compares
// with the entry; the problem, or "".
std::string checksum_mismatch(const fs::path& path, const json& entry, const json& manifest) {
  const std::string scheme = entry.value(
      "checksum", manifest.value("checksum", std::string(kWholeFileChecksum)));
  std::vector<std::string> bad;
  uint64_t digest;
  if (scheme == kDistcpRegionChecksum) {
    // The chunks' own checksums are in the manifest (not in the file): with
    // them a mismatch names the chunk.
    std::vector<DataRegion> regions = distcp_data_regions(path);
    std::map<std::string, std::string> own;
    if (entry.contains("tensors"))
      for (const auto& t : entry.at("tensors"))
        own[t.at("name").get<std::string>()] = t.at("xxh3").get<std::string>();
    for (DataRegion& r : regions)
      if (auto it = own.find(r.name); it != own.end()) r.xxh3 = it->second;
    RegionChecksum c = region_file_checksum(path, regions);
    digest = c.digest;
    bad = std::move(c.bad);
  } else {
    digest = file_checksum(path, scheme, &bad);
  }
  const std::string got = hash_hex(digest), want = entry.at("xxh3").get<std::string>();
  if (got == want) return {};
  std::string which;
  if (!bad.empty())
    which = fmt::format("; the bytes of {} '{}'{} do not match {} xxh3",
                        scheme == kDistcpRegionChecksum ? "tensor chunk" : "dataset", bad.front(),
                        bad.size() > 1 ? fmt::format(" (and {} more)", bad.size() - 1) : "",
                        scheme == kDistcpRegionChecksum ? "the manifest's" : "its own");
  return fmt::format("{} is corrupt: its xxh3 checksum ({}) is {} but the manifest recorded {}{} "
                     "(pass --no-verify-checksums to use it anyway)",
                     path.string(), scheme, got, want, which);
}
}  // namespace

std::vector<std::string> check_torch_dist(const MegatronCheckpoint& ck, bool checksums, int rank,
                                          int ranks) {
  std::vector<std::string> problems;
  size_t index = 0;
  for (const auto& f : ck.manifest.at("files")) {
    if (static_cast<int>(index++ % static_cast<size_t>(ranks)) != rank) continue;
    const fs::path path = ck.dir / f.at("path").get<std::string>();
    if (!fs::exists(path)) {
      problems.push_back(fmt::format("{} is missing", path.string()));
      continue;
    }
    try {
      require_regular_file(path, "shard file");
    } catch (const std::exception& e) {
      problems.push_back(e.what());
      continue;
    }
    if (fs::file_size(path) != f.at("bytes").get<uint64_t>())
      problems.push_back(fmt::format("{} has {} bytes but the manifest recorded {}: truncated or replaced",
                                     path.string(), fs::file_size(path), f.at("bytes").get<uint64_t>()));
    else if (checksums) {
      if (auto p = checksum_mismatch(path, f, ck.manifest); !p.empty()) problems.push_back(std::move(p));
    }
  }
  if (rank != 0) return problems;
  for (const auto& p : check_dcp_tiling(ck.dcp)) problems.push_back(ck.iter_dir.string() + "/.metadata: " + p);
  // Every item must lie inside its file (a corrupt or hostile .metadata could
  // point anywhere).
  std::map<std::string, uint64_t> sizes;
  for (const auto& [k, st] : ck.dcp.storage) {
    auto it = sizes.find(st.relative_path);
    if (it == sizes.end()) {
      std::error_code ec;
      const fs::path f = ck.iter_dir / st.relative_path;
      const uint64_t n = fs::exists(f) ? fs::file_size(f, ec) : 0;
      it = sizes.emplace(st.relative_path, ec ? 0 : n).first;
      if (!fs::exists(f)) problems.push_back(fmt::format("{}: .metadata refers to missing file {}",
                                                         ck.iter_dir.string(), st.relative_path));
    }
    if (st.offset > it->second || st.length > it->second - st.offset)
      problems.push_back(fmt::format("{}/.metadata: item '{}' claims bytes [{}, {}) of {}, which has {} "
                                     "bytes: offsets out of range",
                                     ck.iter_dir.string(), k.first, st.offset, st.offset + st.length,
                                     st.relative_path, it->second));
  }
  std::set<std::string> seen;
  for (const ShardPlan& s : ck.shards)
    for (const LocalTensor& t : s.tensors) {
      if (!t.canonical) continue;
      for (const DistPiece& p : dist_pieces(t, ck.model, ck.layout, s.coord)) {
        if (!seen.insert(p.key).second) continue;
        auto it = ck.dcp.tensors.find(p.key);
        if (it == ck.dcp.tensors.end()) {
          problems.push_back(fmt::format("{}: key '{}' is missing", ck.iter_dir.string(), p.key));
          continue;
        }
        Shape want = p.global_shape, got = it->second.size;
        // The embedding and output layer may be stored with a padded vocabulary.
        const bool vocab = p.key.find("word_embeddings") != std::string::npos ||
                           p.key.find("output_layer") != std::string::npos;
        if (vocab && got.size() == want.size() && got[0] >= want[0]) got[0] = want[0];
        if (got != want)
          problems.push_back(fmt::format("{}: key '{}' has global shape {} but the model needs {}",
                                         ck.iter_dir.string(), p.key, shape_str(it->second.size),
                                         shape_str(p.global_shape)));
        if (!dtype_is_castable(it->second.dtype))
          problems.push_back(fmt::format("{}: key '{}' has dtype {}", ck.iter_dir.string(), p.key,
                                         dtype_name(it->second.dtype)));
      }
    }
  return problems;
}

std::vector<std::string> check_shard_file(const MegatronCheckpoint& ck, size_t shard, bool checksums) {
  std::vector<std::string> problems;
  const ShardPlan& s = ck.shards.at(shard);
  const std::string name = s.coord.file_name();
  const fs::path path = ck.dir / name;
  const json* entry = nullptr;
  for (const auto& f : ck.manifest.at("files"))
    if (f.at("path").get<std::string>() == name) entry = &f;
  try {
    MB_CHECK(fs::exists(path), "shard file {} is missing", path.string());
    require_regular_file(path, "shard file");
    MB_CHECK(entry != nullptr, "{} is not listed in the manifest", path.string());
    // Which rank the file says it holds, checked before its size and
    // checksum: two swapped shard files would otherwise read as "truncated
    // or replaced", or as "a shard from a different layout" of this layout.
    std::unique_ptr<Hdf5ShardReader> reader;
    try {
      reader = std::make_unique<Hdf5ShardReader>(path);
    } catch (const std::exception&) {
      // Unreadable: the size and checksum checks below say why.
    }
    if (reader) {
      const ShardFileInfo& fi = reader->file_info();
      const bool same_layout = fi.tp_size == ck.layout.tp && fi.pp_size == ck.layout.pp &&
                               fi.ep_size == ck.layout.ep && fi.etp_size == ck.layout.etp;
      const bool same_rank =
          fi.tp_rank == s.coord.tp && fi.pp_rank == s.coord.pp && fi.ep_rank == s.coord.ep;
      MB_CHECK(!same_layout || same_rank,
               "{} holds the shard of rank (tp {}, pp {}, ep {}), whose file is {}, but its name "
               "is that "
               "of rank (tp {}, pp {}, ep {}): shard files were renamed or swapped",
               path.string(), fi.tp_rank, fi.pp_rank, fi.ep_rank,
               ShardCoord{fi.tp_rank, fi.pp_rank, fi.ep_rank}.file_name(), s.coord.tp, s.coord.pp,
               s.coord.ep);
      MB_CHECK(same_layout,
               "{} was written for rank (tp {}, pp {}, ep {}) of TP{}·PP{}·EP{}·ETP{}, but this "
               "checkpoint's layout is {}: a shard from a different layout",
               path.string(), fi.tp_rank, fi.pp_rank, fi.ep_rank, fi.tp_size, fi.pp_size,
               fi.ep_size, fi.etp_size, ck.layout.describe());
    }
    MB_CHECK(fs::file_size(path) == entry->at("bytes").get<uint64_t>(),
             "{} has {} bytes but the manifest recorded {}: truncated or replaced", path.string(),
             fs::file_size(path), entry->at("bytes").get<uint64_t>());
    if (checksums) {
      if (auto p = checksum_mismatch(path, *entry, ck.manifest); !p.empty()) problems.push_back(std::move(p));
    }
    if (!reader) reader = std::make_unique<Hdf5ShardReader>(path);  // throws why it cannot be read
    const Hdf5ShardReader& r = *reader;
    std::set<std::string> want;
    for (const auto& t : s.tensors) {
      want.insert(t.name);
      const ShardDatasetInfo* d = r.find(t.name);
      if (d == nullptr) {
        problems.push_back(fmt::format("{} is missing dataset '{}'", path.string(), t.name));
        continue;
      }
      if (d->shape != t.shape || d->dtype != t.dtype)
        problems.push_back(fmt::format("{}: dataset '{}' is {} {} but the model needs {} {}",
                                       path.string(), t.name, dtype_name(d->dtype),
                                       shape_str(d->shape), dtype_name(t.dtype), shape_str(t.shape)));
    }
    for (const auto& d : r.datasets())
      if (!want.count(d.name))
        problems.push_back(fmt::format("{} holds unexpected dataset '{}'", path.string(), d.name));
  } catch (const std::exception& e) {
    problems.push_back(e.what());
  }
  return problems;
}

std::vector<std::string> checksum_problems(const MegatronCheckpoint& ck, int rank, int ranks) {
  std::vector<std::string> problems;
  size_t index = 0;
  for (const auto& f : ck.manifest.at("files")) {
    if (static_cast<int>(index++ % static_cast<size_t>(ranks)) != rank) continue;
    const fs::path path = ck.dir / f.at("path").get<std::string>();
    try {
      if (auto p = checksum_mismatch(path, f, ck.manifest); !p.empty()) problems.push_back(std::move(p));
    } catch (const std::exception& e) {
      problems.push_back(fmt::format("{}: {}", path.string(), e.what()));
    }
  }
  return problems;
}

std::string validate_shard_files(const MegatronCheckpoint& ck, bool checksums, MpiContext& mpi) {
  std::string problem;
  if (ck.format == "torch_dist") {
    const auto p = check_torch_dist(ck, checksums, mpi.rank(), mpi.size());
    if (!p.empty()) problem = p.front();
    for (const auto& q : mpi.all_gather(problem))
      if (!q.empty()) return q;
    return {};
  }
  for (size_t i = 0; i < ck.shards.size() && problem.empty(); ++i) {
    if (static_cast<int>(i % static_cast<size_t>(mpi.size())) != mpi.rank()) continue;
    const auto p = check_shard_file(ck, i, checksums);
    if (!p.empty()) problem = p.front();
  }
  for (const auto& p : mpi.all_gather(problem))
    if (!p.empty()) return p;
  return {};
}

IoMode source_io_mode(IoMode requested, bool checksums_verified) {
  return requested == IoMode::Auto && checksums_verified ? IoMode::Buffered : requested;
}

bool checksums_streamable(const MegatronCheckpoint& ck) {
  // Older manifests (whole-file "xxh3-64") keep the separate full pass; a
  // foreign checkpoint (no manifest of ours) has no checksums at all.
  if (ck.foreign || ck.manifest.at("files").empty()) return false;
  const char* streamable = ck.format == "torch_dist" ? kDistcpRegionChecksum : kHdf5RegionChecksum;
  for (const auto& f : ck.manifest.at("files")) {
    const std::string scheme =
        f.value("checksum", ck.manifest.value("checksum", std::string(kWholeFileChecksum)));
    if (scheme != streamable || !f.contains("tensors")) return false;
  }
  return true;
}

std::unique_ptr<RowSource> open_local_source(const MegatronCheckpoint& ck,
                                             std::vector<LocalTensorRef> refs, const IoConfig& io,
                                             bool verify_streamed, const StreamedChecks& shared) {
  if (ck.format == "torch_dist")
    return std::make_unique<TorchDistSource>(ck, std::move(refs), io, verify_streamed, shared);
  return std::make_unique<Hdf5ShardSource>(ck, std::move(refs), io, verify_streamed, shared);
}

int local_source_io_buffers(IoMode io) {
  return io == IoMode::Buffered ? 0 : 2 + kDirectReadSlots;
}

std::string source_checksum_problem(RowSource& source, int rank, int ranks) {
  if (auto* t = dynamic_cast<TorchDistSource*>(&source)) return t->finish_verification(rank, ranks);
  auto* h = dynamic_cast<Hdf5ShardSource*>(&source);
  MB_CHECK(h != nullptr, "internal: streamed checksums asked of a source that is neither HDF5 nor torch_dist");
  return h->finish_verification(rank, ranks);
}

namespace {
// The manifest's per-tensor checksums of one shard file.
std::map<std::string, std::string> manifest_tensor_hashes(const json& manifest,
                                                          const std::string& file) {
  std::map<std::string, std::string> out;
  for (const auto& f : manifest.at("files"))
    if (f.at("path").get<std::string>() == file)
      for (const auto& t : f.at("tensors"))
        out[t.at("name").get<std::string>()] = t.at("xxh3").get<std::string>();
  return out;
}
}  // namespace

Hdf5ShardSource::Hdf5ShardSource(const MegatronCheckpoint& ck, std::vector<LocalTensorRef> refs,
                                 const IoConfig& io, bool verify, const StreamedChecks& shared)
    : ck_(ck),
      refs_(std::move(refs)),
      io_(io),
      windows_(io.chunk_bytes),
      queue_(io.chunk_bytes, io.mode == IoMode::Buffered ? 0 : kDirectReadSlots),
      verify_(verify),
      shared_(shared) {
  if (!verify_) return;
  MB_CHECK(!shared_.reads || shared_.relay, "internal: shared checksum reads without a relay");
  if (shared_.relay) rank_ = shared_.relay->rank();
  wait_s_ = test_hook_hash_wait_s(wait_s_);
  streamed_.resize(refs_.size());
  want_.resize(refs_.size());
  std::map<uint32_t, std::map<std::string, std::string>> by_shard;
  for (size_t i = 0; i < refs_.size(); ++i) {
    const LocalTensorRef& r = refs_[i];
    auto it = by_shard.find(r.shard);
    if (it == by_shard.end())
      it = by_shard
               .emplace(r.shard, manifest_tensor_hashes(ck_.manifest,
                                                        ck_.shards.at(r.shard).coord.file_name()))
               .first;
    const std::string& name = ck_.shards.at(r.shard).tensors.at(r.tensor).name;
    auto h = it->second.find(name);
    MB_CHECK(h != it->second.end(), "{}: the manifest records no checksum for '{}' of {}",
             (ck_.dir / kManifestName).string(), name, ck_.shards.at(r.shard).coord.file_name());
    want_[i] = h->second;
  }
  if (shared_.reads) {
    // The chains of every rank's reads, the same on every rank.
    std::vector<uint64_t> rows;
    rows.reserve(refs_.size());
    for (const LocalTensorRef& r : refs_)
      rows.push_back(rows_2d(ck_.shards.at(r.shard).tensors.at(r.tensor).shape));
    chains_ = build_verify_chains(rows, *shared_.reads);
  } else {
    // Alone: this rank checks every tensor it reads, each as one link.
    chains_.resize(refs_.size());
    for (uint32_t id = 0; id < refs_.size(); ++id) {
      const LocalTensorRef& r = refs_[id];
      chains_[id].push_back({rank_, 0, rows_2d(ck_.shards.at(r.shard).tensors.at(r.tensor).shape)});
    }
  }
  for (uint32_t id = 0; id < refs_.size(); ++id) streamed_[id].link = next_own_link(id, 0);
}

const std::vector<ChainLink>& Hdf5ShardSource::links(uint32_t id) {
  return chains_[id];
}

size_t Hdf5ShardSource::next_own_link(uint32_t id, size_t from) {
  const auto& l = links(id);
  while (from < l.size() && l[from].rank != rank_) ++from;
  return from;
}

bool Hdf5ShardSource::prepare_hash(uint32_t id, uint64_t row0, uint64_t rows) {
  Streamed& s = streamed_.at(id);
  // A read that skips rows of this rank's link (it reads them later, e.g. a
  // 1-rank TP1 -> TP2 reshard reads fc1's [gate0; up0], then [gate1; up1])
  // hashes them first, read ahead through the page cache, where the later
  // read finds them (read directly, they came from storage twice: a 1-rank
  // reshard read 1.17x its input), rather than the rest of the link again at
  // the end.
  return ChainWalk{links(id), s.link, s.next_row, s.broken, wait_s_}.prepare(
      row0, row0 + rows, [&](double wait) { return start_link(id, wait); },
      [&](uint64_t from, uint64_t to) { fill(id, from, to); });
}

void Hdf5ShardSource::fill(uint32_t id, uint64_t row0, uint64_t row1) {
  const ChecksumReadScope counted;  // reported apart from the conversion's reads by bench
  const LocalTensorRef& ref = refs_.at(id);
  const LocalTensor& t = ck_.shards.at(ref.shard).tensors.at(ref.tensor);
  const uint64_t cols = cols_2d(t.shape), row_bytes = cols * dtype_size(t.dtype);
  const uint64_t block = std::max<uint64_t>(1, (4u << 20) / std::max<uint64_t>(row_bytes, 1));
  ++filled_;
  filled_bytes_ += (row1 - row0) * row_bytes;
  Streamed& s = streamed_.at(id);
  s.filled_from = std::min(s.filled_from, row0);
  s.filled_to = std::max(s.filled_to, row1);
  // The rows are asked of the kernel ahead of the reads: the handle reads
  // nothing ahead by itself (InputFile::file()). Not where read_bytes reads
  // through libhdf5 (no data offset) or the file is read buffered.
  InputFile& in = input(ref.shard);
  const ShardDatasetInfo* d = reader(ref.shard).find(t.name);
  const bool ask = d != nullptr && d->data_offset != UINT64_MAX && in.direct();
  const uint64_t at = ask ? d->data_offset : 0;
  PageCacheAhead ahead(in.file(), at + row0 * row_bytes, ask ? at + row1 * row_bytes : 0);
  // Into fill_buf_, not scratch_: a column window's read may be using it.
  for (uint64_t r = row0; r < row1; r += block) {
    const uint64_t n = std::min(block, row1 - r);
    ahead.reading_to(at + (r + n) * row_bytes);
    fill_buf_.resize(n * row_bytes);
    read_bytes(id, r, n, 0, cols, fill_buf_.data(), row_bytes, /*page_cache=*/true);
    advance(id, r, n, fill_buf_.data(), row_bytes);
  }
}

bool Hdf5ShardSource::left_to_finish(uint32_t id, uint64_t row0, uint64_t rows) {
  const Streamed& s = streamed_.at(id);
  const auto& l = links(id);
  for (size_t i = s.link; i < l.size(); ++i) {
    if (l[i].rank != rank_) continue;
    const uint64_t from = std::max(s.next_row, l[i].row0);
    if (row0 < l[i].row1 && from < row0 + rows) return true;
  }
  return false;
}

bool Hdf5ShardSource::start_link(uint32_t id, double timeout_s) {
  Streamed& s = streamed_.at(id);
  const auto& l = links(id);
  const ChainLink& link = l.at(s.link);
  if (link.row0 == 0) {
    s.hash = Hasher();
  } else {
    const int from = l.at(s.link - 1).rank;
    auto state = shared_.relay->receive(from, id, timeout_s);
    if (!state) return false;
    s.hash.restore(*state);
  }
  s.next_row = link.row0;
  return true;
}

void Hdf5ShardSource::end_link(uint32_t id) {
  Streamed& s = streamed_.at(id);
  const auto& l = links(id);
  if (s.link + 1 == l.size()) {
    check_streamed(id, s.hash.digest());
    ++checked_;
  } else {
    shared_.relay->send(l[s.link + 1].rank, id, s.hash.save());
    ++handed_on_;
  }
  s.link = next_own_link(id, s.link + 1);
}

void Hdf5ShardSource::advance(uint32_t id, uint64_t row0, uint64_t rows, const unsigned char* p,
                              uint64_t stride) {
  Streamed& s = streamed_.at(id);
  const LocalTensorRef& ref = refs_.at(id);
  const LocalTensor& t = ck_.shards.at(ref.shard).tensors.at(ref.tensor);
  const uint64_t row_bytes = cols_2d(t.shape) * dtype_size(t.dtype);
  ChainWalk{links(id), s.link, s.next_row, s.broken, wait_s_}.advance(
      row0, row0 + rows, [&](double wait) { return start_link(id, wait); },
      [&](uint64_t from, uint64_t to) {
        const unsigned char* q = p + (from - row0) * stride;
        if (stride == row_bytes) {
          s.hash.update(q, (to - from) * row_bytes);
        } else {
          for (uint64_t r = from; r < to; ++r, q += stride) s.hash.update(q, row_bytes);
        }
      },
      [&] { end_link(id); });
}

void Hdf5ShardSource::finish_links(uint32_t id) {
  Streamed& s = streamed_.at(id);
  const LocalTensorRef& ref = refs_.at(id);
  const LocalTensor& t = ck_.shards.at(ref.shard).tensors.at(ref.tensor);
  const uint64_t cols = cols_2d(t.shape), row_bytes = cols * dtype_size(t.dtype);
  const auto& l = links(id);
  // Small blocks: this memory is outside the configured buffer.
  const uint64_t block = std::max<uint64_t>(1, (4u << 20) / std::max<uint64_t>(row_bytes, 1));
  while (s.link < l.size()) {
    const ChainLink& link = l[s.link];
    if (s.next_row < link.row0) start_link(id, -1);
    if (s.next_row < link.row1) {
      ++late_links_;
      late_bytes_ += (link.row1 - s.next_row) * row_bytes;
    }
    while (s.next_row < link.row1) {
      const uint64_t n = std::min(block, link.row1 - s.next_row);
      scratch_.resize(n * row_bytes);
      // A broken link's rows were read through the page cache (read()).
      read_bytes(id, s.next_row, n, 0, cols, scratch_.data(), row_bytes, /*page_cache=*/s.broken);
      s.hash.update(scratch_.data(), n * row_bytes);
      s.next_row += n;
    }
    end_link(id);
  }
}

void Hdf5ShardSource::check_streamed(uint32_t id, uint64_t digest) {
  if (hash_hex(digest) == want_[id] || !problem_.empty()) return;
  const LocalTensorRef& ref = refs_.at(id);
  problem_ = fmt::format(
      "{} is corrupt: dataset '{}' hashes to {} as read but the manifest recorded {} (pass "
      "--no-verify-checksums to use it anyway)",
      (ck_.dir / ck_.shards.at(ref.shard).coord.file_name()).string(),
      ck_.shards.at(ref.shard).tensors.at(ref.tensor).name, hash_hex(digest), want_[id]);
}

std::string Hdf5ShardSource::finish_verification(int rank, int ranks) {
  MB_CHECK(verify_, "internal: finish_verification without verify");
  const ChecksumReadScope counted;  // reported apart from the conversion's reads by bench
  // The links this rank could not hash as it read, in tensor order on every
  // rank: a wait for a state then only waits on work that comes before.
  // Every link, even after a corruption was found: the next links' ranks
  // wait for the states.
  for (uint32_t id = 0; id < refs_.size(); ++id)
    if (shared_.reads || streamed_[id].touched) finish_links(id);
  log::debug(
      "checksums as read: {} tensor(s) checked here, {} hash state(s) handed on; {} "
      "skipped row range(s) read ahead ({} bytes), {} link(s) finished at the end ({} bytes)",
      checked_, handed_on_, filled_, filled_bytes_, late_links_, late_bytes_);
  if (!problem_.empty()) return problem_;
  // Each file's metadata: with the per-tensor checksums, the file checksum.
  for (size_t i = 0; i < ck_.shards.size(); ++i) {
    if (static_cast<int>(i % static_cast<size_t>(ranks)) != rank) continue;
    const std::string file = ck_.shards[i].coord.file_name();
    const fs::path path = ck_.dir / file;
    std::map<std::string, uint64_t> known;
    for (const auto& [name, hex] : manifest_tensor_hashes(ck_.manifest, file))
      known[name] = hash_from_hex(hex);
    std::string want;
    for (const auto& f : ck_.manifest.at("files"))
      if (f.at("path").get<std::string>() == file) want = f.at("xxh3").get<std::string>();
    try {
      const std::string got = hash_hex(hdf5_file_checksum(path, known).digest);
      if (got != want)
        return fmt::format(
            "{} is corrupt: its HDF5 metadata does not match the manifest (file checksum {} "
            "over the metadata and the recorded tensor checksums, recorded {}) (pass "
            "--no-verify-checksums to use it anyway)",
            path.string(), got, want);
    } catch (const std::exception& e) {
      return fmt::format("{} is corrupt: {}", path.string(), e.what());
    }
  }
  return {};
}

const Hdf5ShardReader& Hdf5ShardSource::reader(uint32_t shard) {
  auto it = open_.find(shard);
  if (it != open_.end()) return *it->second;
  // Keep a bounded number of files open; big layouts have thousands of shards.
  constexpr size_t kMaxOpen = 64;
  if (open_.size() >= kMaxOpen) {
    open_.erase(lru_.front());
    inputs_.erase(lru_.front());
    lru_.erase(lru_.begin());
  }
  lru_.push_back(shard);
  const fs::path path = ck_.dir / ck_.shards.at(shard).coord.file_name();
  return *open_.emplace(shard, std::make_unique<Hdf5ShardReader>(path)).first->second;
}

InputFile& Hdf5ShardSource::input(uint32_t shard) {
  reader(shard);  // opened (and checked) by HDF5 first; keeps the two maps in step
  auto it = inputs_.find(shard);
  if (it == inputs_.end())
    it = inputs_
             .emplace(shard, InputFile(ck_.dir / ck_.shards.at(shard).coord.file_name(), io_.mode))
             .first;
  return it->second;
}

void Hdf5ShardSource::read_bytes(uint32_t id, uint64_t row0, uint64_t rows, uint64_t col0,
                                 uint64_t cols, void* dst, uint64_t dst_stride, bool page_cache) {
  const LocalTensorRef& ref = refs_.at(id);
  const LocalTensor& t = ck_.shards.at(ref.shard).tensors.at(ref.tensor);
  const Hdf5ShardReader& r = reader(ref.shard);
  const ShardDatasetInfo* d = r.find(t.name);
  if (d == nullptr || d->data_offset == UINT64_MAX || io_.chunk_bytes == 0 ||
      row0 + rows > rows_2d(d->shape) || col0 + cols > cols_2d(d->shape)) {
    r.read(t.name, row0, rows, col0, cols, dst, dst_stride);  // HDF5 (and its errors)
    return;
  }
  const uint64_t es = dtype_size(d->dtype), row_bytes = cols_2d(d->shape) * es;
  const std::string what = fmt::format("{}: dataset '{}'", r.path().string(), t.name);
  InputFile& in = input(ref.shard);
  if (page_cache) {
    // Through the InputFile's buffered handle, not libhdf5's: under direct
    // I/O that handle is POSIX_FADV_RANDOM, so the kernel does not read ahead
    // (8 MiB here) into bytes the conversion then reads directly, a second
    // time from storage (TorchDistSource reads through the same handle).
    in.file().pread_rows(dst, dst_stride, rows, cols * es,
                         d->data_offset + row0 * row_bytes + col0 * es, row_bytes, what);
    return;
  }
  const uint64_t at = d->data_offset + row0 * row_bytes + col0 * es;
  if (cols * es == row_bytes)  // whole rows: what was loaded ahead (prefetch), then the rest
    pread_rows_queued(queue_, in, dst, dst_stride, rows, row_bytes, at, windows_.of(in), what);
  else
    in.pread_rows(dst, dst_stride, rows, cols * es, at, row_bytes, windows_.of(in), what);
}

uint64_t Hdf5ShardSource::prefetch(uint32_t id, uint64_t row0, uint64_t rows, uint64_t col0,
                                   uint64_t cols, uint64_t max_bytes) {
  if (io_.mode == IoMode::Buffered || io_.chunk_bytes == 0 || rows == 0) return 0;
  const LocalTensorRef& ref = refs_.at(id);
  const LocalTensor& t = ck_.shards.at(ref.shard).tensors.at(ref.tensor);
  const ShardDatasetInfo* d = reader(ref.shard).find(t.name);
  if (d == nullptr || d->data_offset == UINT64_MAX || row0 + rows > rows_2d(d->shape) ||
      col0 + cols > cols_2d(d->shape))
    return 0;
  const uint64_t es = dtype_size(d->dtype), row_bytes = cols_2d(d->shape) * es;
  InputFile& in = input(ref.shard);
  const uint64_t at = d->data_offset + row0 * row_bytes + col0 * es;
  // Whole rows are read directly (read_bytes): loaded ahead. (Rows that
  // read() reads through the page cache instead, for their checksum, are
  // never taken; they are released with their job.)
  if (cols * es == row_bytes && in.direct()) {
    if (verify_ && !in_order_.ask(id, row0, rows)) return 0;  // see RowsAskedInOrder
    return queue_.want(in, at, at + std::min(rows * row_bytes, max_bytes));
  }
  return in.will_read_rows(rows, cols * es, at, row_bytes, max_bytes);
}

void Hdf5ShardSource::read(uint32_t id, uint64_t row0, uint64_t rows, uint64_t col0, uint64_t cols,
                           void* dst, uint64_t dst_stride) {
  const LocalTensorRef& ref = refs_.at(id);
  const LocalTensor& t = ck_.shards.at(ref.shard).tensors.at(ref.tensor);
  const uint64_t es = dtype_size(t.dtype), all_cols = cols_2d(t.shape), row_bytes = all_cols * es;
  bytes_read_ += rows * cols * es;
  if (!verify_) {
    read_bytes(id, row0, rows, col0, cols, dst, dst_stride, /*page_cache=*/false);
    return;
  }
  streamed_.at(id).touched = true;
  const bool whole = col0 == 0 && cols == all_cols;
  const bool hashed = prepare_hash(id, row0, rows);
  // Rows fill() read ahead are in the page cache (after prepare_hash: it may
  // fill rows this read skips, never rows it reads).
  const bool filled = streamed_.at(id).filled(row0, rows);
  if (!hashed) {
    // Rows that finish_verification must hash later are read through the
    // page cache, where it reads them again (not from storage).
    const bool later = streamed_.at(id).broken && left_to_finish(id, row0, rows);
    read_bytes(id, row0, rows, col0, cols, dst, dst_stride, /*page_cache=*/later || filled);
    return;
  }
  if (whole) {
    read_bytes(id, row0, rows, col0, cols, dst, dst_stride, /*page_cache=*/filled);
    advance(id, row0, rows, static_cast<const unsigned char*>(dst), dst_stride);
    return;
  }
  // A column window of rows this rank hashes: read the whole rows, the way
  // the window alone would be read (a narrow one through the page cache,
  // where the node's other ranks share it), hash them, copy the window out.
  const bool cached =
      io_.mode == IoMode::Buffered || !column_window_direct(cols * es, row_bytes) || filled;
  window_from_whole_rows(
      rows, row_bytes, col0 * es, cols * es, static_cast<unsigned char*>(dst), dst_stride, scratch_,
      [&](uint64_t r, uint64_t n, unsigned char* buf) {
        read_bytes(id, row0 + r, n, 0, all_cols, buf, row_bytes, cached);
      },
      [&](const unsigned char* buf, uint64_t r, uint64_t n) {
        advance(id, row0 + r, n, buf, row_bytes);
      });
}

ExportIndex build_export_index(const std::vector<ShardPlan>& shards, size_t num_hf_tensors) {
  ExportIndex x;
  x.per_hf.resize(num_hf_tensors);
  x.op.assign(num_hf_tensors, ElementOp::None);
  x.stored_dtype.assign(num_hf_tensors, DType::BF16);
  for (uint32_t i = 0; i < shards.size(); ++i) {
    for (uint32_t k = 0; k < shards[i].tensors.size(); ++k) {
      const LocalTensor& t = shards[i].tensors[k];
      if (!t.canonical) continue;
      const auto ref = static_cast<uint32_t>(x.refs.size());
      x.refs.push_back({i, k});
      for (const Segment& s : t.segments) {
        x.per_hf.at(s.src).push_back(invert(s, ref));
        x.op[s.src] = inverse(t.op);
        x.stored_dtype[s.src] = t.dtype;
      }
    }
  }
  for (auto& v : x.per_hf)
    std::sort(v.begin(), v.end(), [](const Segment& a, const Segment& b) {
      return a.dst_row != b.dst_row ? a.dst_row < b.dst_row : a.dst_col < b.dst_col;
    });
  return x;
}

std::vector<Segment> compose_through(const std::vector<Segment>& in, const ExportIndex& index) {
  std::vector<Segment> out;
  for (const Segment& s : in) {
    const uint64_t sr1 = s.src_row + s.rows, sc1 = s.src_col + s.cols;
    for (const Segment& e : index.per_hf.at(s.src)) {
      if (e.dst_row >= sr1) break;  // sorted by the HF row they cover
      const uint64_t r0 = std::max(s.src_row, e.dst_row), r1 = std::min(sr1, e.dst_row + e.rows);
      const uint64_t c0 = std::max(s.src_col, e.dst_col), c1 = std::min(sc1, e.dst_col + e.cols);
      if (r0 >= r1 || c0 >= c1) continue;
      out.push_back({e.src, e.src_row + (r0 - e.dst_row), e.src_col + (c0 - e.dst_col),
                     s.dst_row + (r0 - s.src_row), s.dst_col + (c0 - s.src_col), r1 - r0, c1 - c0});
    }
  }
  return coalesce(std::move(out));
}

}  // namespace mb
