#include "pipelines/bench.hpp"

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>

#include "checkpoint/shard_writer.hpp"
#include "core/error.hpp"
#include "core/file.hpp"
#include "core/hash.hpp"
#include "core/log.hpp"
#include "core/path_safety.hpp"
#include "core/proc_stats.hpp"
#include "dist/mpi_context.hpp"
#include "engine/read_once.hpp"
#include "pipelines/export_pipeline.hpp"
#include "pipelines/import_pipeline.hpp"
#include "pipelines/plan_report.hpp"
#include "pipelines/reshard_pipeline.hpp"
#include "pipelines/synth.hpp"

namespace mb {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {
using Clock = std::chrono::steady_clock;
constexpr const char* kBenchMarker = ".megabridge-bench";

uint64_t dir_bytes(const fs::path& d) {
  uint64_t n = 0;
  for (const auto& e : fs::recursive_directory_iterator(d))
    if (e.is_regular_file()) n += e.file_size();
  return n;
}

// Writes back dirty pages and empties the page cache of this node.
void drop_page_cache() {
  ::sync();
  const int fd = ::open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);
  MB_CHECK(fd >= 0, "/proc/sys/vm/drop_caches: {}", std::strerror(errno));
  const bool ok = ::write(fd, "3\n", 2) == 2;
  const int err = errno;
  ::close(fd);
  MB_CHECK(ok, "/proc/sys/vm/drop_caches: {}", std::strerror(err));
}

// This process's CPU time (user + system, all threads). Child processes (cp)
// are not counted.
double cpu_seconds() {
  struct rusage ru {};
  ::getrusage(RUSAGE_SELF, &ru);
  const auto s = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6;
  };
  return s(ru.ru_utime) + s(ru.ru_stime);
}

// The node's 1-minute load average: how many other processes wanted the CPUs.
double load_average() {
  double l = 0;
  return ::getloadavg(&l, 1) == 1 ? l : -1;
}

// Runs `phase` on every rank and returns, on rank 0, each rank's counters.
json measure(MpiContext& mpi, const std::function<int()>& phase, double& wall, int& code,
             bool cold) {
  // Every rank drops its node's cache (several ranks per node do it twice: harmless).
  if (cold) drop_page_cache();
  mpi.barrier();
  const bool reset = reset_peak_rss();
  const double load = load_average();
  const double cpu0 = cpu_seconds();
  const IoCounters io0 = read_io_counters();
  const uint64_t hashed0 = hash_file_storage_bytes();
  const auto t0 = Clock::now();
  code = phase();
  const double mine = std::chrono::duration<double>(Clock::now() - t0).count();
  mpi.barrier();
  wall = std::chrono::duration<double>(Clock::now() - t0).count();
  const IoCounters io = read_io_counters() - io0;
  const json j = {{"seconds", mine},
                  {"cpu_seconds", cpu_seconds() - cpu0},
                  {"load_average", load},
                  {"rchar", io.rchar},
                  {"checksum_read_bytes", hash_file_storage_bytes() - hashed0},
                  {"wchar", io.wchar},
                  {"read_bytes", io.read_bytes},
                  {"write_bytes", io.write_bytes},
                  {"peak_rss", reset ? peak_rss_now() : peak_rss_bytes()},
                  {"peak_rss_reset", reset}};
  json all = json::array();
  for (const auto& g : mpi.gather(j.dump())) all.push_back(json::parse(g));
  return all;
}

// The reshard phase's target: what was asked, else a layout with as many
// shards that moves every tensor: TP2 (·ETP2) from TP1·PP1·EP1; for a MoE model TP
// and EP swapped (TP2·ETP2 <-> EP2); for a dense one TP and PP swapped.
// Falls back to TP1·PP1·EP1 where that layout is not valid for the model.
ParallelLayout bench_reshard_layout(const BenchOptions& opt, const ModelConfig& model) {
  if (opt.reshard_layout) return *opt.reshard_layout;
  const ParallelLayout& l = opt.layout;
  ParallelLayout t;
  if (l.tp == 1 && l.pp == 1 && l.ep == 1) {
    t.tp = 2;
    t.etp = model.is_moe() ? 2 : 1;  // ETP1 would copy every expert into both TP shards
  } else if (model.is_moe()) {
    t.tp = l.ep, t.ep = l.tp, t.pp = l.pp, t.etp = t.tp;
  } else {
    t.tp = l.pp, t.pp = l.tp;
  }
  try {
    validate_layout(t, model);
  } catch (const std::exception&) {
    t = ParallelLayout{};
  }
  if (t.tp == l.tp && t.pp == l.pp && t.ep == l.ep && t.etp == l.etp) t = ParallelLayout{};
  return t;
}

