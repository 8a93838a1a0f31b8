#include "formats/hdf5/hdf5_shard.hpp"

#include <hdf5.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <mutex>
#include <string_view>
#include <vector>

#include "core/error.hpp"
#include "core/hash.hpp"
#include "core/nd_box.hpp"
#include "core/path_safety.hpp"

namespace mb {
namespace fs = std::filesystem;

namespace {
// The HDF5 library we link is not built thread-safe, and the copy engine may
// write one block from a helper thread while reading the next (reshard reads
// and writes HDF5): every entry point takes this lock.
std::recursive_mutex& hdf5_mutex() {
  static std::recursive_mutex m;
  return m;
}
#define MB_HDF5_LOCK std::lock_guard<std::recursive_mutex> hdf5_guard_(hdf5_mutex())

// HDF5 prints its own error stack by default; we report errors ourselves.
void silence_hdf5() {
  static std::once_flag once;
  std::call_once(once, [] { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); });
}


// The innermost messages of HDF5's error stack (where the system error, e.g.
// "No space left on device", is reported), for our own error messages.
std::string hdf5_error_detail() {
  std::vector<std::string> msgs;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_UPWARD,
      [](unsigned, const H5E_error2_t* e, void* data) -> herr_t {
        if (e->desc && *e->desc) static_cast<std::vector<std::string>*>(data)->emplace_back(e->desc);
        return 0;
      },
      &msgs);
  H5Eclear2(H5E_DEFAULT);
  if (msgs.empty()) return {};
  std::string out = " (HDF5: " + msgs.front();
  if (msgs.size() > 1) out += "; " + msgs[1];
  return out + ")";
}

