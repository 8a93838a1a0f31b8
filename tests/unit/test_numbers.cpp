// Numbers that must not lie (issue 11): verify's comparison of non-finite
// values, narrowing casts that overflow to Inf, and the range checks of
// numeric options. Every expectation here is hand-computed from the values
// written in the test, not asked of the code under test.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "checkpoint/manifest_check.hpp"
#include "core/dtype.hpp"
#include "core/error.hpp"
#include "engine/copy_engine.hpp"
#include "engine/tensor_compare.hpp"
#include "formats/safetensors/safetensors_header.hpp"
#include "layout/parallel_layout.hpp"
#include "pipelines/export_pipeline.hpp"
#include "pipelines/job_config.hpp"
#include "test_util.hpp"
#include "transforms/cast_overflow.hpp"

using namespace mb;

namespace {
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  convert_elements(DType::F32, v.data(), DType::BF16, out.data(), v.size());
  return out;
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}
}  // namespace

// ---------------------------------------------------------------- verify

TEST(VerifyNonFinite, InfAgainstFiniteDiffersWhateverTheTolerance) {
  // |Inf - 1e30| <= 0 + 1e9·|1e30| is false, but |1e30 - Inf| <= rtol·|Inf|
  // holds: the old test passed an Inf on the B side through any rtol.
  const std::vector<float> a{1e30f, 2.0f, 3.0f};
  const std::vector<float> b{kInf, 2.0f, 3.0f};
  TensorCompare cmp(DType::F32, DType::F32, 0.0, 1e9);
  cmp.add(a.data(), b.data(), a.size(), 0);
  EXPECT_EQ(cmp.differing(), 1u);
  EXPECT_EQ(cmp.differing_nonfinite(), 1u);
  const std::string d = cmp.describe({3});
  EXPECT_TRUE(contains(d, "max abs diff inf")) << d;
  EXPECT_TRUE(contains(d, "Inf against another value")) << d;
  EXPECT_TRUE(contains(d, "first at [0]")) << d;
}

TEST(VerifyNonFinite, EveryKindOfNonFiniteMismatchCounts) {
  // index: 0 equal, 1 NaN vs 2, 2 Inf vs 1e30, 3 -Inf vs +Inf, 4 Inf vs Inf
  // (equal), 5 NaN vs NaN (equal with tolerances), 6 finite within atol, 7 5 vs NaN.
  const std::vector<float> a{1.0f, kNaN, kInf, -kInf, kInf, kNaN, 5.0f, 5.0f};
  const std::vector<float> b{1.0f, 2.0f, 1e30f, kInf, kInf, kNaN, 5.0005f, kNaN};
  TensorCompare cmp(DType::F32, DType::F32, 1e-3, 1e6);
  cmp.add(a.data(), b.data(), a.size(), 0);
  EXPECT_EQ(cmp.differing(), 4u);
  EXPECT_EQ(cmp.differing_nonfinite(), 4u);
  const std::string d = cmp.describe({2, 4});
  EXPECT_TRUE(contains(d, "4 of 8 elements differ")) << d;
  EXPECT_TRUE(contains(d, "max abs diff nan")) << d;
  EXPECT_TRUE(contains(d, "2 pairs NaN against a value")) << d;
  EXPECT_TRUE(contains(d, "2 pairs Inf against another value")) << d;
  EXPECT_TRUE(contains(d, "first at [0, 1]")) << d;
  EXPECT_FALSE(contains(d, "max abs diff 0,")) << d;
}

TEST(VerifyNonFinite, ANaNDifferenceNeverPrintsMaxAbsDiffZero) {
  // One NaN against a number and nothing else: the old report said
  // "max abs diff 0" because NaN - x was skipped.
  const std::vector<float> a{0.5f, kNaN};
  const std::vector<float> b{0.5f, 0.25f};
  TensorCompare cmp(DType::F32, DType::F32, 1e-2, 1e-2);
  cmp.add(a.data(), b.data(), a.size(), 10);
  EXPECT_EQ(cmp.differing(), 1u);
  const std::string d = cmp.describe({12});
  EXPECT_TRUE(contains(d, "max abs diff nan (1 pair NaN against a value)")) << d;
  EXPECT_TRUE(contains(d, "first at [11]")) << d;
}

