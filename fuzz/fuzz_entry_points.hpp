// The entry logic of the libFuzzer targets in fuzz/, shared with the
// regression test tests/unit/test_fuzz_regressions.cpp (which runs it over
// every saved crash input and seed with the normal compiler).
//
// Each entry point takes arbitrary bytes and drives one reader of untrusted
// input. mb::Error and nlohmann::json::exception are the expected outcomes
// of bad input; anything else that escapes (std::out_of_range, bad_alloc,
// length_error, filesystem_error, ...) is a finding, and so is a broken
// invariant or round trip, reported as an InvariantViolation. Crashes,
// leaks and undefined behaviour are found by the sanitizers of the fuzz
// build (fuzz/run_fuzzers.sh).
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "core/log.hpp"
#include "formats/safetensors/hf_checkpoint.hpp"
#include "formats/safetensors/safetensors_header.hpp"
#include "formats/torch_dist/dcp_metadata.hpp"
#include "formats/torch_dist/pickle.hpp"
#include "formats/torch_dist/torch_save.hpp"
#include "layout/parallel_layout.hpp"
#include "model/megatron_config.hpp"
#include "model/qwen35_config.hpp"
#include "model/qwen35_hf_schema.hpp"

namespace mb::fuzz {

// A broken invariant: never caught by the entry points, so libFuzzer reports
// it (uncaught exception -> abort) and the regression test fails on it.
struct InvariantViolation : std::logic_error {
  using std::logic_error::logic_error;
};

#define MB_FUZZ_ASSERT(cond, ...)                                                       \
  do {                                                                                  \
    if (!(cond))                                                                        \
      throw ::mb::fuzz::InvariantViolation(fmt::format("fuzz invariant failed: {}: {}", \
                                                       #cond, fmt::format(__VA_ARGS__))); \
  } while (0)

// Runs f; bad-input errors are the expected outcome and return false.
template <typename F>
bool expect_ok_or_error(F&& f) {
  try {
    f();
    return true;
  } catch (const mb::Error&) {
  } catch (const nlohmann::json::exception&) {
  }
  return false;
}

inline std::string_view as_view(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// Warnings (e.g. total_size mismatches) would flood the fuzzer's output.
inline void quiet_logs() {
  static const bool once = [] {
    log::set_level(log::Level::Off);
    return true;
  }();
  (void)once;
}

// A per-process scratch directory under $TMPDIR, removed at exit.
class Scratch {
 public:
  static Scratch& get() {
    static Scratch s;
    return s;
  }
  const std::filesystem::path& dir() const { return dir_; }
  ~Scratch() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

 private:
  Scratch() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "mbfuzz-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed for " + tmpl);
    dir_ = tmpl;
  }
  std::filesystem::path dir_;
};

// An in-memory file (memfd) reachable by path through /proc/self/fd, so that
// mb::File can open it; a plain file in the scratch directory where memfd
// or /proc is unavailable. Rewritten on every run.
class ScratchFile {
 public:
  explicit ScratchFile(const char* name) {
    fd_ = ::memfd_create(name, MFD_CLOEXEC);
    if (fd_ >= 0) {
      path_ = "/proc/self/fd/" + std::to_string(fd_);
      if (::access(path_.c_str(), R_OK) == 0) return;
      ::close(fd_);
    }
    path_ = Scratch::get().dir() / name;
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd_ < 0) throw std::runtime_error("cannot create " + path_.string());
  }
  ~ScratchFile() { ::close(fd_); }
  ScratchFile(const ScratchFile&) = delete;
  ScratchFile& operator=(const ScratchFile&) = delete;

  const std::filesystem::path& set(std::string_view bytes) {
    if (::ftruncate(fd_, 0) != 0) throw std::runtime_error("ftruncate failed");
    size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t r = ::pwrite(fd_, bytes.data() + done, bytes.size() - done, static_cast<off_t>(done));
      if (r <= 0) throw std::runtime_error("pwrite to the scratch file failed");
      done += static_cast<size_t>(r);
    }
    return path_;
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  int fd_ = -1;
  std::filesystem::path path_;
};

// ---------------------------------------------------------------------------
// safetensors: parse_safetensors_header and read_safetensors_header
// ---------------------------------------------------------------------------

inline bool same_entries(const std::vector<SafetensorsEntry>& a, const std::vector<SafetensorsEntry>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].name != b[i].name || a[i].dtype != b[i].dtype || a[i].shape != b[i].shape ||
        a[i].begin != b[i].begin || a[i].end != b[i].end)
      return false;
  return true;
}