// An HDF5 identifier, closed with `close` when it goes out of scope, so that
// an error thrown half way through a sequence of calls leaks nothing.
class Hid {
 public:
  Hid(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  ~Hid() {
    if (id_ >= 0) close_(id_);
  }
  Hid(const Hid&) = delete;
  Hid& operator=(const Hid&) = delete;
  operator hid_t() const { return id_; }  // NOLINT: used where HDF5 takes a hid_t
  hid_t release() {
    const hid_t id = id_;
    id_ = -1;
    return id;
  }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

// Every HDF5 call is checked: a negative identifier or status becomes an
// error naming what was being done, with HDF5's own reason.
hid_t must_id(hid_t id, std::string_view what) {
  if (id < 0) throw Error("{} failed{}", what, hdf5_error_detail());
  return id;
}
void must_ok(herr_t rc, std::string_view what) {
  if (rc < 0) throw Error("{} failed{}", what, hdf5_error_detail());
}

// File access properties with a small metadata cache. libhdf5 sizes its
// cache by the entries' bytes on disk (2 MiB at first, growing to 32 MiB),
// but an object header decoded in memory takes several times its disk size:
// a reader that had opened each of a shard's 1,386 datasets once held 2,022
// entries, 1 MiB on disk, 11.8 MiB of heap (H5get_free_list_sizes), and a
// reshard, which has a reader and a writer open, 28.5 MiB of libhdf5 heap
// (heaptrack). A reader touches each dataset once (opens and lists it), so
// 512 KiB costs it nothing measurable. A writer adds a link to the root group
// for every dataset, and its group B-tree and heap must stay cached: at 1 MiB
// a one-layer 35B-A3B import took 9.9 s instead of 6.3 s (512 KiB: 10.0 s against
// 6.0 s, back to back; this disk varies by 2x over minutes); 4 MiB is as fast as
// the default and uses less memory. Peak RSS at --buffer-mb 16 of a reshard of
// that checkpoint went from 85.5 to 61 MiB, of its export from 68.5 to 55.
hid_t bounded_fapl(const fs::path& path, bool writer) {
  const std::string what = path.string() + ": file access properties";
  hid_t fapl = must_id(H5Pcreate(H5P_FILE_ACCESS), what);
  try {
    H5AC_cache_config_t c;
    c.version = H5AC__CURR_CACHE_CONFIG_VERSION;
    must_ok(H5Pget_mdc_config(fapl, &c), what);
    c.set_initial_size = true;
    c.initial_size = 256 << 10;
    c.min_size = 128 << 10;
    c.max_size = writer ? 4 << 20 : 512 << 10;
    must_ok(H5Pset_mdc_config(fapl, &c), what);
  } catch (...) {
    H5Pclose(fapl);
    throw;
  }
  return fapl;
}

// A custom HDF5 float type: the library and h5py convert it by its fields.
hid_t make_float_type(size_t bytes, size_t sign_pos, size_t exp_pos, size_t exp_bits,
                      size_t man_bits, size_t bias) {
  Hid t(must_id(H5Tcopy(H5T_IEEE_F32LE), "HDF5 H5Tcopy of a float type"), H5Tclose);
  must_ok(H5Tset_fields(t, sign_pos, exp_pos, exp_bits, 0, man_bits), "HDF5 H5Tset_fields");
  must_ok(H5Tset_offset(t, 0), "HDF5 H5Tset_offset");
  must_ok(H5Tset_precision(t, bytes * 8), "HDF5 H5Tset_precision");
  must_ok(H5Tset_size(t, bytes), "HDF5 H5Tset_size");
  must_ok(H5Tset_ebias(t, bias), "HDF5 H5Tset_ebias");
  return t.release();
}

struct TypeHandle {
  hid_t id;
  bool owned;
  ~TypeHandle() {
    if (owned) H5Tclose(id);
  }
};

TypeHandle type_for(DType t) {
  switch (t) {
    case DType::BF16: return {make_float_type(2, 15, 7, 8, 7, 127), true};
    case DType::F16: return {make_float_type(2, 15, 10, 5, 10, 15), true};
    case DType::F8_E4M3: return {make_float_type(1, 7, 3, 4, 3, 7), true};
    case DType::F8_E5M2: return {make_float_type(1, 7, 2, 5, 2, 15), true};
    case DType::F32: return {H5T_IEEE_F32LE, false};
    case DType::F64: return {H5T_IEEE_F64LE, false};
    case DType::Bool:
    case DType::U8: return {H5T_STD_U8LE, false};
    case DType::I8: return {H5T_STD_I8LE, false};
    case DType::I16: return {H5T_STD_I16LE, false};
    case DType::U16: return {H5T_STD_U16LE, false};
    case DType::I32: return {H5T_STD_I32LE, false};
    case DType::U32: return {H5T_STD_U32LE, false};
    case DType::I64: return {H5T_STD_I64LE, false};
    case DType::U64: return {H5T_STD_U64LE, false};
  }
  throw Error("internal: no HDF5 type for dtype {}", static_cast<int>(t));
}

// Variable-length UTF-8, which h5py returns as str (fixed-length comes back as bytes).
void put_string_attr(hid_t obj, const char* name, const std::string& value) {
  const std::string what = fmt::format("writing HDF5 attribute '{}'", name);
  Hid type(must_id(H5Tcopy(H5T_C_S1), what), H5Tclose);
  must_ok(H5Tset_size(type, H5T_VARIABLE), what);
  must_ok(H5Tset_cset(type, H5T_CSET_UTF8), what);
  Hid space(must_id(H5Screate(H5S_SCALAR), what), H5Sclose);
  Hid attr(must_id(H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT), what), H5Aclose);
  const char* p = value.c_str();
  must_ok(H5Awrite(attr, type, &p), what);
}

void put_u64_attr(hid_t obj, const char* name, const std::vector<uint64_t>& values, bool scalar) {
  const std::string what = fmt::format("writing HDF5 attribute '{}'", name);
  hsize_t n = values.size();
  Hid space(must_id(scalar ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, &n, nullptr), what),
            H5Sclose);
  Hid attr(must_id(H5Acreate2(obj, name, H5T_STD_U64LE, space, H5P_DEFAULT, H5P_DEFAULT), what),
           H5Aclose);
  must_ok(H5Awrite(attr, H5T_NATIVE_UINT64, values.data()), what);
}

bool has_attr(hid_t obj, const char* name) { return H5Aexists(obj, name) > 0; }

