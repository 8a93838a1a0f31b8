#include "pipeline_cli.hpp"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include "core/error.hpp"
#include "core/file.hpp"
#include "core/log.hpp"
#include "dist/mpi_context.hpp"
#include "dist/test_hooks.hpp"
#include "checkpoint/staged_output.hpp"
#include "pipelines/step_driver.hpp"
#include "pipelines/step_stamp.hpp"

namespace fs = std::filesystem;
using mb::CommandSpec;
using mb::OptionSpec;
using mb::PipelineStep;
using nlohmann::json;

namespace {

std::vector<CommandSpec> g_specs;

// The nested blocks of the single-job files (configs/*.yaml), per command.
const std::map<std::string, std::string> kParallel = {
    {"parallel.tp", "tp"},
    {"parallel.pp", "pp"},
    {"parallel.ep", "ep"},
    {"parallel.etp", "etp"},
    {"parallel.first_stage_layers", "first_stage_layers"},
    {"parallel.last_stage_layers", "last_stage_layers"}};

std::map<std::string, std::string> aliases_of(const std::string& command) {
  std::map<std::string, std::string> a;
  if (command == "import" || command == "reshard" || command == "bench" || command == "plan")
    a = kParallel;
  if (command == "import" || command == "plan") {
    a["source.hf_path"] = "hf_path";
    a["target.path"] = "out";
    a["target.format"] = "format";
  }
  if (command == "reshard") {
    a["source.megatron_path"] = "megatron_path";
    a["target.path"] = "out";
  }
  if (command == "export") {
    a["source.megatron_path"] = "megatron_path";
    for (const char* k : {"hf_path", "experts", "mtp_experts", "max_shard_size"})
      a[std::string("target.") + k] = k;
  }
  return a;
}

OptionSpec option_spec(const CLI::Option& o) {
  OptionSpec s;
  if (o.get_lnames().empty()) {
    s.key = o.get_name();  // a positional: verify's A and B are a and b
    for (auto& c : s.key) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  } else {
    s.key = o.get_lnames().front();
    s.option = "--" + s.key;
    for (auto& c : s.key)
      if (c == '-') c = '_';
  }
  const std::string type = o.get_type_name();
  if (o.get_expected_min() == 0 && !s.option.empty())  // add_flag sets expected(0)
    s.kind = OptionSpec::Kind::Flag;
  else if (type.rfind("UINT", 0) == 0 || type.rfind("INT", 0) == 0)
    s.kind = OptionSpec::Kind::UInt;
  else if (type.rfind("FLOAT", 0) == 0)
    s.kind = OptionSpec::Kind::Number;
  // An IsMember check shows as "TEXT:{cpu,cuda,auto}".
  if (const auto b = type.find(":{"); b != std::string::npos && type.back() == '}') {
    std::string list = type.substr(b + 2, type.size() - b - 3);
    for (size_t p = 0, q; p <= list.size(); p = q + 1) {
      q = list.find(',', p);
      if (q == std::string::npos) q = list.size();
      s.choices.push_back(list.substr(p, q - p));
    }
  }
  return s;
}

fs::path normal(const std::string& p) {
  fs::path x = fs::absolute(p).lexically_normal();
  return x.has_filename() ? x : x.parent_path();
}

const CommandSpec& spec_of(const std::string& command) {
  for (const auto& c : g_specs)
    if (c.name == command) return c;
  throw mb::Error("no command '{}'", command);
}

// The directory a step writes, and those it reads.
const char* output_key(const std::string& command) {
  if (command == "import" || command == "reshard" || command == "synth") return "out";
  if (command == "export") return "hf_path";
  return nullptr;
}
std::vector<const char*> input_keys(const std::string& command) {
  if (command == "import" || command == "plan") return {"hf_path"};
  if (command == "export" || command == "reshard") return {"megatron_path"};
  if (command == "verify") return {"a", "b"};
  return {};
}

std::vector<std::string> step_args(const PipelineStep& s) {
  std::vector<std::string> a{s.command};
  a.insert(a.end(), s.args.begin(), s.args.end());
  return a;
}

// What --resume makes of a step: skip it (its output is committed and
// unchanged) or run it, and why, in one line. Rank 0 looks; every rank gets
// the answer. Steps that write nothing (verify, plan, bench) always run.
struct ResumeVerdict {
  bool applies = false;  // the step writes an output
  bool skip = false;
  std::string why;
};

ResumeVerdict judge(const PipelineStep& s, mb::MpiContext& mpi) {
  const char* key = output_key(s.command);
  if (!key || !s.value(key)) return {};
  std::string answer = "0";
  if (mpi.is_root()) {
    try {
      const mb::StampVerdict v = mb::judge_step_output(normal(*s.value(key)), s.command, s.values);
      answer = (v.finished ? "1" : "0") + v.why;
    } catch (const std::exception& e) {
      answer = fmt::format("0cannot judge {}: {}", *s.value(key), e.what());
    }
  }
  mpi.broadcast(answer);
  return {true, answer[0] == '1', answer.substr(1)};
}

bool non_empty_dir(const fs::path& p) {
  std::error_code ec;
  return fs::is_directory(p, ec) && fs::directory_iterator(p, ec) != fs::directory_iterator();
}

// A step --resume must run whose output already holds files: it replaces
// that output only with the step's own `overwrite: true` (as the command
// would), so a committed checkpoint is never replaced unasked. Empty: no
// problem.
std::string overwrite_problem(const PipelineStep& s, size_t n, const std::string& why) {
  const char* key = output_key(s.command);
  if (!key || !s.value(key) || !non_empty_dir(normal(*s.value(key)))) return {};
  if (s.value("overwrite") && *s.value("overwrite") == "true") return {};
  const std::string& out = *s.value(key);
  std::error_code ec;
  // overwrite replaces only what megabridge committed (its ownership record).
  const std::string fix =
      !fs::exists(normal(out) / mb::kOutputMarker, ec)
          ? fmt::format(
                "megabridge did not write it, so it never replaces it: move {} away or "
                "choose another output",
                out)
      : spec_of(s.command).find("overwrite")
          ? fmt::format(
                "add `overwrite: true` to step {} to let it replace {}, or remove {} yourself",
                s.index, out, out)
          : fmt::format("{} cannot replace an output: remove {} yourself", s.command, out);
  return fmt::format(
      "step {}/{} ({}) must run again ({}), but its output {} already holds files; {}", s.index, n,
      s.command, why, out, fix);
}

// Before anything runs: which steps --resume will run again, an earlier
// step's output counting as changed once that step runs again, and the
// steps among them that would then be refused (no `overwrite: true`).
// Rank 0 computes; every rank gets the problems (empty: none).
std::string resume_problems(const mb::Pipeline& p, mb::MpiContext& mpi) {
  std::string problems;
  size_t count = 0;
  if (mpi.is_root()) {
    std::map<fs::path, size_t> rerun;  // outputs of steps that run again -> step
    for (const auto& s : p.steps) {
      const char* key = output_key(s.command);
      if (!key || !s.value(key)) continue;
      std::string why;
      for (const char* k : input_keys(s.command))
        if (const std::string* v = s.value(k); v && rerun.count(normal(*v)))
          why = fmt::format("its source {} is written again by step {}", *v, rerun[normal(*v)]);
      if (why.empty()) {
        mb::StampVerdict v;
        try {
          v = mb::judge_step_output(normal(*s.value(key)), s.command, s.values);
        } catch (const std::exception& e) {
          v.why = e.what();
        }
        if (v.finished) continue;
        why = v.why;
      }
      rerun[normal(*s.value(key))] = s.index;
      if (const std::string q = overwrite_problem(s, p.steps.size(), why); !q.empty()) {
        problems += fmt::format("\n  {}:{}: {}", p.file, s.line, q);
        ++count;
      }
    }
    if (count)
      problems = fmt::format(
          "--resume cannot finish {}: {} step(s) must run again but would have to replace an "
          "output; nothing was run:{}",
          p.file, count, problems);
  }
  mpi.broadcast(problems);
  return problems;
}

// Every step parsed and resolved as its command line, before anything runs.
void validate_steps(const mb::Pipeline& p, mb::MpiContext& mpi) {
  std::string problems;
  size_t n = 0;
  for (const auto& s : p.steps) {
    try {
      megabridge_main(step_args(s), mpi, Action::Validate);
    } catch (const std::exception& e) {
      problems +=
          fmt::format("\n  {}:{}: step {} ({}): {}", p.file, s.line, s.index, s.command, e.what());
      ++n;
    }
  }
  if (n) throw mb::Error("{} problem(s) in {}, nothing was run:{}", n, p.file, problems);
}

int dry_run(const mb::Pipeline& p, bool resume, mb::MpiContext& mpi) {
  const std::string problems = resume ? resume_problems(p, mpi) : std::string();
  int worst = problems.empty() ? 0 : 2;
  std::map<fs::path, size_t> made_by;  // outputs of earlier steps
  std::map<fs::path, size_t> rerun;    // --resume: outputs of steps that run again
  for (const auto& s : p.steps) {
    mb::log::set_context(fmt::format("[{}/{} {}] ", s.index, p.steps.size(), s.command));
    if (mpi.is_root()) std::fputs(mb::describe_step(s, p.steps.size()).c_str(), stdout);
    bool later = false;
    for (const char* k : input_keys(s.command))
      if (const std::string* v = s.value(k);
          v && made_by.count(normal(*v)) && !fs::exists(normal(*v))) {
        if (mpi.is_root())
          std::printf("  plan: when step %zu has written %s\n", made_by[normal(*v)], v->c_str());
        later = true;
      }
    if (const char* k = output_key(s.command); k && s.value(k))
      made_by[normal(*s.value(k))] = s.index;
    if (resume) {
      std::string upstream;
      for (const char* k : input_keys(s.command))
        if (const std::string* v = s.value(k); v && rerun.count(normal(*v)))
          upstream =
              fmt::format("its source {} is written again by step {}", *v, rerun[normal(*v)]);
      const ResumeVerdict v = judge(s, mpi);
      if (v.applies && v.skip && upstream.empty()) {
        if (mpi.is_root()) std::printf("  --resume: skipped: %s\n", v.why.c_str());
        continue;
      }
      if (v.applies) {
        if (mpi.is_root())
          std::printf("  --resume: runs: %s\n", (upstream.empty() ? v.why : upstream).c_str());
        rerun[normal(*s.value(output_key(s.command)))] = s.index;
      }
    }
    std::fflush(stdout);
    if (later) continue;
    int rc = 2;
    try {
      rc = megabridge_main(step_args(s), mpi, Action::DryRun);
    } catch (const std::exception& e) {
      if (mpi.is_root()) mb::log::error("{}", e.what());
    }
    std::fflush(stdout);
    worst = std::max(worst, rc);
  }
  mb::log::set_context("");
  if (!problems.empty() && mpi.is_root()) mb::log::error("{}", problems);
  return worst;
}

// Runs a step that writes an output, so that its commit carries the step
// stamp: its keys, the identity of every source it read (taken on rank 0
// once it has planned, before it reads any tensor; a source that changes
// later no longer matches) and of everything it wrote.
int run_stamped(const std::string& file, const PipelineStep& s,
                const std::vector<std::string>& args, mb::MpiContext& mpi) {
  // Null until known: then the stamp never lets --resume skip the step.
  json sources;
  if (s.command == "synth") {  // not a Step: it reads its config file only
    std::vector<fs::path> read;
    if (const std::string* c = s.value("hf_config")) read.push_back(*c);
    sources = mb::source_identities(read);
  }
  mb::set_planned_hook(
      [&](const mb::Step& step) { sources = mb::source_identities(step.sources()); });
  mb::StagedOutput::set_commit_stamp(mb::kStepStamp, [&](const fs::path& staging) {
    return mb::make_step_stamp(file, s.index, s.command, s.values, sources, staging);
  });
  struct Reset {
    ~Reset() {
      mb::set_planned_hook(nullptr);
      mb::StagedOutput::set_commit_stamp("", nullptr);
    }
  } reset;
  return megabridge_main(args, mpi, Action::Execute);
}

int run_steps(const mb::Pipeline& p, bool resume, mb::MpiContext& mpi) {
  const auto t0 = std::chrono::steady_clock::now();
  const size_t n = p.steps.size();
  size_t skipped = 0;
  bool first_unfinished = true;
  if (resume) {
    if (const std::string problems = resume_problems(p, mpi); !problems.empty()) {
      if (mpi.is_root()) mb::log::error("{}", problems);
      return 2;
    }
  }
  for (const auto& s : p.steps) {
    mb::log::set_context(fmt::format("[{}/{} {}] ", s.index, n, s.command));
    mb::test_hook_begin_step(static_cast<int>(s.index));
    // Judged now, not before the pipeline started: a step that ran again
    // gave its output new identities, so the steps reading it run too.
    if (const ResumeVerdict v = resume ? judge(s, mpi) : ResumeVerdict{}; v.applies) {
      if (mpi.is_root()) mb::log::info("{}skipped: {}", v.skip ? "" : "not ", v.why);
      if (v.skip) {
        ++skipped;
        continue;
      }
      if (const std::string q = overwrite_problem(s, n, v.why); !q.empty()) {
        if (mpi.is_root())
          mb::log::error("pipeline stopped: {}; steps {}-{} were not run", q, s.index, n);
        mb::log::set_context("");
        return 2;
      }
    }
    std::vector<std::string> args = step_args(s);
    // The first unfinished step that writes an output continues with its own
    // resume, if it has one (verify writes nothing and is never finished;
    // read-once imports write all shards together and cannot resume).
    const bool read_once = s.value("read_once") && *s.value("read_once") == "true";
    if (resume && first_unfinished && spec_of(s.command).find("resume") && !s.value("resume") &&
        !read_once)
      args.push_back("--resume");
    if (output_key(s.command)) first_unfinished = false;
    if (mpi.is_root()) {
      std::string line = "megabridge";
      for (const auto& a : args) line += " " + a;
      mb::log::info("{}", line);
    }
    const int rc = output_key(s.command) ? run_stamped(p.file, s, args, mpi)
                                         : megabridge_main(args, mpi, Action::Execute);
    if (rc != 0) {
      if (mpi.is_root())
        mb::log::error(
            "pipeline stopped: step {}/{} ({}) failed with exit code {}{}", s.index, n, s.command,
            rc, s.index < n ? fmt::format("; steps {}-{} were not run", s.index + 1, n) : "");
      mb::log::set_context("");
      return rc;
    }
  }
  mb::log::set_context("");
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (mpi.is_root())
    mb::log::info("pipeline {} done: {} step(s) in {:.2f} s{}", p.file, n, secs,
                  skipped ? fmt::format(" ({} skipped, committed earlier)", skipped) : "");
  return 0;
}

}  // namespace

