#include "reader/base/file_util.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>

namespace regfs {

Result<std::string> ReadFileToString(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::IoError("cannot read " + path + ": " + std::strerror(errno));
  std::string out{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  if (in.bad()) return Status::IoError("cannot read " + path);
  return out;
}

}  // namespace regfs