// What a successfully parsed header must satisfy, and a write/parse round trip.
inline void check_safetensors_header(const SafetensorsHeader& h, uint64_t file_size) {
  MB_FUZZ_ASSERT(h.data_start == 8 + h.header_bytes && h.data_start <= file_size, "data_start {}",
                 h.data_start);
  uint64_t expected = 0;
  std::set<std::string> names;
  for (const auto& e : h.entries) {
    MB_FUZZ_ASSERT(e.begin == expected, "tensor '{}' begins at {}, expected {}", e.name, e.begin, expected);
    MB_FUZZ_ASSERT(e.end - e.begin == numel(e.shape) * dtype_size(e.dtype), "tensor '{}' size", e.name);
    MB_FUZZ_ASSERT(names.insert(e.name).second, "tensor '{}' twice", e.name);
    expected = e.end;
  }
  MB_FUZZ_ASSERT(expected == file_size - h.data_start, "tensors cover {} of {} bytes", expected,
                 file_size - h.data_start);

  // Written again as the reference writer would, the header parses back to
  // the same tensors (in the writer's order) and metadata.
  std::vector<SafetensorsEntry> entries = h.entries;
  sort_like_safetensors(entries);
  const std::string prefix = build_safetensors_header(entries, h.metadata);
  MB_FUZZ_ASSERT(prefix.size() >= 8 && prefix.size() % 8 == 0, "prefix of {} bytes", prefix.size());
  const SafetensorsHeader back = parse_safetensors_header(std::string_view(prefix).substr(8),
                                                          prefix.size() + expected, "round trip");
  std::vector<SafetensorsEntry> sorted_back = back.entries;
  MB_FUZZ_ASSERT(same_entries(sorted_back, entries), "round trip changed the tensors");
  MB_FUZZ_ASSERT(back.metadata == h.metadata, "round trip changed the metadata");
}

inline int safetensors_header(const uint8_t* data, size_t size) {
  quiet_logs();
  const std::string_view in = as_view(data, size);

  // The input as the JSON text of a header, in a file whose data section is
  // as long as the largest data_offsets end in it (0 if there is none), so
  // that real headers parse.
  uint64_t data_bytes = 0;
  const nlohmann::json j = nlohmann::json::parse(in.begin(), in.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_object())
    for (const auto& [k, v] : j.items())
      if (v.is_object() && v.contains("data_offsets") && v["data_offsets"].is_array() &&
          v["data_offsets"].size() == 2 && v["data_offsets"][1].is_number_unsigned())
        data_bytes = std::max(data_bytes, v["data_offsets"][1].get<uint64_t>());
  if (data_bytes <= (uint64_t{1} << 62)) {
    const uint64_t file_size = 8 + size + data_bytes;
    std::optional<SafetensorsHeader> json_only;
    expect_ok_or_error([&] { json_only = parse_safetensors_header(in, file_size, "fuzz header"); });
    if (json_only) check_safetensors_header(*json_only, file_size);
  }

  // The input as a whole file: the 8-byte length prefix, the JSON, the data.
  static ScratchFile file("fuzz.safetensors");
  const auto& path = file.set(in);
  std::optional<SafetensorsHeader> whole;
  expect_ok_or_error([&] { whole = read_safetensors_header(path); });
  if (whole) {
    check_safetensors_header(*whole, size);
    // The same bytes handed to the parser directly give the same result.
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
    const SafetensorsHeader direct = parse_safetensors_header(in.substr(8, n), size, "direct");
    MB_FUZZ_ASSERT(same_entries(direct.entries, whole->entries) && direct.metadata == whole->metadata,
                   "file and in-memory parses differ");
  }
  return 0;
}