std::string get_string_attr(hid_t obj, const char* name, const std::string& where) {
  MB_CHECK(has_attr(obj, name), "{}: missing attribute '{}'", where, name);
  const std::string what = fmt::format("{}: reading attribute '{}'", where, name);
  Hid attr(must_id(H5Aopen(obj, name, H5P_DEFAULT), what), H5Aclose);
  Hid ftype(must_id(H5Aget_type(attr), what), H5Tclose);
  MB_CHECK(H5Tget_class(ftype) == H5T_STRING, "{}: attribute '{}' is not a string", where, name);
  const H5T_cset_t cset = H5Tget_cset(ftype);
  must_ok(cset < 0 ? -1 : 0, what);
  Hid mtype(must_id(H5Tcopy(H5T_C_S1), what), H5Tclose);
  must_ok(H5Tset_cset(mtype, cset), what);  // HDF5 does not convert between ASCII and UTF-8
  const htri_t variable = H5Tis_variable_str(ftype);
  must_ok(variable < 0 ? -1 : 0, what);
  if (variable > 0) {
    must_ok(H5Tset_size(mtype, H5T_VARIABLE), what);
    char* p = nullptr;
    must_ok(H5Aread(attr, mtype, &p), what);
    std::string out = p ? p : "";
    if (p) H5free_memory(p);
    return out;
  }
  const size_t n = H5Tget_size(ftype);
  MB_CHECK(n > 0, "{}: attribute '{}' has no size", where, name);
  std::vector<char> buf(n + 1, '\0');
  must_ok(H5Tset_size(mtype, n), what);
  must_ok(H5Aread(attr, mtype, buf.data()), what);
  return std::string(buf.data(), strnlen(buf.data(), n));
}

std::vector<uint64_t> get_u64_attr(hid_t obj, const char* name, const std::string& where) {
  MB_CHECK(has_attr(obj, name), "{}: missing attribute '{}'", where, name);
  const std::string what = fmt::format("{}: reading attribute '{}'", where, name);
  Hid attr(must_id(H5Aopen(obj, name, H5P_DEFAULT), what), H5Aclose);
  Hid space(must_id(H5Aget_space(attr), what), H5Sclose);
  const hssize_t n = H5Sget_simple_extent_npoints(space);
  MB_CHECK(n >= 0 && n <= (1 << 20), "{}: attribute '{}' has {} elements", where, name, n);
  std::vector<uint64_t> v(static_cast<size_t>(n));
  if (!v.empty()) must_ok(H5Aread(attr, H5T_NATIVE_UINT64, v.data()), what);
  return v;
}

std::vector<hsize_t> dims_of(const Shape& s) {
  if (s.empty()) return {1};
  return std::vector<hsize_t>(s.begin(), s.end());
}

// Selects rows [r0, r1) x cols [c0, c1) of the 2-D view in an N-D dataspace,
// as a union of hyperslabs.
// A failed selection would read or write another region than asked for.
void select_rows(hid_t space, const std::vector<hsize_t>& dims, uint64_t r0, uint64_t r1,
                 uint64_t c0, uint64_t c1, std::string_view where) {
  const Shape shape(dims.begin(), dims.end());
  bool first = true;
  for (const Box& b : rows_to_boxes(shape, r0, r1, c0, c1)) {
    const std::vector<hsize_t> start(b.offsets.begin(), b.offsets.end());
    const std::vector<hsize_t> count(b.sizes.begin(), b.sizes.end());
    must_ok(H5Sselect_hyperslab(space, first ? H5S_SELECT_SET : H5S_SELECT_OR, start.data(),
                                nullptr, count.data(), nullptr),
            fmt::format("{}: selecting rows [{}, {}) cols [{}, {})", where, r0, r1, c0, c1));
    first = false;
  }
}
}  // namespace

int64_t hdf5_type_for(DType t) {
  MB_HDF5_LOCK;
  TypeHandle h = type_for(t);
  return h.owned ? must_id(H5Tcopy(h.id), "HDF5 H5Tcopy") : h.id;
}

