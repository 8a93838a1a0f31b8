// YAML job files (configs/*.yaml) for import; command-line flags override them.
#pragma once

#include <filesystem>

#include "pipelines/export_pipeline.hpp"
#include "pipelines/import_pipeline.hpp"

namespace mb {

// Reads a job file. Unknown keys are errors, so a typo cannot silently fall
// back to a default. Relative paths are taken as given (relative to the
// working directory), like command-line paths.
ImportOptions load_import_job(const std::filesystem::path& yaml_path);

ExportOptions load_export_job(const std::filesystem::path& yaml_path);

// Parses a dtype option: "keep" (or empty) keeps source dtypes.
std::optional<DType> parse_dtype_option(const std::string& s);

// Staging memory options in MiB: 1 to kMaxBufferMb (1 TiB), so that the
// conversion to bytes cannot overflow. `option` names it in the error
// ("--buffer-mb", "buffer_mb in job.yaml").
inline constexpr uint64_t kMaxBufferMb = 1ull << 20;
uint64_t buffer_mb_to_bytes(uint64_t mb, const std::string& option);

}  // namespace mb
