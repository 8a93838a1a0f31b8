#include "pipelines/bench.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "checkpoint/megatron_checkpoint.hpp"
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
  ::sync();
}

// `cp -r SRC DST`, run without a shell: --dir is the user's, and a quote in
// it must not turn the command line into another command.
void copy_with_cp(const fs::path& src, const fs::path& dst) {
  std::string a0 = "cp", a1 = "-r", a2 = src.string(), a3 = dst.string();
  char* argv[] = {a0.data(), a1.data(), a2.data(), a3.data(), nullptr};
  pid_t pid = 0;
  const int err = ::posix_spawnp(&pid, "cp", nullptr, nullptr, argv, environ);
  MB_CHECK(err == 0, "bench: cannot run cp: {}", std::strerror(err));
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    MB_CHECK(errno == EINTR, "bench: waiting for cp: {}", std::strerror(errno));
  MB_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "bench: cp -r {} {} failed (status {})",
           src.string(), dst.string(), status);
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

// The storage floor. The disk's speed drifts by tens of percent from one
// minute to the next (a cloud volume), so one floor at the start of a run
// says little about a phase three minutes later: each phase is judged
// against direct-I/O copies of its own input (direct_copy_tree: O_DIRECT
// both ways, 64 MiB requests, fsync) taken just before it and just after it,
// at their mean speed. `cp -r` + sync (through the page cache, then sync,
// since we fsync what we write) is measured once, first; where it is faster
// it is the floor.
struct Copy {
  Timed t;
  uint64_t bytes = 0;
  bool all_direct = true;  // no file fell back to the page cache
  double seconds_for(uint64_t b) const {
    return t.wall * static_cast<double>(b) / static_cast<double>(std::max<uint64_t>(bytes, 1));
  }
};

// Rank 0 copies `src` to the floor's scratch directory, timed like a phase
// on every rank, then removes the copy.
Copy timed_copy(const BenchOptions& opt, const BenchPaths& p, const fs::path& src, bool use_cp,
                MpiContext& mpi) {
  Copy c;
  if (mpi.is_root()) c.bytes = dir_bytes(src);
  std::string error;
  int code = 0;
  c.t.stats = measure(
      mpi,
      [&] {
        if (!mpi.is_root()) return 0;
        try {
          if (use_cp) {
            copy_with_cp(src, p.cp);
            sync_all();
          } else {
            direct_copy_tree(src, p.cp, 64ull << 20, &c.all_direct);
          }
          return 0;
        } catch (const std::exception& e) {
          error = e.what();
          return 1;
        }
      },
      c.t.wall, code, opt.cold);
  MB_CHECK(code == 0, "bench: {} of {} failed: {}", use_cp ? "cp -r" : "the direct copy",
           src.string(), error);
  if (mpi.is_root()) {
    fs::remove_all(p.cp);
    sync_all();
  }
  return c;
}

// A phase and the floor it is judged against.
struct Phase {
  const char* name = "";
  Timed t;
  uint64_t in_bytes = 0;         // its input: HF for import, the Megatron checkpoint after
  const Copy* before = nullptr;  // direct copies of its input next to it
  const Copy* after = nullptr;
  const Copy* cp = nullptr;
  uint64_t out_bytes = 0;  // what it wrote
  double direct_floor() const {
    return (before->seconds_for(in_bytes) + after->seconds_for(in_bytes)) / 2;
  }
  double floor() const { return std::min(cp->seconds_for(in_bytes), direct_floor()); }
  // The floor for the bytes the phase must move: a layout that replicates
  // tensors (EP in HDF5: every non-expert tensor in each expert rank's
  // shards) writes more than it reads, one that drops the copies less, and no
  // converter writes 1.29x its input in the time of a 1x copy. A copy reads
  // and writes its bytes, so the phase is held to the copy of the mean of its
  // input and output: the stricter of the two usual bounds (max(in, out) if
  // reads and writes did not share the disk's throughput).
  double moved_floor() const {
    return floor() * static_cast<double>(in_bytes + out_bytes) /
           (2.0 * static_cast<double>(std::max<uint64_t>(in_bytes, 1)));
  }
};

struct Run {
  Copy cp;              // cp -r + sync: run once, in the first repeat
  bool cp_here = true;  // measured in this repeat (else the first repeat's)
  Copy copies[4];  // before import, between the phases, after reshard
  Phase imp, exp, rsh;
  ReshardOptions reshard;  // what the reshard phase ran (its target layout)
  bool all_direct() const {
    return std::all_of(std::begin(copies), std::end(copies),
                       [](const Copy& c) { return c.all_direct; });
  }
};

