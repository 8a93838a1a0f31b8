#include "core/log.hpp"

#include <cstdio>
#include <mutex>

#include "core/error.hpp"

namespace mb::log {
namespace {
int g_rank = 0;
int g_width = 1;
Level g_level = Level::Info;
std::mutex g_mutex;
std::string g_context;

const char* tag(Level l) {
  switch (l) {
    case Level::Debug: return "debug";
    case Level::Info: return "info";
    case Level::Warn: return "warn";
    case Level::Error: return "error";
    default: return "";
  }
}
}  // namespace

void set_rank(int rank, int world_size) {
  g_rank = rank;
  g_width = static_cast<int>(fmt::format("{}", world_size > 0 ? world_size - 1 : 0).size());
}

void set_level(Level l) { g_level = l; }
void set_context(std::string context) { g_context = std::move(context); }
const std::string& context() { return g_context; }
Level level() { return g_level; }

Level parse_level(std::string_view name) {
  if (name == "debug") return Level::Debug;
  if (name == "info") return Level::Info;
  if (name == "warn" || name == "warning") return Level::Warn;
  if (name == "error") return Level::Error;
  if (name == "off" || name == "quiet") return Level::Off;
  throw Error("unknown log level '{}' (expected debug, info, warn, error or off)", name);
}

void write(Level l, std::string_view message) {
  // One fwrite per line so that lines from concurrent ranks interleave whole.
  std::string line = fmt::format("[rank {:>{}}] {}: {}{}\n", g_rank, g_width, tag(l), g_context, message);
  std::lock_guard lock(g_mutex);
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

}  // namespace mb::log
