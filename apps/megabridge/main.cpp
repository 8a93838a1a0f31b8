// megabridge: Qwen3.5 checkpoints between HuggingFace safetensors and
// Megatron-Core's parallel layout. See README.md for usage.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>

#include "core/error.hpp"
#include "core/file.hpp"
#include "pipeline_cli.hpp"
#include "core/log.hpp"
#include "dist/mpi_context.hpp"
#include "layout/import_plan.hpp"
#include "pipelines/bench.hpp"
#include "pipelines/import_pipeline.hpp"
#include "pipelines/job_config.hpp"
#include "pipelines/plan_report.hpp"
#include "pipelines/reshard_pipeline.hpp"
#include "pipelines/synth.hpp"
#include "pipelines/verify_pipeline.hpp"
#include "dist/test_hooks.hpp"
#include "pipelines/export_pipeline.hpp"
#include "pipelines/pipeline_config.hpp"
#include "checkpoint/staged_output.hpp"
#include "pipelines/step_driver.hpp"

namespace {

constexpr const char* kDeviceHelp =
    "copy engine: cpu (default), cuda, or auto (cuda when built with it and a GPU is present)";

void add_device_option(CLI::App* c, std::string& device) {
  c->add_option("--device", device, kDeviceHelp)->check(CLI::IsMember({"cpu", "cuda", "auto"}));
}

// Range checks with messages that name the option and the value. Layout
// sizes beyond 2^20 fit no model; validate_layout says why a smaller one
// does not fit this one.
const CLI::Range kParallelSize(uint64_t{1}, uint64_t{1} << 20);
const CLI::Range kLayerCount(uint64_t{1}, uint64_t{1} << 20);
const CLI::Range kBufferMb(uint64_t{1}, mb::kMaxBufferMb);

void check_tolerance(double v, const char* option) {
  MB_CHECK(std::isfinite(v) && v >= 0, "{} {} is out of range: expected a finite number >= 0",
           option, v);
}

constexpr const char* kAllowOverflowHelp =
    "let a --dtype cast turn values too large for the target type into Inf (refused by default)";

void add_io_option(CLI::App* c, std::string& io) {
  c->add_option("--io", io,
                "auto (default): large reads and writes bypass the page cache (O_DIRECT) where the "
                "filesystem allows it; direct: the same, saying when a file falls back; buffered: never")
      ->check(CLI::IsMember({"auto", "direct", "buffered"}));
}

// Flags shared by import and plan. Optional so that only the flags the user
// gives override the YAML job file.
struct ImportFlags {
  std::string config, hf_path, out, format, dtype, device, io;
  std::optional<uint64_t> tp, pp, ep, etp, first, last, buffer_mb;
  bool not_strict = false, overwrite = false, resume = false, read_once = false,
       allow_overflow = false;

  void add(CLI::App* c, bool with_output) {
    c->add_option("--config", config, "YAML job file (configs/*.yaml), a one-step pipeline; flags override it");
    c->add_option("--hf-path", hf_path, "HuggingFace checkpoint directory");
    if (with_output) c->add_option("--out", out, "output directory");
    c->add_option("--tp", tp, "tensor-parallel size")->check(kParallelSize);
    c->add_option("--pp", pp, "pipeline-parallel size")->check(kParallelSize);
    c->add_option("--ep", ep, "expert-parallel size")->check(kParallelSize);
    c->add_option("--etp", etp, "expert tensor-parallel size (1 or TP)")->check(kParallelSize);
    c->add_option("--first-stage-layers", first, "decoder layers on the first pipeline stage")
        ->check(kLayerCount);
    c->add_option("--last-stage-layers", last, "decoder layers on the last pipeline stage")
        ->check(kLayerCount);
    if (with_output) c->add_option("--format", format, "output format: hdf5 or torch_dist");
    c->add_option("--dtype", dtype,
                  "keep (default), bf16, fp16, fp32, or model: the params dtype of config.json, as "
                  "Megatron-Bridge stores every tensor");
    c->add_option("--buffer-mb", buffer_mb, "staging memory per rank in MiB (default 256)")
        ->check(kBufferMb);
    c->add_flag("--allow-overflow", allow_overflow, kAllowOverflowHelp);
    c->add_flag("--not-strict", not_strict, "warn instead of failing on unconsumed HF tensors");
    if (with_output) c->add_flag("--overwrite", overwrite, "replace an existing output directory");
    if (with_output) add_device_option(c, device);
    add_io_option(c, io);  // plan: the storage reads it reports depend on it
    c->add_flag("--read-once", read_once,
                "read every HF byte from storage once and forward it over MPI (HDF5 output)");
    if (with_output)
      c->add_flag("--resume", resume,
                  "continue an interrupted run, keeping the shards it committed (checked by checksum)");
  }

