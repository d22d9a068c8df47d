// The regfs command line: `regfs mount|umount|store|inspect|cache ...`.
// RegfsMain is the whole tool; main() only calls it, so tests can drive the
// tool in-process (dwarfs's dwarfs_main idea).
#ifndef REGFS_CLI_CLI_H_
#define REGFS_CLI_CLI_H_

namespace regfs {

// Returns the process exit status: 0 success, 1 runtime failure, 2 usage error.
int RegfsMain(int argc, char** argv);

}  // namespace regfs

#endif  // REGFS_CLI_CLI_H_