void RunFlags::add(CLI::App* run) {
  run->add_option("FILE", file, "the pipeline, a YAML file (docs/pipelines.md)")->required();
  run->add_flag("--dry-run", dry_run,
                "print every step expanded and its plan summary; convert nothing");
  run->add_flag(
      "--resume", resume,
      "skip the steps whose output is committed and matches; resume the first unfinished one");
}

std::vector<CommandSpec> command_specs(const CLI::App& app) {
  std::vector<CommandSpec> out;
  for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
    if (sub->get_name() == "run") continue;
    CommandSpec c;
    c.name = sub->get_name();
    for (const CLI::Option* o : sub->get_options()) {
      const auto& l = o->get_lnames();
      if (!l.empty() && (l.front() == "help" || l.front() == "config")) continue;
      c.options.push_back(option_spec(*o));
    }
    c.aliases = aliases_of(c.name);
    for (auto it = c.aliases.begin(); it != c.aliases.end();)
      it = c.find(it->second) ? std::next(it) : c.aliases.erase(it);
    if (c.find("not_strict")) c.negated["strict"] = "not_strict";
    if (c.find("no_verify_checksums")) c.negated["verify_checksums"] = "no_verify_checksums";
    out.push_back(std::move(c));
  }
  return out;
}

void set_command_specs(std::vector<CommandSpec> specs) {
  g_specs = std::move(specs);
}

