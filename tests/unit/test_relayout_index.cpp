// The closed-form index math of relayout_index.hpp against the RowMaps of
// relayout.hpp, and the host/device conversions of dtype_convert.hpp against
// the CPU reference. Everything here runs on the CPU; the CUDA kernels use
// exactly these functions (tests/gpu checks the kernels themselves).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/dtype.hpp"
#include "core/dtype_convert.hpp"
#include "transforms/elementwise.hpp"
#include "transforms/relayout.hpp"
#include "transforms/relayout_index.hpp"

using namespace mb;

namespace {

// Per destination row: (source tensor, source row), from a RowMap.
std::vector<std::pair<uint32_t, uint64_t>> expand(const RowMap& m) {
  std::vector<std::pair<uint32_t, uint64_t>> out;
  for (const auto& r : m)
    for (uint64_t i = 0; i < r.rows; ++i) out.emplace_back(r.src, r.row0 + i);
  return out;
}

// Source runs placed at distinct offsets, so that a formula that forgets a
// run's start (or mixes tensors up) cannot pass by accident.
RowRun run(uint32_t src, uint64_t rows) {
  return {src, 1000 * (src + 1), rows};
}

template <typename Fn>
void expect_rows(const RowMap& map, const std::vector<RowRun>& runs, Fn origin,
                 const std::string& what) {
  const auto want = expand(map);
  for (uint64_t j = 0; j < want.size(); ++j) {
    const RowOrigin o = origin(j);
    ASSERT_LT(o.tensor, runs.size()) << what << " row " << j;
    const RowRun& r = runs[o.tensor];
    ASSERT_LT(o.row, r.rows) << what << " row " << j;
    ASSERT_EQ(r.src, want[j].first) << what << " row " << j;
    ASSERT_EQ(r.row0 + o.row, want[j].second) << what << " row " << j;
  }
}

const uint64_t kParts[] = {1, 2, 4, 8};

}  // namespace

