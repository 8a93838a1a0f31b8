// DCP .metadata: written as CPython's pickle (protocol 2, no memo) writes
// PyTorch's Metadata dataclasses, read with the restricted pickle VM. Spec
// megatron-checkpoint-format.md §2.2, §2.5.
#include "formats/torch_dist/dcp_metadata.hpp"

#include <algorithm>
#include <functional>
#include <limits>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/error.hpp"
#include "formats/torch_dist/pickle.hpp"

namespace mb {

namespace {

using pickle::Value;
using K = Value::Kind;

constexpr std::string_view kMeta = "torch.distributed.checkpoint.metadata";
constexpr std::string_view kShardMeta = "torch.distributed._shard.sharded_tensor.metadata";
constexpr std::string_view kFs = "torch.distributed.checkpoint.filesystem";
constexpr size_t kBatch = 1000;  // CPython's pickler batches APPENDS / SETITEMS by 1000

// Emits n dict items the way CPython's _batch_setitems does: batches of up
// to 1000 as MARK ... SETITEMS, a lone item as SETITEM.
void dict_items(pickle::Writer& w, size_t n, const std::function<void(size_t)>& item) {
  for (size_t b = 0; b < n; b += kBatch) {
    const size_t e = std::min(n, b + kBatch);
    if (e - b > 1) w.mark();
    for (size_t k = b; k < e; ++k) item(k);
    if (e - b > 1) w.setitems();
    else w.setitem();
  }
}
void list_items(pickle::Writer& w, size_t n, const std::function<void(size_t)>& item) {
  for (size_t b = 0; b < n; b += kBatch) {
    const size_t e = std::min(n, b + kBatch);
    if (e - b > 1) w.mark();
    for (size_t k = b; k < e; ++k) item(k);
    if (e - b > 1) w.appends();
    else w.append();
  }
}

// A dataclass instance: class, EMPTY_TUPLE, NEWOBJ, then (if it has fields)
// its __dict__ and BUILD.
void dataclass(pickle::Writer& w, std::string_view module, std::string_view name, size_t nfields,
               const std::function<void(size_t)>& field) {
  w.global(module, name);
  w.empty_tuple();
  w.newobj();
  if (nfields == 0) return;
  w.empty_dict();
  dict_items(w, nfields, field);
  w.build();
}

void size_or_none(pickle::Writer& w, const std::vector<uint64_t>* v) {
  if (v) w.torch_size(*v);
  else w.none();
}

void write_properties(pickle::Writer& w, DType dtype, TensorPropertiesPath path) {
  const std::string_view module = path == TensorPropertiesPath::Checkpoint ? kMeta : kShardMeta;
  const std::string_view enc = path == TensorPropertiesPath::Checkpoint ? "_MEM_FORMAT_ENCODING"
                                                                        : "MEM_FORMAT_ENCODING";
  w.global(module, "TensorProperties");
  w.empty_tuple();
  w.newobj();
  // __getstate__: (dtype, layout, requires_grad, memory format, pin_memory).
  w.mark();
  w.global("torch", dtype_torch_name(dtype));
  w.global("torch", "strided");
  w.boolean(false);
  w.global(module, enc);
  w.integer(0);  // TORCH_CONTIGUOUS_FORMAT
  w.tuple1();
  w.reduce();
  w.boolean(false);
  w.tuple_from_mark();
  w.build();
}

// --- reading ------------------------------------------------------------------

const std::set<std::string>& metadata_globals() {
  static const std::set<std::string> s = [] {
    std::set<std::string> g;
    for (std::string_view m : {kMeta, kShardMeta})
      for (const char* c : {"Metadata", "TensorStorageMetadata", "ChunkStorageMetadata", "BytesStorageMetadata",
                            "TensorProperties", "_MEM_FORMAT_ENCODING", "MEM_FORMAT_ENCODING", "MetadataIndex",
                            "StorageMeta"})
        g.insert(fmt::format("{}.{}", m, c));
    for (const char* c : {"_StorageInfo", "_StoragePrefix"}) g.insert(fmt::format("{}.{}", kFs, c));
    for (const char* c : {"SavePlan", "WriteItem", "WriteItemType", "TensorWriteData", "BytesIOWriteData"})
      g.insert(fmt::format("torch.distributed.checkpoint.planner.{}", c));
    for (const char* c : {"MCoreSavePlan", "MCoreMetadata"})
      g.insert(fmt::format("megatron.core.dist_checkpointing.strategies.torch.{}", c));
    for (const char* d : {"bfloat16", "float16", "float32", "float64", "int64", "int32", "int16", "int8", "uint8",
                          "bool", "float8_e4m3fn", "float8_e5m2", "uint16", "uint32", "uint64", "complex64",
                          "complex128", "strided", "Size"})
      g.insert(fmt::format("torch.{}", d));
    // torch >= ~2.10 pickles torch.strided as _get_layout("torch.strided").
    g.insert("torch.serialization._get_layout");
    g.insert("collections.OrderedDict");
    g.insert("pathlib.PosixPath");
    return g;
  }();
  return s;
}

bool is_class(const Value& v, std::string_view name) {
  if (!v.is(K::Object) || !v.cls->is(K::Global)) return false;
  const std::string& c = v.cls->s;
  if (c.size() <= name.size() + 1 || c.compare(c.size() - name.size(), name.size(), name) != 0 ||
      c[c.size() - name.size() - 1] != '.')
    return false;
  const std::string_view module(c.data(), c.size() - name.size() - 1);
  return module == kMeta || module == kShardMeta || module == kFs ||
         module == "megatron.core.dist_checkpointing.strategies.torch";
}

const Value& need_attr(const Value& obj, std::string_view key, std::string_view where, std::string_view what) {
  const Value* v = obj.attr(key);
  MB_CHECK(v != nullptr, "{}: {} has no '{}'", what, where, key);
  return *v;
}

// torch.Size((...)) or a plain tuple/list of non-negative ints.
std::vector<uint64_t> size_value(const Value& v, std::string_view where, std::string_view what) {
  const Value* t = &v;
  if (v.is(K::Object) && v.cls->is(K::Global) && v.cls->s == "torch.Size") {
    MB_CHECK(v.args->is(K::Tuple) && v.args->items.size() == 1, "{}: {}: malformed torch.Size", what, where);
    t = &v.args->items[0];
  }
  MB_CHECK(t->is(K::Tuple) || t->is(K::List), "{}: {} is {} instead of a torch.Size", what, where, v.describe());
  std::vector<uint64_t> out;
  out.reserve(t->items.size());
  for (const Value& x : t->items) {
    MB_CHECK(x.is(K::Int) && x.i >= 0, "{}: {} holds {} instead of an int >= 0", what, where, x.describe());
    out.push_back(static_cast<uint64_t>(x.i));
  }
  return out;
}

uint64_t uint_value(const Value& v, std::string_view where, std::string_view what) {
  MB_CHECK(v.is(K::Int) && v.i >= 0, "{}: {} is {} instead of an int >= 0", what, where, v.describe());
  return static_cast<uint64_t>(v.i);
}

DType dtype_value(const Value& v, std::string_view where, std::string_view what) {
  MB_CHECK(v.is(K::Global) && v.s.rfind("torch.", 0) == 0, "{}: {} dtype is {}", what, where, v.describe());
  const std::string_view n = std::string_view(v.s).substr(6);
  for (DType t : {DType::Bool, DType::U8, DType::I8, DType::F8_E5M2, DType::F8_E4M3, DType::I16, DType::U16,
                  DType::F16, DType::BF16, DType::I32, DType::U32, DType::F32, DType::F64, DType::I64, DType::U64})
    if (dtype_torch_name(t) == n) return t;
  throw Error("{}: {} has dtype {}, which is not supported", what, where, v.s);
}

void check_layout(const Value& v, std::string_view where, std::string_view what) {
  bool strided = v.is(K::Global) && v.s == "torch.strided";
  if (v.is(K::Object) && v.cls->is(K::Global) && v.cls->s == "torch.serialization._get_layout" &&
      v.args->items.size() == 1 && v.args->items[0].is(K::String))
    strided = v.args->items[0].s == "torch.strided";
  MB_CHECK(strided, "{}: {} has layout {}; only torch.strided tensors are supported", what, where, v.describe());
}

DcpTensor read_tensor(const Value& tsm, const std::string& key, std::string_view what) {
  const std::string where = fmt::format("tensor '{}'", key);
  DcpTensor t;
  const Value& props = need_attr(tsm, "properties", where, what);
  MB_CHECK(is_class(props, "TensorProperties"), "{}: {} properties are {}", what, where, props.describe());
  const Value& st = *props.state;
  if (st.is(K::Tuple)) {
    // (dtype, layout, requires_grad, memory format, pin_memory[, strides]).
    MB_CHECK(st.items.size() == 5 || st.items.size() == 6, "{}: {} TensorProperties state has {} items", what,
             where, st.items.size());
    t.dtype = dtype_value(st.items[0], where, what);
    check_layout(st.items[1], where, what);
  } else {
    MB_CHECK(st.is(K::Dict), "{}: {} TensorProperties state is {}", what, where, st.describe());
    t.dtype = dtype_value(need_attr(props, "dtype", where + " properties", what), where, what);
    if (const Value* l = props.attr("layout")) check_layout(*l, where, what);
  }
  t.size = size_value(need_attr(tsm, "size", where, what), where + " size", what);
  const Value& chunks = need_attr(tsm, "chunks", where, what);
  MB_CHECK(chunks.is(K::List), "{}: {} chunks are {}", what, where, chunks.describe());
  for (const Value& c : chunks.items) {
    MB_CHECK(is_class(c, "ChunkStorageMetadata"), "{}: {} has a chunk {}", what, where, c.describe());
    DcpChunk ch{size_value(need_attr(c, "offsets", where + " chunk", what), where + " chunk offsets", what),
                size_value(need_attr(c, "sizes", where + " chunk", what), where + " chunk sizes", what)};
    MB_CHECK(ch.offsets.size() == t.size.size() && ch.sizes.size() == t.size.size(),
             "{}: {} of shape {} has a chunk with offsets [{}] and sizes [{}]", what, where, shape_str(t.size),
             fmt::join(ch.offsets, ", "), fmt::join(ch.sizes, ", "));
    t.chunks.push_back(std::move(ch));
  }
  return t;
}

std::string box_str(const DcpChunk& c) {
  return fmt::format("offsets [{}] sizes [{}]", fmt::join(c.offsets, ", "), fmt::join(c.sizes, ", "));
}

}  // namespace

const DcpStorage& DcpMetadata::storage_of(const std::string& key, const std::vector<uint64_t>& offsets) const {
  auto it = storage.find({key, offsets});
  if (it == storage.end()) {
    if (offsets.empty() && byte_items.count(key))
      throw Error("DCP .metadata: object '{}' has no storage entry", key);
    throw Error("DCP .metadata: '{}' has no storage entry for the chunk at offsets [{}]", key,
                fmt::join(offsets, ", "));
  }
  return it->second;
}

std::string write_dcp_metadata(const DcpMetadata& m, TensorPropertiesPath path) {
  // state_dict_metadata in key order, tensors and objects merged.
  struct Entry {
    const std::string* key;
    const DcpTensor* tensor;  // null for a bytes item
  };
  std::vector<Entry> sdm;
  for (const auto& [k, t] : m.tensors) sdm.push_back({&k, &t});
  for (const auto& k : m.byte_items) {
    MB_CHECK(!m.tensors.count(k), "DCP .metadata: '{}' is both a tensor and an object", k);
    sdm.push_back({&k, nullptr});
  }
  std::sort(sdm.begin(), sdm.end(), [](const Entry& a, const Entry& b) { return *a.key < *b.key; });
  std::vector<const std::pair<const std::pair<std::string, std::vector<uint64_t>>, DcpStorage>*> sd;
  for (const auto& e : m.storage) sd.push_back(&e);

  pickle::Writer w;
  auto tensor_md = [&](const DcpTensor& t) {
    dataclass(w, kMeta, "TensorStorageMetadata", 3, [&](size_t f) {
      if (f == 0) {
        w.string("properties");
        write_properties(w, t.dtype, path);
      } else if (f == 1) {
        w.string("size");
        w.torch_size(t.size);
      } else {
        w.string("chunks");
        w.empty_list();
        list_items(w, t.chunks.size(), [&](size_t c) {
          dataclass(w, kMeta, "ChunkStorageMetadata", 2, [&](size_t g) {
            w.string(g == 0 ? "offsets" : "sizes");
            w.torch_size(g == 0 ? t.chunks[c].offsets : t.chunks[c].sizes);
          });
        });
      }
    });
  };
  dataclass(w, kMeta, "Metadata", 5, [&](size_t f) {
    switch (f) {
      case 0:
        w.string("state_dict_metadata");
        w.empty_dict();
        dict_items(w, sdm.size(), [&](size_t k) {
          w.string(*sdm[k].key);
          if (sdm[k].tensor) tensor_md(*sdm[k].tensor);
          else dataclass(w, kMeta, "BytesStorageMetadata", 0, {});
        });
        break;
      case 1:
        w.string("planner_data");
        w.none();
        break;
      case 2:
        w.string("storage_data");
        w.empty_dict();
        dict_items(w, sd.size(), [&](size_t k) {
          // Not a structured binding: the lambdas below capture these, which
          // clang before 16 does not allow for bindings.
          const auto& idx = sd[k]->first;
          const DcpStorage& st = sd[k]->second;
          const bool is_object = m.byte_items.count(idx.first) > 0;
          MB_CHECK(!is_object || idx.second.empty(), "DCP .metadata: object '{}' has a storage entry with offsets",
                   idx.first);
          dataclass(w, kMeta, "MetadataIndex", 3, [&](size_t g) {
            if (g == 0) {
              w.string("fqn");
              w.string(idx.first);
            } else if (g == 1) {
              w.string("offset");
              size_or_none(w, is_object ? nullptr : &idx.second);
            } else {
              w.string("index");
              w.none();
            }
          });
          dataclass(w, kFs, "_StorageInfo", 3, [&](size_t g) {
            const uint64_t v = g == 1 ? st.offset : st.length;
            if (g == 0) {
              w.string("relative_path");
              w.string(st.relative_path);
              return;
            }
            MB_CHECK(v <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
                     "DCP .metadata: storage value {} is too large", v);
            w.string(g == 1 ? "offset" : "length");
            w.integer(static_cast<int64_t>(v));
          });
        });
        break;
      case 3:
        w.string("storage_meta");
        w.none();
        break;
      default:
        w.string("version");
        w.string("1.0.0");
    }
  });
  return w.finish();
}

DcpMetadata read_dcp_metadata(std::string_view bytes, std::string_view what) {
  const Value root = pickle::loads(bytes, metadata_globals(), what);
  MB_CHECK(is_class(root, "Metadata") || is_class(root, "MCoreMetadata"),
           "{}: the pickle holds {} instead of a DCP Metadata", what, root.describe());
  DcpMetadata m;
  const Value& sdm = need_attr(root, "state_dict_metadata", "Metadata", what);
  MB_CHECK(sdm.is(K::Dict), "{}: state_dict_metadata is {}", what, sdm.describe());
  for (const auto& [k, v] : sdm.entries) {
    MB_CHECK(k.is(K::String), "{}: state_dict_metadata has a key {}", what, k.describe());
    MB_CHECK(!m.tensors.count(k.s) && !m.byte_items.count(k.s), "{}: key '{}' appears twice", what, k.s);
    if (is_class(v, "BytesStorageMetadata")) {
      m.byte_items.insert(k.s);
    } else if (is_class(v, "TensorStorageMetadata")) {
      m.tensors.emplace(k.s, read_tensor(v, k.s, what));
    } else {
      throw Error("{}: key '{}' has {} instead of tensor or bytes metadata", what, k.s, v.describe());
    }
  }
  const Value& sd = need_attr(root, "storage_data", "Metadata", what);
  MB_CHECK(sd.is(K::Dict), "{}: storage_data is {}", what, sd.describe());
  for (const auto& [k, v] : sd.entries) {
    MB_CHECK(is_class(k, "MetadataIndex"), "{}: storage_data has a key {}", what, k.describe());
    const Value& fqn = need_attr(k, "fqn", "MetadataIndex", what);
    MB_CHECK(fqn.is(K::String), "{}: MetadataIndex fqn is {}", what, fqn.describe());
    const std::string where = fmt::format("storage entry of '{}'", fqn.s);
    std::vector<uint64_t> offsets;
    if (const Value* o = k.attr("offset"); o && !o->is(K::None)) offsets = size_value(*o, where + " offset", what);
    MB_CHECK(is_class(v, "_StorageInfo"), "{}: {} is {}", what, where, v.describe());
    if (const Value* td = v.attr("transform_descriptors")) {
      const bool empty = td->is(K::None) || ((td->is(K::List) || td->is(K::Tuple)) && td->items.empty());
      MB_CHECK(empty, "{}: {} is stored through stream transforms ({}), which are not supported", what, where,
               td->describe());
    }
    const Value& rp = need_attr(v, "relative_path", where, what);
    MB_CHECK(rp.is(K::String) && !rp.s.empty(), "{}: {} relative_path is {}", what, where, rp.describe());
    DcpStorage s{rp.s, uint_value(need_attr(v, "offset", where, what), where + " offset", what),
                 uint_value(need_attr(v, "length", where, what), where + " length", what)};
    MB_CHECK(s.offset <= std::numeric_limits<uint64_t>::max() - s.length, "{}: {} overflows", what, where);
    auto key = std::make_pair(fqn.s, std::move(offsets));
    MB_CHECK(!m.storage.count(key), "{}: {} at offsets [{}] appears twice", what, where,
             fmt::join(key.second, ", "));
    m.storage.emplace(std::move(key), std::move(s));
  }
  return m;
}

std::vector<std::string> check_dcp_tiling(const DcpMetadata& m) {
  std::vector<std::string> problems;
  for (const auto& [key, t] : m.tensors) {
    const size_t nd = t.size.size();
    uint64_t total = 1;
    bool total_overflow = false;
    for (uint64_t d : t.size) total_overflow |= __builtin_mul_overflow(total, d, &total);
    uint64_t covered = 0;
    bool bad = false;
    std::vector<const DcpChunk*> boxes;
    for (const DcpChunk& c : t.chunks) {
      if (c.offsets.size() != nd || c.sizes.size() != nd) {
        problems.push_back(fmt::format("{}: chunk {} does not have the rank of shape {}", key, box_str(c),
                                       shape_str(t.size)));
        bad = true;
        continue;
      }
      bool inside = true;
      for (size_t d = 0; d < nd; ++d)
        inside &= c.offsets[d] <= t.size[d] && c.sizes[d] <= t.size[d] - c.offsets[d];
      if (!inside) {
        problems.push_back(fmt::format("{}: chunk {} is out of bounds of shape {}", key, box_str(c),
                                       shape_str(t.size)));
        bad = true;
        continue;
      }
      uint64_t v = 1;
      for (uint64_t s : c.sizes) v *= s;  // cannot overflow: bounded by the in-bounds shape
      covered += v;
      if (v > 0) boxes.push_back(&c);
      if (!m.storage.count({key, c.offsets}))
        problems.push_back(fmt::format("{}: chunk {} has no storage entry", key, box_str(c)));
    }
    // Overlaps: sweep along dimension 0 (boxes sorted by their start there).
    if (nd > 0) {
      std::sort(boxes.begin(), boxes.end(),
                [](const DcpChunk* a, const DcpChunk* b) { return a->offsets[0] < b->offsets[0]; });
      size_t reported = 0;
      for (size_t i = 0; i < boxes.size() && reported < 10; ++i)
        for (size_t j = i + 1; j < boxes.size(); ++j) {
          const DcpChunk& a = *boxes[i];
          const DcpChunk& b = *boxes[j];
          if (b.offsets[0] >= a.offsets[0] + a.sizes[0]) break;
          bool meet = true;
          for (size_t d = 1; d < nd && meet; ++d)
            meet = a.offsets[d] < b.offsets[d] + b.sizes[d] && b.offsets[d] < a.offsets[d] + a.sizes[d];
          if (meet) {
            problems.push_back(fmt::format("{}: chunks {} and {} overlap", key, box_str(a), box_str(b)));
            bad = true;
            ++reported;
          }
        }
    } else if (boxes.size() > 1) {
      problems.push_back(fmt::format("{}: scalar tensor has {} chunks", key, boxes.size()));
      bad = true;
    }
    if (t.chunks.empty() && !total_overflow && total > 0) {
      problems.push_back(fmt::format("{}: tensor of shape {} has no chunks", key, shape_str(t.size)));
    } else if (!bad && (total_overflow || covered != total)) {
      problems.push_back(fmt::format("{}: chunks cover {} of the {} elements of shape {} (a gap)", key, covered,
                                     total, shape_str(t.size)));
    }
  }
  for (const std::string& k : m.byte_items)
    if (!m.storage.count({k, {}})) problems.push_back(fmt::format("{}: object has no storage entry", k));
  return problems;
}

}  // namespace mb
