// The torch.save zip container, written the way PyTorchStreamWriter (miniz)
// lays it out and read back from its central directory. Spec
// megatron-checkpoint-format.md §2.6; confirmed against torch 2.15 in
// docs/torch-dist-bytes.md.
#include "formats/torch_dist/torch_save.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <set>

#include "core/crc32.hpp"
#include "core/error.hpp"
#include "formats/torch_dist/pickle.hpp"

namespace mb {

namespace {

constexpr uint64_t kMax32 = 0xffffffffu;
constexpr uint64_t kAlignment = 64;  // torch's default storage alignment
constexpr uint32_t kLocalSig = 0x04034b50, kDescriptorSig = 0x08074b50, kCentralSig = 0x02014b50,
                   kZip64EndSig = 0x06064b50, kZip64LocatorSig = 0x07064b50, kEndSig = 0x06054b50;
constexpr uint16_t kFlagDescriptor = 0x0008, kFlagUtf8 = 0x0800;
constexpr size_t kLocalHeaderSize = 30, kCentralHeaderSize = 46, kEndSize = 22,
                 kZip64EndSize = 56, kZip64LocatorSize = 20;

void put16(std::string& o, uint64_t v) {
  for (int k = 0; k < 2; ++k) o += static_cast<char>((v >> (8 * k)) & 0xff);
}
void put32(std::string& o, uint64_t v) {
  for (int k = 0; k < 4; ++k) o += static_cast<char>((v >> (8 * k)) & 0xff);
}
void put64(std::string& o, uint64_t v) {
  for (int k = 0; k < 8; ++k) o += static_cast<char>((v >> (8 * k)) & 0xff);
}
uint64_t get_le(const char* p, size_t n) {
  uint64_t v = 0;
  for (size_t k = 0; k < n; ++k) v |= static_cast<uint64_t>(static_cast<unsigned char>(p[k])) << (8 * k);
  return v;
}
uint16_t get16(const char* p) { return static_cast<uint16_t>(get_le(p, 2)); }
uint32_t get32(const char* p) { return static_cast<uint32_t>(get_le(p, 4)); }
uint64_t get64(const char* p) { return get_le(p, 8); }

// miniz's rule: a record needs zip64 fields when its size or its header
// offset does not fit below 0xFFFFFFFF.
bool record_zip64(uint64_t size, uint64_t header_offset) {
  return size >= kMax32 || header_offset >= kMax32;
}

// The zip64 extra field (id 0x0001) with the values that overflow, in the
// order the zip specification fixes: uncompressed, compressed size, offset.
std::string zip64_extra(uint64_t size, uint64_t header_offset) {
  std::string f;
  if (size >= kMax32) {
    put64(f, size);
    put64(f, size);
  }
  if (header_offset >= kMax32) put64(f, header_offset);
  if (f.empty()) return f;
  std::string e;
  put16(e, 0x0001);
  put16(e, f.size());
  return e + f;
}

uint16_t record_flags(uint64_t size) {
  // miniz writes a data descriptor (flag bit 3) only for non-empty records.
  return size > 0 ? static_cast<uint16_t>(kFlagUtf8 | kFlagDescriptor) : kFlagUtf8;
}

// Local file header, zero CRC and sizes (a data descriptor follows), the
// zip64 extra when needed, then the "FB" padding extra that puts the data at a
// multiple of 64 bytes from the archive start.
std::string local_header(std::string_view name, uint64_t size, uint64_t header_offset) {
  MB_CHECK(name.size() < 0xffff, "torch.save: record name '{}' is too long", name);
  const std::string z64 = record_zip64(size, header_offset) ? zip64_extra(size, header_offset) : "";
  const uint64_t start = header_offset + kLocalHeaderSize + name.size() + z64.size() + 4;
  const uint64_t pad = (kAlignment - start % kAlignment) % kAlignment;
  std::string h;
  h.reserve(kLocalHeaderSize + name.size() + z64.size() + 4 + pad);
  put32(h, kLocalSig);
  put16(h, 0);  // version needed (miniz as used by torch writes 0)
  put16(h, record_flags(size));
  put16(h, 0);  // method: stored
  put16(h, 0);  // time
  put16(h, 0);  // date
  put32(h, 0);  // crc
  put32(h, 0);  // compressed size
  put32(h, 0);  // uncompressed size
  put16(h, name.size());
  put16(h, z64.size() + 4 + pad);
  h += name;
  h += z64;
  h += "FB";
  put16(h, pad);
  h.append(static_cast<size_t>(pad), 'Z');
  return h;
}

std::string data_descriptor(uint32_t crc, uint64_t size, uint64_t header_offset) {
  std::string d;
  if (size == 0) return d;
  put32(d, kDescriptorSig);
  put32(d, crc);
  if (record_zip64(size, header_offset)) {
    put64(d, size);
    put64(d, size);
  } else {
    put32(d, size);
    put32(d, size);
  }
  return d;
}

struct RecordInfo {
  std::string_view name;
  uint64_t header_offset, size;
  uint32_t crc;
};

// Central directory, zip64 end record, zip64 locator and classic end record.
std::string directory_and_end(const std::vector<RecordInfo>& recs, uint64_t cd_offset) {
  std::string cd;
  for (const RecordInfo& r : recs) {
    const std::string z64 = zip64_extra(r.size, r.header_offset);
    put32(cd, kCentralSig);
    put16(cd, 0);  // version made by
    put16(cd, 0);  // version needed
    put16(cd, record_flags(r.size));
    put16(cd, 0);  // method
    put16(cd, 0);  // time
    put16(cd, 0);  // date
    put32(cd, r.crc);
    put32(cd, std::min(r.size, kMax32));
    put32(cd, std::min(r.size, kMax32));
    put16(cd, r.name.size());
    put16(cd, z64.size());
    put16(cd, 0);  // comment
    put16(cd, 0);  // disk
    put16(cd, 0);  // internal attributes
    put32(cd, 0);  // external attributes
    put32(cd, std::min(r.header_offset, kMax32));
    cd += r.name;
    cd += z64;
  }
  const uint64_t cd_size = cd.size();
  const uint64_t z64_end = cd_offset + cd_size;
  const uint64_t n = recs.size();
  put32(cd, kZip64EndSig);
  put64(cd, kZip64EndSize - 12);
  put16(cd, 0x031e);  // made by: Unix, 3.0 (what miniz writes)
  put16(cd, 45);      // needed: zip64
  put32(cd, 0);
  put32(cd, 0);
  put64(cd, n);
  put64(cd, n);
  put64(cd, cd_size);
  put64(cd, cd_offset);
  put32(cd, kZip64LocatorSig);
  put32(cd, 0);
  put64(cd, z64_end);
  put32(cd, 1);
  put32(cd, kEndSig);
  put16(cd, 0);
  put16(cd, 0);
  put16(cd, std::min<uint64_t>(n, 0xffff));
  put16(cd, std::min<uint64_t>(n, 0xffff));
  put32(cd, std::min(cd_size, kMax32));
  put32(cd, std::min(cd_offset, kMax32));
  put16(cd, 0);  // comment
  return cd;
}

// A whole small record: header, data, descriptor.
void append_record(std::string& out, uint64_t header_offset, std::string_view name, std::string_view bytes,
                   uint32_t& crc) {
  crc = crc32_update(0, bytes.data(), bytes.size());
  out += local_header(name, bytes.size(), header_offset);
  out += bytes;
  out += data_descriptor(crc, bytes.size(), header_offset);
}

std::string_view storage_class(DType t) {
  switch (t) {
    case DType::BF16: return "BFloat16Storage";
    case DType::F16: return "HalfStorage";
    case DType::F32: return "FloatStorage";
    case DType::F64: return "DoubleStorage";
    case DType::I64: return "LongStorage";
    case DType::I32: return "IntStorage";
    case DType::I16: return "ShortStorage";
    case DType::I8: return "CharStorage";
    case DType::U8: return "ByteStorage";
    case DType::Bool: return "BoolStorage";
    default:
      throw Error("torch.save: dtype {} needs torch._utils._rebuild_tensor_v3, which is not supported",
                  dtype_name(t));
  }
}

// torch's contiguous strides: a zero-sized dimension counts as 1.
std::vector<uint64_t> contiguous_strides(const Shape& shape) {
  std::vector<uint64_t> st(shape.size());
  uint64_t s = 1;
  for (size_t d = shape.size(); d-- > 0;) {
    st[d] = s;
    s *= std::max<uint64_t>(shape[d], 1);
  }
  return st;
}

uint64_t checked_bytes(DType dtype, const Shape& shape) {
  uint64_t n = dtype_size(dtype);
  for (uint64_t d : shape) MB_CHECK(!__builtin_mul_overflow(n, d, &n), "torch.save: tensor {} is too large", shape_str(shape));
  return n;
}

}  // namespace

// --- writing ----------------------------------------------------------------

void pickle_tensor(pickle::Writer& w, const std::string& storage_key, DType dtype, const Shape& shape) {
  const std::string_view cls = storage_class(dtype);
  const uint64_t n = numel(shape);
  MB_CHECK(n <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), "torch.save: tensor too large");
  w.global("torch._utils", "_rebuild_tensor_v2");
  w.mark();
  w.mark();  // the persistent id
  w.string("storage");
  w.global("torch", cls);
  w.string(storage_key);
  w.string("cpu");
  w.integer(static_cast<int64_t>(n));
  w.tuple_from_mark();
  w.binpersid();
  w.integer(0);  // storage offset
  w.int_tuple(shape);
  w.int_tuple(contiguous_strides(shape));
  w.boolean(false);  // requires_grad
  w.global("collections", "OrderedDict");
  w.empty_tuple();
  w.reduce();
  w.tuple_from_mark();
  w.reduce();
}

