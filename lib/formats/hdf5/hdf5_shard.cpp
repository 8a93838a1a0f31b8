#include "formats/hdf5/hdf5_shard.hpp"

#include <hdf5.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>
#include <mutex>

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

// A custom HDF5 float type: the library and h5py convert it by its fields.
hid_t make_float_type(size_t bytes, size_t sign_pos, size_t exp_pos, size_t exp_bits,
                      size_t man_bits, size_t bias) {
  hid_t t = H5Tcopy(H5T_IEEE_F32LE);
  H5Tset_fields(t, sign_pos, exp_pos, exp_bits, 0, man_bits);
  H5Tset_offset(t, 0);
  H5Tset_precision(t, bytes * 8);
  H5Tset_size(t, bytes);
  H5Tset_ebias(t, bias);
  return t;
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
  hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, H5T_VARIABLE);
  H5Tset_cset(type, H5T_CSET_UTF8);
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t attr = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  const char* p = value.c_str();
  herr_t rc = attr < 0 ? -1 : H5Awrite(attr, type, &p);
  if (attr >= 0) H5Aclose(attr);
  H5Sclose(space);
  H5Tclose(type);
  MB_CHECK(rc >= 0, "cannot write HDF5 attribute '{}'", name);
}

void put_u64_attr(hid_t obj, const char* name, const std::vector<uint64_t>& values, bool scalar) {
  hsize_t n = values.size();
  hid_t space = scalar ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, &n, nullptr);
  hid_t attr = H5Acreate2(obj, name, H5T_STD_U64LE, space, H5P_DEFAULT, H5P_DEFAULT);
  herr_t rc = attr < 0 ? -1 : H5Awrite(attr, H5T_NATIVE_UINT64, values.data());
  if (attr >= 0) H5Aclose(attr);
  H5Sclose(space);
  MB_CHECK(rc >= 0, "cannot write HDF5 attribute '{}'", name);
}

bool has_attr(hid_t obj, const char* name) { return H5Aexists(obj, name) > 0; }

std::string get_string_attr(hid_t obj, const char* name, const std::string& where) {
  MB_CHECK(has_attr(obj, name), "{}: missing attribute '{}'", where, name);
  hid_t attr = H5Aopen(obj, name, H5P_DEFAULT);
  hid_t ftype = H5Aget_type(attr);
  std::string out;
  if (H5Tis_variable_str(ftype) > 0) {
    hid_t mtype = H5Tcopy(H5T_C_S1);
    H5Tset_size(mtype, H5T_VARIABLE);
    H5Tset_cset(mtype, H5Tget_cset(ftype));  // HDF5 does not convert between ASCII and UTF-8
    char* p = nullptr;
    const herr_t rc = H5Aread(attr, mtype, &p);
    if (rc >= 0 && p) {
      out = p;
      H5free_memory(p);
    }
    H5Tclose(mtype);
    if (rc < 0) {
      H5Tclose(ftype);
      H5Aclose(attr);
      throw Error("{}: cannot read attribute '{}'", where, name);
    }
  } else {
    size_t n = H5Tget_size(ftype);
    std::vector<char> buf(n + 1, '\0');
    hid_t mtype = H5Tcopy(H5T_C_S1);
    H5Tset_size(mtype, n);
    H5Tset_cset(mtype, H5Tget_cset(ftype));
    H5Aread(attr, mtype, buf.data());
    H5Tclose(mtype);
    out.assign(buf.data(), strnlen(buf.data(), n));
  }
  H5Tclose(ftype);
  H5Aclose(attr);
  return out;
}

std::vector<uint64_t> get_u64_attr(hid_t obj, const char* name, const std::string& where) {
  MB_CHECK(has_attr(obj, name), "{}: missing attribute '{}'", where, name);
  hid_t attr = H5Aopen(obj, name, H5P_DEFAULT);
  hid_t space = H5Aget_space(attr);
  hssize_t n = H5Sget_simple_extent_npoints(space);
  std::vector<uint64_t> v(static_cast<size_t>(std::max<hssize_t>(n, 0)));
  herr_t rc = v.empty() ? 0 : H5Aread(attr, H5T_NATIVE_UINT64, v.data());
  H5Sclose(space);
  H5Aclose(attr);
  MB_CHECK(rc >= 0, "{}: cannot read attribute '{}'", where, name);
  return v;
}

std::vector<hsize_t> dims_of(const Shape& s) {
  if (s.empty()) return {1};
  return std::vector<hsize_t>(s.begin(), s.end());
}

// Selects rows [r0, r1) x cols [c0, c1) of the 2-D view in an N-D dataspace,
// as a union of hyperslabs.
void select_rows(hid_t space, const std::vector<hsize_t>& dims, uint64_t r0, uint64_t r1,
                 uint64_t c0, uint64_t c1) {
  const Shape shape(dims.begin(), dims.end());
  bool first = true;
  for (const Box& b : rows_to_boxes(shape, r0, r1, c0, c1)) {
    const std::vector<hsize_t> start(b.offsets.begin(), b.offsets.end());
    const std::vector<hsize_t> count(b.sizes.begin(), b.sizes.end());
    H5Sselect_hyperslab(space, first ? H5S_SELECT_SET : H5S_SELECT_OR, start.data(), nullptr,
                        count.data(), nullptr);
    first = false;
  }
}
}  // namespace

