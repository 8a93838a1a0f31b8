// Runs the entry logic of the libFuzzer targets (fuzz/fuzz_entry_points.hpp)
// over every input that once crashed them (tests/data/fuzz_regressions/<target>/)
// and over their seed corpora (fuzz/corpus/<target>/), with the normal
// compiler, so that a fixed fuzzing finding stays fixed. See docs/fuzzing.md.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "../../fuzz/fuzz_entry_points.hpp"

namespace {
namespace fs = std::filesystem;

using Entry = int (*)(const uint8_t*, size_t);

std::vector<fs::path> inputs_of(const std::string& target) {
  std::vector<fs::path> out;
  for (const fs::path dir : {fs::path(MEGABRIDGE_SOURCE_DIR) / "tests/data/fuzz_regressions" / target,
                             fs::path(MEGABRIDGE_SOURCE_DIR) / "fuzz/corpus" / target}) {
    if (!fs::is_directory(dir)) continue;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_regular_file()) out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void run_all(const std::string& target, Entry entry) {
  const auto inputs = inputs_of(target);
  ASSERT_FALSE(inputs.empty()) << "no seed or regression inputs for " << target;
  for (const auto& p : inputs) {
    SCOPED_TRACE(p.string());
    const std::string bytes = read_all(p);
    EXPECT_NO_THROW(entry(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
  }
}

}  // namespace

TEST(FuzzRegressions, SafetensorsHeader) { run_all("safetensors_header", mb::fuzz::safetensors_header); }
TEST(FuzzRegressions, HfConfig) { run_all("hf_config", mb::fuzz::hf_config); }
TEST(FuzzRegressions, Pickle) { run_all("pickle", mb::fuzz::pickle); }
TEST(FuzzRegressions, TorchZip) { run_all("torch_zip", mb::fuzz::torch_zip); }
