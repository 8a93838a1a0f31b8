#include "core/path_safety.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "core/error.hpp"
#include "core/file.hpp"

namespace mb {
namespace fs = std::filesystem;

namespace {
fs::path strip_trailing_slash(fs::path p) {
  while (!p.has_filename() && p.has_relative_path()) p = p.parent_path();
  return p;
}

// "given" as the user wrote it, and where it really is when that differs.
std::string describe(const NamedPath& n, const fs::path& real) {
  const fs::path given = strip_trailing_slash(n.path);
  if (fs::absolute(given).lexically_normal() == real)
    return fmt::format("{} {}", n.what, given.string());
  return fmt::format("{} {} (really {})", n.what, given.string(), real.string());
}

}  // namespace

fs::path resolve_input_path(const fs::path& p) {
  return strip_trailing_slash(fs::weakly_canonical(fs::absolute(p)));
}

fs::path resolve_output_path(const fs::path& given) {
  fs::path p = strip_trailing_slash(fs::absolute(given));
  for (int hops = 0; hops < 40; ++hops) {
    const fs::path name = p.filename();
    if (name.empty() || name == "." || name == "..") return resolve_input_path(p);
    // The parent's symlinks and ".." resolved as the kernel would.
    const fs::path parent = resolve_input_path(p.parent_path());
    p = parent / name;
    std::error_code ec;
    if (!fs::is_symlink(p, ec)) return p;
    const fs::path target = fs::read_symlink(p, ec);
    if (ec) throw Error("cannot read the symlink {}: {}", p.string(), ec.message());
    p = strip_trailing_slash(target.is_absolute() ? target : parent / target);
  }
  throw Error("{}: too many levels of symbolic links", given.string());
}

PathRelation path_relation(const fs::path& a, const fs::path& b) {
  auto ia = a.begin(), ib = b.begin();
  for (; ia != a.end() && ib != b.end(); ++ia, ++ib)
    if (*ia != *ib) return PathRelation::Apart;
  if (ia == a.end() && ib == b.end()) return PathRelation::Same;
  return ia == a.end() ? PathRelation::Contains : PathRelation::Inside;
}

void check_output_apart(const NamedPath& out, const std::vector<NamedPath>& inputs) {
  const fs::path o = resolve_output_path(out.path);
  for (const NamedPath& in : inputs) {
    if (in.path.empty()) continue;
    const fs::path i = resolve_input_path(in.path);
    const PathRelation r = path_relation(o, i);
    if (r == PathRelation::Apart) continue;
    const char* how = r == PathRelation::Same     ? "is the same path as"
                      : r == PathRelation::Inside ? "lies inside"
                                                  : "contains";
    throw Error(
        "refusing to write: {} {} {}; an output must be outside every input, so nothing "
        "was created or removed",
        describe(out, o), how, describe(in, i));
  }
}

nlohmann::json file_identity(const fs::path& p) {
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0)
    throw Error("cannot stat {}: {}", p.string(), std::strerror(errno));
  return {{"size", static_cast<uint64_t>(st.st_size)},
          {"mtime_ns", static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec},
          {"ctime_ns", static_cast<int64_t>(st.st_ctim.tv_sec) * 1000000000 + st.st_ctim.tv_nsec},
          {"inode", static_cast<uint64_t>(st.st_ino)}};
}

void require_regular_file(const fs::path& p, std::string_view what) {
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0)
    throw Error("cannot open {}{}{}: {}", what, what.empty() ? "" : " ", p.string(),
                std::strerror(errno));
  if (!S_ISREG(st.st_mode))
    throw Error("{}{}{} is {}, not a regular file; refusing to read it", what,
                what.empty() ? "" : " ", p.string(), file_type_name(st.st_mode));
}

}  // namespace mb