  mb::ImportOptions resolve() const {
    mb::ImportOptions o;  // a --config file arrives as flags (expand_config)
    if (!hf_path.empty()) o.hf_path = hf_path;
    if (!out.empty()) o.out = out;
    if (!format.empty()) o.format = format;
    if (tp) o.layout.tp = *tp;
    if (pp) o.layout.pp = *pp;
    if (ep) o.layout.ep = *ep;
    if (etp) o.layout.etp = *etp;
    if (first) o.layout.first_stage_layers = *first;
    if (last) o.layout.last_stage_layers = *last;
    if (!dtype.empty()) mb::set_import_dtype(o, dtype);
    if (buffer_mb) o.buffer_bytes = mb::buffer_mb_to_bytes(*buffer_mb, "--buffer-mb");
    if (allow_overflow) o.allow_overflow = true;
    if (not_strict) o.strict = false;
    if (overwrite) o.overwrite = true;
    if (resume) o.resume = true;
    if (read_once) o.read_once = true;
    if (!device.empty()) o.device = device;
    if (!io.empty()) o.io = mb::parse_io_mode(io);
    MB_CHECK(!o.hf_path.empty(), "no HF checkpoint given: use --hf-path or source.hf_path in --config");
    return o;
  }
};

struct ExportFlags {
  std::string config, megatron_path, hf_path, experts, mtp_experts, max_shard_size, dtype, hf_config,
      device, io;
  std::optional<uint64_t> buffer_mb;
  bool no_verify = false, overwrite = false, allow_overflow = false;

  void add(CLI::App* c) {
    c->add_option("--config", config, "YAML job file, a one-step pipeline; flags override it");
    c->add_option("--megatron-path", megatron_path, "megabridge Megatron output directory");
    c->add_option("--hf-path", hf_path, "output HF checkpoint directory");
    c->add_option("--experts", experts, "decoder expert layout: fused or per_expert (default: as the source)");
    c->add_option("--mtp-experts", mtp_experts, "MTP expert layout: fused or per_expert (default: as the source)");
    c->add_option("--max-shard-size", max_shard_size,
                  "split files at this size, e.g. 5GB (default: the source's file map)");
    c->add_option("--dtype", dtype, "keep (default: the source dtypes), bf16, fp16 or fp32");
    c->add_option("--buffer-mb", buffer_mb, "staging memory per rank in MiB (default 256)")
        ->check(kBufferMb);
    c->add_flag("--allow-overflow", allow_overflow, kAllowOverflowHelp);
    c->add_flag("--no-verify-checksums", no_verify, "skip the shard checksum check");
    c->add_flag("--overwrite", overwrite, "replace an existing output directory");
    add_device_option(c, device);
    add_io_option(c, io);
    c->add_option("--hf-config", hf_config,
                  "the model's HF config.json, for a torch_dist checkpoint not written by megabridge");
  }