std::string torch_save_archive(const std::string& data_pkl, const std::vector<std::string>& storages,
                               std::string_view archive) {
  MB_CHECK(!archive.empty() && archive.find('/') == std::string_view::npos,
           "torch.save: bad archive folder name '{}'", archive);
  const std::string prefix = std::string(archive) + "/";
  std::vector<std::string> names;
  std::vector<std::string_view> contents;
  names.push_back(prefix + "data.pkl");
  contents.emplace_back(data_pkl);
  names.push_back(prefix + "byteorder");
  contents.emplace_back("little");
  for (size_t k = 0; k < storages.size(); ++k) {
    names.push_back(fmt::format("{}data/{}", prefix, k));
    contents.emplace_back(storages[k]);
  }
  names.push_back(prefix + "version");
  contents.emplace_back("3\n");

  std::string out;
  std::vector<RecordInfo> recs;
  for (size_t k = 0; k < names.size(); ++k) {
    RecordInfo r{names[k], out.size(), contents[k].size(), 0};
    append_record(out, r.header_offset, names[k], contents[k], r.crc);
    recs.push_back(r);
  }
  out += directory_and_end(recs, out.size());
  return out;
}

TorchSaveTensorWriter::TorchSaveTensorWriter(ByteOutput& file, uint64_t base, DType dtype, const Shape& shape,
                                             Hasher* hash, Hasher* data_hash)
    : file_(file),
      hash_(hash),
      data_hash_(data_hash),
      base_(base),
      pos_(0),
      expected_(checked_bytes(dtype, shape)) {
  pickle::Writer w;
  pickle_tensor(w, "0", dtype, shape);
  add_record("archive/data.pkl", w.finish());
  add_record("archive/byteorder", "little");
  begin_record("archive/data/0", expected_);
  data_start_ = pos_;
  flush();
}