namespace {

// The key as the file wrote it: "target.max_shard_size" when it sits in a
// nested block, else the option's own key.
std::string key_as_written(const std::string& file, const std::string& command,
                           const std::string& key) {
  try {
    const YAML::Node root = YAML::LoadFile(file);
    for (const auto& [dotted, k] : aliases_of(command)) {
      if (k != key) continue;
      const auto dot = dotted.find('.');
      const YAML::Node block = root[dotted.substr(0, dot)];
      if (block.IsMap() && block[dotted.substr(dot + 1)]) return dotted;
    }
  } catch (const std::exception&) {
  }
  return key;
}

// When the command refuses a value that came from the file (and that the
// command line did not override), the error names the file and its key, as
// the single-job loaders did; other errors are left for the run to report.
void check_config_values(const std::vector<std::string>& out, const std::string& file,
                         const PipelineStep& s, const std::vector<std::string>& rest,
                         mb::MpiContext& mpi) {
  try {
    megabridge_main(out, mpi, Action::Validate);
    return;
  } catch (const std::exception& e) {
    const std::string what = e.what();
    for (const auto& o : spec_of(s.command).options) {
      if (o.option.empty() || what.rfind(o.option + ":", 0) != 0) continue;
      const std::string* value = s.value(o.key);
      if (!value) return;  // not the file's
      for (const auto& a : rest)
        if (a == o.option || a.rfind(o.option + "=", 0) == 0) return;  // overridden
      const std::string key = key_as_written(file, s.command, o.key);
      std::string msg = what.substr(o.option.size() + 1);
      while (!msg.empty() && msg.front() == ' ') msg.erase(0, 1);
      // CLI11's range check: "Value V not in range A to B".
      const std::string v = "Value " + *value + " not in range ";
      if (msg.rfind(v, 0) == 0)
        throw mb::Error("{}: {} {} is out of range: expected {}", file, key, *value,
                        msg.substr(v.size()));
      throw mb::Error("{}: {}: {}", file, key, msg);
    }
  }
}

}  // namespace