  mb::ExportOptions resolve() const {
    mb::ExportOptions o;  // a --config file arrives as flags (expand_config)
    if (!megatron_path.empty()) o.megatron_path = megatron_path;
    if (!hf_path.empty()) o.hf_path = hf_path;
    if (!experts.empty()) o.experts = mb::expert_layout_from_name(experts);
    if (!mtp_experts.empty()) o.mtp_experts = mb::expert_layout_from_name(mtp_experts);
    if (!max_shard_size.empty()) {
      try {
        o.max_shard_bytes = mb::parse_size(max_shard_size);
      } catch (const mb::Error& e) {
        throw mb::Error("--max-shard-size: {}", e.what());
      }
    }
    if (!dtype.empty()) o.dtype = mb::parse_dtype_option(dtype);
    if (buffer_mb) o.buffer_bytes = mb::buffer_mb_to_bytes(*buffer_mb, "--buffer-mb");
    if (allow_overflow) o.allow_overflow = true;
    if (no_verify) o.verify_checksums = false;
    if (overwrite) o.overwrite = true;
    if (!hf_config.empty()) o.hf_config = hf_config;
    if (!device.empty()) o.device = device;
    if (!io.empty()) o.io = mb::parse_io_mode(io);
    MB_CHECK(!o.megatron_path.empty(), "no Megatron checkpoint given: use --megatron-path");
    MB_CHECK(!o.hf_path.empty(), "no output directory given: use --hf-path");
    return o;
  }
};

int run_plan(const mb::ImportOptions& o, int ranks, bool per_shard, mb::MpiContext& mpi) {
  if (!mpi.is_root()) return 0;
  const mb::ModelConfig model = mb::load_model_config(o.hf_path / "config.json");
  mb::validate_layout(o.layout, model);
  mb::PlanRequest req{o.layout, mb::import_cast(o, model), o.strict,
                      ranks > 0 ? ranks : mpi.size()};
  const mb::ImportPlan plan = mb::build_import_plan(model, mb::read_hf_catalog(o.hf_path), req);
  std::fputs(mb::plan_report(plan, per_shard, o.io, o.read_once).c_str(), stdout);
  return 0;
}

}  // namespace

