// Running a command the way a user would, for integration tests: argv (no
// shell), captured stdout+stderr, exit status, bounded time.
#ifndef REGFS_TESTS_SUPPORT_RUN_COMMAND_H_
#define REGFS_TESTS_SUPPORT_RUN_COMMAND_H_

#include <string>
#include <vector>

namespace regfs::testing {

struct CommandResult {
  int exit_code = -1;  // -1: killed by a signal or could not run
  std::string output;  // stdout and stderr, interleaved
  bool timed_out = false;
};

// Runs argv[0] (PATH is searched) with the given arguments. Kills it (SIGKILL)
// after `timeout_s`. Always reaps it.
CommandResult RunCommand(const std::vector<std::string>& argv, int timeout_s = 120);

// Convenience: `sh -c script`.
CommandResult RunShell(const std::string& script, int timeout_s = 120);

}  // namespace regfs::testing

#endif  // REGFS_TESTS_SUPPORT_RUN_COMMAND_H_