int64_t hdf5_type_for(DType t) {
  MB_HDF5_LOCK;
  TypeHandle h = type_for(t);
  return h.owned ? H5Tcopy(h.id) : h.id;
}

Hdf5ShardWriter::Hdf5ShardWriter(const fs::path& path, const ShardFileInfo& info) : path_(path) {
  MB_HDF5_LOCK;
  silence_hdf5();
  file_ = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  MB_CHECK(file_ >= 0, "cannot create HDF5 file {}", path.string());
  put_string_attr(file_, "format", info.format);
  put_u64_attr(file_, "tp_rank", {info.tp_rank}, true);
  put_u64_attr(file_, "pp_rank", {info.pp_rank}, true);
  put_u64_attr(file_, "ep_rank", {info.ep_rank}, true);
  put_u64_attr(file_, "etp_rank", {info.etp_rank}, true);
  put_u64_attr(file_, "tp_size", {info.tp_size}, true);
  put_u64_attr(file_, "pp_size", {info.pp_size}, true);
  put_u64_attr(file_, "ep_size", {info.ep_size}, true);
  put_u64_attr(file_, "etp_size", {info.etp_size}, true);
  for (const auto& [k, v] : info.extra) put_string_attr(file_, k.c_str(), v);
}

Hdf5ShardWriter::~Hdf5ShardWriter() {
  MB_HDF5_LOCK;
  if (dset_ >= 0) H5Dclose(dset_);
  if (file_ >= 0) H5Fclose(file_);
}

