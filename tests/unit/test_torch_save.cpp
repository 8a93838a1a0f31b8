// The torch.save zip container (spec §2.6): our writer, our reader, and the
// archives real torch 2.15 wrote (tests/data/torch_golden, made by
// tests/fixtures/make_torch_golden.py).
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "checkpoint/torch_dist_output.hpp"
#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "core/hash.hpp"
#include "core/region_checksum.hpp"
#include "formats/torch_dist/pickle.hpp"
#include "formats/torch_dist/torch_save.hpp"
#include "test_util.hpp"

using namespace mb;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const fs::path kGolden = fs::path(MEGABRIDGE_SOURCE_DIR) / "tests/data/torch_golden";

json expected() { return json::parse(read_text_file(kGolden / "expected.json")); }

uint64_t le(const std::string& s, size_t at, size_t n) {
  uint64_t v = 0;
  for (size_t k = 0; k < n; ++k) v |= static_cast<uint64_t>(static_cast<unsigned char>(s.at(at + k))) << (8 * k);
  return v;
}

template <size_t N>
std::string B(const char (&s)[N]) {
  return std::string(s, N - 1);
}

std::string hex(std::string_view s) {
  std::string o;
  for (unsigned char c : s) o += fmt::format("{:02x}", c);
  return o;
}

// The records of an archive, walked independently of the library: end
// records, central directory, then each local header and what follows the data.
struct Rec {
  std::string name;
  uint64_t header, data, size;
  uint32_t crc;
  uint16_t local_flags, central_flags;
  std::string fb;  // the FB extra field
  bool zip64_local = false;
  uint64_t descriptor = 0;  // bytes of data descriptor after the data
};
struct Walk {
  std::vector<Rec> recs;
  bool zip64_end = false, zip64_locator = false;
  uint64_t cd_offset = 0;
};
Walk walk(const std::string& a) {
  Walk w;
  const size_t eocd = a.size() - 22;
  EXPECT_EQ(le(a, eocd, 4), 0x06054b50u);
  w.zip64_locator = le(a, eocd - 20, 4) == 0x07064b50u;
  const uint64_t z = le(a, eocd - 20 + 8, 8);
  w.zip64_end = w.zip64_locator && le(a, z, 4) == 0x06064b50u;
  EXPECT_TRUE(w.zip64_end);
  const uint64_t n = le(a, z + 32, 8), cd = le(a, z + 48, 8);
  EXPECT_EQ(le(a, z + 40, 8), z - cd);  // directory size
  EXPECT_EQ(le(a, eocd + 10, 2), n);
  w.cd_offset = cd;
  size_t p = cd;
  for (uint64_t k = 0; k < n; ++k) {
    EXPECT_EQ(le(a, p, 4), 0x02014b50u);
    Rec r;
    r.central_flags = static_cast<uint16_t>(le(a, p + 8, 2));
    r.crc = static_cast<uint32_t>(le(a, p + 16, 4));
    r.size = le(a, p + 24, 4);
    const size_t nl = le(a, p + 28, 2), xl = le(a, p + 30, 2);
    r.header = le(a, p + 42, 4);
    r.name = a.substr(p + 46, nl);
    EXPECT_EQ(xl, 0u) << "small archives carry no central extra field";
    p += 46 + nl + xl;
    // local header
    EXPECT_EQ(le(a, r.header, 4), 0x04034b50u);
    r.local_flags = static_cast<uint16_t>(le(a, r.header + 6, 2));
    EXPECT_EQ(le(a, r.header + 14, 4), 0u);  // CRC and sizes left 0
    EXPECT_EQ(le(a, r.header + 18, 8), 0u);
    const size_t lnl = le(a, r.header + 26, 2), lxl = le(a, r.header + 28, 2);
    EXPECT_EQ(a.substr(r.header + 30, lnl), r.name);
    size_t x = r.header + 30 + lnl;
    const size_t xend = x + lxl;
    while (x < xend) {
      const uint64_t id = le(a, x, 2), sz = le(a, x + 2, 2);
      if (id == 0x0001) r.zip64_local = true;
      if (id == 0x4246) r.fb = a.substr(x + 4, sz);
      x += 4 + sz;
    }
    r.data = xend;
    const uint64_t after = r.data + r.size;
    if (le(a, after, 4) == 0x08074b50u) {
      EXPECT_EQ(le(a, after + 4, 4), r.crc);
      EXPECT_EQ(le(a, after + 8, 4), r.size);
      EXPECT_EQ(le(a, after + 12, 4), r.size);
      r.descriptor = 16;
    }
    w.recs.push_back(r);
  }
  // Records are back to back: each header follows the previous descriptor.
  for (size_t k = 0; k + 1 < w.recs.size(); ++k)
    EXPECT_EQ(w.recs[k].data + w.recs[k].size + w.recs[k].descriptor, w.recs[k + 1].header) << w.recs[k].name;
  if (!w.recs.empty()) {
    EXPECT_EQ(w.recs.back().data + w.recs.back().size + w.recs.back().descriptor, cd);
  }
  return w;
}