void TorchSaveTensorWriter::flush() {
  if (pending_.empty()) return;
  file_.write_at(pending_.data(), pending_.size(), base_ + pending_at_);
  if (hash_) hash_->update(pending_.data(), pending_.size());
  pending_.clear();
}

void TorchSaveTensorWriter::add_record(const std::string& name, std::string_view bytes) {
  if (pending_.empty()) pending_at_ = pos_;
  Record r{name, pos_, bytes.size(), 0};
  const size_t before = pending_.size();
  append_record(pending_, pos_, name, bytes, r.crc);
  pos_ += pending_.size() - before;
  records_.push_back(std::move(r));
}

void TorchSaveTensorWriter::begin_record(const std::string& name, uint64_t size) {
  if (pending_.empty()) pending_at_ = pos_;
  data_record_header_ = pos_;
  const std::string h = local_header(name, size, pos_);
  pending_ += h;
  pos_ += h.size();
  records_.push_back({name, data_record_header_, size, 0});
}

void TorchSaveTensorWriter::write(const void* data, uint64_t n) {
  MB_CHECK(!finished_, "torch.save: write after finish");
  MB_CHECK(n <= expected_ - written_, "torch.save writer for {}: {} more bytes than the tensor's {}",
           file_.output_path().string(), written_ + n - expected_, expected_);
  if (n == 0) return;
  file_.write_at(data, n, base_ + pos_);
  if (Hasher* h = data_hash_ ? data_hash_ : hash_) h->update(data, n);
  crc_ = crc32_update(crc_, data, n);
  pos_ += n;
  written_ += n;
}

