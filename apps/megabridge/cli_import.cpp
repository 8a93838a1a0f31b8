// `megabridge import` and `megabridge plan`: they share the import options
// (plan converts nothing and reports what import would read and write).
#include <cstdio>
#include <optional>

#include "cli_commands.hpp"
#include "core/error.hpp"
#include "dist/mpi_context.hpp"
#include "layout/import_plan.hpp"
#include "pipelines/import_pipeline.hpp"
#include "pipelines/plan_report.hpp"
#include "pipelines/step_driver.hpp"

namespace {

// Flags shared by import and plan. Optional so that only the flags the user
// gives override the YAML job file.
struct ImportFlags {
  std::string config, hf_path, out, format, dtype, device, io;
  std::optional<uint64_t> tp, pp, ep, etp, first, last, buffer_mb;
  bool not_strict = false, overwrite = false, resume = false, read_once = false,
       allow_overflow = false;

  void add_layout(CLI::App* c) {
    c->add_option("--tp", tp, "tensor-parallel size")->check(kParallelSize);
    c->add_option("--pp", pp, "pipeline-parallel size")->check(kParallelSize);
    c->add_option("--ep", ep, "expert-parallel size")->check(kParallelSize);
    c->add_option("--etp", etp, "expert tensor-parallel size (1 or TP)")->check(kParallelSize);
    c->add_option("--first-stage-layers", first, "decoder layers on the first pipeline stage")
        ->check(kLayerCount);
    c->add_option("--last-stage-layers", last, "decoder layers on the last pipeline stage")
        ->check(kLayerCount);
  }

  void add(CLI::App* c, bool with_output) {
    c->add_option("--config", config,
                  "YAML job file (configs/*.yaml), a one-step pipeline; flags override it");
    c->add_option("--hf-path", hf_path, "HuggingFace checkpoint directory");
    if (with_output) c->add_option("--out", out, "output directory");
    add_layout(c);
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
      c->add_flag(
          "--resume", resume,
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
    MB_CHECK(!o.hf_path.empty(),
             "no HF checkpoint given: use --hf-path or source.hf_path in --config");
    return o;
  }
};

struct ImportCommand : CliCommand {
  ImportFlags flags;

  int run(Action action, mb::MpiContext& mpi) override {
    mb::ImportOptions o = flags.resolve();
    MB_CHECK(!o.out.empty(), "no output directory given: use --out or target.path in --config");
    if (action != Action::Execute) return drive(action, mb::make_import_step(o), mpi);
    return mb::run_import(o, mpi);
  }
};

struct PlanCommand : CliCommand {
  ImportFlags flags;
  int ranks = 0;
  bool per_shard = false;

  int run(Action action, mb::MpiContext& mpi) override {
    const mb::ImportOptions o = flags.resolve();
    if (action != Action::Execute || !mpi.is_root()) return 0;
    const mb::ModelConfig model = mb::load_model_config(o.hf_path / "config.json");
    mb::validate_layout(o.layout, model);
    mb::PlanRequest req{o.layout, mb::import_cast(o, model), o.strict,
                        ranks > 0 ? ranks : mpi.size()};
    const mb::ImportPlan plan = mb::build_import_plan(model, mb::read_hf_catalog(o.hf_path), req);
    std::fputs(mb::plan_report(plan, per_shard, o.io, o.read_once, o.buffer_bytes).c_str(), stdout);
    return 0;
  }
};

}  // namespace

std::unique_ptr<CliCommand> add_import_command(CLI::App& app) {
  auto c = std::make_unique<ImportCommand>();
  c->cmd = app.add_subcommand("import", "convert a HF checkpoint to Megatron shards");
  c->flags.add(c->cmd, true);
  return c;
}

std::unique_ptr<CliCommand> add_plan_command(CLI::App& app) {
  auto c = std::make_unique<PlanCommand>();
  c->cmd =
      app.add_subcommand("plan", "print what each rank would read and write, converting nothing");
  c->flags.add(c->cmd, false);
  c->cmd->add_option("--ranks", c->ranks, "number of MPI ranks to plan for (default: this job's)")
      ->check(CLI::Range(1, 1 << 24));
  c->cmd->add_flag("--shards", c->per_shard, "also list every shard");
  return c;
}