Hdf5ShardWriter::Hdf5ShardWriter(const fs::path& path, const ShardFileInfo& info, IoConfig io)
    : path_(path), io_(io) {
  MB_HDF5_LOCK;
  silence_hdf5();
  // Large datasets start on a page boundary: their direct-written middle then
  // begins at their first byte.
  Hid fapl(bounded_fapl(path, true), H5Pclose);
  must_ok(H5Pset_alignment(fapl, kHdf5AlignThreshold, 4096), path.string() + ": H5Pset_alignment");
  Hid file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl), H5Fclose);
  MB_CHECK(file >= 0, "cannot create HDF5 file {}{}", path.string(), hdf5_error_detail());
  try {
    put_string_attr(file, "format", info.format);
    put_u64_attr(file, "tp_rank", {info.tp_rank}, true);
    put_u64_attr(file, "pp_rank", {info.pp_rank}, true);
    put_u64_attr(file, "ep_rank", {info.ep_rank}, true);
    put_u64_attr(file, "etp_rank", {info.etp_rank}, true);
    put_u64_attr(file, "tp_size", {info.tp_size}, true);
    put_u64_attr(file, "pp_size", {info.pp_size}, true);
    put_u64_attr(file, "ep_size", {info.ep_size}, true);
    put_u64_attr(file, "etp_size", {info.etp_size}, true);
    for (const auto& [k, v] : info.extra) put_string_attr(file, k.c_str(), v);
    raw_ = std::make_unique<RegionFile>(path, io.mode);
    data_ = std::make_unique<StreamingRegionWriter>(*raw_, io.chunk_bytes);
  } catch (...) {
    rethrow_with_context(path.string());
  }
  file_ = file.release();  // the destructor closes it from here on
}

Hdf5ShardWriter::~Hdf5ShardWriter() {
  MB_HDF5_LOCK;
  data_.reset();  // waits for the helper thread
  if (dset_ >= 0) H5Dclose(dset_);
  if (file_ >= 0) H5Fclose(file_);
}

bool Hdf5ShardWriter::direct() const { return raw_ && raw_->direct(); }

void Hdf5ShardWriter::begin_dataset(const ShardDatasetInfo& info) {
  MB_HDF5_LOCK;
  MB_CHECK(dset_ < 0, "internal: dataset {} still open in {}", cur_.name, path_.string());
  cur_ = info;
  const std::string what = fmt::format("{}: creating dataset '{}'", path_.string(), info.name);
  const auto dims = dims_of(info.shape);
  Hid space(must_id(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), what),
            H5Sclose);
  TypeHandle type = type_for(info.dtype);
  // No modification times in object headers: the same tensors give the same
  // file bytes, so outputs can be compared with cmp (reshard vs import).
  // Contiguous storage allocated now and never filled: HDF5 writes none of
  // the data bytes, we write them all (write_rows).
  Hid dcpl(must_id(H5Pcreate(H5P_DATASET_CREATE), what), H5Pclose);
  must_ok(H5Pset_obj_track_times(dcpl, false), what);
  must_ok(H5Pset_layout(dcpl, H5D_CONTIGUOUS), what);
  must_ok(H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY), what);
  must_ok(H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER), what);
  dset_ = must_id(
      H5Dcreate2(file_, info.name.c_str(), type.id, space, H5P_DEFAULT, dcpl, H5P_DEFAULT), what);
  // From here the dataset is dset_, closed by the destructor on any error.
  try {
    put_string_attr(dset_, "global_name", info.global_name);
    put_u64_attr(dset_, "global_shape", info.global_shape, false);
    put_string_attr(dset_, "dtype", std::string(dtype_torch_name(info.dtype)));
    row_bytes_ = cols_2d(info.shape) * dtype_size(info.dtype);
    const uint64_t bytes = rows_2d(info.shape) * row_bytes_;
    next_row_ = 0;
    in_dataset_ = false;
    if (bytes > 0) {
      const haddr_t at = H5Dget_offset(dset_);
      MB_CHECK(at != HADDR_UNDEF, "HDF5 allocated no contiguous storage for it{}",
               hdf5_error_detail());
      MB_CHECK(H5Dget_storage_size(dset_) == bytes, "HDF5 allocated {} bytes, not {}",
               H5Dget_storage_size(dset_), bytes);
      data_->begin(at, at + bytes);
      in_dataset_ = true;
      regions_.push_back({info.name, at, bytes, {}});
    }
  } catch (...) {
    rethrow_with_context(what);
  }
}

void Hdf5ShardWriter::write_rows(uint64_t row0, uint64_t rows, const void* data, uint64_t stride) {
  // Our own file handle, not HDF5's: no HDF5 lock, so that a reshard's
  // reading thread is not held up by the writes.
  MB_CHECK(in_dataset_ && row0 == next_row_ && row0 + rows <= rows_2d(cur_.shape),
           "internal: {}: rows [{}, {}) of dataset '{}' {} written out of order (next row {})",
           path_.string(), row0, row0 + rows, cur_.name, shape_str(cur_.shape), next_row_);
  try {
    if (stride == row_bytes_) {
      data_->write(data, rows * row_bytes_);
    } else {
      const auto* p = static_cast<const unsigned char*>(data);
      for (uint64_t r = 0; r < rows; ++r) data_->write(p + r * stride, row_bytes_);
    }
  } catch (...) {
    rethrow_with_context(fmt::format("{}: writing rows [{}, {}) of dataset '{}'",
                                     path_.string(), row0, row0 + rows, cur_.name));
  }
  next_row_ = row0 + rows;
}