void TorchSaveTensorWriter::end_record(uint32_t crc, uint64_t size) {
  Record& r = records_.back();
  r.crc = crc;
  r.size = size;
  if (pending_.empty()) pending_at_ = pos_;
  const std::string d = data_descriptor(crc, size, r.header_offset);
  pending_ += d;
  pos_ += d.size();
}

uint64_t TorchSaveTensorWriter::finish() {
  MB_CHECK(!finished_, "torch.save: finish called twice");
  MB_CHECK(written_ == expected_, "torch.save writer for {}: got {} tensor bytes, expected {}",
           file_.output_path().string(), written_, expected_);
  finished_ = true;
  end_record(crc_, written_);
  add_record("archive/version", "3\n");
  std::vector<RecordInfo> recs;
  for (const Record& r : records_) recs.push_back({r.name, r.header_offset, r.size, r.crc});
  const std::string tail = directory_and_end(recs, pos_);
  pending_ += tail;
  pos_ += tail.size();
  flush();
  return pos_;
}

// --- reading ----------------------------------------------------------------

namespace {

struct ZipEntry {
  std::string name;  // without the folder
  uint64_t header_offset = 0, size = 0, compressed = 0;
  uint32_t crc = 0;
  uint16_t method = 0;
};

struct ZipIndex {
  std::string folder;
  uint64_t cd_offset = 0;
  std::vector<ZipEntry> entries;
  const ZipEntry* find(std::string_view name) const {
    for (const ZipEntry& e : entries)
      if (e.name == name) return &e;
    return nullptr;
  }
};

class ArchiveReader {
 public:
  ArchiveReader(const File& f, uint64_t offset, uint64_t length, std::string_view what)
      : f_(f), off_(offset), len_(length), what_(what) {
    MB_CHECK(!__builtin_add_overflow(offset, length, &end_) && end_ <= f.size(),
             "{}: torch.save archive [{}, +{}) lies beyond the end of {} ({} bytes)", what_, offset, length,
             f.path().string(), f.size());
    index_ = read_index();
  }

  const ZipIndex& index() const { return index_; }

  const ZipEntry& entry(std::string_view name) const {
    const ZipEntry* e = index_.find(name);
    MB_CHECK(e != nullptr, "{}: the torch.save archive has no record '{}/{}'", what_, index_.folder, name);
    return *e;
  }

  // Offset of the record's data, relative to the archive start.
  uint64_t data_offset(const ZipEntry& e) const {
    MB_CHECK(e.method == 0, "{}: record '{}' is compressed (method {}); torch.save stores records",
             what_, e.name, e.method);
    MB_CHECK(e.compressed == e.size, "{}: record '{}' has compressed size {} != size {}", what_, e.name,
             e.compressed, e.size);
    const std::string full = index_.folder + "/" + e.name;
    MB_CHECK(e.header_offset <= index_.cd_offset &&
                 index_.cd_offset - e.header_offset >= kLocalHeaderSize + full.size(),
             "{}: local header of '{}' at {} lies outside the archive", what_, full, e.header_offset);
    std::string h = read(e.header_offset, kLocalHeaderSize + full.size());
    MB_CHECK(get32(h.data()) == kLocalSig, "{}: no local file header for '{}' at archive offset {}", what_,
             full, e.header_offset);
    const uint16_t name_len = get16(h.data() + 26), extra_len = get16(h.data() + 28);
    MB_CHECK(name_len == full.size() && h.compare(kLocalHeaderSize, name_len, full) == 0,
             "{}: local header at {} names '{}' instead of '{}'", what_, e.header_offset,
             h.substr(kLocalHeaderSize, std::min<size_t>(name_len, full.size())), full);
    const uint64_t data = e.header_offset + kLocalHeaderSize + name_len + extra_len;
    MB_CHECK(data <= index_.cd_offset && index_.cd_offset - data >= e.size,
             "{}: record '{}' ({} bytes at {}) overruns the central directory at {}", what_, full, e.size,
             data, index_.cd_offset);
    return data;
  }

