// Helpers shared by the unit tests.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "core/dtype.hpp"
#include "core/file.hpp"
#include "core/shape.hpp"
#include "formats/safetensors/safetensors_writer.hpp"

namespace mb {

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "mbtest-XXXXXX").string();
    path = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

inline void write_bytes(const std::filesystem::path& p, const std::string& s) {
  File f(p, File::Mode::Write);
  f.pwrite_exact(s.data(), s.size(), 0);
}

struct TinyTensor {
  std::string name;
  DType dtype;
  Shape shape;
};

// A safetensors file whose bytes are a counter, so every element is distinct.
inline void write_tiny_safetensors(const std::filesystem::path& p, const std::vector<TinyTensor>& ts) {
  std::vector<SafetensorsEntry> entries;
  for (const auto& t : ts) entries.push_back({t.name, t.dtype, t.shape, 0, 0});
  SafetensorsWriter w(p, entries);
  for (size_t i = 0; i < w.entries().size(); ++i) {
    const auto& e = w.entries()[i];
    std::vector<unsigned char> bytes(e.end - e.begin);
    for (size_t k = 0; k < bytes.size(); ++k) bytes[k] = static_cast<unsigned char>(k * 7 + i);
    w.write(i, 0, bytes.data(), bytes.size());
  }
  w.finish();
}

}  // namespace mb