void Hdf5ShardWriter::end_dataset(const std::string& xxh3) {
  MB_HDF5_LOCK;
  MB_CHECK(next_row_ == rows_2d(cur_.shape) || !in_dataset_,
           "internal: {}: dataset '{}' closed after {} of its {} rows", path_.string(), cur_.name,
           next_row_, rows_2d(cur_.shape));
  // in_dataset_: the dataset has bytes, so begin_dataset recorded its region last.
  const bool has_region = in_dataset_;
  if (has_region) data_->end();  // every row came; the last block may still be in flight
  in_dataset_ = false;
  put_string_attr(dset_, "xxh3", xxh3);
  if (has_region) regions_.back().xxh3 = xxh3;
  MB_CHECK(H5Dclose(dset_) >= 0, "{}: closing dataset '{}' failed{}", path_.string(), cur_.name,
           hdf5_error_detail());
  dset_ = -1;
}

void Hdf5ShardWriter::close() {
  MB_HDF5_LOCK;
  if (data_) data_->finish();  // every data byte written (or the write error) before HDF5 closes
  data_.reset();
  raw_.reset();
  if (dset_ >= 0) {
    H5Dclose(dset_);
    dset_ = -1;
  }
  if (file_ >= 0) {
    herr_t rc = H5Fclose(file_);
    file_ = -1;
    MB_CHECK(rc >= 0, "closing {} failed{}", path_.string(), hdf5_error_detail());
  }
}

Hdf5ShardUpdater::Hdf5ShardUpdater(const fs::path& path, const ShardFileInfo& info,
                                   const std::vector<ShardDatasetInfo>& datasets)
    : path_(path), info_(datasets) {
  MB_HDF5_LOCK;
  {
    Hdf5ShardWriter w(path, info);  // the file and its attributes
    w.close();
  }
  Hid fapl(bounded_fapl(path, true), H5Pclose);
  Hid file(H5Fopen(path.c_str(), H5F_ACC_RDWR, fapl), H5Fclose);
  MB_CHECK(file >= 0, "cannot reopen {} for writing{}", path.string(), hdf5_error_detail());
  // Every identifier is owned by a Hid: an attribute that cannot be written
  // (disk full) throws without leaking the property list, the dataset or
  // the file.
  Hid dcpl(must_id(H5Pcreate(H5P_DATASET_CREATE), path.string() + ": H5Pcreate"), H5Pclose);
  must_ok(H5Pset_obj_track_times(dcpl, false), path.string() + ": H5Pset_obj_track_times");
  for (const auto& d : datasets) {
    const std::string what = fmt::format("{}: creating dataset '{}'", path.string(), d.name);
    const auto dims = dims_of(d.shape);
    Hid space(must_id(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), what),
              H5Sclose);
    TypeHandle type = type_for(d.dtype);
    Hid id(must_id(H5Dcreate2(file, d.name.c_str(), type.id, space, H5P_DEFAULT, dcpl, H5P_DEFAULT),
                   what),
           H5Dclose);
    try {
      put_string_attr(id, "global_name", d.global_name);
      put_u64_attr(id, "global_shape", d.global_shape, false);
      put_string_attr(id, "dtype", std::string(dtype_torch_name(d.dtype)));
    } catch (...) {
      rethrow_with_context(what);
    }
  }
  file_ = file.release();
}

int64_t OneOpenDataset::get(int64_t file, const std::string& name, const fs::path& path) {
  if (id_ >= 0 && name_ == name) return id_;
  close();
  id_ = H5Dopen2(file, name.c_str(), H5P_DEFAULT);
  MB_CHECK(id_ >= 0, "{}: cannot open dataset '{}'{}", path.string(), name, hdf5_error_detail());
  name_ = name;
  return id_;
}

void OneOpenDataset::close() {
  if (id_ >= 0) H5Dclose(id_);
  id_ = -1;
  name_.clear();
}

