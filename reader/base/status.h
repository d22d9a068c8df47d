// Status and Result<T>: the error currency of every regfs module.
//
// A Status is OK or one of a small set of codes plus a message. Each boundary
// translates once: curl + HTTP status -> Status in reader/http, sqlite -> Status
// in cache/, Status -> errno at the FUSE edge (fs/). OK carries no allocation.
#ifndef REGFS_READER_BASE_STATUS_H_
#define REGFS_READER_BASE_STATUS_H_

#include <cassert>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace regfs {

enum class Code {
  kOk = 0,
  kNotFound,             // no such image, blob, entry
  kUnauthorized,         // credentials missing or refused (401/403)
  kRangeNotSatisfiable,  // 416, or a range outside the blob
  kTransient,            // worth retrying: reset, stall, 429, 5xx, timeout
  kCorrupt,              // bytes that fail verification or parsing
  kIoError,              // local I/O failure (disk, sqlite, fuse)
  kInvalidArgument,      // bad input from the user or caller
  kUnsupported,          // a valid thing we do not handle (media type, sparse)
  kProtocol,             // the server broke the HTTP/registry protocol
};

const char* CodeName(Code code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Code code, std::string msg) : code_(code), msg_(std::move(msg)) {}

  static Status Ok() { return Status(); }
  static Status NotFound(std::string m) { return {Code::kNotFound, std::move(m)}; }
  static Status Unauthorized(std::string m) { return {Code::kUnauthorized, std::move(m)}; }
  static Status RangeNotSatisfiable(std::string m) {
    return {Code::kRangeNotSatisfiable, std::move(m)};
  }
  static Status Transient(std::string m) { return {Code::kTransient, std::move(m)}; }
  static Status Corrupt(std::string m) { return {Code::kCorrupt, std::move(m)}; }
  static Status IoError(std::string m) { return {Code::kIoError, std::move(m)}; }
  static Status InvalidArgument(std::string m) { return {Code::kInvalidArgument, std::move(m)}; }
  static Status Unsupported(std::string m) { return {Code::kUnsupported, std::move(m)}; }
  static Status Protocol(std::string m) { return {Code::kProtocol, std::move(m)}; }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return msg_; }
  // "Transient: connection reset" ; "OK" for success.
  std::string ToString() const;

  // Prefixes context: Status::NotFound("x").Annotate("manifest") -> "manifest: x".
  Status Annotate(std::string_view context) const;

  bool operator==(const Status& o) const { return code_ == o.code_ && msg_ == o.msg_; }

 private:
  Code code_ = Code::kOk;
  std::string msg_;
};

// A value or a non-OK Status. Access to value() on error is a programming error.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : status_(std::move(status)) {  // NOLINT
    assert(!status_.ok());
    if (status_.ok()) status_ = Status(Code::kProtocol, "Result built from OK status");
  }

  bool ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }
  T& value() & { assert(ok()); return *value_; }
  const T& value() const& { assert(ok()); return *value_; }
  T&& value() && { assert(ok()); return std::move(*value_); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::optional<T> value_;
  Status status_;
};

}  // namespace regfs

#define REGFS_CONCAT_INNER_(a, b) a##b
#define REGFS_CONCAT_(a, b) REGFS_CONCAT_INNER_(a, b)

#define RETURN_IF_ERROR(expr)                  \
  do {                                         \
    ::regfs::Status regfs_st_ = (expr);        \
    if (!regfs_st_.ok()) return regfs_st_;     \
  } while (0)

#define ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                           \
  if (!tmp.ok()) return tmp.status();          \
  lhs = std::move(tmp).value()

// ASSIGN_OR_RETURN(auto x, Foo()); ASSIGN_OR_RETURN(x, Foo());
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL_(REGFS_CONCAT_(regfs_res_, __LINE__), lhs, expr)

#endif  // REGFS_READER_BASE_STATUS_H_