// cp -r (in the first repeat; later ones take `first_cp`), then import,
// export and reshard, each between direct copies of its input, each timed
// with every rank's counters.
void run_phases(const BenchOptions& opt, const BenchPaths& p, MpiContext& mpi, Run& run,
                const Copy* first_cp) {
  int code = 0;
  run.cp_here = first_cp == nullptr;
  run.cp = first_cp ? *first_cp : timed_copy(opt, p, p.hf, /*use_cp=*/true, mpi);
  run.copies[0] = timed_copy(opt, p, p.hf, false, mpi);
  ImportOptions io;
  io.hf_path = p.hf;
  io.out = p.meg;
  io.layout = opt.layout;
  io.buffer_bytes = opt.buffer_bytes;
  io.format = opt.format;
  io.read_once = opt.read_once;
  io.device = opt.device;
  io.io = opt.io;
  run.imp.t.stats = measure(
      mpi, [&] { return run_import(io, mpi); }, run.imp.t.wall, code, opt.cold);
  MB_CHECK(code == 0, "bench: import failed");
  if (mpi.is_root()) sync_all();
  run.copies[1] = timed_copy(opt, p, p.meg, false, mpi);
  ExportOptions eo;
  eo.megatron_path = p.meg;
  eo.hf_path = p.back;
  eo.buffer_bytes = opt.buffer_bytes;
  eo.device = opt.device;
  eo.io = opt.io;
  run.exp.t.stats = measure(
      mpi, [&] { return run_export(eo, mpi); }, run.exp.t.wall, code, opt.cold);
  MB_CHECK(code == 0, "bench: export failed");
  if (mpi.is_root()) {
    run.exp.out_bytes = dir_bytes(p.back);
    if (!opt.keep) fs::remove_all(p.back);  // not needed any more: keeps the disk use lower
    sync_all();
  }
  run.copies[2] = timed_copy(opt, p, p.meg, false, mpi);
  ReshardOptions ro;
  ro.src = p.meg;
  ro.out = p.resh;
  ro.layout = bench_reshard_layout(opt, load_model_config(p.hf / "config.json"));
  ro.buffer_bytes = opt.buffer_bytes;
  ro.device = opt.device;
  ro.io = opt.io;
  run.reshard = ro;
  run.rsh.t.stats = measure(
      mpi, [&] { return run_reshard(ro, mpi); }, run.rsh.t.wall, code, opt.cold);
  MB_CHECK(code == 0, "bench: reshard failed");
  if (mpi.is_root()) {
    run.rsh.out_bytes = dir_bytes(p.resh);
    if (!opt.keep) fs::remove_all(p.resh);
    sync_all();
  }
  run.copies[3] = timed_copy(opt, p, p.meg, false, mpi);
  run.imp = {"import",       run.imp.t, run.copies[0].bytes, &run.copies[0],
             &run.copies[1], &run.cp,   run.copies[1].bytes};
  run.exp = {"export",       run.exp.t, run.copies[1].bytes, &run.copies[1],
             &run.copies[2], &run.cp,   run.exp.out_bytes};
  run.rsh = {"reshard",      run.rsh.t, run.copies[2].bytes, &run.copies[2],
             &run.copies[3], &run.cp,   run.rsh.out_bytes};
}

// The input and output sizes, shared by the report and the JSON record.
struct Sizes {
  uint64_t hf = 0, meg = 0;
};

