// DCP .metadata: our writer and restricted reader, against the files real
// torch 2.15 wrote (tests/data/torch_golden), and the tiling check.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "formats/torch_dist/dcp_metadata.hpp"
#include "formats/torch_dist/pickle.hpp"
#include "formats/torch_dist/torch_save.hpp"
#include "test_util.hpp"

using namespace mb;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const fs::path kGolden = fs::path(MEGABRIDGE_SOURCE_DIR) / "tests/data/torch_golden";

template <size_t N>
std::string B(const char (&s)[N]) {
  return std::string(s, N - 1);
}

void expect_error_contains(const std::function<void()>& fn, const std::string& needle) {
  try {
    fn();
    FAIL() << "expected an error containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

DType dtype_of(const std::string& torch_name) {
  for (DType t : {DType::Bool, DType::U8, DType::I8, DType::I16, DType::F16, DType::BF16, DType::I32, DType::F32,
                  DType::F64, DType::I64})
    if (dtype_torch_name(t) == torch_name) return t;
  throw Error("no dtype {}", torch_name);
}

// Compares a DcpMetadata with the plain form make_torch_golden.py records.
void expect_same(const DcpMetadata& m, const json& e) {
  EXPECT_EQ(m.tensors.size(), e["tensors"].size());
  for (const auto& [k, t] : e["tensors"].items()) {
    SCOPED_TRACE(k);
    ASSERT_TRUE(m.tensors.count(k));
    const DcpTensor& got = m.tensors.at(k);
    EXPECT_EQ(got.dtype, dtype_of(t["dtype"]));
    EXPECT_EQ(got.size, t["size"].get<Shape>());
    ASSERT_EQ(got.chunks.size(), t["chunks"].size());
    for (size_t c = 0; c < got.chunks.size(); ++c) {
      EXPECT_EQ(got.chunks[c].offsets, t["chunks"][c][0].get<std::vector<uint64_t>>());
      EXPECT_EQ(got.chunks[c].sizes, t["chunks"][c][1].get<std::vector<uint64_t>>());
    }
  }
  EXPECT_EQ(std::vector<std::string>(m.byte_items.begin(), m.byte_items.end()),
            e["objects"].get<std::vector<std::string>>());
  EXPECT_EQ(m.storage.size(), e["storage"].size());
  for (const auto& s : e["storage"]) {
    const std::vector<uint64_t> off = s[1].is_null() ? std::vector<uint64_t>{} : s[1].get<std::vector<uint64_t>>();
    const DcpStorage& st = m.storage_of(s[0].get<std::string>(), off);
    EXPECT_EQ(st.relative_path, s[2].get<std::string>());
    EXPECT_EQ(st.offset, s[3].get<uint64_t>());
    EXPECT_EQ(st.length, s[4].get<uint64_t>());
  }
}

DcpMetadata sample() {
  DcpMetadata m;
  DcpTensor w{DType::BF16, {4, 6}, {{{0, 0}, {4, 3}}, {{0, 3}, {4, 3}}}};
  DcpTensor b{DType::F32, {5}, {{{0}, {5}}}};
  DcpTensor e{DType::U8, {0}, {{{0}, {0}}}};
  DcpTensor s{DType::I64, {}, {{{}, {}}}};
  m.tensors = {{"decoder.w", w}, {"decoder.b", b}, {"empty", e}, {"scalar", s}};
  m.byte_items = {"decoder.w._extra_state/shard_0_1"};
  m.storage[{"decoder.w", {0, 0}}] = {"__0_0.distcp", 1500, 1600};
  m.storage[{"decoder.w", {0, 3}}] = {"__1_0.distcp", (uint64_t{5} << 32) + 7, 1600};  // LONG1
  m.storage[{"decoder.b", {0}}] = {"__0_0.distcp", 70000, 1577};
  m.storage[{"empty", {0}}] = {"__0_0.distcp", 0, 1};
  m.storage[{"scalar", {}}] = {"__0_0.distcp", 5, 6};
  m.storage[{"decoder.w._extra_state/shard_0_1", {}}] = {"__0_0.distcp", 0, 1500};
  return m;
}

void expect_equal(const DcpMetadata& a, const DcpMetadata& b) {
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (const auto& [k, t] : a.tensors) {
    ASSERT_TRUE(b.tensors.count(k)) << k;
    EXPECT_EQ(t.dtype, b.tensors.at(k).dtype) << k;
    EXPECT_EQ(t.size, b.tensors.at(k).size) << k;
    EXPECT_EQ(t.chunks, b.tensors.at(k).chunks) << k;
  }
  EXPECT_EQ(a.byte_items, b.byte_items);
  ASSERT_EQ(a.storage.size(), b.storage.size());
  for (const auto& [k, s] : a.storage) {
    const DcpStorage& o = b.storage_of(k.first, k.second);
    EXPECT_EQ(s.relative_path, o.relative_path);
    EXPECT_EQ(s.offset, o.offset);
    EXPECT_EQ(s.length, o.length);
  }
}

}  // namespace

TEST(DcpMetadata, WriteThenReadBothPropertyPaths) {
  const DcpMetadata m = sample();
  for (auto path : {TensorPropertiesPath::Checkpoint, TensorPropertiesPath::ShardedTensor}) {
    const std::string bytes = write_dcp_metadata(m, path);
    expect_equal(m, read_dcp_metadata(bytes, "round trip"));
  }
  EXPECT_TRUE(check_dcp_tiling(m).empty());
}

TEST(DcpMetadata, WriterEmitsTheSpecOpcodes) {
  const std::string b = write_dcp_metadata(sample());
  const std::string meta = "torch.distributed.checkpoint.metadata";
  // §2.5.3: Metadata via GLOBAL + EMPTY_TUPLE + NEWOBJ, then its state dict.
  const std::string head =
      B("\x80\x02") + "c" + meta + "\nMetadata\n)\x81}(X" + B("\x13\0\0\0") + "state_dict_metadata";
  EXPECT_EQ(b.substr(0, head.size()), head);
  // TensorProperties: NEWOBJ, then the 5-tuple state and BUILD.
  EXPECT_NE(b.find("c" + meta + "\nTensorProperties\n)\x81(ctorch\nbfloat16\nctorch\nstrided\n\x89" "c" + meta +
                   "\n_MEM_FORMAT_ENCODING\n" + B("K\x00\x85R\x89tb")),
            std::string::npos);
  // BytesStorageMetadata: no state, no BUILD (the next thing is SETITEMS's key or 'u').
  const size_t bsm = b.find("c" + meta + "\nBytesStorageMetadata\n)\x81");
  ASSERT_NE(bsm, std::string::npos);
  EXPECT_NE(b[bsm + meta.size() + 25], 'b');
  // A byte item's MetadataIndex has offset None.
  EXPECT_NE(b.find(std::string("X\x06") + B("\0\0\0") + "offsetNX" + B("\x05\0\0\0") + "indexN"), std::string::npos);
  // The offset beyond 4 GiB as LONG1.
  EXPECT_NE(b.find(B("\x8a\x05\x07\x00\x00\x00\x05")), std::string::npos);
  // A lone item is SETITEM (CPython batches two or more as MARK ... SETITEMS).
  DcpMetadata one;
  one.tensors["x"] = {DType::F32, {2}, {{{0}, {2}}}};
  one.storage[{"x", {0}}] = {"__0_0.distcp", 0, 10};
  const std::string o = write_dcp_metadata(one);
  EXPECT_NE(o.find(std::string("X") + B("\x13\0\0\0") + "state_dict_metadata}X" + B("\x01\0\0\0") + "x"),
            std::string::npos);
  // ...sizes Size(...), chunk SETITEMS BUILD, APPEND (one chunk), tensor SETITEMS BUILD, SETITEM.
  EXPECT_NE(o.find("\x85Rubaubs"), std::string::npos);
  // The end: storage_meta None, version "1.0.0", SETITEMS, BUILD, STOP.
  const std::string tail = "X" + B("\x0c\0\0\0") + "storage_metaNX" + B("\x07\0\0\0") + "versionX" +
                           B("\x05\0\0\0") + "1.0.0ub.";
  EXPECT_EQ(b.substr(b.size() - tail.size()), tail);
  // The old module path on request.
  const std::string s = write_dcp_metadata(sample(), TensorPropertiesPath::ShardedTensor);
  EXPECT_NE(s.find("ctorch.distributed._shard.sharded_tensor.metadata\nTensorProperties\n"), std::string::npos);
  EXPECT_NE(s.find("ctorch.distributed._shard.sharded_tensor.metadata\nMEM_FORMAT_ENCODING\n"), std::string::npos);
}

TEST(DcpMetadata, ReadsTheGoldenCheckpointFromTorch) {
  const json e = json::parse(read_text_file(kGolden / "expected.json"))["dcp"];
  EXPECT_EQ(e["metadata_protocol"].get<int>(), 4);  // plain pickle.dump with CPython 3.11
  EXPECT_EQ(e["properties_state_len"].get<int>(), 6);  // torch 2.15 added strides
  const DcpMetadata m = read_dcp_metadata(read_text_file(kGolden / "dcp/.metadata"), "golden .metadata");
  expect_same(m, e);
  EXPECT_TRUE(check_dcp_tiling(m).empty());
  // Every tensor item, read through the archive reader.
  File f(kGolden / "dcp/__0_0.distcp", File::Mode::Read);
  const auto& a = m.tensors.at("a");
  const DcpStorage& sa = m.storage_of("a", a.chunks[0].offsets);
  const TorchTensorItem ta = read_torch_tensor_item(f, sa.offset, sa.length, "a");
  EXPECT_EQ(ta.dtype, DType::BF16);
  EXPECT_EQ(ta.shape, (Shape{4, 3}));
  EXPECT_EQ((ta.data_offset - sa.offset) % 64, 0u);
  std::vector<uint16_t> va(12);
  f.pread_exact(va.data(), 24, ta.data_offset);
  for (size_t k = 0; k < 12; ++k) EXPECT_EQ(bf16_to_f32(va[k]), static_cast<float>(k));
  const DcpStorage& sb = m.storage_of("b", {0});
  const TorchTensorItem tb = read_torch_tensor_item(f, sb.offset, sb.length, "b");
  std::vector<float> vb(5);
  f.pread_exact(vb.data(), 20, tb.data_offset);
  for (size_t k = 0; k < 5; ++k) EXPECT_EQ(vb[k], 0.25f * static_cast<float>(k));
  const DcpStorage& se = m.storage_of("e", {0});
  const TorchTensorItem te = read_torch_tensor_item(f, se.offset, se.length, "e");
  EXPECT_EQ(te.shape, (Shape{0}));
  EXPECT_EQ(te.storage_bytes, 0u);
  // The bytes item is torch.save([empty uint8]).
  const DcpStorage& so = m.storage_of("layer._extra_state/shard_0_1", {});
  EXPECT_EQ(read_torch_archive_record(f, so.offset, so.length, "data/0", "obj"), "");
}

TEST(DcpMetadata, ReadsMegatronStyleMetadata) {
  // Several chunks, the old _shard TensorProperties, all_local_plans with
  // SavePlan / WriteItem / enums / _StoragePrefix, and mcore_data.
  const json e = json::parse(read_text_file(kGolden / "expected.json"))["megatron_like"];
  const DcpMetadata m = read_dcp_metadata(read_text_file(kGolden / "megatron_like.metadata"), "megatron_like");
  expect_same(m, e);
  EXPECT_EQ(m.storage_of("decoder.w", {0, 3}).offset, (uint64_t{5} << 32) + 17);
  EXPECT_TRUE(check_dcp_tiling(m).empty());
}

TEST(DcpMetadata, RefusesStreamTransforms) {
  expect_error_contains([] { read_dcp_metadata(read_text_file(kGolden / "transform.metadata"), "t.metadata"); },
                        "t.metadata: storage entry of 'x' is stored through stream transforms");
}

TEST(DcpMetadata, RefusesMaliciousGlobals) {
  const std::string evil = B("\x80\x02" "cos\nsystem\nX\x02\0\0\0ls\x85R.");
  expect_error_contains([&] { read_dcp_metadata(evil, "ckpt/.metadata"); },
                        "ckpt/.metadata: refuses to load global 'os.system' at byte 2 (only known checkpoint classes "
                        "are allowed)");
  // Hidden inside an otherwise valid Metadata: a planner attribute calling eval.
  std::string good = write_dcp_metadata(sample());
  const std::string tail = "ub.";
  ASSERT_EQ(good.substr(good.size() - 3), tail);
  good.resize(good.size() - 3);
  good += "X" + B("\x0f\0\0\0") + "all_local_plans" + "cbuiltins\neval\nX" + B("\x01\0\0\0") + "1\x85R" + "ub.";
  expect_error_contains([&] { read_dcp_metadata(good, "m"); }, "refuses to load global 'builtins.eval'");
  // Not a Metadata at all.
  expect_error_contains([] { read_dcp_metadata(B("\x80\x02K\x01."), "m"); }, "holds int 1 instead of a DCP Metadata");
}

TEST(DcpMetadata, StorageOfAMissingEntryNamesIt) {
  const DcpMetadata m = sample();
  expect_error_contains([&] { m.storage_of("decoder.w", {2, 0}); }, "'decoder.w' has no storage entry for the chunk at offsets [2, 0]");
  expect_error_contains([&] { m.storage_of("nope", {}); }, "'nope' has no storage entry");
}

TEST(DcpMetadata, TilingFindsGapsOverlapsAndStrays) {
  auto one = [](std::vector<DcpChunk> chunks, Shape size = {4, 6}) {
    DcpMetadata m;
    m.tensors["w"] = {DType::BF16, size, chunks};
    for (const auto& c : chunks) m.storage[{"w", c.offsets}] = {"f", 0, 1};
    return m;
  };
  auto contains = [](const std::vector<std::string>& p, const std::string& needle) {
    for (const auto& s : p)
      if (s.find(needle) != std::string::npos) return true;
    return false;
  };
  EXPECT_TRUE(check_dcp_tiling(one({{{0, 0}, {4, 3}}, {{0, 3}, {4, 3}}})).empty());
  EXPECT_TRUE(check_dcp_tiling(one({{{0, 0}, {2, 6}}, {{2, 0}, {1, 6}}, {{3, 0}, {1, 2}}, {{3, 2}, {1, 4}}})).empty());
  auto gap = check_dcp_tiling(one({{{0, 0}, {4, 3}}, {{0, 3}, {3, 3}}}));
  ASSERT_EQ(gap.size(), 1u);
  EXPECT_TRUE(contains(gap, "w: chunks cover 21 of the 24 elements of shape [4, 6] (a gap)")) << gap[0];
  auto overlap = check_dcp_tiling(one({{{0, 0}, {4, 4}}, {{0, 3}, {4, 3}}}));
  EXPECT_TRUE(contains(overlap, "chunks offsets [0, 0] sizes [4, 4] and offsets [0, 3] sizes [4, 3] overlap"))
      << (overlap.empty() ? "" : overlap[0]);
  // Overlap with the volume still equal: one box twice plus a hole.
  auto twice = check_dcp_tiling(one({{{0, 0}, {2, 6}}, {{0, 0}, {2, 6}}}));
  EXPECT_TRUE(contains(twice, "overlap"));
  auto oob = check_dcp_tiling(one({{{0, 0}, {4, 3}}, {{0, 4}, {4, 3}}}));
  EXPECT_TRUE(contains(oob, "chunk offsets [0, 4] sizes [4, 3] is out of bounds of shape [4, 6]"));
  auto rank = check_dcp_tiling(one({{{0}, {24}}}));
  EXPECT_TRUE(contains(rank, "does not have the rank"));
  auto none = check_dcp_tiling(one({}));
  EXPECT_TRUE(contains(none, "has no chunks"));
  DcpMetadata m = one({{{0, 0}, {4, 6}}});
  m.storage.clear();
  m.byte_items.insert("obj");
  auto missing = check_dcp_tiling(m);
  EXPECT_TRUE(contains(missing, "w: chunk offsets [0, 0] sizes [4, 6] has no storage entry"));
  EXPECT_TRUE(contains(missing, "obj: object has no storage entry"));
  // Empty tensors and scalars tile trivially.
  EXPECT_TRUE(check_dcp_tiling(one({{{0}, {0}}}, {0})).empty());
  EXPECT_TRUE(check_dcp_tiling(one({{{}, {}}}, {})).empty());
}

// Writes DCP checkpoints for tests/fixtures/make_torch_golden.py to load with
// real torch: tensor items at 4 KiB-aligned offsets with gaps, a bytes item.
TEST(TorchGoldenEmit, Dcp) {
  const char* out = std::getenv("MB_GOLDEN_OUT");
  if (!out) GTEST_SKIP() << "MB_GOLDEN_OUT not set";
  struct T {
    std::string key;
    DType dtype;
    Shape size;
    std::vector<DcpChunk> chunks;
  };
  const std::vector<T> ts = {
      {"decoder.w", DType::BF16, {4, 6}, {{{0, 0}, {4, 3}}, {{0, 3}, {4, 3}}}},
      {"decoder.experts", DType::F32, {3, 2, 2}, {{{0, 0, 0}, {1, 2, 2}}, {{1, 0, 0}, {2, 2, 2}}}},
      {"decoder.b", DType::F32, {5}, {{{0}, {5}}}},
      {"decoder.i", DType::I64, {3}, {{{0}, {3}}}},
      {"decoder.empty", DType::U8, {0}, {{{0}, {0}}}},
  };
  const std::string obj = "decoder.w._extra_state/shard_0_1";
  for (auto path : {TensorPropertiesPath::Checkpoint, TensorPropertiesPath::ShardedTensor}) {
    const fs::path dir = fs::path(out) / (path == TensorPropertiesPath::Checkpoint ? "cxx_dcp" : "cxx_dcp_shard");
    fs::create_directories(dir);
    DcpMetadata m;
    json e = {{"tensors", json::object()}, {"objects", {obj}}, {"storage", json::array()}};
    File f(dir / "__0_0.distcp", File::Mode::Write);
    uint64_t pos = 0;
    {
      pickle::Writer w;
      w.empty_list();
      pickle_tensor(w, "0", DType::U8, {0});
      w.append();
      const std::string a = torch_save_archive(w.finish(), {std::string()});
      f.pwrite_exact(a.data(), a.size(), pos);
      m.byte_items.insert(obj);
      m.storage[{obj, {}}] = {"__0_0.distcp", pos, a.size()};
      e["storage"].push_back({obj, nullptr, "__0_0.distcp", pos, a.size()});
      pos = (pos + a.size() + 4095) / 4096 * 4096;
    }
    for (const T& t : ts) {
      m.tensors[t.key] = {t.dtype, t.size, t.chunks};
      json chunks = json::array();
      for (const DcpChunk& c : t.chunks) {
        // The chunk's elements of the global pattern (element k = k).
        TorchSaveTensorWriter w(f, pos, t.dtype, c.sizes);
        const size_t es = dtype_size(t.dtype);
        std::vector<uint64_t> idx(c.sizes.size(), 0);
        for (uint64_t n = 0; n < numel(c.sizes); ++n) {
          uint64_t g = 0;
          for (size_t d = 0; d < idx.size(); ++d) g = g * t.size[d] + c.offsets[d] + idx[d];
          char buf[8] = {};
          switch (t.dtype) {
            case DType::BF16: {
              const uint16_t v = f32_to_bf16(static_cast<float>(g));
              std::memcpy(buf, &v, 2);
              break;
            }
            case DType::F32: {
              const auto v = static_cast<float>(g);
              std::memcpy(buf, &v, 4);
              break;
            }
            case DType::I64: {
              const auto v = static_cast<int64_t>(g);
              std::memcpy(buf, &v, 8);
              break;
            }
            default: break;
          }
          w.write(buf, es);
          for (size_t d = idx.size(); d-- > 0;) {
            if (++idx[d] < c.sizes[d]) break;
            idx[d] = 0;
          }
        }
        const uint64_t len = w.finish();
        m.storage[{t.key, c.offsets}] = {"__0_0.distcp", pos, len};
        e["storage"].push_back({t.key, c.offsets, "__0_0.distcp", pos, len});
        chunks.push_back({c.offsets, c.sizes});
        pos = (pos + len + 4095) / 4096 * 4096 + 64;  // gaps
      }
      e["tensors"][t.key] = {{"dtype", dtype_torch_name(t.dtype)}, {"size", t.size}, {"chunks", chunks}};
    }
    ASSERT_TRUE(check_dcp_tiling(m).empty());
    write_bytes(dir / ".metadata", write_dcp_metadata(m, path));
    write_bytes(dir / "expected.json", e.dump());
  }
}
