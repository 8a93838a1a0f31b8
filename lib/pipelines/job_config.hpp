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

}  // namespace mb