// ---------------------------------------------------------------------------
// config.json and the index: parse_model_config, validate_layout, the HF
// schema, read_hf_catalog on a directory whose index is the input
// ---------------------------------------------------------------------------

// A checkpoint directory with two tiny valid shards; the index is the input.
class HfFixture {
 public:
  static HfFixture& get() {
    static HfFixture f;
    return f;
  }
  const std::filesystem::path& dir() const { return dir_; }
  std::filesystem::path index() const { return dir_ / "model.safetensors.index.json"; }
  // The catalog of the directory with its valid index, for check_hf_checkpoint.
  const HfCatalog& baseline() const { return baseline_; }

  static constexpr const char* kValidIndex =
      R"({"metadata": {"total_size": 36}, "weight_map": {"a": "model-00001-of-00002.safetensors",)"
      R"( "b": "model-00001-of-00002.safetensors", "c": "model-00002-of-00002.safetensors",)"
      R"( "d": "model-00002-of-00002.safetensors"}})";

 private:
  HfFixture() {
    dir_ = Scratch::get().dir() / "hf";
    std::filesystem::create_directories(dir_);
    shard("model-00001-of-00002.safetensors", {{"a", DType::BF16, {2, 3}, 0, 0}, {"b", DType::F32, {4}, 0, 0}});
    shard("model-00002-of-00002.safetensors", {{"c", DType::I64, {1}, 0, 0}, {"d", DType::U8, {0}, 0, 0}});
    write("tokenizer_config.json", "{}");
    write("model.safetensors.index.json", kValidIndex);
    baseline_ = read_hf_catalog(dir_);
  }
  void write(const std::string& name, std::string_view bytes) {
    File f(dir_ / name, File::Mode::Write);
    f.pwrite_exact(bytes.data(), bytes.size(), 0);
  }
  void shard(const std::string& name, std::vector<SafetensorsEntry> entries) {
    sort_like_safetensors(entries);
    std::string bytes = build_safetensors_header(entries, {{"format", "pt"}});
    bytes.append(entries.empty() ? 0 : entries.back().end, '\x5a');
    write(name, bytes);
  }
  std::filesystem::path dir_;
  HfCatalog baseline_;
};

inline void check_catalog(const HfCatalog& c) {
  MB_FUZZ_ASSERT(c.files.size() == c.file_sizes.size(), "{} files, {} sizes", c.files.size(), c.file_sizes.size());
  for (const auto& f : c.files) {
    const std::filesystem::path p(f);
    MB_FUZZ_ASSERT(!p.is_absolute() && std::find(p.begin(), p.end(), "..") == p.end(),
                   "shard '{}' escapes the checkpoint directory", f);
    MB_FUZZ_ASSERT(f.find('\0') == std::string::npos, "shard name '{}' holds a NUL byte (another file is opened)",
                   f.substr(0, f.find('\0')));
  }
  for (size_t i = 0; i < c.tensors.size(); ++i) {
    const HfTensor& t = c.tensors[i];
    MB_FUZZ_ASSERT(i == 0 || c.tensors[i - 1].name < t.name, "tensors not sorted/unique at '{}'", t.name);
    MB_FUZZ_ASSERT(t.file < c.files.size(), "tensor '{}' in file {}", t.name, t.file);
    MB_FUZZ_ASSERT(t.offset <= c.file_sizes[t.file] && t.nbytes <= c.file_sizes[t.file] - t.offset,
                   "tensor '{}' lies outside its file", t.name);
    MB_FUZZ_ASSERT(c.find(t.name) == &t, "find('{}')", t.name);
  }
  const HfCatalog back = catalog_from_json(catalog_to_json(c));
  MB_FUZZ_ASSERT(back.files == c.files && back.file_sizes == c.file_sizes && back.has_index == c.has_index &&
                     back.declared_total_size == c.declared_total_size && back.extra_files == c.extra_files &&
                     back.tensors.size() == c.tensors.size(),
                 "catalog JSON round trip");
  for (size_t i = 0; i < c.tensors.size(); ++i) {
    const HfTensor &a = c.tensors[i], &b = back.tensors[i];
    MB_FUZZ_ASSERT(a.name == b.name && a.dtype == b.dtype && a.shape == b.shape && a.file == b.file &&
                       a.offset == b.offset && a.nbytes == b.nbytes,
                   "catalog JSON round trip of '{}'", a.name);
  }
}

