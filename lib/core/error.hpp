// Errors that carry their context: which file, which tensor, which value.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace mb {

// The one exception type the library throws for bad input, bad configuration
// and failed I/O. The message is meant for the user, so it must name what was
// being processed (file, tensor, value) and what was expected.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}

  template <typename... Args>
  Error(fmt::format_string<Args...> f, Args&&... args)
      : std::runtime_error(fmt::format(f, std::forward<Args>(args)...)) {}
};

// Wraps an exception with an outer context line ("while reading X: <inner>").
[[noreturn]] void rethrow_with_context(const std::string& context);

}  // namespace mb

// Throws mb::Error with a formatted message when `cond` is false.
#define MB_CHECK(cond, ...)                 \
  do {                                      \
    if (!(cond)) throw ::mb::Error(__VA_ARGS__); \
  } while (0)