TEST(RelayoutIndex, QkvgMatchesRowMap) {
  struct G {
    uint64_t heads, kv_heads, head_dim;
  };
  // ng < T (2 groups on 4 or 8 ranks, as in 397B), hpg = 1, several head dims.
  const G geoms[] = {{4, 2, 1}, {4, 2, 3},  {8, 2, 4},   {16, 2, 8}, {32, 2, 2}, {6, 3, 2},
                     {8, 8, 2}, {24, 4, 5}, {16, 4, 16}, {2, 1, 7},  {12, 1, 4}, {64, 8, 2}};
  int checked = 0;
  for (const G& g : geoms) {
    const std::vector<RowRun> runs{run(0, 2 * g.heads * g.head_dim),
                                   run(1, g.kv_heads * g.head_dim),
                                   run(2, g.kv_heads * g.head_dim)};
    const RowMap full = qkvg_full(runs[0], runs[1], runs[2], g.heads, g.kv_heads, g.head_dim);
    ASSERT_EQ(total_rows(full), qkvg_rows(g.heads, g.kv_heads, g.head_dim));
    expect_rows(
        full, runs, [&](uint64_t r) { return qkvg_origin(r, g.heads, g.kv_heads, g.head_dim); },
        "qkvg full");
    for (uint64_t T : kParts) {
      if (g.heads % T != 0 || total_rows(full) % T != 0) continue;
      for (uint64_t t = 0; t < T; ++t) {
        expect_rows(
            chunk_rows(full, T, t), runs,
            [&](uint64_t j) { return qkvg_local_origin(j, g.heads, g.kv_heads, g.head_dim, T, t); },
            "qkvg local");
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 100);
}

TEST(RelayoutIndex, GdnInProjAndConvMatchRowMap) {
  struct G {
    uint64_t key_heads, value_heads, key_dim_per_head, value_dim_per_head;
  };
  // vpg = value_heads / key_heads of 1, 2, 3 and 4; Qwen3.5 has 16 key heads,
  // 32 or 64 value heads, 128-dim heads (scaled down here).
  const G geoms[] = {{1, 1, 2, 2},   {2, 4, 3, 2},   {4, 8, 2, 3},  {8, 16, 4, 4}, {8, 8, 1, 5},
                     {16, 32, 2, 2}, {16, 64, 1, 2}, {4, 12, 2, 1}, {2, 8, 5, 3}};
  int checked = 0;
  for (const G& g : geoms) {
    const uint64_t Kd = g.key_heads * g.key_dim_per_head, Vd = g.value_heads * g.value_dim_per_head;
    const uint64_t nv = g.value_heads;
    const std::vector<RowRun> in{run(0, 2 * Kd + Vd), run(1, Vd), run(2, nv), run(3, nv)};
    const std::vector<RowRun> conv{run(0, 2 * Kd + Vd)};
    for (uint64_t T : kParts) {
      if (g.key_heads % T != 0 || g.value_heads % T != 0) continue;
      for (uint64_t t = 0; t < T; ++t) {
        const RowMap m = gdn_in_proj_local(in[0], in[1], in[2], in[3], Kd, Vd, T, t);
        ASSERT_EQ(total_rows(m), gdn_in_proj_local_rows(Kd, Vd, nv, T));
        expect_rows(
            m, in, [&](uint64_t j) { return gdn_in_proj_origin(j, Kd, Vd, nv, T, t); },
            "gdn in_proj");
        expect_rows(
            gdn_conv_local(conv[0], Kd, Vd, T, t), conv,
            [&](uint64_t j) { return gdn_conv_origin(j, Kd, Vd, T, t); }, "gdn conv");
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 40);
}

TEST(RelayoutIndex, GluMatchesRowMap) {
  for (uint64_t ffn : {1, 2, 8, 24, 64, 96, 512}) {
    const std::vector<RowRun> runs{run(0, ffn), run(1, ffn)};
    for (uint64_t N : kParts) {
      if (ffn % N != 0) continue;
      for (uint64_t t = 0; t < N; ++t)
        expect_rows(
            glu_local(runs[0], runs[1], N, t), runs,
            [&](uint64_t j) { return glu_origin(j, ffn, N, t); }, "glu");
    }
  }
}

TEST(RelayoutIndex, VisionQkvMatchesRowMap) {
  for (uint64_t heads : {1, 2, 4, 8, 16}) {
    for (uint64_t hd : {1, 3, 8, 72}) {
      const std::vector<RowRun> runs{run(0, 3 * heads * hd)};
      const RowMap full = vision_qkv_full(runs[0], heads, hd);
      expect_rows(
          full, runs, [&](uint64_t r) { return vision_qkv_origin(r, heads, hd); }, "vision full");
      for (uint64_t T : kParts) {
        if (heads % T != 0) continue;
        for (uint64_t t = 0; t < T; ++t)
          expect_rows(
              chunk_rows(full, T, t), runs,
              [&](uint64_t j) { return vision_qkv_local_origin(j, heads, hd, T, t); },
              "vision local");
      }
    }
  }
}

TEST(RelayoutIndex, ExpertSlabsMatchRowMaps) {
  // As the planner does it (import_plan.cpp): expert g of a fused gate_up_proj
  // [E, 2I, H] is rows [g·2I, (g+1)·2I) of the 2-D view, halved into gate and
  // up, then GLU over ETP; down_proj [E, H, I] is rows [g·H, (g+1)·H) with a
  // column window per ETP rank.
  for (uint64_t E : {1, 4, 8}) {
    for (uint64_t I : {2, 8, 24}) {
      for (uint64_t H : {1, 3, 16}) {
        for (uint64_t N : kParts) {
          if (I % N != 0) continue;
          for (uint64_t g = 0; g < E; ++g) {
            for (uint64_t s = 0; s < N; ++s) {
              const RowRun slab{7, g * 2 * I, 2 * I};
              const RowMap fc1 = glu_local(sub_run(slab, 0, I), sub_run(slab, I, I), N, s);
              const auto want = expand(fc1);
              ASSERT_EQ(want.size(), 2 * I / N);
              for (uint64_t j = 0; j < want.size(); ++j) {
                ASSERT_EQ(expert_fc1_slab_row(g, j, I, N, s), want[j].second)
                    << "E" << E << " I" << I << " N" << N << " g" << g << " s" << s << " j" << j;
                ASSERT_LT(want[j].second, E * 2 * I);
              }
              const uint64_t ncols = I / N;
              const auto segs = row_map_segments({RowRun{9, g * H, H}}, s * ncols, ncols);
              uint64_t seen = 0;
              for (const Segment& sg : segs)
                for (uint64_t r = 0; r < sg.rows; ++r)
                  for (uint64_t c = 0; c < sg.cols; ++c) {
                    const ElemOrigin o =
                        expert_fc2_slab_origin(g, sg.dst_row + r, sg.dst_col + c, H, I, N, s);
                    ASSERT_EQ(o.row, sg.src_row + r);
                    ASSERT_EQ(o.col, sg.src_col + c);
                    ++seen;
                  }
              ASSERT_EQ(seen, H * ncols);
            }
          }
        }
      }
    }
  }
}

// ---- conversions --------------------------------------------------------------

namespace {
// The conversions exactly as lib/core/dtype.cpp had them before they moved to
// dtype_convert.hpp, kept here as a frozen reference.
namespace frozen {
uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}
float bf16_to_f32(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
float f16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {
      int e = -1;
      do {
        ++e;
        man <<= 1;
      } while ((man & 0x400u) == 0);
      u = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 0x1f) {
    u = sign | 0x7f800000u | (man << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);
  if (abs < 0x38800000u) {
    if (abs < 0x33000000u) return sign;
    uint32_t e = abs >> 23;
    uint32_t m = (abs & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e;
    uint32_t q = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return static_cast<uint16_t>(sign | q);
  }
  uint32_t rounding = 0xfffu + ((abs >> 13) & 1u);
  abs += rounding;
  return static_cast<uint16_t>(sign | ((abs - (112u << 23)) >> 13));
}

// convert_elements as dtype.cpp had it (per element, through fp64 and back to
// fp32; `volatile` pins the hardware conversions the compiled code performed).
double load_f64(DType t, const unsigned char* p) {
  switch (t) {
    case DType::F64: {
      double d;
      std::memcpy(&d, p, 8);
      return d;
    }
    case DType::F32: {
      float f;
      std::memcpy(&f, p, 4);
      volatile double d = f;
      return d;
    }
    case DType::BF16: {
      uint16_t h;
      std::memcpy(&h, p, 2);
      volatile double d = frozen::bf16_to_f32(h);
      return d;
    }
    default: {
      uint16_t h;
      std::memcpy(&h, p, 2);
      volatile double d = frozen::f16_to_f32(h);
      return d;
    }
  }
}
void store(DType t, unsigned char* p, double v, float vf) {
  switch (t) {
    case DType::F64:
      std::memcpy(p, &v, 8);
      break;
    case DType::F32:
      std::memcpy(p, &vf, 4);
      break;
    case DType::BF16: {
      uint16_t h = frozen::f32_to_bf16(vf);
      std::memcpy(p, &h, 2);
      break;
    }
    default: {
      uint16_t h = frozen::f32_to_f16(vf);
      std::memcpy(p, &h, 2);
      break;
    }
  }
}
void convert_elements(DType from, const void* src, DType to, void* dst, size_t n) {
  const auto* s = static_cast<const unsigned char*>(src);
  auto* d = static_cast<unsigned char*>(dst);
  const size_t ss = dtype_size(from), ds = dtype_size(to);
  if (from == to) {
    std::memmove(dst, src, n * ss);
    return;
  }
  if (from == DType::BF16 && to == DType::F32) {
    for (size_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, s + 2 * i, 2);
      float f = frozen::bf16_to_f32(h);
      std::memcpy(d + 4 * i, &f, 4);
    }
    return;
  }
  if (from == DType::F32 && to == DType::BF16) {
    for (size_t i = 0; i < n; ++i) {
      float f;
      std::memcpy(&f, s + 4 * i, 4);
      uint16_t h = frozen::f32_to_bf16(f);
      std::memcpy(d + 2 * i, &h, 2);
    }
    return;
  }
  const bool via_double = from == DType::F64 || to == DType::F64;
  for (size_t i = 0; i < n; ++i) {
    volatile double v = load_f64(from, s + ss * i);
    if (via_double) {
      store(to, d + ds * i, v, static_cast<float>(v));
    } else {
      volatile float vf = static_cast<float>(v);
      store(to, d + ds * i, v, vf);
    }
  }
}
}  // namespace frozen

uint32_t bits(float f) {
  return f32_to_bits(f);
}
uint64_t bits(double d) {
  return f64_to_bits(d);
}

// fp32 bit patterns that matter: every exponent with mantissas at and around
// the bf16 and fp16 rounding points (ties), subnormals, infinities, quiet and
// signalling NaNs with payloads, and a deterministic sweep of the whole space.
std::vector<uint32_t> f32_patterns() {
  std::vector<uint32_t> v;
  const uint32_t mants[] = {0,        1,        2,        0x1fff,   0x0fff,   0x1000,   0x1001,
                            0x2000,   0x3000,   0x7fff,   0x8000,   0x8001,   0xffff,   0x10000,
                            0x18000,  0x17fff,  0x18001,  0x400000, 0x400001, 0x7fffff, 0x7f8000,
                            0x7fe000, 0x3ff000, 0x200000, 0x555555, 0x2aaaaa};
  for (uint32_t sign : {0u, 0x80000000u})
    for (uint32_t e = 0; e < 256; ++e)
      for (uint32_t m : mants) v.push_back(sign | (e << 23) | m);
  for (uint64_t u = 0; u <= 0xffffffffull; u += 40009) v.push_back(static_cast<uint32_t>(u));
  std::mt19937 rng(12345);
  for (int i = 0; i < 200000; ++i) v.push_back(static_cast<uint32_t>(rng()));
  return v;
}

std::vector<uint64_t> f64_patterns() {
  std::vector<uint64_t> v;
  // Every fp32 pattern widened (the values a round trip meets) ...
  for (uint32_t u : f32_patterns()) v.push_back(bits(static_cast<double>(f32_from_bits(u))));
  // ... and genuine fp64 values: ties and near-ties for fp32, subnormals, NaNs.
  const uint64_t mants[] = {0,
                            1,
                            0x10000000ull,
                            0x0fffffffull,
                            0x10000001ull,
                            0x20000000ull,
                            0x30000000ull,
                            0x8000000000000ull,
                            0x8000000000001ull,
                            0xfffffffffffffull,
                            0x7ffffffffffffull,
                            0x123456789abcdull};
  for (uint64_t sign : {0ull, 0x8000000000000000ull})
    for (uint64_t e = 0; e < 2048; e += (e < 780 || e > 1300) ? 37 : 1)
      for (uint64_t m : mants) v.push_back(sign | (e << 52) | m);
  for (uint64_t sign : {0ull, 0x8000000000000000ull})
    for (uint64_t m : mants) v.push_back(sign | (2047ull << 52) | m);
  std::mt19937_64 rng(777);
  for (int i = 0; i < 100000; ++i) v.push_back(rng());
  return v;
}
}  // namespace

TEST(SharedConversions, Every16BitPatternMatchesTheReference) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const auto x = static_cast<uint16_t>(h);
    ASSERT_EQ(bits(bf16_to_f32(x)), bits(frozen::bf16_to_f32(x))) << std::hex << h;
    ASSERT_EQ(bits(f16_to_f32(x)), bits(frozen::f16_to_f32(x))) << std::hex << h;
    // And back, including from the other format's values.
    const float a = frozen::bf16_to_f32(x), b = frozen::f16_to_f32(x);
    ASSERT_EQ(f32_to_bf16(a), frozen::f32_to_bf16(a)) << std::hex << h;
    ASSERT_EQ(f32_to_bf16(b), frozen::f32_to_bf16(b)) << std::hex << h;
    ASSERT_EQ(f32_to_f16(a), frozen::f32_to_f16(a)) << std::hex << h;
    ASSERT_EQ(f32_to_f16(b), frozen::f32_to_f16(b)) << std::hex << h;
  }
}

TEST(SharedConversions, Fp32PatternsMatchTheReference) {
  const auto v = f32_patterns();
  EXPECT_GT(v.size(), 300000u);
  for (uint32_t u : v) {
    const float f = f32_from_bits(u);
    ASSERT_EQ(f32_to_bf16(f), frozen::f32_to_bf16(f)) << std::hex << u;
    ASSERT_EQ(f32_to_f16(f), frozen::f32_to_f16(f)) << std::hex << u;
  }
  // Hand-picked ties.
  EXPECT_EQ(f32_to_bf16(f32_from_bits(0x3f808000u)), 0x3f80);  // tie, even below
  EXPECT_EQ(f32_to_bf16(f32_from_bits(0x3f818000u)), 0x3f82);  // tie, even above
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);
  EXPECT_EQ(f32_to_f16(3 * std::ldexp(1.0f, -25)), 0x0002);
}

TEST(SharedConversions, NanEmulationMatchesTheHostCpu) {
  // The device code replays what the CPU does to a NaN in float -> double,
  // double -> float and x ± 1; here the emulation is checked against the CPU.
  for (uint32_t u : f32_patterns()) {
    // volatile: the compiler may fold (float)(double)f into f, which the
    // hardware conversion (what runs on real data) does not do for a sNaN.
    volatile float vf = f32_from_bits(u);
    const float f = vf;
    volatile double vd = static_cast<double>(vf);
    const double d = vd;
    ASSERT_EQ(conv::f32_bits_to_f64_bits(u), bits(d)) << std::hex << u;
    ASSERT_EQ(bits(conv::f32_to_f64(f)), bits(d)) << std::hex << u;
    ASSERT_EQ(conv::quiet_f32_bits(u), bits(static_cast<float>(vd))) << std::hex << u;
    volatile float one = 1.0f;  // keep the compiler from folding the NaN cases
    ASSERT_EQ(bits(conv::add_f32(f, 1.0f)), bits(f + one)) << std::hex << u;
    ASSERT_EQ(bits(conv::add_f32(f, -1.0f)), bits(f - one)) << std::hex << u;
  }
  for (uint64_t u : f64_patterns()) {
    volatile double vd = f64_from_bits(u);
    const double d = vd;
    ASSERT_EQ(bits(conv::f64_to_f32(d)), bits(static_cast<float>(vd))) << std::hex << u;
    volatile double one = 1.0;
    ASSERT_EQ(bits(conv::add_f64(d, 1.0)), bits(d + one)) << std::hex << u;
    ASSERT_EQ(bits(conv::add_f64(d, -1.0)), bits(d - one)) << std::hex << u;
  }
}

TEST(SharedConversions, ConvertElementsMatchesTheFrozenReference) {
  // convert_elements now runs conv::transform_element; the frozen copy of the
  // code it replaced must agree on every 16-bit pattern and the fp32/fp64 sets.
  std::vector<std::pair<DType, std::vector<unsigned char>>> inputs;
  {
    std::vector<unsigned char> b(0x10000 * 2);
    for (uint32_t h = 0; h < 0x10000; ++h) std::memcpy(b.data() + 2 * h, &h, 2);
    inputs.emplace_back(DType::BF16, b);
    inputs.emplace_back(DType::F16, b);
    const auto f = f32_patterns();
    inputs.emplace_back(
        DType::F32,
        std::vector<unsigned char>(reinterpret_cast<const unsigned char*>(f.data()),
                                   reinterpret_cast<const unsigned char*>(f.data() + f.size())));
    const auto d = f64_patterns();
    inputs.emplace_back(
        DType::F64,
        std::vector<unsigned char>(reinterpret_cast<const unsigned char*>(d.data()),
                                   reinterpret_cast<const unsigned char*>(d.data() + d.size())));
  }
  for (const auto& [from, in] : inputs) {
    const size_t n = in.size() / dtype_size(from);
    for (DType to : {DType::BF16, DType::F16, DType::F32, DType::F64}) {
      if (from == DType::F64 && dtype_size(to) == 2) {
        std::vector<unsigned char> out(n * 2);
        EXPECT_THROW(convert_elements(from, in.data(), to, out.data(), n), std::exception);
        continue;
      }
      std::vector<unsigned char> got(n * dtype_size(to)), want(n * dtype_size(to));
      convert_elements(from, in.data(), to, got.data(), n);
      frozen::convert_elements(from, in.data(), to, want.data(), n);
      for (size_t i = 0; i < n; ++i)
        ASSERT_EQ(std::memcmp(got.data() + i * dtype_size(to), want.data() + i * dtype_size(to),
                              dtype_size(to)),
                  0)
            << dtype_name(from) << " -> " << dtype_name(to) << " element " << i;
    }
  }
}

namespace {
DType dtype_of(int kind) {
  switch (kind) {
    case conv::kBF16:
      return DType::BF16;
    case conv::kF16:
      return DType::F16;
    case conv::kF32:
      return DType::F32;
    default:
      return DType::F64;
  }
}

template <int From>
std::vector<conv::bits_t<From>> inputs() {
  std::vector<conv::bits_t<From>> v;
  if constexpr (From == conv::kBF16 || From == conv::kF16) {
    for (uint32_t h = 0; h < 0x10000; ++h) v.push_back(static_cast<uint16_t>(h));
  } else if constexpr (From == conv::kF32) {
    v = f32_patterns();
  } else {
    v = f64_patterns();
  }
  return v;
}

int offset_of(ElementOp op) {
  return op == ElementOp::MinusOne ? -1 : op == ElementOp::PlusOne ? 1 : 0;
}

// transform_element<From, To> (what each GPU thread computes) against
// transform_elements (the CPU reference) on every input pattern, for each op;
// and the not-invertible count the kernel derives from it.
template <int From, int To>
void check_transform_pair() {
  using In = conv::bits_t<From>;
  using Out = conv::bits_t<To>;
  const DType from = dtype_of(From), to = dtype_of(To);
  const auto in = inputs<From>();
  for (ElementOp op : {ElementOp::None, ElementOp::MinusOne, ElementOp::PlusOne}) {
    SCOPED_TRACE(std::string(dtype_name(from)) + " -> " + std::string(dtype_name(to)) + " " +
                 std::string(op_name(op)));
    const bool refused = From == conv::kF64 && sizeof(Out) == 2;
    std::vector<Out> want(in.size());
    if (refused) {
      // The CPU path refuses to round twice; the device engine must refuse too.
      EXPECT_THROW(transform_elements(op, from, in.data(), to, want.data(), in.size()),
                   std::exception);
      continue;
    }
    transform_elements(op, from, in.data(), to, want.data(), in.size());
    const int off = offset_of(op);
    for (size_t i = 0; i < in.size(); ++i) {
      const Out got = conv::transform_element<From, To>(in[i], off);
      ASSERT_EQ(got, want[i]) << "input 0x" << std::hex << +in[i];
    }
    if (From == To && op != ElementOp::None) {
      uint64_t bad = 0;
      for (size_t i = 0; i < in.size(); ++i) {
        const In there = static_cast<In>(conv::transform_element<From, From>(in[i], off));
        const In back = static_cast<In>(conv::transform_element<From, From>(there, -off));
        if (back != in[i]) ++bad;
      }
      EXPECT_EQ(bad, count_not_invertible(op, from, in.data(), in.size()));
    }
  }
}

template <int From>
void check_transform_from() {
  check_transform_pair<From, conv::kBF16>();
  check_transform_pair<From, conv::kF16>();
  check_transform_pair<From, conv::kF32>();
  check_transform_pair<From, conv::kF64>();
}
}  // namespace

TEST(SharedConversions, ElementTransformMatchesTransformElementsFromBf16) {
  check_transform_from<conv::kBF16>();
}
TEST(SharedConversions, ElementTransformMatchesTransformElementsFromF16) {
  check_transform_from<conv::kF16>();
}
TEST(SharedConversions, ElementTransformMatchesTransformElementsFromF32) {
  check_transform_from<conv::kF32>();
}
TEST(SharedConversions, ElementTransformMatchesTransformElementsFromF64) {
  check_transform_from<conv::kF64>();
}
