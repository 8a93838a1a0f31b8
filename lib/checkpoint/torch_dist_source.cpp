#include "checkpoint/torch_dist_source.hpp"

#include <fcntl.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <optional>

#include "checkpoint/manifest.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "core/nd_box.hpp"
#include "core/path_safety.hpp"
#include "core/row_window.hpp"
#include "dist/hash_relay.hpp"
#include "dist/test_hooks.hpp"
#include "formats/torch_dist/distcp_checksum.hpp"

namespace mb {
namespace fs = std::filesystem;

TorchDistSource::TorchDistSource(const MegatronCheckpoint& ck, std::vector<LocalTensorRef> refs,
                                 IoConfig io, bool verify, const StreamedChecks& shared)
    : ck_(ck),
      refs_(std::move(refs)),
      io_(io),
      windows_(io.chunk_bytes),
      queue_(io.chunk_bytes, io.mode == IoMode::Buffered ? 0 : kDirectReadSlots),
      verify_(verify) {
  if (!verify_) return;
  for (const auto& f : ck_.manifest.at("files"))
    for (const auto& t : f.at("tensors"))
      want_[t.at("name").get<std::string>()] = t.at("xxh3").get<std::string>();
  wait_s_ = test_hook_hash_wait_s(wait_s_);
  if (shared.relay && shared.reads) {
    relay_ = shared.relay;
    rank_ = relay_->rank();
    build_chains(*shared.reads);
  }
}

// Planning walks every rank's reads on every rank, so row by row it grew
// with the model's bytes (0.24-0.31 s for the 11 GB benchmark checkpoint,
// some 20 s for 397B-A17B by scale; now 0.02-0.04 s). A cut that walk() reads as whole rows in
// order and that lies in one run of the chunk (a block of whole rows of a 2-D chunk, one expert of
// a stacked one) is that run. A column window is not: walk() reads its whole rows, which is what
// the chain must record.
std::optional<std::pair<uint64_t, uint64_t>> TorchDistSource::contiguous_in_chunk(const Cut& k) {
  const size_t nd = k.csizes.size();
  if (nd >= 2 && k.box.sizes[nd - 1] < k.csizes[nd - 1]) return std::nullopt;
  return linear_run(k.box, Box{k.coffsets, k.csizes});
}

void TorchDistSource::build_chains(const std::vector<SourceReads>& reads) {
  const auto t0 = std::chrono::steady_clock::now();
  // The bytes each rank reads of each chunk, walked as read() walks them: a
  // run of whole rows as itself, a column window as its whole rows (the
  // rank that hashes them reads them all).
  std::map<ChunkId, ReadRanges> ranges;
  std::map<ChunkId, std::pair<const DcpChunk*, uint64_t>> extent;
  for (const SourceReads& r : reads)
    for (const Segment& g : *r.segments) {
      if (g.rows == 0 || g.cols == 0) continue;
      for_each_cut(g.src, g.src_row, g.rows, g.src_col, g.cols, [&](const Cut& k) {
        const ChunkId id{k.piece->key, k.chunk->offsets};
        auto& mine = ranges[id][r.rank];
        // Runs that continue the last one extend it (a whole-width read is
        // one range, not one per row).
        auto add = [&](uint64_t a, uint64_t b) {
          if (!mine.empty() && mine.back().second == a)
            mine.back().second = b;
          else
            mine.push_back({a, b});
        };
        const uint64_t es = dtype_size(k.meta->dtype);
        if (auto run = contiguous_in_chunk(k)) {
          add(run->first * es, run->second * es);
        } else {
          walk(
              k, g.src_row, g.rows, g.src_col, g.cols, g.cols * es,
              [&](uint64_t at, uint64_t n, uint64_t, uint64_t) { add(at, at + n); },
              [&](uint64_t at, uint64_t rows, uint64_t, uint64_t row_bytes, uint64_t lead,
                  uint64_t) { add(at - lead, at - lead + rows * row_bytes); });
        }
        uint64_t numel = 1;
        for (uint64_t d : k.chunk->sizes) numel *= d;
        extent[id] = {k.chunk, numel * es};
      });
    }
  uint32_t index = 0;
  for (auto& [id, by_rank] : ranges) {
    Chain c;
    c.index = index++;
    c.chunk = extent.at(id).first;
    c.links = build_chain(extent.at(id).second, std::move(by_rank));
    chains_.emplace(id, std::move(c));
  }
  log::debug("torch_dist checksum chains: {} chunk(s) read, {:.2f} s to plan", chains_.size(),
             std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
}

TorchDistSource::Streamed& TorchDistSource::streamed(const ChunkId& k, const DcpChunk& chunk) {
  auto it = streamed_.find(k);
  if (it != streamed_.end()) return it->second;
  const TorchTensorItem& ti = item(k.first, chunk);
  Streamed s;
  s.file = ck_.dcp.storage_of(k.first, k.second).relative_path;
  s.name = distcp_item_name(k.first, k.second);
  auto w = want_.find(s.name);
  MB_CHECK(w != want_.end(), "{}: the manifest records no checksum for chunk '{}' of {}",
           (ck_.dir / kManifestName).string(), s.name, s.file);
  s.want = w->second;
  // The data region is the whole storage record (what the region checksum
  // covers); the chunk's elements lie inside it.
  s.begin = s.next = ti.data_offset;
  s.end = ti.data_offset + ti.storage_bytes;
  auto c = chains_.find(k);
  if (c != chains_.end() && !c->second.links.empty()) {
    const uint64_t base = ti.data_offset + ti.storage_offset * dtype_size(ti.dtype);
    s.index = c->second.index;
    for (const ChainLink& l : c->second.links)
      s.links.push_back({l.rank, base + l.row0, base + l.row1});
    s.links.front().row0 = s.begin;
    s.links.back().row1 = s.end;
  } else {
    // No chain (checked alone, or read although no plan said so): this rank
    // checks the chunk whole.
    s.links.push_back({rank_, s.begin, s.end});
    s.index = UINT32_MAX;
  }
  s.link = next_own_link(s, 0);
  return streamed_.emplace(k, std::move(s)).first->second;
}

void TorchDistSource::check(Streamed& s, uint64_t digest) {
  if (hash_hex(digest) == s.want || !problem_.empty()) return;
  problem_ = fmt::format(
      "{} is corrupt: tensor chunk '{}' hashes to {} as read but the manifest recorded {} (pass "
      "--no-verify-checksums to use it anyway)",
      (ck_.iter_dir / s.file).string(), s.name, hash_hex(digest), s.want);
}

size_t TorchDistSource::next_own_link(const Streamed& s, size_t from) const {
  while (from < s.links.size() && s.links[from].rank != rank_) ++from;
  return from;
}

bool TorchDistSource::start_link(Streamed& s, double timeout_s) {
  const ChainLink& link = s.links.at(s.link);
  if (s.link == 0) {
    s.hash = Hasher();
  } else {
    MB_CHECK(relay_ != nullptr && s.index != UINT32_MAX,
             "internal: {} has a link after another rank's but no relay", s.name);
    auto state = relay_->receive(s.links[s.link - 1].rank, s.index, timeout_s);
    if (!state) return false;
    s.hash.restore(*state);
  }
  s.next = link.row0;
  return true;
}

void TorchDistSource::end_link(Streamed& s) {
  if (s.link + 1 == s.links.size()) {
    check(s, s.hash.digest());
    ++checked_;
  } else {
    relay_->send(s.links[s.link + 1].rank, s.index, s.hash.save());
    ++handed_on_;
  }
  s.link = next_own_link(s, s.link + 1);
}

bool TorchDistSource::prepare(Streamed& s, uint64_t a, uint64_t b) {
  // Bytes of this rank's link that the read skips (it reads them later, or
  // never: a 1-rank export reads a QKV chunk's q rows first) are hashed
  // first (fill).
  return ChainWalk{s.links, s.link, s.next, s.broken, wait_s_}.prepare(
      a, b, [&](double wait) { return start_link(s, wait); },
      [&](uint64_t from, uint64_t to) { fill(s, from, to); });
}

void TorchDistSource::advance(Streamed& s, const unsigned char* p, uint64_t a, uint64_t n) {
  ChainWalk{s.links, s.link, s.next, s.broken, wait_s_}.advance(
      a, a + n, [&](double wait) { return start_link(s, wait); },
      [&](uint64_t from, uint64_t to) { s.hash.update(p + (from - a), to - from); },
      [&] { end_link(s); });
}

bool TorchDistSource::left_to_finish(const Streamed& s, uint64_t a, uint64_t b) const {
  for (size_t i = s.link; i < s.links.size(); ++i) {
    if (s.links[i].rank != rank_) continue;
    const uint64_t from = std::max(s.next, s.links[i].row0);
    if (a < s.links[i].row1 && from < b) return true;
  }
  return false;
}

void TorchDistSource::fill(Streamed& s, uint64_t a, uint64_t b) {
  const ChecksumReadScope counted;  // reported apart from the conversion's reads by bench
  // Through the page cache, where this rank's later read of these bytes
  // finds them (read_span): a 1-rank export reads a QKV chunk's q rows for
  // q_proj, skipping k and v for k_proj and v_proj. Read directly they came
  // from storage twice (exports read 1.044x their input, 1.006x before).
  const File& in = file(s.file).file();
  filled_bytes_ += b - a;
  s.filled_from = std::min(s.filled_from, a);
  s.filled_to = std::max(s.filled_to, b);
  // Small blocks: this memory is outside the configured buffer. Not
  // scratch_: a column window's read may be using it.
  for (uint64_t at = a; at < b;) {
    const uint64_t n = std::min<uint64_t>(4u << 20, b - at);
    fill_buf_.resize(n);
    in.pread_exact(fill_buf_.data(), n, at, s.name);
    advance(s, fill_buf_.data(), at, n);
    at += n;
  }
}

void TorchDistSource::finish_links(Streamed& s) {
  while (s.link < s.links.size()) {
    const ChainLink& link = s.links[s.link];
    if (s.next < link.row0) start_link(s, -1);
    if (s.next < link.row1) {
      ++late_links_;
      late_bytes_ += link.row1 - s.next;
    }
    // A broken link's bytes were read through the page cache (read_span).
    while (s.next < link.row1) {
      const uint64_t n = std::min<uint64_t>(4u << 20, link.row1 - s.next);
      fill_buf_.resize(n);
      if (s.broken) {
        file(s.file).file().pread_exact(fill_buf_.data(), n, s.next, s.name);
      } else {
        InputFile& f = file(s.file);
        f.pread_exact(fill_buf_.data(), n, s.next, windows_.of(f), s.name);
      }
      s.hash.update(fill_buf_.data(), n);
      s.next += n;
    }
    end_link(s);
  }
}

std::string TorchDistSource::finish_verification(int rank, int ranks) {
  MB_CHECK(verify_, "internal: finish_verification without verify");
  const ChecksumReadScope counted;  // reported apart from the conversion's reads by bench
  // The links this rank could not hash as it read, in chunk order on every
  // rank: a wait for a state then only waits on work that comes before.
  // Every link, even after a corruption was found: the next links' ranks
  // wait for the states.
  for (const auto& [k, c] : chains_)
    for (const ChainLink& l : c.links)
      if (l.rank == rank_) {
        finish_links(streamed(k, *c.chunk));
        break;
      }
  // Chunks read without a chain: checked whole here, waiting on nobody.
  for (auto& [k, s] : streamed_)
    if (s.index == UINT32_MAX) finish_links(s);
  log::debug(
      "torch_dist checksums as read: {} chunk(s) checked here, {} hash state(s) handed on; {} "
      "bytes of skipped ranges read ahead, {} link(s) finished at the end ({} bytes)",
      checked_, handed_on_, filled_bytes_, late_links_, late_bytes_);
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

void TorchDistSource::read_span(Streamed* sv, InputFile& f, unsigned char* dst, uint64_t n,
                                uint64_t at, const std::string& key, uint64_t until) {
  bytes_read_ += n;
  const bool hashed = sv && prepare(*sv, at, at + n);
  // Through the page cache: bytes hashed ahead (fill) are there, and bytes
  // that finish_links must hash later are read where it reads them again
  // (not from storage).
  if (sv &&
      (sv->filled(at, at + n) || (!hashed && sv->broken && left_to_finish(*sv, at, at + n)))) {
    f.file().pread_exact(dst, n, at, key);
  } else {
    pread_queued(queue_, f, dst, n, at, windows_.of(f), key, until);  // loaded ahead (prefetch)
  }
  if (hashed) advance(*sv, dst, at, n);
}

void TorchDistSource::read_window(Streamed* sv, InputFile& f, unsigned char* dst,
                                  uint64_t dst_stride, uint64_t rows, uint64_t piece, uint64_t at,
                                  uint64_t row_bytes, uint64_t lead, const std::string& key) {
  bytes_read_ += rows * piece;
  const uint64_t first = at - lead, span = rows * row_bytes;
  const bool hashed = sv && prepare(*sv, first, first + span);
  if (!hashed && !(sv && sv->broken && left_to_finish(*sv, first, first + span))) {
    // Narrow windows through the page cache, where the neighbouring columns
    // (another output shard's, another rank's) are then found (pread_rows).
    f.pread_rows(dst, dst_stride, rows, piece, at, row_bytes, windows_.of(f), key);
    return;
  }
  // Rows this rank hashes, now or at the end: read whole, the way the window
  // alone would be read (a narrow one through the page cache, where the
  // node's other ranks share it, and where finish_links finds them), and
  // hashed if they continue the link.
  const bool cached =
      !hashed || io_.mode == IoMode::Buffered || !column_window_direct(piece, row_bytes);
  window_from_whole_rows(
      rows, row_bytes, lead, piece, dst, dst_stride, scratch_,
      [&](uint64_t r, uint64_t n, unsigned char* buf) {
        if (cached)
          f.file().pread_exact(buf, n * row_bytes, first + r * row_bytes, key);
        else
          f.pread_exact(buf, n * row_bytes, first + r * row_bytes, windows_.of(f), key);
      },
      [&](const unsigned char* buf, uint64_t r, uint64_t n) {
        if (hashed) advance(*sv, buf, first + r * row_bytes, n * row_bytes);
      });
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

namespace {
// How many archives ahead ask_archives_ahead asks for, and the bytes at each
// end of an archive that hold what read_torch_tensor_item parses: data.pkl
// and the local headers at its start, the central directory and end records
// at its end (a few hundred bytes each for one tensor; with 4 KiB, the pages
// after the first and before the last, tensor bytes that are read directly,
// came from storage twice: 30 MB more for the benchmark checkpoint).
constexpr size_t kArchivesAhead = 32;
constexpr uint64_t kArchiveRecordBytes = 1024;
}  // namespace

// An archive's records are parsed through the page cache (the buffered
// handle), but its tensor bytes are read directly, which leaves the page
// cache empty around them: each archive's end records were one synchronous
// 4 KiB storage read on the reading thread, between two large reads. A
// 1-rank export of the 35B-A3B benchmark checkpoint made 4,234 of them,
// one per expert item (docs/performance.md, thirteenth round). Asked for
// ahead, they come from storage beside the large reads. A rank reads the
// archives of a run of chunks in file order (an HF tensor's experts, a
// layer's keys), though it jumps between runs: from each archive parsed, the
// next kArchivesAhead in the file are asked for, each once. Where the reads
// go elsewhere, a few records are asked for that are not parsed (at most 8
// KiB per archive, of archives of hundreds of KiB or more, once each).
void TorchDistSource::ask_archives_ahead(const DcpStorage& st) {
  if (io_.mode == IoMode::Buffered) return;  // the kernel's readahead does it
  if (archives_ahead_.empty()) {             // every file's archives, in one pass over .metadata's
    for (const auto& [id, s] : ck_.dcp.storage)
      archives_ahead_[s.relative_path].spans.emplace_back(s.offset, s.length);
    for (auto& [file, a] : archives_ahead_) {
      std::sort(a.spans.begin(), a.spans.end());
      a.asked.assign(a.spans.size(), false);
    }
  }
  ArchivesAhead& a = archives_ahead_.at(st.relative_path);
  const size_t i = static_cast<size_t>(
      std::lower_bound(a.spans.begin(), a.spans.end(), std::make_pair(st.offset, uint64_t{0})) -
      a.spans.begin());
  const File& f = file(st.relative_path).file();
  for (size_t j = i + 1; j < std::min(a.spans.size(), i + 1 + kArchivesAhead); ++j) {
    if (a.asked[j]) continue;
    a.asked[j] = true;
    const auto [off, len] = a.spans[j];
    const uint64_t n = std::min(len, kArchiveRecordBytes);
    f.will_need(off, n);
    if (len > n) f.will_need(off + len - n, n);
  }
}

const TorchTensorItem& TorchDistSource::item(const std::string& key, const DcpChunk& chunk) {
  auto k = std::make_pair(key, chunk.offsets);
  auto it = items_.find(k);
  if (it != items_.end()) return it->second;
  const DcpStorage& st = ck_.dcp.storage_of(key, chunk.offsets);
  ask_archives_ahead(st);
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

std::vector<const DcpChunk*> TorchDistSource::chunks_near(const std::string& key,
                                                          const DcpTensor& meta, const Box& box) {
  auto it = by_first_axis_.find(key);
  if (it == by_first_axis_.end()) {
    ByFirstAxis b;
    for (const DcpChunk& c : meta.chunks) {
      b.chunks.push_back(&c);
      b.widest = std::max<uint64_t>(b.widest, c.sizes.empty() ? 1 : c.sizes[0]);
    }
    auto first = [](const DcpChunk* c) { return c->offsets.empty() ? 0 : c->offsets[0]; };
    std::stable_sort(b.chunks.begin(), b.chunks.end(),
                     [&](const DcpChunk* x, const DcpChunk* y) { return first(x) < first(y); });
    it = by_first_axis_.emplace(key, std::move(b)).first;
  }
  const ByFirstAxis& b = it->second;
  if (box.offsets.empty()) return b.chunks;
  // A chunk meets the box on the first axis only if it starts in
  // (box start - widest, box end).
  const uint64_t lo = box.offsets[0] >= b.widest ? box.offsets[0] - b.widest + 1 : 0;
  const uint64_t hi = box.offsets[0] + box.sizes[0];
  auto first = [](const DcpChunk* c) { return c->offsets.empty() ? 0 : c->offsets[0]; };
  auto from = std::lower_bound(b.chunks.begin(), b.chunks.end(), lo,
                               [&](const DcpChunk* c, uint64_t v) { return first(c) < v; });
  auto to = std::lower_bound(from, b.chunks.end(), hi,
                             [&](const DcpChunk* c, uint64_t v) { return first(c) < v; });
  return {from, to};
}

template <class F>
void TorchDistSource::for_each_cut(uint32_t id, uint64_t row0, uint64_t rows, uint64_t col0,
                                   uint64_t cols, F&& f) {
  const LocalTensorRef& ref = refs_.at(id);
  const LocalTensor& lt = ck_.shards.at(ref.shard).tensors.at(ref.tensor);
  // Work in the local tensor's 2-D view. A 1-D local tensor ([n], viewed as
  // [n, 1]) gets a trailing axis of extent 1 on its key boxes, so that each
  // element is a row (its key may be [n], or [depth, n] when stacked).
  const bool one_d = lt.shape.size() <= 1;
  auto widen = [&](std::vector<uint64_t> v, uint64_t extra) {
    if (one_d) v.push_back(extra);
    return v;
  };
  for (const DistPiece& p : pieces(id)) {
    const uint64_t a = std::max(row0, p.row0), b = std::min(row0 + rows, p.row0 + p.rows);
    if (a >= b) continue;
    const DcpTensor* meta = nullptr;
    if (auto it = ck_.dcp.tensors.find(p.key); it != ck_.dcp.tensors.end()) meta = &it->second;
    MB_CHECK(meta != nullptr, "{}: key '{}' is missing from the checkpoint", ck_.dir.string(),
             p.key);
    Cut k;
    k.piece = &p;
    k.meta = meta;
    k.psizes = widen(p.sizes, 1);
    k.poffsets = widen(p.offsets, 0);
    const size_t nd = k.psizes.size();
    // The rows of this piece we need, as boxes of the piece, then of the key.
    for (Box box : rows_to_boxes(k.psizes, a - p.row0, b - p.row0, col0, col0 + cols)) {
      for (size_t d = 0; d < nd; ++d) box.offsets[d] += k.poffsets[d];
      for (const DcpChunk* c : chunks_near(p.key, *meta, box)) {
        k.csizes = widen(c->sizes, 1);
        k.coffsets = widen(c->offsets, 0);
        auto cut = intersect(box, Box{k.coffsets, k.csizes});
        if (!cut) continue;
        k.chunk = c;
        k.box = std::move(*cut);
        f(static_cast<const Cut&>(k));
      }
    }
  }
}

bool TorchDistSource::column_window(const Cut& k) {
  const size_t nd = k.psizes.size();
  return nd >= 2 && k.box.sizes[nd - 1] < k.csizes[nd - 1];
}

template <class Span, class Window>
void TorchDistSource::walk(const Cut& k, uint64_t row0, uint64_t rows, uint64_t col0, uint64_t cols,
                           uint64_t dst_stride, Span&& span, Window&& window) {
  const DistPiece& p = *k.piece;
  const std::vector<uint64_t>& psizes = k.psizes;
  const std::vector<uint64_t>& poffsets = k.poffsets;
  const std::vector<uint64_t>& csizes = k.csizes;
  const std::vector<uint64_t>& coffsets = k.coffsets;
  const Box& cut = k.box;
  const size_t nd = psizes.size();
  const size_t es = dtype_size(k.meta->dtype);
  std::vector<uint64_t> pt = cut.offsets;
  // Where the point pt of the cut lies: its byte in the chunk, and in dst.
  auto locate = [&](uint64_t& at) {
    std::vector<uint64_t> in_chunk(nd), in_piece(nd);
    for (size_t d = 0; d < nd; ++d) {
      in_chunk[d] = pt[d] - coffsets[d];
      in_piece[d] = pt[d] - poffsets[d];
    }
    at = linear_index(in_chunk, csizes) * es;
    const uint64_t local_row =
        p.row0 + linear_index(std::vector<uint64_t>(in_piece.begin(), in_piece.end() - 1),
                              Shape(psizes.begin(), psizes.end() - 1));
    MB_CHECK(local_row >= row0 && local_row < row0 + rows && in_piece[nd - 1] >= col0 &&
                 in_piece[nd - 1] + cut.sizes[nd - 1] <= col0 + cols,
             "internal: {} box maps outside the requested rows", p.key);
    return (local_row - row0) * dst_stride + (in_piece[nd - 1] - col0) * es;
  };
  // The next point: an odometer over the dims before `end`; false when done.
  auto next = [&](size_t end) {
    for (size_t dim = end; dim-- > 0;) {
      if (++pt[dim] < cut.offsets[dim] + cut.sizes[dim]) return true;
      pt[dim] = cut.offsets[dim];
    }
    return false;
  };
  const uint64_t run = cut.sizes[nd - 1];
  if (column_window(k)) {
    // A column window (a TP split across the chunk's rows): each stretch of
    // rows is one strided read, so that a narrow window is read in whole row
    // spans rather than piece by piece (read_window).
    const uint64_t lead = (cut.offsets[nd - 1] - coffsets[nd - 1]) * es;
    do {
      uint64_t at = 0;
      const uint64_t d = locate(at);
      window(at, cut.sizes[nd - 2], run * es, csizes[nd - 1] * es, lead, d);
    } while (next(nd - 2));
    return;
  }
  // Whole rows: walk the cut's innermost runs (contiguous in the chunk),
  // merging runs that continue each other both in the file and in dst. Runs
  // that do not merge (the destination strided: one TP half of an HF row)
  // are small reads that load ahead. Where this local tensor's part of the
  // chunk is large, its load-ahead stops at that part's end: the next bytes
  // may be another rank's (the next expert of a stacked chunk). A small
  // part's (norms side by side) does not.
  uint64_t until = UINT64_MAX;
  const auto part = intersect(Box{poffsets, psizes}, Box{coffsets, csizes});
  if (part && part->volume() * es >= InputFile::kSmallReadBytes) {
    std::vector<uint64_t> last(nd);
    for (size_t d = 0; d < nd; ++d) last[d] = part->offsets[d] + part->sizes[d] - 1 - coffsets[d];
    until = (linear_index(last, csizes) + 1) * es;
  }
  uint64_t pend_at = 0, pend_len = 0, pend_dst = 0;
  auto flush = [&] {
    if (pend_len == 0) return;
    span(pend_at, pend_len, pend_dst, until);
    pend_len = 0;
  };
  do {
    uint64_t at = 0;
    const uint64_t d = locate(at);
    if (pend_len && pend_at + pend_len == at && pend_dst + pend_len == d) {
      pend_len += run * es;
    } else {
      flush();
      pend_at = at;
      pend_dst = d;
      pend_len = run * es;
    }
  } while (next(nd - 1));
  flush();
}

uint64_t TorchDistSource::prefetch(uint32_t id, uint64_t row0, uint64_t rows, uint64_t col0,
                                   uint64_t cols, uint64_t max_bytes) {
  if (io_.mode == IoMode::Buffered) return 0;
  uint64_t asked = 0;
  const bool load = !verify_ || in_order_.ask(id, row0, rows);  // see RowsAskedInOrder
  for_each_cut(id, row0, rows, col0, cols, [&](const Cut& k) {
    if (asked >= max_bytes) return;
    const DistPiece& p = *k.piece;
    const DcpChunk& c = *k.chunk;
    const TorchTensorItem& ti = item(p.key, c);
    InputFile& f = file(ck_.dcp.storage_of(p.key, c.offsets).relative_path);
    if (!f.direct()) return;
    const uint64_t base = ti.data_offset + ti.storage_offset * dtype_size(ti.dtype);
    walk(
        k, row0, rows, col0, cols, cols * dtype_size(ti.dtype),
        [&](uint64_t at, uint64_t n, uint64_t, uint64_t) {
          // The bytes read_span will read directly. (A run that read_span
          // reads through the page cache instead, for its checksum, is
          // never taken; it is released with its job.)
          if (load && asked < max_bytes)
            asked += queue_.want(f, base + at, base + at + std::min(n, max_bytes - asked));
        },
        [&](uint64_t at, uint64_t wrows, uint64_t piece, uint64_t row_bytes, uint64_t, uint64_t) {
          if (asked < max_bytes)
            asked += f.will_read_rows(wrows, piece, base + at, row_bytes, max_bytes - asked);
        });
  });
  return asked;
}

void TorchDistSource::read(uint32_t id, uint64_t row0, uint64_t rows, uint64_t col0, uint64_t cols,
                           void* dst, uint64_t dst_stride) {
  auto* out = static_cast<unsigned char*>(dst);
  for_each_cut(id, row0, rows, col0, cols, [&](const Cut& k) {
    const DistPiece& p = *k.piece;
    const DcpChunk& c = *k.chunk;
    const TorchTensorItem& ti = item(p.key, c);
    MB_CHECK(ti.dtype == k.meta->dtype, "{}: chunk dtype {} differs from .metadata's {}", p.key,
             dtype_name(ti.dtype), dtype_name(k.meta->dtype));
    const std::string& rel = ck_.dcp.storage_of(p.key, c.offsets).relative_path;
    InputFile& f = file(rel);
    Streamed* sv = verify_ ? &streamed(ChunkId{p.key, c.offsets}, c) : nullptr;
    // The chunk's first element in the file.
    const uint64_t base = ti.data_offset + ti.storage_offset * dtype_size(ti.dtype);
    walk(
        k, row0, rows, col0, cols, dst_stride,
        [&](uint64_t at, uint64_t n, uint64_t d, uint64_t until) {
          read_span(sv, f, out + d, n, base + at, p.key,
                    until == UINT64_MAX ? until : base + until);
        },
        [&](uint64_t at, uint64_t wrows, uint64_t piece, uint64_t row_bytes, uint64_t lead,
            uint64_t d) {
          read_window(sv, f, out + d, dst_stride, wrows, piece, base + at, row_bytes, lead, p.key);
        });
  });
}

}  // namespace mb