// One command line (a step of a pipeline is one too), parsed into a fresh
// CLI tree so that no value carries over from an earlier step.
int megabridge_main(std::vector<std::string> args, mb::MpiContext& mpi, Action action) {
  CLI::App app{"megabridge: Qwen3.5 checkpoints between HuggingFace and Megatron-Core"};
  app.require_subcommand(1);
  // A --config file's flags come first; the command line's, later, win.
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  std::string log_level;  // empty: keep the level (a pipeline's steps inherit run's)
  bool quiet = false;
  app.add_option("--log-level", log_level, "debug, info, warn, error or off");
  app.add_flag("--quiet,-q", quiet, "only warnings and errors");

  ImportFlags import_flags, plan_flags;
  CLI::App* import_cmd = app.add_subcommand("import", "convert a HF checkpoint to Megatron shards");
  import_flags.add(import_cmd, true);
  CLI::App* plan_cmd =
      app.add_subcommand("plan", "print what each rank would read and write, converting nothing");
  plan_flags.add(plan_cmd, false);
  int plan_ranks = 0;
  bool per_shard = false;
  plan_cmd
      ->add_option("--ranks", plan_ranks, "number of MPI ranks to plan for (default: this job's)")
      ->check(CLI::Range(1, 1 << 24));
  plan_cmd->add_flag("--shards", per_shard, "also list every shard");
  CLI::App* synth_cmd = app.add_subcommand(
      "synth", "write a random HF checkpoint with the real shapes of a released size");
  std::string synth_config, synth_out, synth_experts = "fused", synth_mtp_experts = "per_expert";
  std::optional<uint64_t> synth_layers, synth_depth;
  uint64_t synth_shard_mb = 5120, synth_seed = 1;
  synth_cmd->add_option("--hf-config", synth_config, "a config.json, e.g. configs/hf/qwen3.5-35b-a3b.json")
      ->required();
  synth_cmd->add_option("--out", synth_out, "output directory")->required();
  synth_cmd->add_option("--layers", synth_layers, "keep the first N decoder layers")
      ->check(kLayerCount);
  synth_cmd->add_option("--vision-depth", synth_depth, "keep the first N vision blocks")
      ->check(kLayerCount);
  synth_cmd->add_option("--experts", synth_experts, "decoder expert layout: fused or per_expert");
  synth_cmd->add_option("--mtp-experts", synth_mtp_experts, "MTP expert layout: fused or per_expert");
  synth_cmd->add_option("--max-shard-mb", synth_shard_mb, "shard file size target (default 5120)")
      ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 32));
  synth_cmd->add_option("--seed", synth_seed, "random seed");
  ExportFlags export_flags;
  CLI::App* export_cmd = app.add_subcommand("export", "convert Megatron shards back to a HF checkpoint");
  export_flags.add(export_cmd);
  mb::VerifyOptions verify_opt;
  std::optional<uint64_t> verify_buffer_mb;
  bool verify_no_checksums = false;
  CLI::App* verify_cmd = app.add_subcommand(
      "verify", "compare two checkpoints (HF/HF or HF/Megatron) tensor by tensor");
  verify_cmd->add_option("A", verify_opt.a, "a HF checkpoint or megabridge output")->required();
  verify_cmd->add_option("B", verify_opt.b, "a HF checkpoint or megabridge output")->required();
  verify_cmd->add_option("--atol", verify_opt.atol, "absolute tolerance (default 0: bit-exact)");
  verify_cmd->add_option("--rtol", verify_opt.rtol, "relative tolerance (default 0: bit-exact)");
  verify_cmd->add_option("--buffer-mb", verify_buffer_mb, "staging memory per rank in MiB")
      ->check(kBufferMb);
  add_device_option(verify_cmd, verify_opt.device);
  verify_cmd->add_flag("--no-verify-checksums", verify_no_checksums, "skip the shard checksum check");
  verify_cmd->add_option("--hf-config", verify_opt.hf_config,
                         "HF config.json for a torch_dist side not written by megabridge (default: the HF side's)");
  mb::ReshardOptions reshard_opt;
  std::optional<uint64_t> reshard_first, reshard_last, reshard_buffer_mb;
  std::string reshard_io, bench_io;
  bool reshard_no_checksums = false;
  CLI::App* reshard_cmd = app.add_subcommand(
      "reshard", "convert Megatron shards to another parallel layout, without HF in between");
  reshard_cmd->add_option("--megatron-path", reshard_opt.src, "megabridge Megatron output")->required();
  reshard_cmd->add_option("--out", reshard_opt.out, "output directory")->required();
  reshard_cmd->add_option("--tp", reshard_opt.layout.tp, "target tensor-parallel size")
      ->check(kParallelSize);
  reshard_cmd->add_option("--pp", reshard_opt.layout.pp, "target pipeline-parallel size")
      ->check(kParallelSize);
  reshard_cmd->add_option("--ep", reshard_opt.layout.ep, "target expert-parallel size")
      ->check(kParallelSize);
  reshard_cmd->add_option("--etp", reshard_opt.layout.etp, "target expert tensor-parallel size")
      ->check(kParallelSize);
  reshard_cmd->add_option("--first-stage-layers", reshard_first, "layers on the first stage")
      ->check(kLayerCount);
  reshard_cmd->add_option("--last-stage-layers", reshard_last, "layers on the last stage")
      ->check(kLayerCount);
  reshard_cmd->add_option("--buffer-mb", reshard_buffer_mb, "staging memory per rank in MiB")
      ->check(kBufferMb);
  add_device_option(reshard_cmd, reshard_opt.device);
  add_io_option(reshard_cmd, reshard_io);
  reshard_cmd->add_flag("--no-verify-checksums", reshard_no_checksums, "skip the shard checksum check");
  reshard_cmd->add_flag("--overwrite", reshard_opt.overwrite, "replace an existing output directory");
  reshard_cmd->add_flag("--resume", reshard_opt.resume,
                        "continue an interrupted run, keeping the shards it committed (checked by checksum)");
  mb::BenchOptions bench_opt;
  std::optional<uint64_t> bench_buffer_mb;
  CLI::App* bench_cmd = app.add_subcommand(
      "bench", "import, export and reshard a synthetic checkpoint, timed against the storage floor");
  bench_cmd->add_option("--hf-config", bench_opt.hf_config, "configs/hf/<size>.json")->required();
  bench_cmd->add_option("--layers", bench_opt.layers, "decoder layers to keep (default 4)")
      ->check(kLayerCount);
  bench_cmd->add_option("--vision-depth", bench_opt.vision_depth, "vision blocks to keep")
      ->check(kLayerCount);
  bench_cmd->add_option("--dir", bench_opt.dir, "work directory on the filesystem to measure")->required();
  bench_cmd->add_option("--tp", bench_opt.layout.tp, "tensor-parallel size")->check(kParallelSize);
  bench_cmd->add_option("--pp", bench_opt.layout.pp, "pipeline-parallel size")
      ->check(kParallelSize);
  bench_cmd->add_option("--ep", bench_opt.layout.ep, "expert-parallel size")->check(kParallelSize);
  bench_cmd->add_option("--etp", bench_opt.layout.etp, "expert tensor-parallel size")
      ->check(kParallelSize);
  std::optional<uint64_t> bench_rtp, bench_rpp, bench_rep, bench_retp;
  bench_cmd->add_option("--reshard-tp", bench_rtp, "reshard phase: target TP (default: TP2 from TP1, else TP and EP (MoE) or PP swapped)")
      ->check(kParallelSize);
  bench_cmd->add_option("--reshard-pp", bench_rpp, "reshard phase: target PP")->check(kParallelSize);
  bench_cmd->add_option("--reshard-ep", bench_rep, "reshard phase: target EP")->check(kParallelSize);
  bench_cmd->add_option("--reshard-etp", bench_retp, "reshard phase: target ETP")->check(kParallelSize);
  bench_cmd
      ->add_option("--buffer-mb", bench_buffer_mb, "staging memory per rank in MiB (default 256)")
      ->check(kBufferMb);
  add_device_option(bench_cmd, bench_opt.device);
  add_io_option(bench_cmd, bench_io);
  bench_cmd->add_flag("--keep", bench_opt.keep, "keep the import and export outputs");
  bench_cmd->add_option("--format", bench_opt.format, "import output format: hdf5 or torch_dist");
  bench_cmd->add_flag("--read-once", bench_opt.read_once, "import in read-once mode");
  bench_cmd->add_flag("--cold", bench_opt.cold,
                      "drop the page cache before each phase (root): every phase reads from storage");
  std::string verify_config, reshard_config;
  verify_cmd->add_option("--config", verify_config, "YAML job file, a one-step pipeline; flags override it");
  reshard_cmd->add_option("--config", reshard_config, "YAML job file, a one-step pipeline; flags override it");
  RunFlags run_flags;
  CLI::App* run_cmd = app.add_subcommand(
      "run", "run a YAML pipeline of steps (import, verify, reshard, export, ...) in one MPI job");
  run_flags.add(run_cmd);
  for (CLI::App* c : {import_cmd, plan_cmd, synth_cmd, export_cmd, verify_cmd, reshard_cmd, bench_cmd, run_cmd}) {
    c->add_option("--log-level", log_level, "debug, info, warn, error or off");
    c->add_flag("--quiet,-q", quiet, "only warnings and errors");
  }

  if (action == Action::Specs) {
    set_command_specs(command_specs(app));
    return 0;
  }
  try {
    std::reverse(args.begin(), args.end());  // CLI11 takes a vector last argument first
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    if (action != Action::Execute) throw mb::Error("{}", e.what());
    // Every rank exits alike (mpirun reports whichever ends first): 0 for
    // --help, 2 for a bad command line (CLI11's own codes vary, e.g. 105).
    const int code = mpi.is_root() ? app.exit(e) : e.get_exit_code();
    return code == 0 ? 0 : 2;
  }
  try {
    if (quiet) mb::log::set_level(mb::log::Level::Warn);
    else if (!log_level.empty()) mb::log::set_level(mb::log::parse_level(log_level));
    if (*run_cmd) return run_pipeline(run_flags, mpi);
    if (*import_cmd) {
      mb::ImportOptions o = import_flags.resolve();
      MB_CHECK(!o.out.empty(), "no output directory given: use --out or target.path in --config");
      if (action != Action::Execute) return drive(action, mb::make_import_step(o), mpi);
      return mb::run_import(o, mpi);
    }
    if (*verify_cmd) {
      if (verify_buffer_mb)
        verify_opt.buffer_bytes = mb::buffer_mb_to_bytes(*verify_buffer_mb, "--buffer-mb");
      check_tolerance(verify_opt.atol, "--atol");
      check_tolerance(verify_opt.rtol, "--rtol");
      verify_opt.verify_checksums = !verify_no_checksums;
      if (action != Action::Execute) return drive(action, mb::make_verify_step(verify_opt), mpi);
      return mb::run_verify(verify_opt, mpi);
    }
    if (*bench_cmd) {
      if (bench_buffer_mb)
        bench_opt.buffer_bytes = mb::buffer_mb_to_bytes(*bench_buffer_mb, "--buffer-mb");
      if (!bench_io.empty()) bench_opt.io = mb::parse_io_mode(bench_io);
      if (bench_rtp || bench_rpp || bench_rep || bench_retp) {
        mb::ParallelLayout t;
        t.tp = bench_rtp.value_or(1), t.pp = bench_rpp.value_or(1);
        t.ep = bench_rep.value_or(1), t.etp = bench_retp.value_or(1);
        bench_opt.reshard_layout = t;
      }
      if (action != Action::Execute) return 0;
      return mb::run_bench(bench_opt, mpi);
    }
    if (*reshard_cmd) {
      reshard_opt.layout.first_stage_layers = reshard_first;
      reshard_opt.layout.last_stage_layers = reshard_last;
      if (reshard_buffer_mb)
        reshard_opt.buffer_bytes = mb::buffer_mb_to_bytes(*reshard_buffer_mb, "--buffer-mb");
      if (!reshard_io.empty()) reshard_opt.io = mb::parse_io_mode(reshard_io);
      reshard_opt.verify_checksums = !reshard_no_checksums;
      if (action != Action::Execute) return drive(action, mb::make_reshard_step(reshard_opt), mpi);
      return mb::run_reshard(reshard_opt, mpi);
    }
    if (*export_cmd) {
      const mb::ExportOptions o = export_flags.resolve();
      if (action != Action::Execute) return drive(action, mb::make_export_step(o), mpi);
      return mb::run_export(o, mpi);
    }
    if (*plan_cmd) {
      const mb::ImportOptions o = plan_flags.resolve();
      if (action != Action::Execute) return 0;
      return run_plan(o, plan_ranks, per_shard, mpi);
    }
    if (*synth_cmd) {
      if (action != Action::Execute || !mpi.is_root()) return 0;
      mb::SynthOptions o;
      try {
        o.hf_config = nlohmann::json::parse(mb::read_text_file(synth_config));
      } catch (const nlohmann::json::parse_error& e) {
        throw mb::Error("{}: malformed JSON: {}", synth_config, e.what());
      }
      o.num_layers = synth_layers;
      o.vision_depth = synth_depth;
      o.experts.main = mb::expert_layout_from_name(synth_experts);
      o.experts.mtp = mb::expert_layout_from_name(synth_mtp_experts);
      o.max_shard_bytes = synth_shard_mb << 20;
      o.seed = synth_seed;
      o.out = synth_out;
      o.config_path = synth_config;
      const mb::SynthResult r = mb::synthesize_checkpoint(o);
      mb::log::info("synth: {} tensors, {:.3f} GB in {} files under {}", r.tensors,
                    static_cast<double>(r.bytes) / 1e9, r.files, synth_out);
      return 0;
    }
  } catch (const std::exception& e) {
    if (action != Action::Execute) throw;
    mb::log::error("{}", e.what());
    return 2;
  }
  return 0;
}

int main(int argc, char** argv) {
  mb::MpiContext mpi(&argc, &argv);
  megabridge_main({}, mpi, Action::Specs);
  std::vector<std::string> args(argv + 1, argv + argc);
  try {
    args = expand_config(args, mpi);
  } catch (const std::exception& e) {
    if (mpi.is_root()) mb::log::error("{}", e.what());
    return 2;
  }
  return megabridge_main(args, mpi, Action::Execute);
}
