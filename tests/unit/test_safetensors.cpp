#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/file.hpp"
#include "formats/safetensors/hf_checkpoint.hpp"
#include "formats/safetensors/safetensors_header.hpp"
#include "formats/safetensors/safetensors_writer.hpp"
#include "test_util.hpp"

using namespace mb;
namespace fs = std::filesystem;

namespace {
std::string with_length(const std::string& json) {
  std::string out(8, '\0');
  uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + json;
}

void expect_error(const std::string& json, uint64_t data_bytes, const std::string& needle) {
  try {
    parse_safetensors_header(json, 8 + json.size() + data_bytes, "f.safetensors");
    FAIL() << "expected an error containing '" << needle << "'";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("f.safetensors"), std::string::npos) << e.what();
  }
}
}  // namespace

TEST(Safetensors, ParsesAValidHeader) {
  const std::string j =
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},)"
      R"("a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}})";
  auto h = parse_safetensors_header(j, 8 + j.size() + 12, "f");
  ASSERT_EQ(h.entries.size(), 2u);
  EXPECT_EQ(h.entries[0].name, "a");  // sorted by offset
  EXPECT_EQ(h.entries[1].dtype, DType::F32);
  EXPECT_EQ(h.metadata.at("format"), "pt");
  EXPECT_EQ(h.data_start, 8 + j.size());
}

TEST(Safetensors, ScalarHasOneElement) {
  const std::string j = R"({"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]}})";
  EXPECT_EQ(parse_safetensors_header(j, 8 + j.size() + 4, "f").entries[0].shape.size(), 0u);
}

TEST(Safetensors, RejectsBadHeaders) {
  expect_error(R"({"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]})", 4, "malformed");
  expect_error(R"({"a":{"dtype":"Q7","shape":[2],"data_offsets":[0,4]}})", 4, "unknown dtype 'Q7'");
  expect_error(R"({"a":{"dtype":"BF16","shape":[3],"data_offsets":[0,4]}})", 4, "needs 6 bytes");
  expect_error(R"({"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},)"
               R"("b":{"dtype":"BF16","shape":[2],"data_offsets":[2,6]}})",
               6, "overlap");
  expect_error(R"({"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}})", 2, "beyond the end");
  expect_error(R"({"a":{"dtype":"BF16","shape":[2],"data_offsets":[2,6]}})", 6, "gap");
  expect_error(R"({"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}})", 9, "trailing");
  expect_error(R"({"a":{"dtype":"BF16","shape":[-2],"data_offsets":[0,4]}})", 4, "bad dimension");
  expect_error(R"({"a":{"dtype":"BF16","shape":[2],"data_offsets":[4,0]}})", 4, "begin > end");
  expect_error(R"([1,2])", 0, "not a JSON object");
}

TEST(Safetensors, RejectsHeaderLongerThanFile) {
  TempDir dir;
  const fs::path p = dir.path / "x.safetensors";
  std::string bytes = with_length(R"({"a":{"dtype":"BF16","shape":[1],"data_offsets":[0,2]}})");
  bytes[0] = static_cast<char>(0xff);  // claim a 255+ byte header
  bytes[1] = 0x10;
  write_bytes(p, bytes);
  EXPECT_THROW(
      {
        try {
          read_safetensors_header(p);
        } catch (const std::exception& e) {
          EXPECT_NE(std::string(e.what()).find("larger than the file"), std::string::npos);
          throw;
        }
      },
      std::exception);
}

TEST(Safetensors, WriterOutputReadsBack) {
  TempDir dir;
  const fs::path p = dir.path / "w.safetensors";
  std::vector<SafetensorsEntry> entries{{"z.bias", DType::BF16, {3}, 0, 0},
                                        {"a.weight", DType::F32, {2, 2}, 0, 0}};
  SafetensorsWriter w(p, entries);
  const float a[4] = {1, 2, 3, 4};
  const uint16_t z[3] = {0x3f80, 0x4000, 0x4040};
  w.write(w.index_of("a.weight"), 0, a, sizeof a);
  w.write(w.index_of("z.bias"), 0, z, sizeof z);
  w.finish();
  auto h = read_safetensors_header(p);
  ASSERT_EQ(h.entries.size(), 2u);
  EXPECT_EQ(h.entries[0].name, "a.weight");  // F32 first: larger alignment
  EXPECT_EQ(h.data_start % 8, 0u);          // header padded to 8 bytes
  File f(p, File::Mode::Read);
  float back[4];
  f.pread_exact(back, sizeof back, h.data_start + h.entries[0].begin);
  EXPECT_EQ(std::memcmp(a, back, sizeof a), 0);
}

TEST(HfCatalog, ReadsIndexAndChecksConsistency) {
  TempDir dir;
  write_tiny_safetensors(dir.path / "model-1.safetensors", {{"a", DType::BF16, {2, 2}}});
  write_tiny_safetensors(dir.path / "model-2.safetensors", {{"b", DType::F32, {3}}});
  write_bytes(dir.path / "model.safetensors.index.json",
              R"({"metadata":{"total_size":20},"weight_map":{"a":"model-1.safetensors","b":"model-2.safetensors"}})");
  write_bytes(dir.path / "tokenizer_config.json", "{}");
  HfCatalog c = read_hf_catalog(dir.path);
  ASSERT_EQ(c.tensors.size(), 2u);
  EXPECT_EQ(c.find("b")->dtype, DType::F32);
  EXPECT_EQ(c.total_bytes(), 20u);
  EXPECT_EQ(c.extra_files, std::vector<std::string>{"tokenizer_config.json"});
  // The catalogue survives the JSON round trip used for the broadcast.
  HfCatalog back = catalog_from_json(catalog_to_json(c));
  EXPECT_EQ(back.tensors.size(), 2u);
  EXPECT_EQ(back.find("a")->offset, c.find("a")->offset);
}

TEST(HfCatalog, RejectsPathTraversalAndMissingTensors) {
  TempDir dir;
  write_tiny_safetensors(dir.path / "m.safetensors", {{"a", DType::BF16, {2}}});
  write_bytes(dir.path / "model.safetensors.index.json",
              R"({"weight_map":{"a":"../../etc/passwd"}})");
  EXPECT_THROW(read_hf_catalog(dir.path), std::exception);
  write_bytes(dir.path / "model.safetensors.index.json",
              R"({"weight_map":{"a":"m.safetensors","b":"m.safetensors"}})");
  try {
    read_hf_catalog(dir.path);
    FAIL();
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("'b'"), std::string::npos) << e.what();
  }
  write_tiny_safetensors(dir.path / "n.safetensors", {{"c", DType::BF16, {2}}});
  write_bytes(dir.path / "model.safetensors.index.json",
              R"({"weight_map":{"a":"m.safetensors","b":"n.safetensors"}})");
  try {
    read_hf_catalog(dir.path);  // n.safetensors holds 'c', which the index does not list
    FAIL();
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("'c'"), std::string::npos) << e.what();
  }
}