void Hdf5ShardWriter::begin_dataset(const ShardDatasetInfo& info) {
  MB_HDF5_LOCK;
  MB_CHECK(dset_ < 0, "internal: dataset {} still open in {}", cur_.name, path_.string());
  cur_ = info;
  const auto dims = dims_of(info.shape);
  hid_t space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
  TypeHandle type = type_for(info.dtype);
  // No modification times in object headers: the same tensors give the same
  // file bytes, so outputs can be compared with cmp (reshard vs import).
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_obj_track_times(dcpl, false);
  dset_ = H5Dcreate2(file_, info.name.c_str(), type.id, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  const std::string detail = dset_ < 0 ? hdf5_error_detail() : std::string();
  H5Pclose(dcpl);
  H5Sclose(space);
  MB_CHECK(dset_ >= 0, "{}: cannot create dataset '{}'{}", path_.string(), info.name, detail);
  put_string_attr(dset_, "global_name", info.global_name);
  put_u64_attr(dset_, "global_shape", info.global_shape, false);
  put_string_attr(dset_, "dtype", std::string(dtype_torch_name(info.dtype)));
}

void Hdf5ShardWriter::write_rows(uint64_t row0, uint64_t rows, const void* data) {
  MB_HDF5_LOCK;
  const auto dims = dims_of(cur_.shape);
  hid_t fspace = H5Dget_space(dset_);
  select_rows(fspace, dims, row0, row0 + rows, 0, cols_2d(cur_.shape));
  hsize_t n = rows * cols_2d(cur_.shape);
  hid_t mspace = H5Screate_simple(1, &n, nullptr);
  TypeHandle type = type_for(cur_.dtype);
  herr_t rc = H5Dwrite(dset_, type.id, mspace, fspace, H5P_DEFAULT, data);
  const std::string detail = rc < 0 ? hdf5_error_detail() : std::string();  // before the next call clears it
  H5Sclose(mspace);
  H5Sclose(fspace);
  MB_CHECK(rc >= 0, "{}: writing rows [{}, {}) of dataset '{}' failed{}", path_.string(), row0,
           row0 + rows, cur_.name, detail);
}

void Hdf5ShardWriter::end_dataset(const std::string& xxh3) {
  MB_HDF5_LOCK;
  put_string_attr(dset_, "xxh3", xxh3);
  MB_CHECK(H5Dclose(dset_) >= 0, "{}: closing dataset '{}' failed{}", path_.string(), cur_.name,
           hdf5_error_detail());
  dset_ = -1;
}

void Hdf5ShardWriter::close() {
  MB_HDF5_LOCK;
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
  file_ = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  MB_CHECK(file_ >= 0, "cannot reopen {} for writing{}", path.string(), hdf5_error_detail());
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_obj_track_times(dcpl, false);
  for (const auto& d : datasets) {
    const auto dims = dims_of(d.shape);
    hid_t space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
    TypeHandle type = type_for(d.dtype);
    hid_t id = H5Dcreate2(file_, d.name.c_str(), type.id, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    const std::string detail = id < 0 ? hdf5_error_detail() : std::string();
    H5Sclose(space);
    if (id < 0) H5Pclose(dcpl);
    MB_CHECK(id >= 0, "{}: cannot create dataset '{}'{}", path.string(), d.name, detail);
    put_string_attr(id, "global_name", d.global_name);
    put_u64_attr(id, "global_shape", d.global_shape, false);
    put_string_attr(id, "dtype", std::string(dtype_torch_name(d.dtype)));
    H5Dclose(id);
  }
  H5Pclose(dcpl);
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
  const hid_t dset = open_.get(file_, d.name, path_);
  hid_t fspace = H5Dget_space(dset);
  select_rows(fspace, dims_of(d.shape), row0, row0 + rows, col0, col0 + cols);
  hsize_t n = rows * cols;
  hid_t mspace = H5Screate_simple(1, &n, nullptr);
  TypeHandle type = type_for(d.dtype);
  herr_t rc = H5Dwrite(dset, type.id, mspace, fspace, H5P_DEFAULT, data);
  const std::string detail = rc < 0 ? hdf5_error_detail() : std::string();
  H5Sclose(mspace);
  H5Sclose(fspace);
  MB_CHECK(rc >= 0, "{}: writing rows [{}, {}) cols [{}, {}) of dataset '{}' failed{}", path_.string(),
           row0, row0 + rows, col0, col0 + cols, d.name, detail);
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
    hid_t fspace = H5Dget_space(dset);
    select_rows(fspace, dims_of(d.shape), r0, r0 + n, 0, cols);
    hsize_t count = n * cols;
    hid_t mspace = H5Screate_simple(1, &count, nullptr);
    herr_t rc = H5Dread(dset, type.id, mspace, fspace, H5P_DEFAULT, buf.data());
    const std::string detail = rc < 0 ? hdf5_error_detail() : std::string();
    H5Sclose(mspace);
    H5Sclose(fspace);
    MB_CHECK(rc >= 0, "{}: reading back dataset '{}' failed{}", path_.string(), d.name, detail);
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
  file_ = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  MB_CHECK(file_ >= 0, "{} is not a readable HDF5 file", path.string());
  const std::string where = path.string();
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
  H5Literate(
      file_, H5_INDEX_NAME, H5_ITER_INC, nullptr,
      [](hid_t, const char* name, const H5L_info_t*, void* op) -> herr_t {
        static_cast<std::vector<std::string>*>(op)->emplace_back(name);
        return 0;
      },
      &names);
  for (const auto& n : names) {
    hid_t d = H5Dopen2(file_, n.c_str(), H5P_DEFAULT);
    MB_CHECK(d >= 0, "{}: '{}' is not a dataset", where, n);
    // Closed when this iteration ends, also when a check below throws.
    const std::unique_ptr<hid_t, void (*)(hid_t*)> close_d(&d, [](hid_t* h) { H5Dclose(*h); });
    const std::string dwhere = fmt::format("{}: dataset '{}'", where, n);
    ShardDatasetInfo info;
    info.name = n;
    hid_t space = H5Dget_space(d);
    int nd = H5Sget_simple_extent_ndims(space);
    std::vector<hsize_t> dims(static_cast<size_t>(std::max(nd, 0)));
    H5Sget_simple_extent_dims(space, dims.data(), nullptr);
    H5Sclose(space);
    info.shape.assign(dims.begin(), dims.end());
    info.global_name = get_string_attr(d, "global_name", dwhere);
    info.global_shape = get_u64_attr(d, "global_shape", dwhere);
    const std::string dt = get_string_attr(d, "dtype", dwhere);
    auto parsed = dtype_from_user(dt);
    MB_CHECK(parsed.has_value(), "{}: unknown dtype attribute '{}'", dwhere, dt);
    info.dtype = *parsed;
    if (has_attr(d, "xxh3")) info.xxh3 = get_string_attr(d, "xxh3", dwhere);
    // The stored type must have the dtype's width, or reading raw bytes would be wrong.
    hid_t ftype = H5Dget_type(d);
    const size_t stored = H5Tget_size(ftype);
    H5Tclose(ftype);
    MB_CHECK(stored == dtype_size(info.dtype),
             "{}: stored element size {} does not match dtype {}", dwhere, stored, dt);
    datasets_.push_back(std::move(info));
  }
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
  const hid_t d = open_.get(file_, name, path_);
  hid_t fspace = H5Dget_space(d);
  select_rows(fspace, dims_of(info->shape), row0, row0 + rows, col0, col0 + cols);
  // Memory: a 2-D block inside a buffer whose rows are dst_stride bytes apart.
  MB_CHECK(dst_stride % esize == 0, "internal: unaligned destination stride");
  hsize_t mdims[2] = {rows, dst_stride / esize};
  hid_t mspace = H5Screate_simple(2, mdims, nullptr);
  hsize_t mstart[2] = {0, 0}, mcount[2] = {rows, cols};
  H5Sselect_hyperslab(mspace, H5S_SELECT_SET, mstart, nullptr, mcount, nullptr);
  TypeHandle type = type_for(info->dtype);
  herr_t rc = H5Dread(d, type.id, mspace, fspace, H5P_DEFAULT, dst);
  const std::string detail = rc < 0 ? hdf5_error_detail() : std::string();
  H5Sclose(mspace);
  H5Sclose(fspace);
  MB_CHECK(rc >= 0, "{}: reading dataset '{}' failed{} (file corrupt or truncated?)",
           path_.string(), name, detail);
}

}  // namespace mb