Hdf5ShardUpdater::~Hdf5ShardUpdater() {
  MB_HDF5_LOCK;
  open_.close();
  if (file_ >= 0) H5Fclose(file_);
}

void Hdf5ShardUpdater::write_rect(size_t dataset, uint64_t row0, uint64_t rows, uint64_t col0,
                                  uint64_t cols, const void* data) {
  MB_HDF5_LOCK;
  const ShardDatasetInfo& d = info_.at(dataset);
  const std::string what =
      fmt::format("{}: writing rows [{}, {}) cols [{}, {}) of dataset '{}'", path_.string(), row0,
                  row0 + rows, col0, col0 + cols, d.name);
  const hid_t dset = open_.get(file_, d.name, path_);
  Hid fspace(must_id(H5Dget_space(dset), what), H5Sclose);
  select_rows(fspace, dims_of(d.shape), row0, row0 + rows, col0, col0 + cols, what);
  hsize_t n = rows * cols;
  Hid mspace(must_id(H5Screate_simple(1, &n, nullptr), what), H5Sclose);
  TypeHandle type = type_for(d.dtype);
  must_ok(H5Dwrite(dset, type.id, mspace, fspace, H5P_DEFAULT, data), what);
}

std::string Hdf5ShardUpdater::finish_dataset(size_t dataset, uint64_t block_bytes) {
  MB_HDF5_LOCK;
  const ChecksumReadScope counted;  // reported apart from input reads by bench
  const ShardDatasetInfo& d = info_.at(dataset);
  const uint64_t rows = rows_2d(d.shape), cols = cols_2d(d.shape), es = dtype_size(d.dtype);
  const uint64_t block = std::max<uint64_t>(1, block_bytes / std::max<uint64_t>(cols * es, 1));
  std::vector<unsigned char> buf(std::min(block, std::max<uint64_t>(rows, 1)) * cols * es);
  Hasher h;
  TypeHandle type = type_for(d.dtype);
  const hid_t dset = open_.get(file_, d.name, path_);
  for (uint64_t r0 = 0; r0 < rows; r0 += block) {
    const uint64_t n = std::min(block, rows - r0);
    const std::string what = fmt::format("{}: reading back dataset '{}'", path_.string(), d.name);
    Hid fspace(must_id(H5Dget_space(dset), what), H5Sclose);
    select_rows(fspace, dims_of(d.shape), r0, r0 + n, 0, cols, what);
    hsize_t count = n * cols;
    Hid mspace(must_id(H5Screate_simple(1, &count, nullptr), what), H5Sclose);
    must_ok(H5Dread(dset, type.id, mspace, fspace, H5P_DEFAULT, buf.data()), what);
    h.update(buf.data(), n * cols * es);
  }
  const std::string hex = hash_hex(h.digest());
  put_string_attr(dset, "xxh3", hex);
  return hex;
}

void Hdf5ShardUpdater::close() {
  MB_HDF5_LOCK;
  open_.close();
  if (file_ >= 0) {
    herr_t rc = H5Fclose(file_);
    const std::string detail = rc < 0 ? hdf5_error_detail() : std::string();
    file_ = -1;
    MB_CHECK(rc >= 0, "closing {} failed{}", path_.string(), detail);
  }
}

