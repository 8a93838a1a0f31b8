// The pipeline file format (docs/pipelines.md): vars, defaults, steps, nested
// blocks, and every problem reported at once with its file:line. The command
// specs here are written by hand, independent of the CLI they come from in
// the binary (tests/integration/pipeline_*.sh run that side).
#include <gtest/gtest.h>

#include "core/error.hpp"
#include "pipelines/pipeline_config.hpp"
#include "test_util.hpp"

namespace mb {
namespace {

using K = OptionSpec::Kind;

std::vector<CommandSpec> specs() {
  CommandSpec imp;
  imp.name = "import";
  imp.options = {{"hf_path", K::Text, "--hf-path", {}},
                 {"out", K::Text, "--out", {}},
                 {"tp", K::UInt, "--tp", {}},
                 {"format", K::Text, "--format", {}},
                 {"overwrite", K::Flag, "--overwrite", {}},
                 {"not_strict", K::Flag, "--not-strict", {}},
                 {"device", K::Text, "--device", {"cpu", "cuda", "auto"}},
                 {"buffer_mb", K::UInt, "--buffer-mb", {}}};
  imp.aliases = {{"parallel.tp", "tp"}, {"source.hf_path", "hf_path"}, {"target.path", "out"}};
  imp.negated = {{"strict", "not_strict"}};
  CommandSpec ver;
  ver.name = "verify";
  ver.options = {{"a", K::Text, "", {}},
                 {"b", K::Text, "", {}},
                 {"atol", K::Number, "--atol", {}},
                 {"buffer_mb", K::UInt, "--buffer-mb", {}}};
  return {imp, ver};
}

std::optional<std::string> env(const std::string& name) {
  if (name == "MB_HOME") return std::string("/home/mb");
  return std::nullopt;
}

std::string problems(const std::filesystem::path& f) {
  try {
    load_pipeline(f, specs(), env);
  } catch (const Error& e) {
    return e.what();
  }
  return "accepted";
}

TEST(PipelineConfig, ExpandsVarsDefaultsAndBlocksIntoArguments) {
  TempDir d;
  write_bytes(d.path / "p.yaml", R"(vars:
  base: ${env:MB_HOME}/models
  hf: ${base}/q
defaults:
  buffer_mb: 64
  parallel: {tp: 2}
steps:
  - import:
      source: {hf_path: "${hf}"}
      target: {path: "${hf}-meg"}
      strict: false
      overwrite: false
  - verify: {a: "${hf}", b: "${hf}-meg", atol: 1e-3, buffer_mb: 8}
  - import: {hf_path: "$${literal}", out: /o, tp: 4, strict: true, overwrite: true}
)");
  const Pipeline p = load_pipeline(d.path / "p.yaml", specs(), env);
  ASSERT_EQ(p.steps.size(), 3u);
  EXPECT_EQ(p.steps[0].command, "import");
  EXPECT_EQ(p.steps[0].line, 8);
  EXPECT_EQ(p.steps[0].args,
            (std::vector<std::string>{"--hf-path=/home/mb/models/q", "--out=/home/mb/models/q-meg",
                                      "--tp=2", "--not-strict", "--buffer-mb=64"}));
  // Positionals last, in their order; a step's own value beats the default.
  EXPECT_EQ(p.steps[1].args,
            (std::vector<std::string>{"--atol=1e-3", "--buffer-mb=8", "/home/mb/models/q",
                                      "/home/mb/models/q-meg"}));
  EXPECT_EQ(p.steps[2].args, (std::vector<std::string>{"--hf-path=${literal}", "--out=/o", "--tp=4",
                                                       "--overwrite", "--buffer-mb=64"}));
  EXPECT_EQ(*p.steps[1].value("a"), "/home/mb/models/q");
  write_bytes(d.path / "q.yaml",
              "vars: {s: \"${env:MB_UNSET:-/tmp/s}${env:MB_HOME:-/x}\"}\nsteps:\n  - verify: {a: "
              "\"${s}\", b: /b}\n");
  EXPECT_EQ(*load_pipeline(d.path / "q.yaml", specs(), env).steps[0].value("a"), "/tmp/s/home/mb");
}

TEST(PipelineConfig, ReportsEveryProblemWithItsLineBeforeAnythingRuns) {
  TempDir d;
  const auto f = d.path / "t.yaml";
  write_bytes(f, R"(vars:
  root: /data
defaults:
  buffer_mb: 64
  colour: red
steps:
  - import: {hf_path: "${root}/hf", out: "${nope}", tp: two}
  - verify: {a: x, b: y, atol: much}
  - convert: {x: 1}
  - import:
      parallel: {tp: 2, ppp: 4}
      hf_path: "${env:MB_UNSET}"
      device: gpu
      overwrite: maybe
bogus: 1
)");
  const std::string t = f.string();
  EXPECT_EQ(
      problems(f),
      "10 problem(s) in " + t + ", nothing was run:\n  " + t +
          ":5: defaults: 'colour' is an option of none of the steps\n  " + t +
          ":7: undefined variable '${nope}' (defined in vars: root)\n  " + t +
          ":7: step 1 (import): 'tp' must be a whole number, not 'two'\n  " + t +
          ":8: step 2 (verify): 'atol' must be a number, not 'much'\n  " + t +
          ":9: step 3: unknown step 'convert' (expected one of: import, verify)\n  " + t +
          ":11: step 4 (import): unknown key 'parallel.ppp' (expected one of: buffer_mb, device, "
          "format, hf_path, not_strict, out, overwrite, parallel.tp, source.hf_path, strict, "
          "target.path, tp)\n  " +
          t +
          ":12: undefined variable '${env:MB_UNSET}': MB_UNSET is not set in the environment\n  " +
          t +
          ":13: step 4 (import): bad value 'gpu' for 'device' (expected one of: cpu, cuda, auto)\n "
          " " +
          t + ":14: step 4 (import): 'overwrite' must be true or false, not 'maybe'\n  " + t +
          ":15: unknown key 'bogus' at the top level (expected vars, defaults, steps)");
}

TEST(PipelineConfig, ShapeErrors) {
  TempDir d;
  const auto f = d.path / "s.yaml";
  const std::string t = f.string();
  write_bytes(f,
              "steps:\n  - import: {tp: [1, 2], out: {x: 1}}\n  - verify: a\n  - {import: {}, "
              "verify: {}}\n");
  EXPECT_EQ(problems(f),
            "4 problem(s) in " + t + ", nothing was run:\n  " + t +
                ":2: step 1 (import): 'tp' takes a single value, got a list\n  " + t +
                ":2: step 1 (import): 'out' takes a single value, got a mapping\n  " + t +
                ":3: step 2 (verify): its options must be a mapping, got a value\n  " + t +
                ":4: step 3: a step is one command name with its options, e.g. '- verify: {a: ..., "
                "b: ...}'");
  write_bytes(f, "steps:\n  - import: {tp: 2, parallel: {tp: 4}}\n");
  EXPECT_EQ(problems(f), "1 problem(s) in " + t + ", nothing was run:\n  " + t +
                             ":2: step 1 (import): 'parallel.tp' is set twice (also at line 2)");
  write_bytes(f, "vars: {a: 1}\n");
  EXPECT_EQ(problems(f), "1 problem(s) in " + t + ", nothing was run:\n  " + t +
                             ":1: 'steps' must be a non-empty list of steps");
  write_bytes(f, "steps: [\n");
  EXPECT_EQ(problems(f).rfind(t + ":", 0), 0u)
      << problems(f);  // yaml-cpp's own message, with the line
}

TEST(PipelineConfig, SingleStepFilesAreOneStepPipelines) {
  TempDir d;
  write_bytes(d.path / "job.yaml",
              "vars: {m: /m}\nsource: {hf_path: \"${m}\"}\ntarget: {path: /o}\nparallel: {tp: "
              "2}\nstrict: false\n");
  const auto specs_ = specs();
  const PipelineStep s = load_single_step(d.path / "job.yaml", specs_[0], env);
  EXPECT_EQ(s.args,
            (std::vector<std::string>{"--hf-path=/m", "--out=/o", "--tp=2", "--not-strict"}));
  write_bytes(d.path / "one.yaml", "steps:\n  - verify: {a: /x, b: /y}\n");
  EXPECT_EQ(load_single_step(d.path / "one.yaml", specs_[1], env).args,
            (std::vector<std::string>{"/x", "/y"}));
  write_bytes(d.path / "bad.yaml", "parallel: {tp: 2, ppp: 4}\n");
  try {
    load_single_step(d.path / "bad.yaml", specs_[0], env);
    FAIL() << "accepted ppp";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find((d.path / "bad.yaml").string() +
                                         ":1: import: unknown key 'parallel.ppp'"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace mb