inline void check_schema(const std::vector<HfTensorSpec>& schema) {
  std::set<std::string_view> names;
  for (const auto& s : schema) MB_FUZZ_ASSERT(names.insert(s.name).second, "schema names '{}' twice", s.name);
}

inline void exercise_config(const ModelConfig& m) {
  MB_FUZZ_ASSERT(m.text.layer_types.size() == m.text.num_layers, "{} layer types for {} layers",
                 m.text.layer_types.size(), m.text.num_layers);
  std::vector<ParallelLayout> layouts(5);
  layouts[1].tp = 2;
  layouts[2].pp = 2;
  layouts[3].tp = layouts[3].pp = layouts[3].ep = layouts[3].etp = 2;
  layouts[4].tp = 4;
  layouts[4].pp = 3;
  layouts[4].ep = 8;
  layouts[4].first_stage_layers = 1;
  layouts[4].last_stage_layers = 1;
  for (const auto& l : layouts) {
    if (!expect_ok_or_error([&] { validate_layout(l, m); })) continue;
    const auto stages = stage_layers(l, m.text.num_layers);  // must not throw once validated
    MB_FUZZ_ASSERT(stages.size() == l.pp && stages.back().end == m.text.num_layers, "stage split of {} layers",
                   m.text.num_layers);
    for (const auto& s : stages) MB_FUZZ_ASSERT(s.size() > 0, "an empty pipeline stage");
    expect_ok_or_error([&] { (void)megatron_config_yaml(m, l); });
  }
  for (const ExpertLayout e : {ExpertLayout::Fused, ExpertLayout::PerExpert}) {
    expect_ok_or_error([&] { check_schema(qwen35_hf_schema(m, {e, e}, !m.tied)); });
  }
  // A real (tiny) catalog against the fuzzed config: fails on the first
  // missing tensor, after building the schema.
  const HfCatalog& base = HfFixture::get().baseline();
  expect_ok_or_error([&] { (void)check_hf_checkpoint(m, base, detect_expert_layouts(base)); });
}

inline int hf_config(const uint8_t* data, size_t size) {
  quiet_logs();
  const std::string_view in = as_view(data, size);

  // The input as config.json.
  const nlohmann::json j = nlohmann::json::parse(in.begin(), in.end(), nullptr, /*allow_exceptions=*/false);
  if (!j.is_discarded()) {
    std::optional<ModelConfig> m;
    expect_ok_or_error([&] { m = parse_model_config(j, "fuzz/config.json"); });
    if (m) exercise_config(*m);
  }

  // The input as model.safetensors.index.json next to two valid shards.
  HfFixture& fx = HfFixture::get();
  {
    File f(fx.index(), File::Mode::Write);
    f.pwrite_exact(in.data(), in.size(), 0);
  }
  std::optional<HfCatalog> c;
  expect_ok_or_error([&] { c = read_hf_catalog(fx.dir()); });
  if (c) {
    check_catalog(*c);
    expect_ok_or_error([&] { (void)detect_expert_layouts(*c); });
  }
  return 0;
}

// ---------------------------------------------------------------------------
// pickle: pickle::loads and read_dcp_metadata
// ---------------------------------------------------------------------------