Hdf5ShardReader::Hdf5ShardReader(const fs::path& path) : path_(path) {
  MB_HDF5_LOCK;
  silence_hdf5();
  MB_CHECK(fs::exists(path), "shard file {} does not exist", path.string());
  // HDF5 opens with a blocking open(2): a FIFO would hang every rank.
  require_regular_file(path, "shard file");
  Hid fapl(bounded_fapl(path, false), H5Pclose);
  Hid file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl), H5Fclose);
  MB_CHECK(file >= 0, "{} is not a readable HDF5 file", path.string());
  file_ = file;  // owned by `file` until the end: a constructor that throws runs no destructor
  const std::string where = path.string();
  const uint64_t file_size = fs::file_size(path);
  info_.format = get_string_attr(file_, "format", where);
  info_.tp_rank = get_u64_attr(file_, "tp_rank", where).at(0);
  info_.pp_rank = get_u64_attr(file_, "pp_rank", where).at(0);
  info_.ep_rank = get_u64_attr(file_, "ep_rank", where).at(0);
  info_.etp_rank = get_u64_attr(file_, "etp_rank", where).at(0);
  info_.tp_size = get_u64_attr(file_, "tp_size", where).at(0);
  info_.pp_size = get_u64_attr(file_, "pp_size", where).at(0);
  info_.ep_size = get_u64_attr(file_, "ep_size", where).at(0);
  info_.etp_size = get_u64_attr(file_, "etp_size", where).at(0);

  std::vector<std::string> names;
  must_ok(H5Literate(
              file_, H5_INDEX_NAME, H5_ITER_INC, nullptr,
              [](hid_t, const char* name, const H5L_info_t*, void* op) -> herr_t {
                static_cast<std::vector<std::string>*>(op)->emplace_back(name);
                return 0;
              },
              &names),
          where + ": listing the datasets");
  for (const auto& n : names) {
    hid_t d = H5Dopen2(file_, n.c_str(), H5P_DEFAULT);
    MB_CHECK(d >= 0, "{}: '{}' is not a dataset", where, n);
    // Closed when this iteration ends, also when a check below throws.
    const std::unique_ptr<hid_t, void (*)(hid_t*)> close_d(&d, [](hid_t* h) { H5Dclose(*h); });
    const std::string dwhere = fmt::format("{}: dataset '{}'", where, n);
    ShardDatasetInfo info;
    info.name = n;
    {
      Hid space(must_id(H5Dget_space(d), dwhere + ": H5Dget_space"), H5Sclose);
      const int nd = H5Sget_simple_extent_ndims(space);
      MB_CHECK(nd >= 0 && nd <= 32, "{}: unreadable rank ({})", dwhere, nd);
      std::vector<hsize_t> dims(static_cast<size_t>(nd));
      must_ok(H5Sget_simple_extent_dims(space, dims.data(), nullptr),
              dwhere + ": reading its shape");
      info.shape.assign(dims.begin(), dims.end());
    }
    info.global_name = get_string_attr(d, "global_name", dwhere);
    info.global_shape = get_u64_attr(d, "global_shape", dwhere);
    const std::string dt = get_string_attr(d, "dtype", dwhere);
    auto parsed = dtype_from_user(dt);
    MB_CHECK(parsed.has_value(), "{}: unknown dtype attribute '{}'", dwhere, dt);
    info.dtype = *parsed;
    if (has_attr(d, "xxh3")) info.xxh3 = get_string_attr(d, "xxh3", dwhere);
    // The stored type must have the dtype's width, or reading raw bytes would be wrong.
    const Hid ftype(must_id(H5Dget_type(d), dwhere + ": H5Dget_type"), H5Tclose);
    const size_t stored = H5Tget_size(ftype);
    MB_CHECK(stored == dtype_size(info.dtype),
             "{}: stored element size {} does not match dtype {}", dwhere, stored, dt);
    // Little-endian (or single-byte) contiguous storage of exactly the
    // dataset's bytes, inside the file: its bytes can be read without HDF5.
    const haddr_t at = H5Dget_offset(d);
    H5Eclear2(H5E_DEFAULT);  // HADDR_UNDEF pushes an error
    const uint64_t nbytes = rows_2d(info.shape) * cols_2d(info.shape) * stored;
    const bool little = stored == 1 || H5Tget_order(ftype) == H5T_ORDER_LE;
    if (at != HADDR_UNDEF && little && nbytes > 0 && H5Dget_storage_size(d) == nbytes &&
        at <= file_size && nbytes <= file_size - at)
      info.data_offset = at;
    datasets_.push_back(std::move(info));
  }
  file.release();  // the destructor closes file_ from here on
}

Hdf5ShardReader::~Hdf5ShardReader() {
  MB_HDF5_LOCK;
  open_.close();
  if (file_ >= 0) H5Fclose(file_);
}

const ShardDatasetInfo* Hdf5ShardReader::find(const std::string& name) const {
  for (const auto& d : datasets_)
    if (d.name == name) return &d;
  return nullptr;
}

