#include "core/error.hpp"

#include <exception>

namespace mb {

void rethrow_with_context(const std::string& context) {
  try {
    throw;
  } catch (const std::exception& e) {
    throw Error("{}: {}", context, e.what());
  }
}

}  // namespace mb