TEST(VerifyNonFinite, BitExactModeNamesNaNAndKeepsTheFiniteMaximum) {
  const auto a = to_bf16({1.0f, kNaN, 2.0f});
  const auto b = to_bf16({1.5f, 1.0f, 2.0f});
  TensorCompare cmp(DType::BF16, DType::BF16, 0, 0);
  cmp.add(a.data(), b.data(), a.size(), 0);
  EXPECT_EQ(cmp.differing(), 2u);
  const std::string d = cmp.describe({3});
  EXPECT_TRUE(contains(d, "max abs diff nan")) << d;
  EXPECT_TRUE(contains(d, "finite pairs differ by at most 0.5")) << d;
}

TEST(VerifyNonFinite, MixedDtypesCompareInfAcrossBf16AndF32) {
  const auto a = to_bf16({kInf, -kInf, 3.0f});
  const std::vector<float> b{kInf, kInf, 3.0f};
  TensorCompare cmp(DType::BF16, DType::F32, 0.5, 0.5);
  cmp.add(a.data(), b.data(), 3, 0);
  EXPECT_EQ(cmp.differing(), 1u);  // -Inf vs +Inf only
  EXPECT_TRUE(contains(cmp.describe({3}), "first at [1] (A -inf, B inf)")) << cmp.describe({3});
}

TEST(VerifyNonFinite, FiniteDifferencesKeepTheirPlainReport) {
  const std::vector<float> a{1.0f, 2.0f};
  const std::vector<float> b{1.0f, 2.25f};
  TensorCompare cmp(DType::F32, DType::F32, 0.1, 0.0);
  cmp.add(a.data(), b.data(), 2, 0);
  EXPECT_EQ(cmp.differing(), 1u);
  EXPECT_EQ(cmp.differing_nonfinite(), 0u);
  EXPECT_TRUE(contains(cmp.describe({2}), "max abs diff 0.25, first at [1]")) << cmp.describe({2});
}

// ---------------------------------------------------------------- casts

TEST(CastOverflow, WhichCastsCanOverflow) {
  EXPECT_TRUE(cast_can_overflow(DType::BF16, DType::F16));
  EXPECT_TRUE(cast_can_overflow(DType::F32, DType::F16));
  EXPECT_TRUE(cast_can_overflow(DType::F32, DType::BF16));  // just under FLT_MAX rounds up
  EXPECT_TRUE(cast_can_overflow(DType::F64, DType::F32));
  EXPECT_FALSE(cast_can_overflow(DType::F16, DType::BF16));
  EXPECT_FALSE(cast_can_overflow(DType::BF16, DType::F32));
  EXPECT_FALSE(cast_can_overflow(DType::BF16, DType::BF16));
}

TEST(CastOverflow, CountsFiniteValuesThatBecomeInf) {
  // bf16 99840 and -70000 exceed fp16's 65504; Inf stays Inf (not counted);
  // 65280 (bf16 has no 65504: it rounds that to 65536) fits; NaN stays NaN.
  const auto src = to_bf16({1.0f, 99840.0f, -70000.0f, kInf, 65280.0f, kNaN});
  std::vector<uint16_t> dst(src.size());
  convert_elements(DType::BF16, src.data(), DType::F16, dst.data(), src.size());
  uint64_t first = 0;
  double value = 0;
  EXPECT_EQ(count_cast_overflow(DType::BF16, src.data(), DType::F16, dst.data(), src.size(), &first,
                                &value),
            2u);
  EXPECT_EQ(first, 1u);
  EXPECT_EQ(value, 99840.0);
  EXPECT_EQ(count_infinite(DType::F16, dst.data(), dst.size()), 3u);
  EXPECT_EQ(count_infinite(DType::BF16, src.data(), src.size()), 1u);
}

TEST(CastOverflow, F32JustUnderMaxRoundsToInfInBf16) {
  const std::vector<float> src{std::numeric_limits<float>::max(), 1.0f};
  std::vector<uint16_t> dst(2);
  convert_elements(DType::F32, src.data(), DType::BF16, dst.data(), 2);
  EXPECT_EQ(dst[0], 0x7F80);  // bf16 +Inf
  EXPECT_EQ(count_cast_overflow(DType::F32, src.data(), DType::BF16, dst.data(), 2), 1u);
}

