// Small file helpers shared by the reader and the CLI.
//
// Errors: Status::IoError with the path and errno text.
#ifndef REGFS_READER_BASE_FILE_UTIL_H_
#define REGFS_READER_BASE_FILE_UTIL_H_

#include <string>

#include "reader/base/status.h"

namespace regfs {

// The whole content of a (small) file: certificates, auth files.
Result<std::string> ReadFileToString(const std::string& path);

}  // namespace regfs

#endif  // REGFS_READER_BASE_FILE_UTIL_H_
