// Option definitions several subcommands share.
#include "cli_commands.hpp"

void add_device_option(CLI::App* c, std::string& device) {
  c->add_option("--device", device,
                "copy engine: cpu (default), cuda, or auto (cuda when built with it and a GPU is "
                "present)")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}));
}

void add_io_option(CLI::App* c, std::string& io) {
  c->add_option("--io", io,
                "auto (default): large reads and writes bypass the page cache (O_DIRECT) where the "
                "filesystem allows it; direct: the same, saying when a file falls back; buffered: "
                "never")
      ->check(CLI::IsMember({"auto", "direct", "buffered"}));
}
