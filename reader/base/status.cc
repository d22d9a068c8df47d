#include "reader/base/status.h"

namespace regfs {

const char* CodeName(Code code) {
  switch (code) {
    case Code::kOk: return "OK";
    case Code::kNotFound: return "NotFound";
    case Code::kUnauthorized: return "Unauthorized";
    case Code::kRangeNotSatisfiable: return "RangeNotSatisfiable";
    case Code::kTransient: return "Transient";
    case Code::kCorrupt: return "Corrupt";
    case Code::kIoError: return "IoError";
    case Code::kInvalidArgument: return "InvalidArgument";
    case Code::kUnsupported: return "Unsupported";
    case Code::kProtocol: return "Protocol";
  }
  return "Unknown";
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  std::string s = CodeName(code_);
  if (!msg_.empty()) {
    s += ": ";
    s += msg_;
  }
  return s;
}

Status Status::Annotate(std::string_view context) const {
  if (ok()) return *this;
  std::string m(context);
  if (!msg_.empty()) {
    m += ": ";
    m += msg_;
  }
  return Status(code_, std::move(m));
}

}  // namespace regfs
