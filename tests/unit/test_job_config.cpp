// The shipped job files parse, and their layouts fit the models they name.
#include <gtest/gtest.h>

#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/file.hpp"
#include "layout/parallel_layout.hpp"
#include "pipelines/export_pipeline.hpp"
#include "pipelines/job_config.hpp"
#include "test_util.hpp"

using namespace mb;
namespace fs = std::filesystem;

TEST(JobConfig, EveryShippedConfigFitsItsModel) {
  const fs::path configs = fs::path(MEGABRIDGE_SOURCE_DIR) / "configs";
  int checked = 0;
  for (const auto& e : fs::directory_iterator(configs)) {
    if (e.path().extension() != ".yaml") continue;
    const ImportOptions o = load_import_job(e.path());
    EXPECT_FALSE(o.hf_path.empty()) << e.path();
    EXPECT_FALSE(o.out.empty()) << e.path();
    // The released sizes write Megatron-Core's torch_dist; the demo prints per-rank shards.
    EXPECT_EQ(o.format, e.path().stem() == "tiny-dense-demo" ? "hdf5" : "torch_dist") << e.path();
    // The released sizes have their geometry in configs/hf/; the demo uses the fixture.
    fs::path hf = configs / "hf" / (e.path().stem().string() + ".json");
    if (!fs::exists(hf)) hf = fs::path(MEGABRIDGE_SOURCE_DIR) / o.hf_path / "config.json";
    const ModelConfig m = load_model_config(hf);
    EXPECT_NO_THROW(validate_layout(o.layout, m)) << e.path();
    ++checked;
  }
  EXPECT_EQ(checked, 9);  // 8 released sizes and the demo
}

TEST(JobConfig, ReadsEveryKeyAndRejectsUnknownOnes) {
  TempDir d;
  write_bytes(d.path / "j.yaml", R"(
source: {hf_path: /in}
target: {path: /out, format: hdf5}
parallel: {tp: 2, pp: 4, ep: 8, etp: 2, first_stage_layers: 3, last_stage_layers: 5}
dtype: bf16
buffer_mb: 64
strict: false
overwrite: true
io: buffered
)");
  const ImportOptions o = load_import_job(d.path / "j.yaml");
  EXPECT_EQ(o.hf_path, "/in");
  EXPECT_EQ(o.layout.pp, 4u);
  EXPECT_EQ(*o.layout.last_stage_layers, 5u);
  EXPECT_EQ(*o.dtype, DType::BF16);
  EXPECT_EQ(o.buffer_bytes, 64ull << 20);
  EXPECT_FALSE(o.strict);
  EXPECT_TRUE(o.overwrite);
  EXPECT_EQ(o.io, IoMode::Buffered);
  EXPECT_EQ(ImportOptions{}.io, IoMode::Auto);  // the default

  write_bytes(d.path / "typo.yaml", "parallel: {tp: 2, ppp: 4}\n");
  try {
    load_import_job(d.path / "typo.yaml");
    FAIL();
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("unknown key 'ppp'"), std::string::npos) << e.what();
  }
  write_bytes(d.path / "bad.yaml", "parallel: {tp: two}\n");
  EXPECT_THROW(load_import_job(d.path / "bad.yaml"), std::exception);
  write_bytes(d.path / "e.yaml", "source: {megatron_path: /m}\ntarget: {hf_path: /h, experts: per_expert, max_shard_size: 2GB}\n");
  const ExportOptions x = load_export_job(d.path / "e.yaml");
  EXPECT_EQ(*x.experts, ExpertLayout::PerExpert);
  EXPECT_EQ(*x.max_shard_bytes, 2000000000u);
  EXPECT_EQ(x.io, IoMode::Auto);
  write_bytes(d.path / "io.yaml", "source: {megatron_path: /m}\nio: odirect\n");
  try {
    load_export_job(d.path / "io.yaml");
    FAIL() << "accepted io: odirect";
  } catch (const std::exception& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("io.yaml"), std::string::npos) << m;
    EXPECT_NE(m.find("'odirect'"), std::string::npos) << m;
  }
}

TEST(JobConfig, SizesAndDtypes) {
  EXPECT_EQ(parse_size("5GB"), 5000000000u);
  EXPECT_EQ(parse_size("4GiB"), 4ull << 30);
  EXPECT_EQ(parse_size("500mb"), 500000000u);
  EXPECT_EQ(parse_size("123"), 123u);
  EXPECT_THROW(parse_size("5 parsecs"), std::exception);
  EXPECT_FALSE(parse_dtype_option("keep").has_value());
  EXPECT_EQ(*parse_dtype_option("fp32"), DType::F32);
  EXPECT_THROW(parse_dtype_option("int8"), std::exception);
}

// `dtype: model` / --dtype model: every float tensor in config.json's dtype (Megatron-Bridge's
// params dtype); a later --dtype replaces it.
TEST(JobConfig, DtypeModel) {
  TempDir d;
  write_bytes(d.path / "m.yaml", "source: {hf_path: /in}\ndtype: model\n");
  ImportOptions o = load_import_job(d.path / "m.yaml");
  EXPECT_TRUE(o.dtype_model);
  ModelConfig m;
  m.dtype = DType::F16;
  EXPECT_EQ(import_cast(o, m), std::optional<DType>(DType::F16));
  set_import_dtype(o, "fp32");  // the command line overrides the job file
  EXPECT_FALSE(o.dtype_model);
  EXPECT_EQ(import_cast(o, m), std::optional<DType>(DType::F32));
  set_import_dtype(o, "keep");
  EXPECT_EQ(import_cast(o, m), std::nullopt);
  EXPECT_THROW(set_import_dtype(o, "models"), std::exception);
}