// Every global that either reader allows, so the VM gets past GLOBAL.
inline const std::set<std::string>& pickle_globals() {
  static const std::set<std::string> g = [] {
    std::set<std::string> s;
    for (const char* m : {"torch.distributed.checkpoint.metadata", "torch.distributed._shard.sharded_tensor.metadata"})
      for (const char* c : {"Metadata", "TensorStorageMetadata", "ChunkStorageMetadata", "BytesStorageMetadata",
                            "TensorProperties", "_MEM_FORMAT_ENCODING", "MEM_FORMAT_ENCODING", "MetadataIndex"})
        s.insert(std::string(m) + "." + c);
    s.insert("torch.distributed.checkpoint.filesystem._StorageInfo");
    for (const char* c : {"_rebuild_tensor_v2", "_rebuild_tensor_v3"}) s.insert(std::string("torch._utils.") + c);
    for (const char* c : {"Size", "strided", "bfloat16", "float32", "BFloat16Storage", "FloatStorage", "UntypedStorage"})
      s.insert(std::string("torch.") + c);
    s.insert("collections.OrderedDict");
    return s;
  }();
  return g;
}

// Touches every part of a decoded value (bounded by the reader's own limits).
inline size_t walk(const pickle::Value& v, size_t depth = 0) {
  using K = pickle::Value::Kind;
  MB_FUZZ_ASSERT(depth <= 2048, "value nests {} deep", depth);
  size_t n = 1 + v.describe().size() % 2;
  for (const auto& x : v.items) n += walk(x, depth + 1);
  for (const auto& [k, x] : v.entries) n += walk(k, depth + 1) + walk(x, depth + 1);
  MB_FUZZ_ASSERT(v.is(K::Object) == (v.cls != nullptr) && v.is(K::Object) == (v.args != nullptr) &&
                     v.is(K::Object) == (v.state != nullptr),
                 "object pointers of a {}", v.describe());
  if (v.is(K::Object)) {
    n += walk(*v.cls, depth + 1) + walk(*v.args, depth + 1) + walk(*v.state, depth + 1);
    (void)v.attr("state_dict_metadata");
  }
  (void)v.get("x");
  return n;
}

inline bool same_metadata(const DcpMetadata& a, const DcpMetadata& b) {
  if (a.tensors.size() != b.tensors.size() || a.byte_items != b.byte_items) return false;
  for (auto ia = a.tensors.begin(), ib = b.tensors.begin(); ia != a.tensors.end(); ++ia, ++ib)
    if (ia->first != ib->first || ia->second.dtype != ib->second.dtype || ia->second.size != ib->second.size ||
        ia->second.chunks != ib->second.chunks)
      return false;
  if (a.storage.size() != b.storage.size()) return false;
  for (auto ia = a.storage.begin(), ib = b.storage.begin(); ia != a.storage.end(); ++ia, ++ib)
    if (ia->first != ib->first || ia->second.relative_path != ib->second.relative_path ||
        ia->second.offset != ib->second.offset || ia->second.length != ib->second.length)
      return false;
  return true;
}

inline int pickle(const uint8_t* data, size_t size) {
  quiet_logs();
  const std::string_view in = as_view(data, size);
  expect_ok_or_error([&] { (void)walk(pickle::loads(in, pickle_globals(), "fuzz pickle")); });

  std::optional<DcpMetadata> m;
  expect_ok_or_error([&] { m = read_dcp_metadata(in, "fuzz .metadata"); });
  if (!m) return 0;
  (void)check_dcp_tiling(*m);
  for (const auto& [key, st] : m->storage) {
    const DcpStorage& s = m->storage_of(key.first, key.second);
    MB_FUZZ_ASSERT(&s == &st, "storage_of('{}')", key.first);
  }
  // Written back (both TensorProperties paths) and read again: the same metadata.
  for (const auto path : {TensorPropertiesPath::Checkpoint, TensorPropertiesPath::ShardedTensor}) {
    std::string bytes;
    if (!expect_ok_or_error([&] { bytes = write_dcp_metadata(*m, path); })) continue;
    const DcpMetadata back = read_dcp_metadata(bytes, "round trip");
    MB_FUZZ_ASSERT(same_metadata(*m, back), "DCP metadata round trip");
  }
  return 0;
}

// ---------------------------------------------------------------------------
// torch.save zip: read_torch_tensor_item and read_torch_archive_record
// ---------------------------------------------------------------------------