// The setup, then every copy and phase in the order they ran, each phase
// with its floor.
std::string phase_table(const BenchOptions& opt, int ranks, const Sizes& sz, const Run& run) {
  std::string out = fmt::format(
      "bench: {} ({} layers), HF {} GB, Megatron {} GB; {} ranks, {}, {}{}, buffer {} MiB, "
      "device {}, "
      "I/O {}, page cache {}; reshard to {}\n",
      opt.hf_config.filename().string(), opt.layers, gb(sz.hf), gb(sz.meg), ranks,
      opt.layout.describe(), opt.format, opt.read_once ? " read-once" : "", opt.buffer_bytes >> 20,
      opt.device, io_mode_name(opt.io), opt.cold ? "dropped before each phase" : "warm",
      run.reshard.layout.describe());
  out += fmt::format(
      "storage floor of a phase: the mean of direct-I/O copies of its input just before and just "
      "after it{}, or cp -r + sync where faster; x moved: against that floor scaled to the mean "
      "of the phase's input and output bytes\n",
      run.all_direct() ? "" : " (some files fell back to the page cache)");
  out += "step            wall s    GB/s  floor s  x floor  out/in  x moved  load avg\n";
  auto copy = [&](const char* name, const Copy& c) {
    out += fmt::format("{:<14} {:>7.2f} {:>7.2f} {:>8} {:>8} {:>7} {:>8} {:>9.1f}\n", name,
                       c.t.wall, static_cast<double>(c.bytes) / c.t.wall / 1e9, "", "", "", "",
                       c.t.stats.at(0).at("load_average").get<double>());
  };
  auto phase = [&](const Phase& ph) {
    out += fmt::format(
        "{:<14} {:>7.2f} {:>7.2f} {:>8.2f} {:>8.2f} {:>7.3f} {:>8.2f} {:>9.1f}\n", ph.name,
        ph.t.wall, static_cast<double>(ph.in_bytes) / ph.t.wall / 1e9, ph.floor(),
        ph.t.wall / ph.floor(),
        static_cast<double>(ph.out_bytes) / static_cast<double>(std::max<uint64_t>(ph.in_bytes, 1)),
        ph.t.wall / ph.moved_floor(), ph.t.stats.at(0).at("load_average").get<double>());
  };
  if (run.cp_here) copy("cp -r", run.cp);
  copy("direct copy", run.copies[0]);
  phase(run.imp);
  copy("direct copy", run.copies[1]);
  phase(run.exp);
  copy("direct copy", run.copies[2]);
  phase(run.rsh);
  copy("direct copy", run.copies[3]);
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

// A phase's storage reads against what its plan says they should be: the
// measure for "no read amplification". An import's checksum passes read its
// output back (the metadata regions), not its input, so they are left out;
// an export's or reshard's read the input (rows hashed ahead of or after
// the conversion, files' metadata regions), so they count.
struct ReadsAgainstPlan {
  uint64_t got = 0, checksum = 0, planned = 0;
  bool checksum_reads_count = false;
  double ratio() const {
    return static_cast<double>(got) / static_cast<double>(std::max<uint64_t>(planned, 1));
  }
};

ReadsAgainstPlan reads_against_plan(const json& stats, uint64_t planned,
                                    bool checksum_reads_count) {
  ReadsAgainstPlan r;
  for (const auto& s : stats) {
    r.got += s.at("read_bytes").get<uint64_t>();
    r.checksum += s.at("checksum_read_bytes").get<uint64_t>();
  }
  if (!checksum_reads_count) r.got -= std::min(r.got, r.checksum);
  r.planned = planned;
  r.checksum_reads_count = checksum_reads_count;
  return r;
}

std::string reads_line(const char* phase, const ReadsAgainstPlan& r, const std::string& how) {
  return fmt::format(
      "{} reads from storage {} GB ({} {} GB); the plan needs {} GB ({}, ranks on one node): "
      "{:.3f}x\n",
      phase, gb(r.got),
      r.checksum_reads_count ? "checksum passes included:" : "checksum passes apart:",
      gb(r.checksum), gb(r.planned), how, r.ratio());
}

// Every phase's storage reads against what its plan says it needs, with
// how that was counted. The import: what `plan --io MODE` says (torch_dist
// output and read-once read each HF byte once). The export: each stored
// element once, the canonical copies in whole rows (the other copies of
// replicated tensors are not read). The reshard: reshard_storage_reads.
// Before the caller removes the import's output: the export's and the
// reshard's plans come from its manifest.
struct PlanChecks {
  ReadsAgainstPlan imp, exp, rsh;
  std::string import_how;
};

PlanChecks check_reads_against_plans(const BenchOptions& opt, const BenchPaths& p, int ranks,
                                     const Run& run) {
  PlanChecks c;
  const ModelConfig model = load_model_config(p.hf / "config.json");
  const ImportPlan plan = build_import_plan(model, read_hf_catalog(p.hf),
                                            PlanRequest{opt.layout, std::nullopt, true, ranks});
  const bool once = opt.read_once || opt.format == "torch_dist";
  const uint64_t import_planned =
      once ? read_once_read_bytes(plan)
           : import_storage_reads(plan, opt.io, opt.format == "hdf5" ? opt.buffer_bytes : 0)
                 .one_node();
  c.import_how = opt.read_once                ? std::string("read-once")
                 : opt.format == "torch_dist" ? std::string("torch_dist: each byte once")
                                              : fmt::format("--io {}", io_mode_name(opt.io));
  c.imp = reads_against_plan(run.imp.t.stats, import_planned, /*checksum_reads_count=*/false);
  const MegatronCheckpoint ck = open_megatron_checkpoint(p.meg);
  c.exp = reads_against_plan(run.exp.t.stats, canonical_bytes(ck), true);
  c.rsh = reads_against_plan(run.rsh.t.stats,
                             reshard_storage_reads(run.reshard, ck, ranks).one_node(), true);
  return c;
}

// The `bench-json:` line: the setup, the sizes, every wall time and every
// rank's counters.
json bench_record(const BenchOptions& opt, int ranks, const Sizes& sz, const Run& run,
                  const PlanChecks& reads) {
  json copies = json::array(), copy_seconds = json::array();
  for (const Copy& c : run.copies) {
    copies.push_back(c.t.stats);
    copy_seconds.push_back(c.t.wall);
  }
  json r = {{"config", opt.hf_config.filename().string()},
            {"layers", opt.layers},
            {"ranks", ranks},
            {"layout", opt.layout.describe()},
            {"reshard_layout", run.reshard.layout.describe()},
            {"buffer_mb", opt.buffer_bytes >> 20},
            {"device", opt.device},
            {"io", io_mode_name(opt.io)},
            {"format", opt.format},
            {"read_once", opt.read_once},
            {"cold", opt.cold},
            {"hf_bytes", sz.hf},
            {"megatron_bytes", sz.meg},
            {"import_planned_read_bytes", reads.imp.planned},
            {"export_planned_read_bytes", reads.exp.planned},
            {"reshard_planned_read_bytes", reads.rsh.planned},
            {"cp_seconds", run.cp.t.wall},
            // Before import, between the phases, after reshard.
            {"direct_copy_seconds", copy_seconds},
            {"direct_copy_all_direct", run.all_direct()},
            {"cp", run.cp.t.stats},
            {"direct_copies", copies}};
  for (const Phase* ph : {&run.imp, &run.exp, &run.rsh}) {
    r[fmt::format("{}_seconds", ph->name)] = ph->t.wall;
    r[fmt::format("{}_floor_seconds", ph->name)] = ph->floor();
    r[fmt::format("{}_direct_floor_seconds", ph->name)] = ph->direct_floor();
    r[fmt::format("{}_moved_floor_seconds", ph->name)] = ph->moved_floor();
    r[fmt::format("{}_out_bytes", ph->name)] = ph->out_bytes;
    r[ph->name] = ph->t.stats;
  }
  return r;
}

// One phase's figures in one repeat: what the summary of the repeats takes
// the median (times) or the worst (reads, memory) of.
struct PhaseFigures {
  double x_floor = 0, x_moved = 0, reads_vs_plan = 0, peak_rss_mib = 0;
};
using RepeatFigures = std::array<PhaseFigures, 3>;  // import, export, reshard
constexpr const char* kPhaseNames[3] = {"import", "export", "reshard"};

PhaseFigures figures_of(const Phase& ph, const ReadsAgainstPlan& reads) {
  PhaseFigures f{ph.t.wall / ph.floor(), ph.t.wall / ph.moved_floor(), reads.ratio(), 0};
  for (const auto& s : ph.t.stats)
    f.peak_rss_mib =
        std::max(f.peak_rss_mib, static_cast<double>(s.at("peak_rss").get<uint64_t>()) / (1 << 20));
  return f;
}

// Rank 0: the tables on stdout, then the `bench-json:` record. Returns the
// repeat's figures for the summary.
RepeatFigures report(const BenchOptions& opt, const BenchPaths& p, int ranks, const Run& run,
                     int repeat) {
  Sizes sz;
  sz.hf = run.copies[0].bytes;
  sz.meg = run.copies[1].bytes;
  std::string out;
  if (opt.repeats > 1) out += fmt::format("bench: repeat {} of {}\n", repeat, opt.repeats);
  out += phase_table(opt, ranks, sz, run);
  out +=
      "phase   rank  seconds  CPU s   GB/s  read GB (syscall / storage)  written GB (syscall / "
      "storage)  peak RSS MiB\n";
  out += rank_rows("import", run.imp.t.stats, sz.hf);
  out += rank_rows("export", run.exp.t.stats, sz.hf);
  out += rank_rows("reshard", run.rsh.t.stats, sz.meg);
  const PlanChecks reads = check_reads_against_plans(opt, p, ranks, run);
  out += reads_line("import", reads.imp, reads.import_how);
  out += reads_line("export", reads.exp, "each stored element once");
  out += reads_line("reshard", reads.rsh, fmt::format("--io {}", io_mode_name(run.reshard.io)));
  std::fputs(out.c_str(), stdout);
  json record = bench_record(opt, ranks, sz, run, reads);
  record["repeat"] = repeat;
  record["repeats"] = opt.repeats;
  std::printf("bench-json: %s\n", record.dump().c_str());
  std::fflush(stdout);
  return {figures_of(run.imp, reads.imp), figures_of(run.exp, reads.exp),
          figures_of(run.rsh, reads.rsh)};
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Rank 0, after more than one repeat: per phase the median of its ratios to
// the floor over the repeats (each repeat's phase against the copies next to
// it), every repeat's ratio, and the worst reads against the plan and peak
// RSS; then the `bench-summary-json:` record. The disk's speed moves single
// phases by tens of percent from run to run, so one run's ratio is one draw;
// the median of interleaved repeats is the estimate that one slow or fast
// minute does not move.
void report_summary(const BenchOptions& opt, const std::vector<RepeatFigures>& repeats) {
  const auto list = [](const std::vector<double>& v) {
    std::string s;
    for (double x : v) s += fmt::format("{}{:.2f}", s.empty() ? "" : " ", x);
    return "(" + s + ")";
  };
  std::string out = fmt::format(
      "summary of {} repeats: each phase's median ratio to the floor next to it (every repeat's "
      "in parentheses), the most its storage reads exceeded its plan, its highest peak RSS "
      "(buffer {} MiB)\n",
      repeats.size(), opt.buffer_bytes >> 20);
  out +=
      "phase    x floor median (repeats)    x moved median (repeats)    reads/plan max  peak RSS "
      "MiB max\n";
  json summary = {{"repeats", repeats.size()}};
  for (size_t i = 0; i < 3; ++i) {
    std::vector<double> xf, xm, rd, rss;
    for (const RepeatFigures& r : repeats) {
      xf.push_back(r[i].x_floor);
      xm.push_back(r[i].x_moved);
      rd.push_back(r[i].reads_vs_plan);
      rss.push_back(r[i].peak_rss_mib);
    }
    const double rd_max = *std::max_element(rd.begin(), rd.end());
    const double rss_max = *std::max_element(rss.begin(), rss.end());
    out += fmt::format("{:<8} {:>6.2f} {:<20} {:>6.2f} {:<20} {:>14.3f} {:>17.0f}\n",
                       kPhaseNames[i], median(xf), list(xf), median(xm), list(xm), rd_max, rss_max);
    summary[kPhaseNames[i]] = {{"x_floor", xf},
                               {"x_floor_median", median(xf)},
                               {"x_moved", xm},
                               {"x_moved_median", median(xm)},
                               {"reads_vs_plan", rd},
                               {"reads_vs_plan_max", rd_max},
                               {"peak_rss_mib_max", rss_max}};
  }
  std::fputs(out.c_str(), stdout);
  std::printf("bench-summary-json: %s\n", summary.dump().c_str());
  std::fflush(stdout);
}

}  // namespace

int run_bench(const BenchOptions& opt, MpiContext& mpi) {
  MB_CHECK(opt.repeats >= 1, "bench: --repeats must be at least 1, got {}", opt.repeats);
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
  std::vector<RepeatFigures> figures;
  std::optional<Copy> first_cp;
  for (int repeat = 1; repeat <= opt.repeats; ++repeat) {
    const auto level = log::level();
    log::set_level(log::Level::Warn);
    Run run;
    run_phases(opt, p, mpi, run, first_cp ? &*first_cp : nullptr);
    log::set_level(level);
    if (!first_cp) first_cp = run.cp;
    if (mpi.is_root()) {
      figures.push_back(report(opt, p, mpi.size(), run, repeat));
      // The next repeat writes them again; --keep keeps the last repeat's.
      if (!opt.keep || repeat < opt.repeats)
        for (const auto& d : {p.meg, p.back, p.resh}) fs::remove_all(d);
      sync_all();
    }
    mpi.barrier();
  }
  if (mpi.is_root() && opt.repeats > 1) report_summary(opt, figures);
  mpi.barrier();
  return 0;
}

}  // namespace mb
