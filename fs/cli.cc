#include "fs/cli.h"

#include <CLI/CLI.hpp>

#include <cstdio>

namespace regfs {

int RegfsMain(int argc, char** argv) {
  CLI::App app{"regfs: mount container images from a registry without pulling them"};
  app.require_subcommand(1);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  return 0;
}

}  // namespace regfs