std::string gb(uint64_t b) {
  return fmt::format("{:.2f}", static_cast<double>(b) / 1e9);
}

// The work directory's parts: the synthetic input, the floor's copy, and the
// outputs of import, export and reshard.
struct BenchPaths {
  fs::path hf, cp, meg, back, resh;
  explicit BenchPaths(const fs::path& dir)
      : hf(dir / "hf"), cp(dir / "cp"), meg(dir / "meg"), back(dir / "back"), resh(dir / "resh") {}
};

void sync_all() {
  MB_CHECK(std::system("sync") == 0, "bench: sync failed");
}

// Rank 0: checks that --dir is bench's own, writes the synthetic checkpoint
// if it is not there yet and removes the outputs of an earlier run.
void prepare_work_dir(const BenchOptions& opt, const BenchPaths& p) {
  // bench removes and rewrites what is under --dir, so --dir must be its
  // own: new, empty, or made by an earlier bench (it holds kBenchMarker).
  check_output_apart({opt.dir, "--dir"}, {{opt.hf_config, "--hf-config"}});
  std::error_code ec;
  if (fs::exists(opt.dir) && !fs::is_empty(opt.dir, ec) && !fs::exists(opt.dir / kBenchMarker))
    throw Error(
        "bench: --dir {} already holds files that bench did not write (it has no {}); "
        "bench removes and rewrites its work directory: give a new or empty one",
        opt.dir.string(), kBenchMarker);
  fs::create_directories(opt.dir);
  write_file_atomic(opt.dir / kBenchMarker, "megabridge bench work directory\n");
  if (!fs::exists(p.hf / "model.safetensors.index.json")) {
    fs::remove_all(p.hf);  // an unfinished synthetic checkpoint of an earlier bench
    SynthOptions s;
    s.config_path = opt.hf_config;
    s.hf_config = json::parse(read_text_file(opt.hf_config));
    s.num_layers = opt.layers;
    s.vision_depth = opt.vision_depth;
    s.out = p.hf;
    log::info("bench: writing the synthetic checkpoint to {}", p.hf.string());
    synthesize_checkpoint(s);
  }
  for (const auto& d : {p.cp, p.meg, p.back, p.resh}) fs::remove_all(d);
  if (opt.cold) {
    try {
      drop_page_cache();
    } catch (const std::exception& e) {
      throw Error("bench --cold: cannot drop the page cache (needs root on Linux): {}", e.what());
    }
  }
  // Start every phase with nothing dirty in the page cache, so that no
  // phase pays for the previous one's writes.
  sync_all();
}

// One phase: its wall time (all ranks) and, on rank 0, every rank's counters.
struct Timed {
  double wall = 0;
  json stats;
};

// The storage floor, two ways: the same bytes copied on the same
// filesystem by `cp -r` (through the page cache, then sync, since we fsync
// what we write) and by a direct-I/O copy (direct_copy_tree: O_DIRECT both
// ways, 64 MiB requests, fsync). Phases are judged against the faster.
struct Floor {
  Timed cp, dio;
  bool dio_direct = true;  // no file fell back to the page cache
  double wall() const { return std::min(cp.wall, dio.wall); }
};

