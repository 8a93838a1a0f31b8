// Rank-aware logging: every line says which MPI rank wrote it.
#pragma once

#include <fmt/format.h>

#include <string>
#include <string_view>

namespace mb::log {

enum class Level { Debug = 0, Info = 1, Warn = 2, Error = 3, Off = 4 };

// Set once at start-up, after MPI is initialised.
void set_rank(int rank, int world_size);
void set_level(Level level);
// A prefix for every line until changed, e.g. "[2/5 verify] " while a pipeline
// runs its second step; empty by default.
void set_context(std::string context);
const std::string& context();
Level level();
Level parse_level(std::string_view name);  // "debug", "info", "warn", "error", "off"

void write(Level level, std::string_view message);

template <typename... Args>
void debug(fmt::format_string<Args...> f, Args&&... args) {
  if (level() <= Level::Debug) write(Level::Debug, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void info(fmt::format_string<Args...> f, Args&&... args) {
  if (level() <= Level::Info) write(Level::Info, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void warn(fmt::format_string<Args...> f, Args&&... args) {
  if (level() <= Level::Warn) write(Level::Warn, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void error(fmt::format_string<Args...> f, Args&&... args) {
  if (level() <= Level::Error) write(Level::Error, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace mb::log