  std::string contents(const ZipEntry& e, bool check_crc) const {
    std::string s = read(data_offset(e), e.size);
    if (check_crc && e.crc != 0) {
      const uint32_t c = crc32_update(0, s.data(), s.size());
      MB_CHECK(c == e.crc, "{}: record '{}/{}' is corrupt (CRC-32 {:08x}, expected {:08x})", what_,
               index_.folder, e.name, c, e.crc);
    }
    return s;
  }

  uint64_t absolute(uint64_t rel) const { return off_ + rel; }

 private:
  const File& f_;
  uint64_t off_, len_, end_ = 0;
  std::string_view what_;
  ZipIndex index_;

  std::string read(uint64_t rel, uint64_t n) const {
    MB_CHECK(rel <= len_ && len_ - rel >= n, "{}: torch.save archive: read of {} bytes at {} beyond its {} bytes",
             what_, n, rel, len_);
    std::string s(static_cast<size_t>(n), '\0');
    f_.pread_exact(s.data(), n, off_ + rel, what_);
    return s;
  }

  ZipIndex read_index() const {
    MB_CHECK(len_ >= kEndSize, "{}: {} bytes are too few for a torch.save archive", what_, len_);
    // The end records: EOCD last (torch writes no comment), the zip64 locator
    // and record just before it. One read usually covers all three.
    const uint64_t tail_n = std::min<uint64_t>(len_, kEndSize + kZip64LocatorSize + kZip64EndSize);
    const uint64_t tail_at = len_ - tail_n;
    const std::string tail = read(tail_at, tail_n);
    auto at = [&](uint64_t rel, uint64_t n) {
      if (rel >= tail_at && rel - tail_at + n <= tail_n) return tail.substr(rel - tail_at, n);
      return read(rel, n);
    };
    uint64_t eocd = len_ - kEndSize;
    std::string e = at(eocd, kEndSize);
    if (get32(e.data()) != kEndSig || get16(e.data() + 20) != 0) {
      // Tolerate a zip comment: search backwards for the end record.
      const uint64_t scan_n = std::min<uint64_t>(len_, kEndSize + 0xffff);
      const std::string scan = read(len_ - scan_n, scan_n);
      bool found = false;
      for (uint64_t k = scan_n - kEndSize + 1; k-- > 0;) {
        const char* p = scan.data() + k;
        if (get32(p) == kEndSig && k + kEndSize + get16(p + 20) == scan_n) {
          eocd = len_ - scan_n + k;
          found = true;
          break;
        }
      }
      MB_CHECK(found, "{}: not a torch.save archive (no zip end-of-central-directory record)", what_);
      e = read(eocd, kEndSize);
    }
    MB_CHECK(get16(e.data() + 4) == 0 && get16(e.data() + 6) == 0,
             "{}: multi-disk zip archives are not supported", what_);
    uint64_t entries = get16(e.data() + 10), cd_size = get32(e.data() + 12), cd_offset = get32(e.data() + 16);
    uint64_t cd_end_limit = eocd;
    const std::string loc = eocd >= kZip64LocatorSize ? at(eocd - kZip64LocatorSize, kZip64LocatorSize) : "";
    if (!loc.empty() && get32(loc.data()) == kZip64LocatorSig) {
      const uint64_t z_off = get64(loc.data() + 8);
      MB_CHECK(z_off <= eocd - kZip64LocatorSize && eocd - kZip64LocatorSize - z_off >= kZip64EndSize,
               "{}: zip64 locator points to {}, outside the archive", what_, z_off);
      const std::string z = at(z_off, kZip64EndSize);
      MB_CHECK(get32(z.data()) == kZip64EndSig, "{}: no zip64 end-of-central-directory record at {}", what_,
               z_off);
      const uint64_t z_entries = get64(z.data() + 32), z_cd_size = get64(z.data() + 40),
                     z_cd_offset = get64(z.data() + 48);
      MB_CHECK((entries == 0xffff || entries == z_entries) && (cd_size == kMax32 || cd_size == z_cd_size) &&
                   (cd_offset == kMax32 || cd_offset == z_cd_offset),
               "{}: zip64 and classic end records disagree", what_);
      entries = z_entries;
      cd_size = z_cd_size;
      cd_offset = z_cd_offset;
      cd_end_limit = z_off;
    } else {
      MB_CHECK(entries != 0xffff && cd_size != kMax32 && cd_offset != kMax32,
               "{}: zip end record needs zip64 values but there is no zip64 locator", what_);
    }
    MB_CHECK(cd_offset <= cd_end_limit && cd_end_limit - cd_offset >= cd_size,
             "{}: central directory [{}, +{}) lies outside the archive", what_, cd_offset, cd_size);
    MB_CHECK(entries <= cd_size / kCentralHeaderSize, "{}: {} entries cannot fit a central directory of {} bytes",
             what_, entries, cd_size);
    const std::string cd = read(cd_offset, cd_size);
    ZipIndex idx;
    idx.cd_offset = cd_offset;
    size_t p = 0;
    for (uint64_t k = 0; k < entries; ++k) {
      MB_CHECK(cd.size() - p >= kCentralHeaderSize && get32(cd.data() + p) == kCentralSig,
               "{}: central directory entry {} is malformed", what_, k);
      const char* h = cd.data() + p;
      ZipEntry en;
      en.method = get16(h + 10);
      en.crc = get32(h + 16);
      en.compressed = get32(h + 20);
      en.size = get32(h + 24);
      const uint16_t n = get16(h + 28), x = get16(h + 30), c = get16(h + 32);
      en.header_offset = get32(h + 42);
      MB_CHECK(cd.size() - p - kCentralHeaderSize >= uint64_t{n} + x + c,
               "{}: central directory entry {} overruns the directory", what_, k);
      std::string name(h + kCentralHeaderSize, n);
      // zip64 extra: the fields that are saturated, in fixed order.
      const char* xp = h + kCentralHeaderSize + n;
      for (size_t q = 0; q + 4 <= x;) {
        const uint16_t id = get16(xp + q), sz = get16(xp + q + 2);
        MB_CHECK(q + 4 + sz <= x, "{}: bad extra field in the entry of '{}'", what_, name);
        if (id == 0x0001) {
          size_t r = q + 4;
          auto next = [&](uint64_t& field) {
            if (field != kMax32) return;
            MB_CHECK(r + 8 <= q + 4 + sz, "{}: short zip64 extra field in the entry of '{}'", what_, name);
            field = get64(xp + r);
            r += 8;
          };
          next(en.size);
          next(en.compressed);
          next(en.header_offset);
        }
        q += 4 + sz;
      }
      p += kCentralHeaderSize + n + x + c;
      const size_t slash = name.find('/');
      MB_CHECK(slash != std::string::npos && slash > 0,
               "{}: archive record '{}' is not inside a folder, as torch.save writes them", what_, name);
      if (k == 0) idx.folder = name.substr(0, slash);
      MB_CHECK(name.compare(0, slash, idx.folder) == 0 && slash == idx.folder.size(),
               "{}: archive record '{}' is outside the folder '{}' of the first record", what_, name, idx.folder);
      en.name = name.substr(slash + 1);
      idx.entries.push_back(std::move(en));
    }
    MB_CHECK(!idx.entries.empty(), "{}: the torch.save archive is empty", what_);
    return idx;
  }
};

// Everything a plain tensor's data.pkl may reference.
const std::set<std::string>& tensor_globals() {
  static const std::set<std::string> s = [] {
    std::set<std::string> g = {"torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor_v3",
                               "collections.OrderedDict", "torch.Size", "torch.UntypedStorage"};
    for (const char* c : {"BFloat16Storage", "HalfStorage", "FloatStorage", "DoubleStorage", "LongStorage",
                          "IntStorage", "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage"})
      g.insert(std::string("torch.") + c);
    for (const char* d : {"bfloat16", "float16", "float32", "float64", "int64", "int32", "int16", "int8",
                          "uint8", "bool", "float8_e4m3fn", "float8_e5m2", "uint16", "uint32", "uint64"})
      g.insert(std::string("torch.") + d);
    return g;
  }();
  return s;
}

std::optional<DType> dtype_of_storage(std::string_view g) {
  static const std::map<std::string_view, DType> m = {
      {"torch.BFloat16Storage", DType::BF16}, {"torch.HalfStorage", DType::F16},
      {"torch.FloatStorage", DType::F32},     {"torch.DoubleStorage", DType::F64},
      {"torch.LongStorage", DType::I64},      {"torch.IntStorage", DType::I32},
      {"torch.ShortStorage", DType::I16},     {"torch.CharStorage", DType::I8},
      {"torch.ByteStorage", DType::U8},       {"torch.BoolStorage", DType::Bool}};
  auto it = m.find(g);
  if (it == m.end()) return std::nullopt;
  return it->second;
}

std::optional<DType> dtype_of_torch_global(std::string_view g) {
  if (g.substr(0, 6) != "torch.") return std::nullopt;
  const std::string_view n = g.substr(6);
  for (DType t : {DType::Bool, DType::U8, DType::I8, DType::F8_E5M2, DType::F8_E4M3, DType::I16, DType::U16,
                  DType::F16, DType::BF16, DType::I32, DType::U32, DType::F32, DType::F64, DType::I64, DType::U64})
    if (dtype_torch_name(t) == n) return t;
  return std::nullopt;
}

// A tuple of non-negative ints (or a torch.Size object wrapping one).
std::vector<uint64_t> int_tuple(const pickle::Value& v, std::string_view field, std::string_view what) {
  const pickle::Value* t = &v;
  if (v.is(pickle::Value::Kind::Object) && v.cls->s == "torch.Size" && v.args->items.size() == 1)
    t = &v.args->items[0];
  MB_CHECK(t->is(pickle::Value::Kind::Tuple) || t->is(pickle::Value::Kind::List),
           "{}: tensor {} is {} instead of a tuple of ints", what, field, v.describe());
  std::vector<uint64_t> out;
  for (const pickle::Value& x : t->items) {
    MB_CHECK(x.is(pickle::Value::Kind::Int) && x.i >= 0, "{}: tensor {} holds {} instead of an int >= 0",
             what, field, x.describe());
    out.push_back(static_cast<uint64_t>(x.i));
  }
  return out;
}

}  // namespace