namespace {
class VecSource : public RowSource {
 public:
  std::vector<uint16_t> data;  // one source tensor, `cols` wide
  uint64_t cols = 0;
  void read(uint32_t, uint64_t row0, uint64_t rows, uint64_t col0, uint64_t n, void* dst,
            uint64_t stride) override {
    for (uint64_t r = 0; r < rows; ++r)
      std::memcpy(static_cast<char*>(dst) + r * stride, &data[(row0 + r) * cols + col0], n * 2);
  }
  uint64_t bytes_read() const override { return 0; }
};
class VecSink : public RowSink {
 public:
  std::vector<uint16_t> out;
  uint64_t cols = 0;
  void write(uint64_t, uint64_t rows, const void* d) override {
    const auto* p = static_cast<const uint16_t*>(d);
    out.insert(out.end(), p, p + rows * cols);
  }
};
}  // namespace

TEST(CastOverflow, TheEngineRefusesAnOverflowingCastUnlessAllowed) {
  // 64 rows x 4 cols; two values overflow fp16, in rows 40 and 60.
  VecSource src;
  src.cols = 4;
  std::vector<float> values(256, 0.5f);
  values[161] = 99840.0f;  // row 40, col 1
  values[243] = -1.0e6f;   // row 60, col 3
  src.data = to_bf16(values);
  std::vector<Segment> segs{{0, 0, 0, 0, 0, 64, 4}};
  CopyJob job{"model.layers.0.mlp.down_proj.weight",
              &segs,
              64,
              4,
              DType::BF16,
              DType::F16,
              ElementOp::None};
  {
    CopyEngine engine(4096);  // blocks of 16 rows: the overflow is found in a later block
    VecSink sink;
    sink.cols = 4;
    try {
      engine.run(job, src, sink);
      FAIL() << "an overflowing cast was accepted";
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_TRUE(contains(m, "2 element(s) overflow to Inf when cast from BF16 to F16")) << m;
      EXPECT_TRUE(contains(m, "e.g. 99840 at element 161")) << m;
      EXPECT_TRUE(contains(m, "--allow-overflow")) << m;
    }
    // Nothing from the overflowing block on reached the sink.
    EXPECT_LE(sink.out.size(), 40u * 4u);
  }
  {
    CopyEngine engine(4096);
    engine.allow_overflow(true);
    VecSink sink;
    sink.cols = 4;
    engine.run(job, src, sink);
    ASSERT_EQ(sink.out.size(), 256u);
    EXPECT_EQ(sink.out[161], 0x7C00);  // fp16 +Inf
    EXPECT_EQ(sink.out[243], 0xFC00);  // fp16 -Inf
    EXPECT_EQ(sink.out[0], 0x3800);    // fp16 0.5
  }
}

// ---------------------------------------------------------------- ranges

TEST(OptionRanges, SizesOutsideUint64AreRefused) {
  EXPECT_EQ(parse_size("5GB"), 5000000000ull);
  EXPECT_EQ(parse_size("4GiB"), 4ull << 30);
  for (const char* bad :
       {"99999999999999999999GB", "inf", "1e300", "1e-30", "0.5B", "nan", "-1GB", "0"}) {
    try {
      (void)parse_size(bad);
      ADD_FAILURE() << bad << " was accepted";
    } catch (const Error& e) {
      EXPECT_TRUE(contains(e.what(), bad)) << e.what();
    }
  }
  try {
    (void)parse_size("99999999999999999999GB");
  } catch (const Error& e) {
    EXPECT_TRUE(contains(e.what(), "out of range")) << e.what();
  }
}

TEST(OptionRanges, BufferSizesCannotOverflowTheShift) {
  EXPECT_EQ(buffer_mb_to_bytes(256, "--buffer-mb"), 256ull << 20);
  EXPECT_EQ(buffer_mb_to_bytes(kMaxBufferMb, "--buffer-mb"), kMaxBufferMb << 20);
  for (uint64_t bad : {uint64_t{0}, kMaxBufferMb + 1, uint64_t{1} << 44, ~uint64_t{0}}) {
    try {
      (void)buffer_mb_to_bytes(bad, "--buffer-mb");
      ADD_FAILURE() << bad << " was accepted";
    } catch (const Error& e) {
      EXPECT_TRUE(contains(e.what(), fmt::format("--buffer-mb {} is out of range", bad)))
          << e.what();
    }
  }
}

