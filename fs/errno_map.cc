#include "fs/errno_map.h"

#include <cerrno>

namespace regfs {

int StatusToErrno(const Status& s) {
  switch (s.code()) {
    case Code::kOk: return 0;
    case Code::kNotFound: return ENOENT;
    case Code::kInvalidArgument: return EINVAL;
    case Code::kUnsupported: return EOPNOTSUPP;
    case Code::kUnauthorized: return EACCES;
    case Code::kRangeNotSatisfiable:
    case Code::kTransient:
    case Code::kCorrupt:
    case Code::kIoError:
    case Code::kProtocol:
      return EIO;
  }
  return EIO;
}

int ReadFailureErrno(const Status& s) { return s.ok() ? 0 : EIO; }

}  // namespace regfs
