#include "dist/test_hooks.hpp"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/error.hpp"

namespace mb {
namespace {
struct Hooks {
  int fail_rank = -1;
  long fail_after = 0;
  long delay_ms = 0;
  int delay_rank = -1;  // -1: every rank
  long count = 0;
  int fail_step = 0;  // 0: any
  int step = 0;
  Hooks() {
    if (const char* f = std::getenv("MEGABRIDGE_TEST_FAIL")) {
      const std::string s(f);
      const auto colon = s.find(':');
      fail_rank = std::stoi(s.substr(0, colon));
      fail_after = colon == std::string::npos ? 0 : std::stol(s.substr(colon + 1));
      if (const auto at = s.find('@'); at != std::string::npos) fail_step = std::stoi(s.substr(at + 1));
    }
    if (const char* d = std::getenv("MEGABRIDGE_TEST_DELAY_MS")) {
      const std::string s(d);
      delay_ms = std::stol(s);
      if (const auto at = s.find('@'); at != std::string::npos)
        delay_rank = std::stoi(s.substr(at + 1));
    }
  }
};
Hooks& hooks() {
  static Hooks h;
  return h;
}
}  // namespace

void test_hook_after_tensor(int rank) {
  Hooks& h = hooks();
  if (h.delay_ms > 0 && (h.delay_rank < 0 || h.delay_rank == rank))
    usleep(static_cast<useconds_t>(h.delay_ms * 1000));
  if (h.fail_rank == rank && (h.fail_step == 0 || h.fail_step == h.step) && ++h.count > h.fail_after)
    throw Error("injected failure on rank {} after {} tensors (MEGABRIDGE_TEST_FAIL)", rank,
                h.fail_after);
}

double test_hook_hash_wait_s(double normal) {
  const char* w = std::getenv("MEGABRIDGE_TEST_HASH_WAIT_S");
  return w ? std::stod(w) : normal;
}

void test_hook_begin_step(int step) {
  hooks().step = step;
  hooks().count = 0;
}

void test_hook_after_lock() {
  const char* dir = std::getenv("MEGABRIDGE_TEST_HOLD_LOCK");
  if (dir == nullptr || *dir == '\0') return;
  const std::filesystem::path d(dir);
  std::ofstream(d / "locked") << getpid() << "\n";
  for (int i = 0; i < 120 * 20 && !std::filesystem::exists(d / "release"); ++i) usleep(50 * 1000);
}

}  // namespace mb