Floor measure_floor(const BenchOptions& opt, const BenchPaths& p, MpiContext& mpi) {
  Floor f;
  int code = 0;
  f.cp.stats = measure(
      mpi,
      [&] {
        if (!mpi.is_root()) return 0;
        const std::string cmd =
            fmt::format("cp -r '{}' '{}' && sync", p.hf.string(), p.cp.string());
        return std::system(cmd.c_str());
      },
      f.cp.wall, code, opt.cold);
  MB_CHECK(code == 0, "bench: cp -r failed");
  if (mpi.is_root()) {
    fs::remove_all(p.cp);
    sync_all();
  }
  std::string dio_error;
  f.dio.stats = measure(
      mpi,
      [&] {
        if (!mpi.is_root()) return 0;
        try {
          direct_copy_tree(p.hf, p.cp, 64ull << 20, &f.dio_direct);
          return 0;
        } catch (const std::exception& e) {
          dio_error = e.what();
          return 1;
        }
      },
      f.dio.wall, code, opt.cold);
  MB_CHECK(code == 0, "bench: direct copy failed: {}", dio_error);
  if (mpi.is_root()) {
    fs::remove_all(p.cp);
    sync_all();
  }
  return f;
}

struct Phases {
  Timed imp, exp, rsh;
  ParallelLayout reshard_layout;
};

// Import, export and reshard, each timed with every rank's counters.
Phases run_phases(const BenchOptions& opt, const BenchPaths& p, MpiContext& mpi) {
  Phases ph;
  int code = 0;
  ImportOptions io;
  io.hf_path = p.hf;
  io.out = p.meg;
  io.layout = opt.layout;
  io.buffer_bytes = opt.buffer_bytes;
  io.format = opt.format;
  io.read_once = opt.read_once;
  io.device = opt.device;
  io.io = opt.io;
  ph.imp.stats = measure(
      mpi, [&] { return run_import(io, mpi); }, ph.imp.wall, code, opt.cold);
  MB_CHECK(code == 0, "bench: import failed");
  if (mpi.is_root()) sync_all();
  ExportOptions eo;
  eo.megatron_path = p.meg;
  eo.hf_path = p.back;
  eo.buffer_bytes = opt.buffer_bytes;
  eo.device = opt.device;
  eo.io = opt.io;
  ph.exp.stats = measure(
      mpi, [&] { return run_export(eo, mpi); }, ph.exp.wall, code, opt.cold);
  MB_CHECK(code == 0, "bench: export failed");
  if (mpi.is_root()) {
    if (!opt.keep) fs::remove_all(p.back);  // not needed any more: keeps the disk use lower
    sync_all();
  }
  ReshardOptions ro;
  ro.src = p.meg;
  ro.out = p.resh;
  ro.layout = bench_reshard_layout(opt, load_model_config(p.hf / "config.json"));
  ro.buffer_bytes = opt.buffer_bytes;
  ro.device = opt.device;
  ro.io = opt.io;
  ph.reshard_layout = ro.layout;
  ph.rsh.stats = measure(
      mpi, [&] { return run_reshard(ro, mpi); }, ph.rsh.wall, code, opt.cold);
  MB_CHECK(code == 0, "bench: reshard failed");
  return ph;
}

// The input and output sizes, shared by the report and the JSON record.
struct Sizes {
  uint64_t hf = 0, meg = 0;
  uint64_t planned_reads = 0;  // what the import should read from storage, by the plan
};