// What read_torch_tensor_item promises about an archive at [begin, begin+len):
// the storage inside it, and every element of the strided view inside the storage.
inline void check_tensor_item(const TorchTensorItem& t, uint64_t begin, uint64_t len) {
  MB_FUZZ_ASSERT(t.data_offset >= begin && t.data_offset - begin <= len &&
                     t.storage_bytes <= len - (t.data_offset - begin),
                 "storage [{}, +{}) outside the archive [{}, +{})", t.data_offset, t.storage_bytes, begin, len);
  MB_FUZZ_ASSERT(t.shape.size() == t.stride.size(), "rank of size and stride");
  uint64_t n = 1;
  bool overflow = false;
  for (uint64_t d : t.shape) overflow |= __builtin_mul_overflow(n, d, &n);
  MB_FUZZ_ASSERT(!overflow, "the element count of shape {} overflows", shape_str(t.shape));
  if (n == 0) return;
  uint64_t last = t.storage_offset, step = 0;
  for (size_t d = 0; d < t.shape.size(); ++d) {
    overflow |= __builtin_mul_overflow(t.shape[d] - 1, t.stride[d], &step);
    overflow |= __builtin_add_overflow(last, step, &last);
  }
  overflow |= __builtin_add_overflow(last, 1, &last);
  overflow |= __builtin_mul_overflow(last, dtype_size(t.dtype), &last);
  MB_FUZZ_ASSERT(!overflow && last <= t.storage_bytes, "view of shape {} stride {} outside its storage",
                 shape_str(t.shape), shape_str(t.stride));
}

inline int torch_zip(const uint8_t* data, size_t size) {
  quiet_logs();
  const std::string_view in = as_view(data, size);
  static ScratchFile scratch("fuzz.pt");
  const File file(scratch.set(in), File::Mode::Read);

  expect_ok_or_error([&] { check_tensor_item(read_torch_tensor_item(file, 0, size, "fuzz item"), 0, size); });
  for (const char* rec : {"data.pkl", "byteorder", "version", "data/0"}) {
    expect_ok_or_error([&] {
      const std::string r = read_torch_archive_record(file, 0, size, rec, "fuzz record");
      MB_FUZZ_ASSERT(r.size() <= size, "record '{}' of {} bytes", rec, r.size());
    });
  }
  // The archive starting at byte 1 of the input (offsets relative to it).
  if (size > 1)
    expect_ok_or_error(
        [&] { check_tensor_item(read_torch_tensor_item(file, 1, size - 1, "fuzz item at 1"), 1, size - 1); });

  // The input as data.pkl of a valid archive (so that the CRC cannot stop the
  // fuzzer from reaching the tensor checks): all but the last two bytes are
  // the pickle, and those two (little-endian) say how many bytes data/0 has.
  // The archive sits after some junk; its records read back byte for byte.
  static ScratchFile out("fuzz-out.pt");
  const size_t pkl_size = size >= 2 ? size - 2 : 0;
  const std::string pkl(in.substr(0, pkl_size));
  const size_t storage_size = size >= 2 ? data[size - 2] | (size_t{data[size - 1]} << 8) : 0;
  const std::string storage(storage_size, '\x3c');
  const std::string archive = torch_save_archive(pkl, {storage}, "archive");
  const std::string junk(13, 'J');
  const File back(out.set(junk + archive), File::Mode::Read);
  MB_FUZZ_ASSERT(read_torch_archive_record(back, junk.size(), archive.size(), "data.pkl", "rt") == pkl,
                 "data.pkl round trip");
  MB_FUZZ_ASSERT(read_torch_archive_record(back, junk.size(), archive.size(), "data/0", "rt") == storage,
                 "storage round trip");
  MB_FUZZ_ASSERT(read_torch_archive_record(back, junk.size(), archive.size(), "byteorder", "rt") == "little",
                 "byteorder round trip");
  expect_ok_or_error([&] {
    check_tensor_item(read_torch_tensor_item(back, junk.size(), archive.size(), "wrapped data.pkl"), junk.size(),
                      archive.size());
  });
  return 0;
}

}  // namespace mb::fuzz
