#include "core/proc_stats.hpp"

#include <fstream>
#include <sstream>
#include <string>

namespace mb {

namespace {
IoCounters parse_io(const char* path) {
  IoCounters c;
  std::ifstream f(path);
  std::string key;
  uint64_t value = 0;
  while (f >> key >> value) {
    if (key == "rchar:") c.rchar = value;
    if (key == "wchar:") c.wchar = value;
    if (key == "read_bytes:") c.read_bytes = value;
    if (key == "write_bytes:") c.write_bytes = value;
  }
  return c;
}
}  // namespace

IoCounters read_io_counters() { return parse_io("/proc/self/io"); }
IoCounters read_thread_io_counters() { return parse_io("/proc/thread-self/io"); }

IoCounters operator-(const IoCounters& a, const IoCounters& b) {
  return {a.rchar - b.rchar, a.wchar - b.wchar, a.read_bytes - b.read_bytes,
          a.write_bytes - b.write_bytes};
}

uint64_t peak_rss_now() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) == 0) {
      std::istringstream s(line.substr(6));
      uint64_t kb = 0;
      s >> kb;
      return kb * 1024;
    }
  }
  return 0;
}

bool reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  if (!f) return false;
  f << "5";
  return static_cast<bool>(f);
}

}  // namespace mb
