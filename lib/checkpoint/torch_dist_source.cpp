#include "checkpoint/torch_dist_source.hpp"

#include <algorithm>
#include <cstring>

#include "checkpoint/manifest.hpp"
#include "core/error.hpp"
#include "core/nd_box.hpp"
#include "core/path_safety.hpp"
#include "core/row_window.hpp"
#include "formats/torch_dist/distcp_checksum.hpp"

namespace mb {
namespace fs = std::filesystem;

TorchDistSource::TorchDistSource(const MegatronCheckpoint& ck, std::vector<LocalTensorRef> refs,
                                 IoConfig io, bool verify)
    : ck_(ck), refs_(std::move(refs)), io_(io), windows_(io.chunk_bytes), verify_(verify) {
  if (!verify_) return;
  for (const auto& f : ck_.manifest.at("files"))
    for (const auto& t : f.at("tensors"))
      want_[t.at("name").get<std::string>()] = t.at("xxh3").get<std::string>();
}

TorchDistSource::Streamed& TorchDistSource::streamed(
    const std::pair<std::string, std::vector<uint64_t>>& k, const TorchTensorItem& ti,
    const std::string& file) {
  auto it = streamed_.find(k);
  if (it != streamed_.end()) return it->second;
  Streamed s;
  s.file = file;
  s.name = distcp_item_name(k.first, k.second);
  auto w = want_.find(s.name);
  MB_CHECK(w != want_.end(), "{}: the manifest records no checksum for chunk '{}' of {}",
           (ck_.dir / kManifestName).string(), s.name, file);
  s.want = w->second;
  // The data region is the whole storage record (what the region checksum
  // covers); the chunk's elements lie inside it.
  s.begin = s.next = ti.data_offset;
  s.end = ti.data_offset + ti.storage_bytes;
  return streamed_.emplace(k, std::move(s)).first->second;
}

void TorchDistSource::check(Streamed& s, uint64_t digest) {
  s.checked = true;
  if (hash_hex(digest) == s.want || !problem_.empty()) return;
  problem_ = fmt::format(
      "{} is corrupt: tensor chunk '{}' hashes to {} as read but the manifest recorded {} (pass "
      "--no-verify-checksums to use it anyway)",
      (ck_.iter_dir / s.file).string(), s.name, hash_hex(digest), s.want);
}

void TorchDistSource::verify_whole(Streamed& s) {
  const ChecksumReadScope counted;  // reported apart from the conversion's reads by bench
  File& in = plain(s.file);
  // The prefix read in file order is hashed already (and was read direct, so
  // it is not in the page cache): continue from where it stopped. The rest
  // was read through the page cache. Small blocks: this memory is outside
  // the configured buffer.
  std::vector<unsigned char> buf(
      std::min<uint64_t>(1u << 20, std::max<uint64_t>(1, s.end - s.next)));
  for (uint64_t at = s.next; at < s.end;) {
    const uint64_t n = std::min<uint64_t>(buf.size(), s.end - at);
    in.pread_exact(buf.data(), n, at);
    s.hash.update(buf.data(), n);
    at += n;
  }
  s.next = s.end;
  check(s, s.hash.digest());
}

std::string TorchDistSource::finish_verification(int rank, int ranks) {
  MB_CHECK(verify_, "internal: finish_verification without verify");
  const ChecksumReadScope counted;  // reported apart from the conversion's reads by bench
  for (auto& [k, s] : streamed_) {
    if (!problem_.empty()) break;
    if (!s.checked) verify_whole(s);
  }
  if (!problem_.empty()) return problem_;
  std::map<std::string, uint64_t> known;
  for (const auto& [name, hex] : want_) known[name] = hash_from_hex(hex);
  size_t index = 0;
  for (const auto& f : ck_.manifest.at("files")) {
    if (static_cast<int>(index++ % static_cast<size_t>(ranks)) != rank) continue;
    const fs::path path = ck_.dir / f.at("path").get<std::string>();
    const std::string want = f.at("xxh3").get<std::string>();
    try {
      const std::string got =
          hash_hex(region_file_checksum(path, distcp_data_regions(path, ck_.dcp), known).digest);
      if (got != want)
        return fmt::format(
            "{} is corrupt: the bytes between its tensor chunks (torch.save headers, data.pkl, "
            "ShardedObjects) do not match the manifest (file checksum {} over them and the "
            "recorded chunk checksums, recorded {}) (pass --no-verify-checksums to use it anyway)",
            path.string(), got, want);
    } catch (const std::exception& e) {
      return fmt::format("{} is corrupt: {}", path.string(), e.what());
    }
  }
  return {};
}

File& TorchDistSource::plain(const std::string& relative) {
  auto it = plain_.find(relative);
  if (it == plain_.end())
    it = plain_
             .emplace(relative, File(resolve_inside(ck_.iter_dir, relative, "torch_dist item"),
                                     File::Mode::Read))
             .first;
  return it->second;
}

void TorchDistSource::read_window(Streamed* sv, const std::string& rel, InputFile& f,
                                  unsigned char* dst, uint64_t dst_stride, uint64_t rows,
                                  uint64_t piece, uint64_t at, uint64_t row_bytes, uint64_t lead,
                                  const std::string& key) {
  bytes_read_ += rows * piece;
  if (sv == nullptr || sv->checked) {
    // Narrow windows through the page cache, where the neighbouring columns
    // (another output shard's, another rank's) are then found (pread_rows).
    f.pread_rows(dst, dst_stride, rows, piece, at, row_bytes, windows_.of(f), key);
    return;
  }
  // A chunk still to be checked: read its whole rows through the page cache,
  // as a narrow window is read anyway, and hash them if they continue the
  // chunk in order. The other columns of these rows, read next for another
  // shard or rank, and verify_whole's pass over an out-of-order chunk then
  // come from the page cache, not from storage.
  sv->seen += rows * piece;
  const uint64_t first = at - lead;
  const bool hashed = sv->in_order && first == sv->next;
  if (!hashed) sv->in_order = false;
  File& in = plain(rel);
  window_from_whole_rows(
      rows, row_bytes, lead, piece, dst, dst_stride, scratch_,
      [&](uint64_t r, uint64_t n, unsigned char* buf) {
        in.pread_exact(buf, n * row_bytes, first + r * row_bytes, key);
      },
      [&](const unsigned char* buf, uint64_t, uint64_t n) {
        if (!hashed) return;
        sv->hash.update(buf, n * row_bytes);
        sv->next += n * row_bytes;
      });
  if (hashed && sv->next == sv->end) check(*sv, sv->hash.digest());
}

const std::vector<DistPiece>& TorchDistSource::pieces(uint32_t id) {
  auto it = pieces_.find(id);
  if (it != pieces_.end()) return it->second;
  const LocalTensorRef& ref = refs_.at(id);
  const ShardPlan& s = ck_.shards.at(ref.shard);
  return pieces_.emplace(id, dist_pieces(s.tensors.at(ref.tensor), ck_.model, ck_.layout, s.coord))
      .first->second;
}

InputFile& TorchDistSource::file(const std::string& relative) {
  auto it = files_.find(relative);
  if (it == files_.end())
    it = files_
             .emplace(relative, InputFile(resolve_inside(ck_.iter_dir, relative, "torch_dist item"),
                                          io_.mode))
             .first;
  return it->second;
}

const TorchTensorItem& TorchDistSource::item(const std::string& key, const DcpChunk& chunk) {
  auto k = std::make_pair(key, chunk.offsets);
  auto it = items_.find(k);
  if (it != items_.end()) return it->second;
  const DcpStorage& st = ck_.dcp.storage_of(key, chunk.offsets);
  const std::string what =
      fmt::format("{} chunk at [{}] in {}", key, fmt::join(chunk.offsets, ", "), st.relative_path);
  TorchTensorItem ti =
      read_torch_tensor_item(file(st.relative_path).file(), st.offset, st.length, what);
  MB_CHECK(ti.shape == chunk.sizes, "{}: the archive holds shape {} but .metadata says {}", what,
           shape_str(ti.shape), shape_str(chunk.sizes));
  // Chunks are written contiguous; anything else would need a gather.
  uint64_t expect = 1;
  for (size_t d = ti.shape.size(); d-- > 0;) {
    MB_CHECK(ti.shape[d] == 1 || ti.stride[d] == expect, "{}: non-contiguous strides", what);
    expect *= ti.shape[d];
  }
  return items_.emplace(k, ti).first->second;
}

void TorchDistSource::read(uint32_t id, uint64_t row0, uint64_t rows, uint64_t col0, uint64_t cols,
                           void* dst, uint64_t dst_stride) {
  auto* out = static_cast<unsigned char*>(dst);
  for (const DistPiece& p : pieces(id)) {
    const uint64_t a = std::max(row0, p.row0), b = std::min(row0 + rows, p.row0 + p.rows);
    if (a >= b) continue;
    const DcpTensor* meta = nullptr;
    if (auto it = ck_.dcp.tensors.find(p.key); it != ck_.dcp.tensors.end()) meta = &it->second;
    MB_CHECK(meta != nullptr, "{}: key '{}' is missing from the checkpoint", ck_.dir.string(),
             p.key);
    const size_t es = dtype_size(meta->dtype);
    // Work in the local tensor's 2-D view. A 1-D local tensor ([n], viewed as
    // [n, 1]) gets a trailing axis of extent 1 on its key boxes, so that each
    // element is a row (its key may be [n], or [depth, n] when stacked).
    const LocalTensorRef& ref = refs_.at(id);
    const LocalTensor& lt = ck_.shards.at(ref.shard).tensors.at(ref.tensor);
    const bool one_d = lt.shape.size() <= 1;
    auto widen = [&](std::vector<uint64_t> v, uint64_t extra) {
      if (one_d) v.push_back(extra);
      return v;
    };
    const std::vector<uint64_t> psizes = widen(p.sizes, 1), poffsets = widen(p.offsets, 0);
    const size_t nd = psizes.size();
    // The rows of this piece we need, as boxes of the piece, then of the key.
    for (Box box : rows_to_boxes(psizes, a - p.row0, b - p.row0, col0, col0 + cols)) {
      for (size_t d = 0; d < nd; ++d) box.offsets[d] += poffsets[d];
      for (const DcpChunk& c : meta->chunks) {
        const std::vector<uint64_t> csizes = widen(c.sizes, 1), coffsets = widen(c.offsets, 0);
        const auto cut = intersect(box, Box{coffsets, csizes});
        if (!cut) continue;
        const TorchTensorItem& ti = item(p.key, c);
        MB_CHECK(ti.dtype == meta->dtype, "{}: chunk dtype {} differs from .metadata's {}", p.key,
                 dtype_name(ti.dtype), dtype_name(meta->dtype));
        const std::string& rel = ck_.dcp.storage_of(p.key, c.offsets).relative_path;
        InputFile& f = file(rel);
        Streamed* sv = nullptr;
        if (verify_) {
          sv = &streamed(std::make_pair(p.key, c.offsets), ti, rel);
          // The reads moved on: a chunk read out of order, and by now as many
          // bytes as it holds, is checked now, while its pages are in the page
          // cache. One read only in part so far (a TP split read for one
          // output shard at a time) waits for its other parts, or the end.
          if (last_ && last_ != sv && !last_->checked && !last_->in_order &&
              last_->seen >= last_->end - last_->begin)
            verify_whole(*last_);
          last_ = sv;
        }
        std::vector<uint64_t> pt = cut->offsets;
        // Where the point pt of the cut lies: its byte in the file, and in dst.
        auto locate = [&](uint64_t& file_off) {
          std::vector<uint64_t> in_chunk(nd), in_piece(nd);
          for (size_t d = 0; d < nd; ++d) {
            in_chunk[d] = pt[d] - coffsets[d];
            in_piece[d] = pt[d] - poffsets[d];
          }
          file_off = ti.data_offset + (ti.storage_offset + linear_index(in_chunk, csizes)) * es;
          const uint64_t local_row =
              p.row0 + linear_index(std::vector<uint64_t>(in_piece.begin(), in_piece.end() - 1),
                                    Shape(psizes.begin(), psizes.end() - 1));
          MB_CHECK(local_row >= row0 && local_row < row0 + rows && in_piece[nd - 1] >= col0 &&
                       in_piece[nd - 1] + cut->sizes[nd - 1] <= col0 + cols,
                   "internal: {} box maps outside the requested rows", p.key);
          return out + (local_row - row0) * dst_stride + (in_piece[nd - 1] - col0) * es;
        };
        // The next point: an odometer over the dims before `end`; false when done.
        auto next = [&](size_t end) {
          for (size_t k = end; k-- > 0;) {
            if (++pt[k] < cut->offsets[k] + cut->sizes[k]) return true;
            pt[k] = cut->offsets[k];
          }
          return false;
        };
        const uint64_t run = cut->sizes[nd - 1];
        if (nd >= 2 && run < csizes[nd - 1]) {
          // A column window (a TP split across the chunk's rows): each stretch
          // of rows is one strided read, so that a narrow window is read in
          // whole row spans rather than piece by piece (read_window).
          const uint64_t lead = (cut->offsets[nd - 1] - coffsets[nd - 1]) * es;
          do {
            uint64_t at = 0;
            unsigned char* d = locate(at);
            read_window(sv, rel, f, d, dst_stride, cut->sizes[nd - 2], run * es, at,
                        csizes[nd - 1] * es, lead, p.key);
          } while (next(nd - 2));
          continue;
        }
        // Whole rows: walk the cut's innermost runs (contiguous in the chunk),
        // merging runs that continue each other both in the file and in dst.
        // Runs that do not merge (the destination strided: one TP half of an
        // HF row) are small reads that load ahead. Where this local tensor's
        // part of the chunk is large, its load-ahead stops at that part's
        // end: the next bytes may be another rank's (the next expert of a
        // stacked chunk). A small part's (norms side by side) does not.
        uint64_t until = UINT64_MAX;
        const auto part = intersect(Box{poffsets, psizes}, Box{coffsets, csizes});
        if (part && part->volume() * es >= InputFile::kSmallReadBytes) {
          std::vector<uint64_t> last(nd);
          for (size_t d = 0; d < nd; ++d)
            last[d] = part->offsets[d] + part->sizes[d] - 1 - coffsets[d];
          until = ti.data_offset + (ti.storage_offset + linear_index(last, csizes) + 1) * es;
        }
        uint64_t pend_file = 0, pend_len = 0;
        unsigned char* pend_dst = nullptr;
        auto flush = [&] {
          if (pend_len == 0) return;
          if (sv) sv->seen += pend_len;
          if (sv && !sv->checked && sv->in_order && pend_file == sv->next) {
            f.pread_exact(pend_dst, pend_len, pend_file, windows_.of(f), p.key, until);
            sv->hash.update(pend_dst, pend_len);
            sv->next += pend_len;
            if (sv->next == sv->end) check(*sv, sv->hash.digest());
          } else if (sv && !sv->checked) {
            // Out of order: through the page cache, where verify_whole finds it.
            sv->in_order = false;
            plain(rel).pread_exact(pend_dst, pend_len, pend_file, p.key);
          } else {
            f.pread_exact(pend_dst, pend_len, pend_file, windows_.of(f), p.key, until);
          }
          bytes_read_ += pend_len;
          pend_len = 0;
        };
        do {
          uint64_t file_off = 0;
          unsigned char* d = locate(file_off);
          if (pend_len && pend_file + pend_len == file_off && pend_dst + pend_len == d) {
            pend_len += run * es;
          } else {
            flush();
            pend_file = file_off;
            pend_dst = d;
            pend_len = run * es;
          }
        } while (next(nd - 1));
        flush();
      }
    }
  }
}

}  // namespace mb
