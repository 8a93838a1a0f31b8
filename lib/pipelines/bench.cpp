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
#include <tuple>

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
}  // namespace

int run_bench(const BenchOptions& opt, MpiContext& mpi) {
  const fs::path hf = opt.dir / "hf", cp = opt.dir / "cp", meg = opt.dir / "meg",
                 back = opt.dir / "back", resh = opt.dir / "resh";
  std::string status = "ok";
  if (mpi.is_root()) {
    try {
      // bench removes and rewrites what is under --dir, so --dir must be its
      // own: new, empty, or made by an earlier bench (it holds kBenchMarker).
      check_output_apart({opt.dir, "--dir"}, {{opt.hf_config, "--hf-config"}});
      std::error_code ec;
      if (fs::exists(opt.dir) && !fs::is_empty(opt.dir, ec) && !fs::exists(opt.dir / kBenchMarker))
        throw Error("bench: --dir {} already holds files that bench did not write (it has no {}); "
                    "bench removes and rewrites its work directory: give a new or empty one",
                    opt.dir.string(), kBenchMarker);
      fs::create_directories(opt.dir);
      write_file_atomic(opt.dir / kBenchMarker, "megabridge bench work directory\n");
      if (!fs::exists(hf / "model.safetensors.index.json")) {
        fs::remove_all(hf);  // an unfinished synthetic checkpoint of an earlier bench
        SynthOptions s;
        s.config_path = opt.hf_config;
        s.hf_config = json::parse(read_text_file(opt.hf_config));
        s.num_layers = opt.layers;
        s.vision_depth = opt.vision_depth;
        s.out = hf;
        log::info("bench: writing the synthetic checkpoint to {}", hf.string());
        synthesize_checkpoint(s);
      }
      for (const auto& p : {cp, meg, back, resh}) fs::remove_all(p);
      if (opt.cold) {
        try {
          drop_page_cache();
        } catch (const std::exception& e) {
          throw Error("bench --cold: cannot drop the page cache (needs root on Linux): {}",
                      e.what());
        }
      }
      // Start every phase with nothing dirty in the page cache, so that no
      // phase pays for the previous one's writes.
      MB_CHECK(std::system("sync") == 0, "bench: sync failed");
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

  double cp_wall = 0, dio_wall = 0, imp_wall = 0, exp_wall = 0, rsh_wall = 0;
  int code = 0;
  // The storage floor, two ways: the same bytes copied on the same
  // filesystem by `cp -r` (through the page cache, then sync, since we fsync
  // what we write) and by a direct-I/O copy (direct_copy_tree: O_DIRECT both
  // ways, 64 MiB requests, fsync). Phases are judged against the faster.
  const json cp_stats = measure(
      mpi,
      [&] {
        if (!mpi.is_root()) return 0;
        const std::string cmd = fmt::format("cp -r '{}' '{}' && sync", hf.string(), cp.string());
        return std::system(cmd.c_str());
      },
      cp_wall, code, opt.cold);
  MB_CHECK(code == 0, "bench: cp -r failed");
  if (mpi.is_root()) {
    fs::remove_all(cp);
    MB_CHECK(std::system("sync") == 0, "bench: sync failed");
  }
  bool dio_direct = true;
  std::string dio_error;
  const json dio_stats = measure(
      mpi,
      [&] {
        if (!mpi.is_root()) return 0;
        try {
          direct_copy_tree(hf, cp, 64ull << 20, &dio_direct);
          return 0;
        } catch (const std::exception& e) {
          dio_error = e.what();
          return 1;
        }
      },
      dio_wall, code, opt.cold);
  MB_CHECK(code == 0, "bench: direct copy failed: {}", dio_error);
  if (mpi.is_root()) {
    fs::remove_all(cp);
    MB_CHECK(std::system("sync") == 0, "bench: sync failed");
  }
  const double floor_wall = std::min(cp_wall, dio_wall);

  ImportOptions io;
  io.hf_path = hf;
  io.out = meg;
  io.layout = opt.layout;
  io.buffer_bytes = opt.buffer_bytes;
  io.format = opt.format;
  io.read_once = opt.read_once;
  io.device = opt.device;
  io.io = opt.io;
  const json imp_stats = measure(
      mpi, [&] { return run_import(io, mpi); }, imp_wall, code, opt.cold);
  MB_CHECK(code == 0, "bench: import failed");
  if (mpi.is_root()) MB_CHECK(std::system("sync") == 0, "bench: sync failed");
  ExportOptions eo;
  eo.megatron_path = meg;
  eo.hf_path = back;
  eo.buffer_bytes = opt.buffer_bytes;
  eo.device = opt.device;
  eo.io = opt.io;
  const json exp_stats = measure(
      mpi, [&] { return run_export(eo, mpi); }, exp_wall, code, opt.cold);
  MB_CHECK(code == 0, "bench: export failed");
  if (mpi.is_root()) {
    if (!opt.keep) fs::remove_all(back);  // not needed any more: keeps the disk use lower
    MB_CHECK(std::system("sync") == 0, "bench: sync failed");
  }
  ReshardOptions ro;
  ro.src = meg;
  ro.out = resh;
  ro.layout = bench_reshard_layout(opt, load_model_config(hf / "config.json"));
  ro.buffer_bytes = opt.buffer_bytes;
  ro.device = opt.device;
  ro.io = opt.io;
  const json rsh_stats = measure(
      mpi, [&] { return run_reshard(ro, mpi); }, rsh_wall, code, opt.cold);
  MB_CHECK(code == 0, "bench: reshard failed");
  log::set_level(level);

  if (mpi.is_root()) {
    const uint64_t hf_bytes = dir_bytes(hf), meg_bytes = dir_bytes(meg);
    uint64_t planned_reads = 0;
    std::string out = fmt::format(
        "bench: {} ({} layers), HF {} GB, Megatron {} GB; {} ranks, {}, {}{}, buffer {} MiB, "
        "device {}, "
        "I/O {}, page cache {}; reshard to {}\n",
        opt.hf_config.filename().string(), opt.layers, gb(hf_bytes), gb(meg_bytes), mpi.size(),
        opt.layout.describe(), opt.format, opt.read_once ? " read-once" : "",
        opt.buffer_bytes >> 20, opt.device, io_mode_name(opt.io),
        opt.cold ? "dropped before each phase" : "warm", ro.layout.describe());
    out += fmt::format(
        "storage floor: {:.2f} s, the faster of cp -r + sync ({:.2f} s) and a direct-I/O copy "
        "({:.2f} s{})\n",
        floor_wall, cp_wall, dio_wall,
        dio_direct ? "" : ", some files fell back to the page cache");
    out += "phase         wall s    GB/s  x cp  x direct  x floor  load avg\n";
    auto row = [&](const char* name, double wall, uint64_t bytes, const json& stats) {
      out +=
          fmt::format("{:<12} {:>7.2f} {:>7.2f} {:>5.2f} {:>9.2f} {:>8.2f} {:>9.1f}\n", name, wall,
                      static_cast<double>(bytes) / wall / 1e9, wall / cp_wall, wall / dio_wall,
                      wall / floor_wall, stats.at(0).at("load_average").get<double>());
    };
    row("cp -r", cp_wall, hf_bytes, cp_stats);
    row("direct copy", dio_wall, hf_bytes, dio_stats);
    row("import", imp_wall, hf_bytes, imp_stats);
    row("export", exp_wall, hf_bytes, exp_stats);
    row("reshard", rsh_wall, meg_bytes, rsh_stats);
    out +=
        "phase   rank  seconds  CPU s   GB/s  read GB (syscall / storage)  written GB (syscall / "
        "storage)  peak RSS MiB\n";
    for (const auto& [name, stats, in_bytes] :
         {std::tuple{"import", &imp_stats, hf_bytes}, std::tuple{"export", &exp_stats, hf_bytes},
          std::tuple{"reshard", &rsh_stats, meg_bytes}}) {
      uint64_t total_read = 0, total_storage = 0, total_checksum = 0;
      for (size_t r = 0; r < stats->size(); ++r) {
        const json& s = (*stats)[r];
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
      const auto x = [&](uint64_t b) {
        return static_cast<double>(b) / static_cast<double>(in_bytes);
      };
      out += fmt::format(
          "{:<7}  all  syscall reads {:.3f}x the input, storage reads {:.3f}x "
          "(checksum passes {:.3f}x, the rest {:.3f}x)\n",
          name, x(total_read), x(total_storage), x(total_checksum),
          x(total_storage - std::min(total_storage, total_checksum)));
    }
    // What the import should read from storage, by the plan (plan_report.hpp):
    // the measure for "no read amplification".
    {
      const ModelConfig model = load_model_config(hf / "config.json");
      const ImportPlan plan = build_import_plan(
          model, read_hf_catalog(hf), PlanRequest{opt.layout, std::nullopt, true, mpi.size()});
      const StorageReads want = import_storage_reads(plan, opt.io);
      // torch_dist stores every element once, written by one rank, so its
      // import reads each HF byte once, like read-once.
      const bool once = opt.read_once || opt.format == "torch_dist";
      planned_reads = once ? read_once_read_bytes(plan) : want.one_node();
      uint64_t got = 0, checksum = 0;
      for (const auto& s : imp_stats) {
        got += s.at("read_bytes").get<uint64_t>();
        checksum += s.at("checksum_read_bytes").get<uint64_t>();
      }
      got -= std::min(got, checksum);
      out += fmt::format(
          "import reads from storage {} GB (checksum passes apart); the plan needs {} GB "
          "({}, ranks on one node): {:.3f}x\n",
          gb(got), gb(planned_reads),
          opt.read_once                ? std::string("read-once")
          : opt.format == "torch_dist" ? std::string("torch_dist: each byte once")
                                       : fmt::format("--io {}", io_mode_name(opt.io)),
          static_cast<double>(got) / static_cast<double>(std::max<uint64_t>(planned_reads, 1)));
    }
    std::fputs(out.c_str(), stdout);
    const json record = {{"config", opt.hf_config.filename().string()},
                         {"layers", opt.layers},
                         {"ranks", mpi.size()},
                         {"layout", opt.layout.describe()},
                         {"reshard_layout", ro.layout.describe()},
                         {"buffer_mb", opt.buffer_bytes >> 20},
                         {"device", opt.device},
                         {"io", io_mode_name(opt.io)},
                         {"format", opt.format},
                         {"read_once", opt.read_once},
                         {"cold", opt.cold},
                         {"hf_bytes", hf_bytes},
                         {"megatron_bytes", meg_bytes},
                         {"import_planned_read_bytes", planned_reads},
                         {"cp_seconds", cp_wall},
                         {"direct_copy_seconds", dio_wall},
                         {"direct_copy_all_direct", dio_direct},
                         {"floor_seconds", floor_wall},
                         {"import_seconds", imp_wall},
                         {"export_seconds", exp_wall},
                         {"reshard_seconds", rsh_wall},
                         {"cp", cp_stats},
                         {"direct_copy", dio_stats},
                         {"import", imp_stats},
                         {"export", exp_stats},
                         {"reshard", rsh_stats}};
    std::printf("bench-json: %s\n", record.dump().c_str());
    std::fflush(stdout);
    if (!opt.keep) {
      fs::remove_all(meg);
      fs::remove_all(resh);
    }
  }
  mpi.barrier();
  return 0;
}

}  // namespace mb