// The setup, the floor and one line per phase.
std::string phase_table(const BenchOptions& opt, int ranks, const Sizes& sz, const Floor& f,
                        const Phases& ph) {
  std::string out = fmt::format(
      "bench: {} ({} layers), HF {} GB, Megatron {} GB; {} ranks, {}, {}{}, buffer {} MiB, "
      "device {}, "
      "I/O {}, page cache {}; reshard to {}\n",
      opt.hf_config.filename().string(), opt.layers, gb(sz.hf), gb(sz.meg), ranks,
      opt.layout.describe(), opt.format, opt.read_once ? " read-once" : "", opt.buffer_bytes >> 20,
      opt.device, io_mode_name(opt.io), opt.cold ? "dropped before each phase" : "warm",
      ph.reshard_layout.describe());
  out += fmt::format(
      "storage floor: {:.2f} s, the faster of cp -r + sync ({:.2f} s) and a direct-I/O copy "
      "({:.2f} s{})\n",
      f.wall(), f.cp.wall, f.dio.wall,
      f.dio_direct ? "" : ", some files fell back to the page cache");
  out += "phase         wall s    GB/s  x cp  x direct  x floor  load avg\n";
  auto row = [&](const char* name, const Timed& t, uint64_t bytes) {
    out += fmt::format("{:<12} {:>7.2f} {:>7.2f} {:>5.2f} {:>9.2f} {:>8.2f} {:>9.1f}\n", name,
                       t.wall, static_cast<double>(bytes) / t.wall / 1e9, t.wall / f.cp.wall,
                       t.wall / f.dio.wall, t.wall / f.wall(),
                       t.stats.at(0).at("load_average").get<double>());
  };
  row("cp -r", f.cp, sz.hf);
  row("direct copy", f.dio, sz.hf);
  row("import", ph.imp, sz.hf);
  row("export", ph.exp, sz.hf);
  row("reshard", ph.rsh, sz.meg);
  return out;
}

// Every rank's counters in one phase, then the phase's read amplification.
std::string rank_rows(const char* name, const json& stats, uint64_t in_bytes) {
  std::string out;
  uint64_t total_read = 0, total_storage = 0, total_checksum = 0;
  for (size_t r = 0; r < stats.size(); ++r) {
    const json& s = stats[r];
    total_read += s.at("rchar").get<uint64_t>();
    total_storage += s.at("read_bytes").get<uint64_t>();
    total_checksum += s.at("checksum_read_bytes").get<uint64_t>();
    const double sec = s.at("seconds").get<double>();
    out += fmt::format(
        "{:<7} {:>4} {:>8.2f} {:>6.1f} {:>6.2f}       {:>7} / {:<7}              {:>7} / {:<7} "
        " "
        "      {:>7.1f}{}\n",
        name, r, sec, s.at("cpu_seconds").get<double>(),
        static_cast<double>(s.at("wchar").get<uint64_t>()) / sec / 1e9,
        gb(s.at("rchar").get<uint64_t>()), gb(s.at("read_bytes").get<uint64_t>()),
        gb(s.at("wchar").get<uint64_t>()), gb(s.at("write_bytes").get<uint64_t>()),
        static_cast<double>(s.at("peak_rss").get<uint64_t>()) / (1 << 20),
        s.at("peak_rss_reset").get<bool>() ? "" : " (process peak)");
  }
  // The checksum passes re-read files (the output after import, the
  // shards before export and reshard); the rest of the storage reads is
  // the input. Ratios are against the phase's input (HF for import and
  // export's output size, the Megatron checkpoint for reshard).
  const auto x = [&](uint64_t b) { return static_cast<double>(b) / static_cast<double>(in_bytes); };
  out += fmt::format(
      "{:<7}  all  syscall reads {:.3f}x the input, storage reads {:.3f}x "
      "(checksum passes {:.3f}x, the rest {:.3f}x)\n",
      name, x(total_read), x(total_storage), x(total_checksum),
      x(total_storage - std::min(total_storage, total_checksum)));
  return out;
}

// What the import should read from storage, by the plan (plan_report.hpp):
// the measure for "no read amplification". Sets sz.planned_reads.
std::string planned_reads_line(const BenchOptions& opt, const BenchPaths& p, int ranks,
                               const json& imp_stats, Sizes& sz) {
  const ModelConfig model = load_model_config(p.hf / "config.json");
  const ImportPlan plan = build_import_plan(model, read_hf_catalog(p.hf),
                                            PlanRequest{opt.layout, std::nullopt, true, ranks});
  const StorageReads want = import_storage_reads(plan, opt.io);
  // torch_dist stores every element once, written by one rank, so its
  // import reads each HF byte once, like read-once.
  const bool once = opt.read_once || opt.format == "torch_dist";
  sz.planned_reads = once ? read_once_read_bytes(plan) : want.one_node();
  uint64_t got = 0, checksum = 0;
  for (const auto& s : imp_stats) {
    got += s.at("read_bytes").get<uint64_t>();
    checksum += s.at("checksum_read_bytes").get<uint64_t>();
  }
  got -= std::min(got, checksum);
  return fmt::format(
      "import reads from storage {} GB (checksum passes apart); the plan needs {} GB "
      "({}, ranks on one node): {:.3f}x\n",
      gb(got), gb(sz.planned_reads),
      opt.read_once                ? std::string("read-once")
      : opt.format == "torch_dist" ? std::string("torch_dist: each byte once")
                                   : fmt::format("--io {}", io_mode_name(opt.io)),
      static_cast<double>(got) / static_cast<double>(std::max<uint64_t>(sz.planned_reads, 1)));
}

