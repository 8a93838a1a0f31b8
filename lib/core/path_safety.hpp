// Where an output may go, judged on the paths the kernel will really use:
// every symlink and ".." resolved. An output that equals, contains or lies
// inside one of a command's inputs is refused before anything is created or
// removed, with or without --overwrite (a typo such as `--out data` for
// `--out data/meg` must never cost the user the checkpoint in `data/hf`).
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace mb {

// An input path's real location: absolute, every symlink that exists
// resolved (weakly_canonical), no "..", no trailing slash.
std::filesystem::path resolve_input_path(const std::filesystem::path& p);

// An output path's real location. Like resolve_input_path, but a final
// component that is a symlink, dangling or not, is followed too: the output
// goes where the link points and the link itself is left in place.
std::filesystem::path resolve_output_path(const std::filesystem::path& p);

enum class PathRelation { Apart, Same, Inside /* a inside b */, Contains /* a contains b */ };

// How two resolved paths relate, by whole components ("/a/bc" is not inside "/a/b").
PathRelation path_relation(const std::filesystem::path& a, const std::filesystem::path& b);

struct NamedPath {
  std::filesystem::path path;
  std::string what;  // how the user gave it, e.g. "--hf-path" or "shard file"
};

// Throws naming both paths when `out` (after resolution) equals, contains or
// lies inside any input (after resolution).
void check_output_apart(const NamedPath& out, const std::vector<NamedPath>& inputs);

// The identity of a file as the kernel keeps it: a source that was rewritten
// in place (same name, same size) still changes its mtime, ctime or inode.
nlohmann::json file_identity(const std::filesystem::path& p);

// Opens nothing: checks that `p` is a regular file (following symlinks)
// without blocking on a FIFO or a device, and throws naming it otherwise.
void require_regular_file(const std::filesystem::path& p, std::string_view what);

}  // namespace mb