// The layout rules miniz follows and that we reproduce (spec §2.6.2).
void expect_miniz_layout(const Walk& w, const std::string& label) {
  for (const Rec& r : w.recs) {
    SCOPED_TRACE(label + " " + r.name);
    EXPECT_EQ(r.data % 64, 0u);
    EXPECT_EQ(r.data, r.header + 30 + r.name.size() + 4 + r.fb.size());  // FB is the only extra
    EXPECT_EQ(r.fb, std::string(r.fb.size(), 'Z'));
    EXPECT_LT(r.fb.size(), 64u);
    const uint16_t want = r.size ? 0x0808 : 0x0800;
    EXPECT_EQ(r.local_flags, want);
    EXPECT_EQ(r.central_flags, want);
    EXPECT_EQ(r.descriptor, r.size ? 16u : 0u);
    EXPECT_FALSE(r.zip64_local);
    if (r.size == 0) {
      EXPECT_EQ(r.crc, 0u);
    }
  }
}

std::vector<std::string> names(const Walk& w) {
  std::vector<std::string> n;
  for (const Rec& r : w.recs) n.push_back(r.name);
  return n;
}

std::string read_all(const fs::path& p) { return read_text_file(p); }

std::string bf16_bytes(size_t n) {
  std::string s;
  for (size_t k = 0; k < n; ++k) {
    const uint16_t b = f32_to_bf16(static_cast<float>(k));
    s += static_cast<char>(b & 0xff);
    s += static_cast<char>(b >> 8);
  }
  return s;
}

// Element k is k, in `dtype`, as torch.arange(n, dtype=float64).to(dtype) gives.
std::string pattern_bytes(DType dtype, uint64_t n) {
  std::string s(n * dtype_size(dtype), '\0');
  for (uint64_t k = 0; k < n; ++k) {
    char* p = s.data() + k * dtype_size(dtype);
    const double v = static_cast<double>(k);
    switch (dtype) {
      case DType::BF16: {
        const uint16_t b = f32_to_bf16(static_cast<float>(v));
        std::memcpy(p, &b, 2);
        break;
      }
      case DType::F16: {
        const uint16_t b = f32_to_f16(static_cast<float>(v));
        std::memcpy(p, &b, 2);
        break;
      }
      case DType::F32: {
        const auto f = static_cast<float>(v);
        std::memcpy(p, &f, 4);
        break;
      }
      case DType::F64: std::memcpy(p, &v, 8); break;
      case DType::I64: {
        const auto i = static_cast<int64_t>(k);
        std::memcpy(p, &i, 8);
        break;
      }
      case DType::I32: {
        const auto i = static_cast<int32_t>(k);
        std::memcpy(p, &i, 4);
        break;
      }
      case DType::I8: *p = static_cast<char>(k); break;
      case DType::U8: *p = static_cast<char>(k); break;
      case DType::Bool: *p = k != 0 ? 1 : 0; break;
      default: throw Error("pattern_bytes: unsupported dtype");
    }
  }
  return s;
}