TEST(OptionRanges, StageLayerCountsThatWouldWrapAroundAreRefused) {
  ParallelLayout l;
  l.pp = 2;
  l.first_stage_layers = ~uint64_t{0};  // + 1 would wrap to 0
  l.last_stage_layers = 1;
  try {
    (void)stage_layers(l, 8);
    FAIL() << "accepted";
  } catch (const Error& e) {
    EXPECT_TRUE(contains(e.what(), "exceed num_layers (8)")) << e.what();
  }
}

// ---------------------------------------------------------------- messages

TEST(Messages, ADuplicatedHeaderKeyIsNamedAsSuch) {
  // Two entries named "a"; nlohmann keeps the second, which used to surface
  // as a gap before the unrelated tensor "b".
  const std::string h = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                        R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},)"
                        R"("a":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})";
  try {
    (void)parse_safetensors_header(h, 8 + h.size() + 12, "x.safetensors");
    FAIL() << "accepted";
  } catch (const Error& e) {
    EXPECT_TRUE(contains(e.what(), "x.safetensors: the header lists 'a' twice")) << e.what();
  }
}

TEST(Messages, ANestedRepeatedKeyIsNotADuplicateTensor) {
  // "dtype" appears in every entry: only top-level keys are tensors.
  const std::string h = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                        R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})";
  EXPECT_EQ(parse_safetensors_header(h, 8 + h.size() + 8, "x").entries.size(), 2u);
}

TEST(Messages, CommitRefusesAFileShorterThanWritten) {
  TempDir d;
  write_bytes(d.path / "a.h5", std::string(10, 'x'));
  const nlohmann::json ok = nlohmann::json::array({{{"path", "a.h5"}, {"bytes", 10}}});
  EXPECT_NO_THROW(check_files_complete(d.path, ok));
  const nlohmann::json short_file = nlohmann::json::array({{{"path", "a.h5"}, {"bytes", 12}}});
  try {
    check_files_complete(d.path, short_file);
    FAIL() << "accepted";
  } catch (const Error& e) {
    EXPECT_TRUE(contains(e.what(), "a.h5 has 10 bytes at commit, but 12 were written")) << e.what();
  }
  const nlohmann::json missing = nlohmann::json::array({{{"path", "b.h5"}, {"bytes", 1}}});
  EXPECT_THROW(check_files_complete(d.path, missing), Error);
}

// ---------------------------------------------------------------- manifest

namespace {
const std::filesystem::path kDense =
    std::filesystem::path(MEGABRIDGE_SOURCE_DIR) / "tests/data/qwen35-dense-tiny";

std::string mismatch_after(const std::string& field, const nlohmann::json& value) {
  nlohmann::json raw = nlohmann::json::parse(read_text_file(kDense / "config.json"));
  raw["text_config"][field] = value;
  const ModelConfig m = parse_model_config(raw, "edited");
  return model_config_mismatch(m, read_hf_catalog(kDense), ExpertLayouts{});
}
}  // namespace

TEST(ManifestCheck, TheFixtureConfigMatchesItsTensors) {
  const ModelConfig m = load_model_config(kDense / "config.json");
  EXPECT_EQ(model_config_mismatch(m, read_hf_catalog(kDense), ExpertLayouts{}), "");
}

TEST(ManifestCheck, AnEditedFieldIsNamed) {
  // The fixture: hidden 64, 8 heads of 16 (2 KV heads), 8 layers, ffn 96, vocab 256.
  std::string p = mismatch_after("hidden_size", 128);
  EXPECT_TRUE(contains(p, "hidden_size = 128, but the recorded tensors have 64")) << p;
  p = mismatch_after("num_attention_heads", 4);
  EXPECT_TRUE(contains(p, "num_attention_heads = 4, but the recorded tensors have 8")) << p;
  p = mismatch_after("intermediate_size", 48);
  EXPECT_TRUE(contains(p, "intermediate_size = 48, but the recorded tensors have 96")) << p;
  p = mismatch_after("vocab_size", 512);
  EXPECT_TRUE(contains(p, "vocab_size = 512, but the recorded tensors have 256")) << p;
}
