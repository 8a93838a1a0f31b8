// `megabridge bench`: import, export and reshard of a synthetic checkpoint,
// timed against the storage floor.
#include <optional>

#include "cli_commands.hpp"
#include "pipelines/bench.hpp"

namespace {

struct BenchCommand : CliCommand {
  mb::BenchOptions opt;
  std::optional<uint64_t> buffer_mb, rtp, rpp, rep, retp;
  std::string io;

  void add_layouts(CLI::App* c) {
    c->add_option("--tp", opt.layout.tp, "tensor-parallel size")->check(kParallelSize);
    c->add_option("--pp", opt.layout.pp, "pipeline-parallel size")->check(kParallelSize);
    c->add_option("--ep", opt.layout.ep, "expert-parallel size")->check(kParallelSize);
    c->add_option("--etp", opt.layout.etp, "expert tensor-parallel size")->check(kParallelSize);
    c->add_option("--reshard-tp", rtp,
                  "reshard phase: target TP (default: TP2 from TP1, else TP and EP (MoE) or PP "
                  "swapped)")
        ->check(kParallelSize);
    c->add_option("--reshard-pp", rpp, "reshard phase: target PP")->check(kParallelSize);
    c->add_option("--reshard-ep", rep, "reshard phase: target EP")->check(kParallelSize);
    c->add_option("--reshard-etp", retp, "reshard phase: target ETP")->check(kParallelSize);
  }

  void add(CLI::App* c) {
    c->add_option("--hf-config", opt.hf_config, "configs/hf/<size>.json")->required();
    c->add_option("--layers", opt.layers, "decoder layers to keep (default 4)")->check(kLayerCount);
    c->add_option("--vision-depth", opt.vision_depth, "vision blocks to keep")->check(kLayerCount);
    c->add_option("--dir", opt.dir, "work directory on the filesystem to measure")->required();
    add_layouts(c);
    c->add_option("--buffer-mb", buffer_mb, "staging memory per rank in MiB (default 256)")
        ->check(kBufferMb);
    add_device_option(c, opt.device);
    add_io_option(c, io);
    c->add_flag("--keep", opt.keep, "keep the import and export outputs");
    c->add_option("--format", opt.format, "import output format: hdf5 or torch_dist");
    c->add_flag("--read-once", opt.read_once, "import in read-once mode");
    c->add_option("--repeats", opt.repeats,
                  "run import, export and reshard this many times, each between direct copies "
                  "of its input, and report each phase's median ratio to its floor (default 1)")
        ->check(CLI::Range(1, 100));
    c->add_flag("--cold", opt.cold,
                "drop the page cache before each phase (root): every phase reads from storage");
  }

  int run(Action action, mb::MpiContext& mpi) override {
    if (buffer_mb) opt.buffer_bytes = mb::buffer_mb_to_bytes(*buffer_mb, "--buffer-mb");
    if (!io.empty()) opt.io = mb::parse_io_mode(io);
    if (rtp || rpp || rep || retp) {
      mb::ParallelLayout t;
      t.tp = rtp.value_or(1), t.pp = rpp.value_or(1);
      t.ep = rep.value_or(1), t.etp = retp.value_or(1);
      opt.reshard_layout = t;
    }
    if (action != Action::Execute) return 0;
    return mb::run_bench(opt, mpi);
  }
};

}  // namespace

std::unique_ptr<CliCommand> add_bench_command(CLI::App& app) {
  auto c = std::make_unique<BenchCommand>();
  c->cmd = app.add_subcommand(
      "bench",
      "import, export and reshard a synthetic checkpoint, timed against the storage floor");
  c->add(c->cmd);
  return c;
}