// Writes a tensor archive of the pattern at `base` of `f`; returns its length.
uint64_t write_pattern(File& f, uint64_t base, DType dtype, const Shape& shape) {
  TorchSaveTensorWriter w(f, base, dtype, shape);
  const std::string bytes = pattern_bytes(dtype, numel(shape));
  // In uneven pieces, to exercise the incremental CRC.
  size_t at = 0, step = 1;
  while (at < bytes.size()) {
    const size_t n = std::min(step, bytes.size() - at);
    w.write(bytes.data() + at, n);
    at += n;
    step = step * 2 + 1;
  }
  return w.finish();
}

std::string file_bytes(const File& f, uint64_t off, uint64_t n) {
  std::string s(n, '\0');
  f.pread_exact(s.data(), n, off);
  return s;
}

void expect_error_contains(const std::function<void()>& fn, const std::string& needle) {
  try {
    fn();
    FAIL() << "expected an error containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

}  // namespace

TEST(TorchSave, WritesAtABaseOffsetAndReadsBack) {
  TempDir tmp;
  File f(tmp.path / "items.distcp", File::Mode::Write);
  const std::string junk(1000, 'j');
  f.pwrite_exact(junk.data(), junk.size(), 0);
  const uint64_t len = write_pattern(f, 1000, DType::BF16, {3, 5});
  f.pwrite_exact(junk.data(), 10, 1000 + len);  // something after it
  TorchTensorItem t = read_torch_tensor_item(f, 1000, len, "key at 1000");
  EXPECT_EQ(t.dtype, DType::BF16);
  EXPECT_EQ(t.shape, (Shape{3, 5}));
  EXPECT_EQ(t.stride, (std::vector<uint64_t>{5, 1}));
  EXPECT_EQ(t.storage_offset, 0u);
  EXPECT_EQ(t.storage_bytes, 30u);
  EXPECT_EQ((t.data_offset - 1000) % 64, 0u) << "data/0 must be 64-aligned relative to the archive start";
  EXPECT_EQ(file_bytes(f, t.data_offset, 30), bf16_bytes(15));

  const std::string a = file_bytes(f, 1000, len);
  const Walk w = walk(a);
  EXPECT_EQ(names(w), (std::vector<std::string>{"archive/data.pkl", "archive/byteorder", "archive/data/0",
                                                 "archive/version"}));
  expect_miniz_layout(w, "ours");
  EXPECT_EQ(w.recs[2].data + 1000, t.data_offset);
  EXPECT_EQ(a.substr(w.recs[1].data, 6), "little");
  EXPECT_EQ(a.substr(w.recs[3].data, 2), "3\n");
  EXPECT_EQ(read_torch_archive_record(f, 1000, len, "version", "x"), "3\n");
  EXPECT_EQ(read_torch_archive_record(f, 1000, len, "byteorder", "x"), "little");
  // Zip64 end records, as torch always writes: 56 + 20 + 22 bytes at the end.
  EXPECT_EQ(le(a, a.size() - 98, 4), 0x06064b50u);
  EXPECT_EQ(le(a, a.size() - 42, 4), 0x07064b50u);
}

TEST(TorchSave, StreamingAndInMemoryWritersAgreeAndArePositionIndependent) {
  TempDir tmp;
  File f(tmp.path / "a", File::Mode::Write);
  const uint64_t len0 = write_pattern(f, 0, DType::F32, {7, 3});
  const uint64_t len1 = write_pattern(f, 4096 + 17, DType::F32, {7, 3});
  ASSERT_EQ(len0, len1);
  const std::string a0 = file_bytes(f, 0, len0), a1 = file_bytes(f, 4096 + 17, len1);
  EXPECT_EQ(hex(a0), hex(a1));
  pickle::Writer w;
  pickle_tensor(w, "0", DType::F32, {7, 3});
  EXPECT_EQ(hex(torch_save_archive(w.finish(), {pattern_bytes(DType::F32, 21)})), hex(a0));
}

TEST(TorchSave, EmptyTensorRecordHasNoDescriptor) {
  TempDir tmp;
  File f(tmp.path / "e", File::Mode::Write);
  TorchSaveTensorWriter w(f, 64, DType::U8, {0});
  const uint64_t len = w.finish();
  const std::string a = file_bytes(f, 64, len);
  const Walk wk = walk(a);
  expect_miniz_layout(wk, "empty");
  ASSERT_EQ(wk.recs.size(), 4u);
  EXPECT_EQ(wk.recs[2].size, 0u);
  EXPECT_EQ(wk.recs[2].local_flags, 0x0800);
  EXPECT_EQ(wk.recs[2].descriptor, 0u);
  EXPECT_EQ(wk.recs[3].header, wk.recs[2].data);  // the next header follows at once
  const TorchTensorItem t = read_torch_tensor_item(f, 64, len, "empty");
  EXPECT_EQ(t.dtype, DType::U8);
  EXPECT_EQ(t.shape, (Shape{0}));
  EXPECT_EQ(t.stride, (std::vector<uint64_t>{1}));
  EXPECT_EQ(t.storage_bytes, 0u);
}

TEST(TorchSave, ScalarsAndZeroDimsUseTorchStrides) {
  TempDir tmp;
  File f(tmp.path / "s", File::Mode::Write);
  uint64_t len = write_pattern(f, 0, DType::F64, {});
  TorchTensorItem t = read_torch_tensor_item(f, 0, len, "scalar");
  EXPECT_TRUE(t.shape.empty());
  EXPECT_TRUE(t.stride.empty());
  EXPECT_EQ(t.storage_bytes, 8u);
  len = write_pattern(f, 0, DType::I32, {2, 0, 3});
  t = read_torch_tensor_item(f, 0, len, "zero dim");
  EXPECT_EQ(t.stride, (std::vector<uint64_t>{3, 3, 1}));  // torch counts a 0 extent as 1
}

TEST(TorchSave, WriteCountsAreChecked) {
  TempDir tmp;
  File f(tmp.path / "c", File::Mode::Write);
  {
    TorchSaveTensorWriter w(f, 0, DType::BF16, {2});
    const char b[6] = {};
    EXPECT_THROW(w.write(b, 6), Error);
    w.write(b, 2);
    EXPECT_THROW(w.finish(), Error);
  }
  EXPECT_THROW(TorchSaveTensorWriter(f, 0, DType::F8_E4M3, {2}), Error);  // would need _rebuild_tensor_v3
  pickle::Writer pw;
  EXPECT_THROW(pickle_tensor(pw, "0", DType::U16, {2}), Error);
}

TEST(TorchSave, MultiStorageArchive) {
  pickle::Writer w;
  w.empty_dict();
  w.mark();
  w.string("x");
  pickle_tensor(w, "0", DType::F32, {3, 2});
  w.string("y");
  pickle_tensor(w, "1", DType::I64, {4});
  w.setitems();
  const std::string a = torch_save_archive(w.finish(), {pattern_bytes(DType::F32, 6), pattern_bytes(DType::I64, 4)});
  const Walk wk = walk(a);
  expect_miniz_layout(wk, "multi");
  EXPECT_EQ(names(wk), (std::vector<std::string>{"archive/data.pkl", "archive/byteorder", "archive/data/0",
                                                  "archive/data/1", "archive/version"}));
  TempDir tmp;
  write_bytes(tmp.path / "m.pt", a);
  File f(tmp.path / "m.pt", File::Mode::Read);
  EXPECT_EQ(read_torch_archive_record(f, 0, a.size(), "data/1", "m"), pattern_bytes(DType::I64, 4));
  // Not a single tensor: read_torch_tensor_item says what it found.
  expect_error_contains([&] { read_torch_tensor_item(f, 0, a.size(), "m.pt"); }, "holds dict of 2 instead of a tensor");
}

TEST(TorchSave, ReadsTheGoldenTensorArchive) {
  const json e = expected()["tensor_bf16_2x3.pt"];
  File f(kGolden / "tensor_bf16_2x3.pt", File::Mode::Read);
  const TorchTensorItem t = read_torch_tensor_item(f, 0, f.size(), "golden");
  EXPECT_EQ(t.dtype, DType::BF16);
  EXPECT_EQ(t.shape, (Shape{2, 3}));
  EXPECT_EQ(t.stride, (std::vector<uint64_t>{3, 1}));
  EXPECT_EQ(t.storage_bytes, 12u);
  EXPECT_EQ(file_bytes(f, t.data_offset, 12), bf16_bytes(6));
  for (const auto& r : e["records"])
    if (r["name"] == "archive/data/0") {
      EXPECT_EQ(t.data_offset, r["data_offset"].get<uint64_t>());
    }
  // torch writes the extra records we leave out; the layout rules are the same.
  const std::string a = read_all(kGolden / "tensor_bf16_2x3.pt");
  const Walk w = walk(a);
  expect_miniz_layout(w, "golden tensor");
  EXPECT_EQ(names(w),
            (std::vector<std::string>{"archive/data.pkl", "archive/.format_version", "archive/.storage_alignment",
                                      "archive/byteorder", "archive/data/0", "archive/version",
                                      "archive/.data/serialization_id"}));
  // The same data.pkl as ours, once torch's memo opcodes are dropped.
  pickle::Writer pw;
  pickle_tensor(pw, "0", DType::BF16, {2, 3});
  EXPECT_EQ(hex(pw.finish()), e["data_pkl_nomemo_hex"].get<std::string>());
  EXPECT_EQ(e["data_pkl_protocol"].get<int>(), 2);
}

TEST(TorchSave, ReadsTheGoldenEmptyTensorList) {
  const json e = expected()["empty_u8_list.pt"];
  const std::string a = read_all(kGolden / "empty_u8_list.pt");
  const Walk w = walk(a);
  expect_miniz_layout(w, "golden empty list");
  bool seen = false;
  for (const Rec& r : w.recs)
    if (r.name == "archive/data/0") {
      seen = true;
      EXPECT_EQ(r.size, 0u);
      EXPECT_EQ(r.local_flags, 0x0800) << "torch sets no descriptor flag for an empty record";
      EXPECT_EQ(r.descriptor, 0u);
    }
  EXPECT_TRUE(seen);
  // Our _extra_state payload pickle equals torch's without memo.
  pickle::Writer pw;
  pw.empty_list();
  pickle_tensor(pw, "0", DType::U8, {0});
  pw.append();
  const std::string ours = pw.finish();
  EXPECT_EQ(hex(ours), e["data_pkl_nomemo_hex"].get<std::string>());
  File f(kGolden / "empty_u8_list.pt", File::Mode::Read);
  EXPECT_EQ(read_torch_archive_record(f, 0, f.size(), "data/0", "golden"), "");
  const pickle::Value v =
      pickle::loads(read_torch_archive_record(f, 0, f.size(), "data.pkl", "golden"),
                    {"torch._utils._rebuild_tensor_v2", "torch.ByteStorage", "collections.OrderedDict"}, "golden");
  ASSERT_TRUE(v.is(pickle::Value::Kind::List));
  ASSERT_EQ(v.items.size(), 1u);
  EXPECT_EQ(v.items[0].cls->s, "torch._utils._rebuild_tensor_v2");
  // Our whole archive has the same record layout for the records we write.
  const Walk ow = walk(torch_save_archive(ours, {std::string()}));
  expect_miniz_layout(ow, "our empty list");
}

TEST(TorchSave, ReadsTheGoldenCommonPt) {
  const json e = expected()["common.pt"];
  EXPECT_EQ(e["folder"], "common");
  File f(kGolden / "common.pt", File::Mode::Read);
  const std::string pkl = read_torch_archive_record(f, 0, f.size(), "data.pkl", "common.pt");
  const pickle::Value v = pickle::loads(pkl, {}, "common.pt");
  ASSERT_TRUE(v.is(pickle::Value::Kind::Dict));
  EXPECT_EQ(v.get("checkpoint_version")->f, 3.0);
  EXPECT_EQ(v.get("iteration")->i, 0);
  const pickle::Value* cm = v.get("content_metadata");
  ASSERT_NE(cm, nullptr);
  EXPECT_FALSE(cm->get("singleton_local_shards")->b);
  EXPECT_TRUE(cm->get("chained_optim_avoid_prefix")->b);
  expect_miniz_layout(walk(read_all(kGolden / "common.pt")), "golden common");
  // Our common.pt pickle (the library's) is torch's without memo.
  EXPECT_EQ(hex(common_pt_pickle()), e["data_pkl_nomemo_hex"].get<std::string>());
}

TEST(TorchSave, RejectsBrokenArchives) {
  TempDir tmp;
  const fs::path p = tmp.path / "x";
  pickle::Writer w;
  pickle_tensor(w, "0", DType::BF16, {2, 3});
  const std::string pkl = w.finish();
  const std::string good = torch_save_archive(pkl, {bf16_bytes(6)});
  auto item = [&](const std::string& bytes, uint64_t off = 0, int64_t len_delta = 0) {
    write_bytes(p, bytes);
    File f(p, File::Mode::Read);
    return read_torch_tensor_item(f, off, static_cast<uint64_t>(static_cast<int64_t>(bytes.size() - off) + len_delta),
                                  "k in __0_0.distcp");
  };
  EXPECT_NO_THROW(item(good));
  expect_error_contains([&] { item(good, 0, -1); }, "k in __0_0.distcp: ");
  expect_error_contains([&] { item(good, 0, 1); }, "beyond the end");
  expect_error_contains([&] { item(good.substr(0, 10)); }, "too few");
  std::string bad = good;
  bad[bad.size() - 22] = 'X';  // EOCD signature
  expect_error_contains([&] { item(bad); }, "no zip end-of-central-directory record");
  bad = good;
  bad[64 + 5] ^= 0x01;  // a byte of data.pkl: the CRC catches it
  expect_error_contains([&] { item(bad); }, "is corrupt (CRC-32");
  // A data.pkl calling os.system.
  const std::string evil = B("\x80\x02" "cos\nsystem\nX\x02\0\0\0ls\x85R.");
  expect_error_contains([&] { item(torch_save_archive(evil, {bf16_bytes(6)})); },
                        "refuses to load global 'os.system' at byte 2");
  // Storage sizes that disagree with the pickle.
  expect_error_contains([&] { item(torch_save_archive(pkl, {bf16_bytes(5)})); },
                        "record data/0 holds 10 bytes but the storage needs 12");
  pickle::Writer w2;
  pickle_tensor(w2, "1", DType::BF16, {2, 3});
  expect_error_contains([&] { item(torch_save_archive(w2.finish(), {bf16_bytes(6)})); }, "has no record 'archive/data/1'");
  // Big-endian data (with the record's CRC zeroed, i.e. "not computed", so
  // that the byte order check itself is reached).
  std::string be = good;
  const size_t at = be.find("little");
  ASSERT_NE(at, std::string::npos);
  be.replace(at, 6, "bigxxx");
  expect_error_contains([&] { item(be); }, "record 'archive/byteorder' is corrupt (CRC-32");
  const size_t cd_name = be.rfind("archive/byteorder");
  ASSERT_GT(cd_name, walk(good).cd_offset);
  be.replace(cd_name - 46 + 16, 4, std::string(4, '\0'));
  expect_error_contains([&] { item(be); }, "stored 'bigxxx'-endian; only little-endian is supported");
  // A view reaching past its storage: stride (4, 1) over 6 elements.
  std::string view = pkl;
  const size_t st = view.find(std::string("K\x03K\x01\x86", 5));
  ASSERT_NE(st, std::string::npos);
  view[st + 1] = 4;
  expect_error_contains([&] { item(torch_save_archive(view, {bf16_bytes(6)})); }, "needs 14 bytes but its storage holds 12");
  // A compressed record.
  std::string comp = good;
  const Walk wk = walk(good);
  comp[wk.cd_offset + 10] = 8;  // method deflate in the first central entry
  expect_error_contains([&] { item(comp); }, "is compressed");
}

TEST(TorchSave, Zip64ForRecordsBeyond4GiB) {
  // Writes a 4 GiB + 100 byte record (zip64 sizes in the local header, the
  // descriptor and the directory, and a record offset beyond 4 GiB); opt-in.
  const char* dir = std::getenv("MB_BIG_TESTS");
  if (!dir) GTEST_SKIP() << "set MB_BIG_TESTS=<dir with 5 GB free> to run";
  const fs::path p = fs::path(dir) / "mb_big_test.pt";
  const uint64_t n = (uint64_t{1} << 32) + 100;
  uint64_t len = 0;
  {
    File f(p, File::Mode::Write);
    TorchSaveTensorWriter w(f, 128, DType::U8, {n});
    std::string chunk(64 << 20, '\0');
    for (uint64_t at = 0; at < n; at += chunk.size()) w.write(chunk.data(), std::min<uint64_t>(chunk.size(), n - at));
    len = w.finish();
  }
  File f(p, File::Mode::Read);
  const TorchTensorItem t = read_torch_tensor_item(f, 128, len, "big");
  EXPECT_EQ(t.shape, (Shape{n}));
  EXPECT_EQ(t.storage_bytes, n);
  EXPECT_EQ((t.data_offset - 128) % 64, 0u);
  EXPECT_EQ(read_torch_archive_record(f, 128, len, "version", "big"), "3\n");
  f.close();
  fs::remove(p);
}

// Writes files for tests/fixtures/make_torch_golden.py to load with real torch.
TEST(TorchGoldenEmit, Archives) {
  const char* out = std::getenv("MB_GOLDEN_OUT");
  if (!out) GTEST_SKIP() << "MB_GOLDEN_OUT not set";
  const fs::path dir(out);
  {
    File f(dir / "cxx_tensor.pt", File::Mode::Write);
    write_pattern(f, 0, DType::BF16, {2, 3});
  }
  const std::vector<std::pair<DType, Shape>> more = {{DType::F32, {5}},     {DType::I64, {3}}, {DType::F16, {2, 2, 2}},
                                                     {DType::Bool, {4}},    {DType::I8, {3}},  {DType::F64, {}},
                                                     {DType::I32, {2, 0}}};
  for (const auto& [dt, shape] : more) {
    std::string dims;
    for (size_t k = 0; k < shape.size(); ++k) dims += (k ? "x" : "") + std::to_string(shape[k]);
    File f(dir / fmt::format("cxx_{}_{}.pt", dtype_torch_name(dt), dims.empty() ? "scalar" : dims), File::Mode::Write);
    write_pattern(f, 0, dt, shape);
  }
  {
    pickle::Writer w;
    w.empty_list();
    pickle_tensor(w, "0", DType::U8, {0});
    w.append();
    write_bytes(dir / "cxx_empty_list.pt", torch_save_archive(w.finish(), {std::string()}));
  }
  write_bytes(dir / "cxx_common.pt", torch_save_archive(common_pt_pickle(), {}, "common"));
  {
    pickle::Writer w;
    w.empty_dict();
    w.mark();
    w.string("x");
    pickle_tensor(w, "0", DType::F32, {3, 2});
    w.string("y");
    pickle_tensor(w, "1", DType::I64, {4});
    w.setitems();
    write_bytes(dir / "cxx_multi.pt",
                torch_save_archive(w.finish(), {pattern_bytes(DType::F32, 6), pattern_bytes(DType::I64, 4)}));
  }
  {
    File f(dir / "cxx_items.bin", File::Mode::Write);
    json index = json::array();
    uint64_t pos = 17;
    for (const auto& [dt, shape] : std::vector<std::pair<DType, Shape>>{
             {DType::BF16, {4, 6}}, {DType::F32, {3}}, {DType::U8, {0}}, {DType::I64, {2, 2}}}) {
      const uint64_t len = write_pattern(f, pos, dt, shape);
      index.push_back({{"offset", pos}, {"length", len}, {"dtype", dtype_torch_name(dt)}, {"shape", shape}});
      pos = (pos + len + 4095) / 4096 * 4096 + 3;  // gaps between items
    }
    write_bytes(dir / "cxx_items.json", index.dump());
  }
  if (std::getenv("MB_GOLDEN_BIG")) {
    File f(dir / "cxx_big.pt", File::Mode::Write);
    const uint64_t n = (uint64_t{1} << 32) + 100;
    TorchSaveTensorWriter w(f, 0, DType::U8, {n});
    std::string chunk(64 << 20, '\0');
    for (uint64_t at = 0; at < n; at += chunk.size()) {
      const uint64_t m = std::min<uint64_t>(chunk.size(), n - at);
      std::string c = chunk.substr(0, m);
      if (at == 0) c[0] = 1;
      if (at <= (uint64_t{1} << 32) && (uint64_t{1} << 32) < at + m) c[(uint64_t{1} << 32) - at] = 3;
      if (at + m == n) c[m - 1] = 2;
      w.write(c.data(), m);
    }
    w.finish();
  }
}

// The region checksum of a .distcp file (formats/torch_dist/distcp_checksum.hpp)
// as the writer takes it while writing equals the one a verifier computes from
// the file, and the data hasher sees exactly data/0's payload.
TEST(TorchSave, RegionHashesAsWrittenMatchTheFile) {
  TempDir tmp;
  const auto path = tmp.path / "__0_0.distcp";
  Hasher gap, data;
  uint64_t data_offset = 0, len = 0;
  {
    File f(path, File::Mode::Write);
    const std::string junk(100, 'j');
    f.pwrite_exact(junk.data(), junk.size(), 0);
    gap.update(junk.data(), junk.size());
    TorchSaveTensorWriter w(f, 100, DType::BF16, {3, 5}, &gap, &data);
    data_offset = w.data_offset();
    const std::string bytes = bf16_bytes(15);
    w.write(bytes.data(), bytes.size());
    len = w.finish();
    const TorchTensorItem t = read_torch_tensor_item(f, 100, len, "key");
    EXPECT_EQ(t.data_offset, data_offset);
    EXPECT_EQ(data.digest(), hash_bytes(bytes.data(), bytes.size()));
  }
  // Written: junk + header (gap), data, tail (gap); the tail went to `gap`
  // after the data, so hash the pieces separately for the builder.
  File f(path, File::Mode::Read);
  const std::string head = file_bytes(f, 0, data_offset), tail = file_bytes(f, data_offset + 30, 100 + len - data_offset - 30);
  RegionChecksumBuilder b;
  b.add(0, head.size(), hash_bytes(head.data(), head.size()));
  b.add(data_offset, 30, data.digest());
  b.add(data_offset + 30, tail.size(), hash_bytes(tail.data(), tail.size()));
  EXPECT_EQ(gap.digest(), hash_bytes((head + tail).data(), head.size() + tail.size()));
  const RegionChecksum c = region_file_checksum(path, {{"key@0,0", data_offset, 30, hash_hex(data.digest())}});
  EXPECT_EQ(c.digest, b.digest());
  EXPECT_TRUE(c.bad.empty());
  // A flipped data byte: the region is named, the digest differs.
  {
    File w(path, File::Mode::ReadWrite);
    unsigned char x;
    w.pread_exact(&x, 1, data_offset + 3);
    x ^= 0x40;
    w.pwrite_exact(&x, 1, data_offset + 3);
  }
  const RegionChecksum d = region_file_checksum(path, {{"key@0,0", data_offset, 30, hash_hex(data.digest())}});
  EXPECT_NE(d.digest, b.digest());
  EXPECT_EQ(d.bad, (std::vector<std::string>{"key@0,0"}));
}