std::vector<std::string> expand_config(const std::vector<std::string>& args, mb::MpiContext& mpi) {
  size_t cmd = 0;
  while (cmd < args.size() && args[cmd].rfind("-", 0) == 0)
    cmd += args[cmd] == "--log-level" ? 2 : 1;
  if (cmd >= args.size()) return args;
  std::string file;
  std::vector<std::string> rest;
  for (size_t i = cmd + 1; i < args.size(); ++i) {
    if (args[i] == "--config" && i + 1 < args.size()) {
      file = args[++i];
    } else if (args[i].rfind("--config=", 0) == 0) {
      file = args[i].substr(9);
    } else {
      rest.push_back(args[i]);
    }
  }
  const std::string command = args[cmd];
  if (file.empty() || command == "run") return args;
  // plan reads an import job file and leaves out what only an import writes.
  const bool plan = command == "plan";
  const PipelineStep s = mb::load_single_step(file, spec_of(plan ? "import" : command));
  std::vector<std::string> out(args.begin(), args.begin() + static_cast<long>(cmd) + 1);
  for (const auto& a : s.args) {
    const std::string opt = a.substr(0, a.find('='));
    bool known = !plan;
    for (const auto& o : spec_of(command).options) known = known || o.option == opt;
    if (known) out.push_back(a);
  }
  out.insert(out.end(), rest.begin(), rest.end());
  check_config_values(out, file, s, rest, mpi);
  return out;
}

int drive(Action action, std::unique_ptr<mb::Step> step, mb::MpiContext& mpi) {
  if (action != Action::DryRun) return 0;
  std::string summary;
  const int rc = mb::dry_run_step(*step, mpi, summary);
  if (mpi.is_root() && rc == 0) {
    for (size_t p = 0, q; p < summary.size(); p = q + 1) {
      q = summary.find('\n', p);
      if (q == std::string::npos) q = summary.size();
      std::printf("  %s\n", summary.substr(p, q - p).c_str());
    }
  }
  return rc;
}

int run_pipeline(const RunFlags& flags, mb::MpiContext& mpi) {
  mb::Pipeline p;
  try {
    p = mb::load_pipeline(flags.file, g_specs);
    validate_steps(p, mpi);
  } catch (const std::exception& e) {
    if (mpi.is_root()) mb::log::error("{}", e.what());
    return 2;
  }
  if (mpi.is_root())
    mb::log::info("pipeline {}: {} step(s) on {} rank(s){}", p.file, p.steps.size(), mpi.size(),
                  flags.dry_run ? " (dry run: nothing is converted)" : "");
  return flags.dry_run ? dry_run(p, flags.resume, mpi) : run_steps(p, flags.resume, mpi);
}