// The `bench-json:` line: the setup, the sizes, every wall time and every
// rank's counters.
json bench_record(const BenchOptions& opt, int ranks, const Sizes& sz, const Floor& f,
                  const Phases& ph) {
  return {{"config", opt.hf_config.filename().string()},
          {"layers", opt.layers},
          {"ranks", ranks},
          {"layout", opt.layout.describe()},
          {"reshard_layout", ph.reshard_layout.describe()},
          {"buffer_mb", opt.buffer_bytes >> 20},
          {"device", opt.device},
          {"io", io_mode_name(opt.io)},
          {"format", opt.format},
          {"read_once", opt.read_once},
          {"cold", opt.cold},
          {"hf_bytes", sz.hf},
          {"megatron_bytes", sz.meg},
          {"import_planned_read_bytes", sz.planned_reads},
          {"cp_seconds", f.cp.wall},
          {"direct_copy_seconds", f.dio.wall},
          {"direct_copy_all_direct", f.dio_direct},
          {"floor_seconds", f.wall()},
          {"import_seconds", ph.imp.wall},
          {"export_seconds", ph.exp.wall},
          {"reshard_seconds", ph.rsh.wall},
          {"cp", f.cp.stats},
          {"direct_copy", f.dio.stats},
          {"import", ph.imp.stats},
          {"export", ph.exp.stats},
          {"reshard", ph.rsh.stats}};
}

// Rank 0: the tables on stdout, then the `bench-json:` record.
void report(const BenchOptions& opt, const BenchPaths& p, int ranks, const Floor& f,
            const Phases& ph) {
  Sizes sz;
  sz.hf = dir_bytes(p.hf);
  sz.meg = dir_bytes(p.meg);
  std::string out = phase_table(opt, ranks, sz, f, ph);
  out +=
      "phase   rank  seconds  CPU s   GB/s  read GB (syscall / storage)  written GB (syscall / "
      "storage)  peak RSS MiB\n";
  out += rank_rows("import", ph.imp.stats, sz.hf);
  out += rank_rows("export", ph.exp.stats, sz.hf);
  out += rank_rows("reshard", ph.rsh.stats, sz.meg);
  out += planned_reads_line(opt, p, ranks, ph.imp.stats, sz);
  std::fputs(out.c_str(), stdout);
  std::printf("bench-json: %s\n", bench_record(opt, ranks, sz, f, ph).dump().c_str());
  std::fflush(stdout);
}

}  // namespace

int run_bench(const BenchOptions& opt, MpiContext& mpi) {
  const BenchPaths p(opt.dir);
  std::string status = "ok";
  if (mpi.is_root()) {
    try {
      prepare_work_dir(opt, p);
    } catch (const std::exception& e) {
      status = e.what();
    }
  }
  mpi.broadcast(status);
  if (status != "ok") {
    if (mpi.is_root()) log::error("{}", status);
    return 2;
  }
  const auto level = log::level();
  log::set_level(log::Level::Warn);
  const Floor floor = measure_floor(opt, p, mpi);
  const Phases phases = run_phases(opt, p, mpi);
  log::set_level(level);

  if (mpi.is_root()) {
    report(opt, p, mpi.size(), floor, phases);
    if (!opt.keep) {
      fs::remove_all(p.meg);
      fs::remove_all(p.resh);
    }
  }
  mpi.barrier();
  return 0;
}

}  // namespace mb