void Hdf5ShardReader::read(const std::string& name, uint64_t row0, uint64_t rows, uint64_t col0,
                           uint64_t cols, void* dst, uint64_t dst_stride) const {
  MB_HDF5_LOCK;
  const ShardDatasetInfo* info = find(name);
  MB_CHECK(info != nullptr, "{}: has no dataset '{}'", path_.string(), name);
  const uint64_t esize = dtype_size(info->dtype);
  MB_CHECK(row0 + rows <= rows_2d(info->shape) && col0 + cols <= cols_2d(info->shape),
           "{}: dataset '{}' {} has no rows [{}, {}) cols [{}, {})", path_.string(), name,
           shape_str(info->shape), row0, row0 + rows, col0, col0 + cols);
  const std::string what = fmt::format("{}: reading rows [{}, {}) cols [{}, {}) of dataset '{}'",
                                       path_.string(), row0, row0 + rows, col0, col0 + cols, name);
  const hid_t d = open_.get(file_, name, path_);
  Hid fspace(must_id(H5Dget_space(d), what), H5Sclose);
  select_rows(fspace, dims_of(info->shape), row0, row0 + rows, col0, col0 + cols, what);
  // Memory: a 2-D block inside a buffer whose rows are dst_stride bytes apart.
  MB_CHECK(dst_stride % esize == 0, "internal: unaligned destination stride");
  hsize_t mdims[2] = {rows, dst_stride / esize};
  Hid mspace(must_id(H5Screate_simple(2, mdims, nullptr), what), H5Sclose);
  hsize_t mstart[2] = {0, 0}, mcount[2] = {rows, cols};
  must_ok(H5Sselect_hyperslab(mspace, H5S_SELECT_SET, mstart, nullptr, mcount, nullptr), what);
  TypeHandle type = type_for(info->dtype);
  const herr_t rc = H5Dread(d, type.id, mspace, fspace, H5P_DEFAULT, dst);
  MB_CHECK(rc >= 0, "{} failed{} (file corrupt or truncated?)", what, hdf5_error_detail());
}

}  // namespace mb

namespace mb {

std::vector<Hdf5DataRegion> hdf5_data_regions(const fs::path& path) {
  MB_HDF5_LOCK;
  silence_hdf5();
  require_regular_file(path, "shard file");
  const std::string where = path.string();
  Hid fapl(bounded_fapl(path, false), H5Pclose);
  Hid file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl), H5Fclose);
  MB_CHECK(file >= 0, "{} is not a readable HDF5 file{}", where, hdf5_error_detail());
  std::vector<std::string> names;
  must_ok(H5Literate(
              file, H5_INDEX_NAME, H5_ITER_INC, nullptr,
              [](hid_t, const char* name, const H5L_info_t*, void* op) -> herr_t {
                static_cast<std::vector<std::string>*>(op)->emplace_back(name);
                return 0;
              },
              &names),
          where + ": listing the datasets");
  std::vector<Hdf5DataRegion> out;
  for (const auto& n : names) {
    // Not a dataset (a group in a file we did not write): its bytes count
    // as metadata. A damaged one changes the checksum all the same.
    Hid d(H5Dopen2(file, n.c_str(), H5P_DEFAULT), H5Dclose);
    if (d < 0) {
      H5Eclear2(H5E_DEFAULT);
      continue;
    }
    const haddr_t at = H5Dget_offset(d);
    H5Eclear2(H5E_DEFAULT);  // HADDR_UNDEF (chunked, compact, unallocated) pushes an error
    const hsize_t bytes = H5Dget_storage_size(d);
    if (at == HADDR_UNDEF || bytes == 0) continue;
    Hdf5DataRegion r{n, at, bytes, {}};
    if (has_attr(d, "xxh3")) r.xxh3 = get_string_attr(d, "xxh3", where + ": dataset '" + n + "'");
    out.push_back(std::move(r));
  }
  std::sort(out.begin(), out.end(),
            [](const Hdf5DataRegion& a, const Hdf5DataRegion& b) { return a.offset < b.offset; });
  const uint64_t size = fs::file_size(path);
  for (size_t i = 0; i < out.size(); ++i) {
    MB_CHECK(out[i].offset <= size && out[i].bytes <= size - out[i].offset,
             "{}: dataset '{}' claims bytes [{}, {}) but the file has {}: truncated or corrupt",
             where, out[i].name, out[i].offset, out[i].offset + out[i].bytes, size);
    MB_CHECK(i == 0 || out[i - 1].offset + out[i - 1].bytes <= out[i].offset,
             "{}: datasets '{}' and '{}' overlap: corrupt", where, out[i - 1].name, out[i].name);
  }
  return out;
}

}  // namespace mb