std::string read_torch_archive_record(const File& file, uint64_t offset, uint64_t length,
                                      std::string_view record, std::string_view what) {
  ArchiveReader ar(file, offset, length, what);
  return ar.contents(ar.entry(record), true);
}

TorchTensorItem read_torch_tensor_item(const File& file, uint64_t offset, uint64_t length,
                                       std::string_view what) {
  using K = pickle::Value::Kind;
  ArchiveReader ar(file, offset, length, what);
  if (const ZipEntry* bo = ar.index().find("byteorder")) {
    MB_CHECK(bo->size <= 16, "{}: byteorder record of {} bytes", what, bo->size);
    const std::string order = ar.contents(*bo, true);
    MB_CHECK(order == "little", "{}: tensor bytes are stored '{}'-endian; only little-endian is supported",
             what, order);
  }
  const std::string pkl = ar.contents(ar.entry("data.pkl"), true);
  const std::string pkl_what = fmt::format("{} (data.pkl)", what);
  const pickle::Value v = pickle::loads(pkl, tensor_globals(), pkl_what);

  MB_CHECK(v.is(K::Object) && v.cls->is(K::Global) &&
               (v.cls->s == "torch._utils._rebuild_tensor_v2" || v.cls->s == "torch._utils._rebuild_tensor_v3"),
           "{}: data.pkl holds {} instead of a tensor", what, v.describe());
  const bool v3 = v.cls->s == "torch._utils._rebuild_tensor_v3";
  const auto& a = v.args->items;
  MB_CHECK(v.args->is(K::Tuple) && a.size() >= (v3 ? 7u : 6u),
           "{}: {} called with {} instead of its {} arguments", what, v.cls->s, v.args->describe(),
           v3 ? 7 : 6);
  // The persistent id: ('storage', StorageClass, key, location, numel).
  MB_CHECK(a[0].is(K::PersId) && a[0].items.size() == 1 && a[0].items[0].is(K::Tuple),
           "{}: the tensor's storage is {} instead of a persistent id", what, a[0].describe());
  const auto& pid = a[0].items[0].items;
  MB_CHECK(pid.size() == 5 && pid[0].is(K::String) && pid[0].s == "storage" && pid[1].is(K::Global) &&
               pid[2].is(K::String) && pid[3].is(K::String) && pid[4].is(K::Int) && pid[4].i >= 0,
           "{}: malformed storage persistent id", what);
  TorchTensorItem t;
  const bool untyped = pid[1].s == "torch.UntypedStorage";
  if (v3) {
    MB_CHECK(a[6].is(K::Global), "{}: _rebuild_tensor_v3 dtype is {}", what, a[6].describe());
    const auto d = dtype_of_torch_global(a[6].s);
    MB_CHECK(d.has_value(), "{}: unsupported tensor dtype {}", what, a[6].s);
    t.dtype = *d;
    if (!untyped) {
      const auto sd = dtype_of_storage(pid[1].s);
      MB_CHECK(sd == d, "{}: storage class {} does not match dtype {}", what, pid[1].s, a[6].s);
    }
  } else {
    const auto d = dtype_of_storage(pid[1].s);
    MB_CHECK(d.has_value(), "{}: unsupported storage class {}", what, pid[1].s);
    t.dtype = *d;
  }
  const uint64_t es = dtype_size(t.dtype);
  // An UntypedStorage counts bytes, typed storages count elements.
  const auto pid_numel = static_cast<uint64_t>(pid[4].i);
  uint64_t pid_bytes = pid_numel;
  MB_CHECK(untyped || !__builtin_mul_overflow(pid_numel, es, &pid_bytes), "{}: storage size overflows", what);

  MB_CHECK(a[1].is(K::Int) && a[1].i >= 0, "{}: storage offset is {}", what, a[1].describe());
  t.storage_offset = static_cast<uint64_t>(a[1].i);
  t.shape = int_tuple(a[2], "size", what);
  t.stride = int_tuple(a[3], "stride", what);
  MB_CHECK(t.shape.size() == t.stride.size(), "{}: size {} and stride {} differ in rank", what,
           shape_str(t.shape), shape_str(t.stride));

  const ZipEntry& rec = ar.entry("data/" + pid[2].s);
  MB_CHECK(rec.size == pid_bytes, "{}: record data/{} holds {} bytes but the storage needs {}", what, pid[2].s,
           rec.size, pid_bytes);
  t.storage_bytes = rec.size;
  t.data_offset = ar.absolute(ar.data_offset(rec));

  // A shape whose element count overflows (e.g. [2^32, 2^32]) would wrap
  // numel() to 0 and skip the bounds check below.
  uint64_t elements = 1;
  for (uint64_t d : t.shape)
    MB_CHECK(!__builtin_mul_overflow(elements, d, &elements),
             "{}: tensor size {} has more elements than 64 bits can count", what, shape_str(t.shape));
  // The furthest element the view touches must lie inside the storage.
  if (elements > 0) {
    uint64_t last = t.storage_offset;
    bool overflow = false;
    for (size_t d = 0; d < t.shape.size(); ++d) {
      uint64_t step = 0;
      overflow |= __builtin_mul_overflow(t.shape[d] - 1, t.stride[d], &step);
      overflow |= __builtin_add_overflow(last, step, &last);
    }
    uint64_t need = 0;
    overflow |= __builtin_add_overflow(last, 1, &need);
    overflow |= __builtin_mul_overflow(need, es, &need);
    MB_CHECK(!overflow && need <= t.storage_bytes,
             "{}: tensor {} (stride {}, offset {}) needs {} bytes but its storage holds {}", what,
             shape_str(t.shape), shape_str(t.stride), t.storage_offset, need, t.storage_bytes);
  }
  return t;
}

}  // namespace mb
