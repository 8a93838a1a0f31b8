#include "transforms/elementwise.hpp"

#include <cstring>
#include <vector>

#include "core/error.hpp"

namespace mb {

ElementOp inverse(ElementOp op) {
  switch (op) {
    case ElementOp::MinusOne: return ElementOp::PlusOne;
    case ElementOp::PlusOne: return ElementOp::MinusOne;
    default: return ElementOp::None;
  }
}

std::string_view op_name(ElementOp op) {
  switch (op) {
    case ElementOp::MinusOne: return "minus_one";
    case ElementOp::PlusOne: return "plus_one";
    default: return "none";
  }
}

ElementOp op_from_name(std::string_view name) {
  if (name == "none") return ElementOp::None;
  if (name == "minus_one") return ElementOp::MinusOne;
  if (name == "plus_one") return ElementOp::PlusOne;
  throw Error("unknown element op '{}'", name);
}

namespace {
template <typename T>
T offset(ElementOp op) {
  return op == ElementOp::MinusOne ? T(-1) : op == ElementOp::PlusOne ? T(1) : T(0);
}

float load_float(DType t, const unsigned char* p) {
  switch (t) {
    case DType::F32: {
      float f;
      std::memcpy(&f, p, 4);
      return f;
    }
    case DType::BF16: {
      uint16_t h;
      std::memcpy(&h, p, 2);
      return bf16_to_f32(h);
    }
    case DType::F16: {
      uint16_t h;
      std::memcpy(&h, p, 2);
      return f16_to_f32(h);
    }
    default: throw Error("internal: load_float of {}", dtype_name(t));
  }
}

void store_float(DType t, unsigned char* p, float f) {
  switch (t) {
    case DType::F32: std::memcpy(p, &f, 4); break;
    case DType::BF16: {
      uint16_t h = f32_to_bf16(f);
      std::memcpy(p, &h, 2);
      break;
    }
    case DType::F16: {
      uint16_t h = f32_to_f16(f);
      std::memcpy(p, &h, 2);
      break;
    }
    default: throw Error("internal: store_float of {}", dtype_name(t));
  }
}
}  // namespace

void transform_elements(ElementOp op, DType from, const void* src, DType to, void* dst, size_t n) {
  if (op == ElementOp::None) {
    if (from == to) {
      std::memmove(dst, src, n * dtype_size(from));
      return;
    }
    convert_elements(from, src, to, dst, n);
    return;
  }
  MB_CHECK(dtype_is_castable(from) && dtype_is_castable(to),
           "the norm offset needs floating-point tensors, got {} -> {}", dtype_name(from),
           dtype_name(to));
  const auto* s = static_cast<const unsigned char*>(src);
  auto* d = static_cast<unsigned char*>(dst);
  const size_t ss = dtype_size(from), ds = dtype_size(to);
  if (from == DType::F64 || to == DType::F64) {
    std::vector<double> tmp(n);
    convert_elements(from, src, DType::F64, tmp.data(), n);
    for (auto& x : tmp) x += offset<double>(op);
    convert_elements(DType::F64, tmp.data(), to, dst, n);
    return;
  }
  const float off = offset<float>(op);
  for (size_t i = 0; i < n; ++i) store_float(to, d + ds * i, load_float(from, s + ss * i) + off);
}

uint64_t count_not_invertible(ElementOp op, DType dtype, const void* src, size_t n) {
  if (op == ElementOp::None || !dtype_is_castable(dtype)) return 0;
  const size_t es = dtype_size(dtype);
  std::vector<unsigned char> there(n * es), back(n * es);
  transform_elements(op, dtype, src, dtype, there.data(), n);
  transform_elements(inverse(op), dtype, there.data(), dtype, back.data(), n);
  const auto* s = static_cast<const unsigned char*>(src);
  uint64_t bad = 0;
  for (size_t i = 0; i < n; ++i)
    if (std::memcmp(s + es * i, back.data() + es * i, es) != 0) ++bad;
  return bad;
}

}  // namespace mb
