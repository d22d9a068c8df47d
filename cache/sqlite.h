// Thin RAII layer over the sqlite3 C API, used only inside cache/.
//
// One owner type per C resource: Db owns a sqlite3*, Stmt owns a
// sqlite3_stmt*, Transaction rolls back in its destructor unless Commit()
// succeeded. Every sqlite result code becomes a
// regfs::Status in exactly one place (SqliteStatus): SQLITE_CORRUPT/NOTADB ->
// Corrupt, SQLITE_BUSY/LOCKED -> Transient, everything else -> IoError, with the
// connection's message attached.
#ifndef REGFS_CACHE_SQLITE_H_
#define REGFS_CACHE_SQLITE_H_

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "reader/base/status.h"

namespace regfs::sqlite {

// Maps a sqlite result code (and the connection's last message) to a Status.
Status SqliteStatus(int rc, sqlite3* db, std::string_view what);
// True for result codes that mean "no space" or "cannot write here".
bool IsWriteUnavailable(int rc);

struct DbCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
struct StmtFinalizer {
  void operator()(sqlite3_stmt* s) const { sqlite3_finalize(s); }
};

class Db {
 public:
  // Opens (flags as sqlite3_open_v2) and sets the busy timeout.
  static Result<Db> Open(const std::string& path, int flags, int busy_timeout_ms);

  sqlite3* get() const { return db_.get(); }
  // Runs one or more statements without results.
  Status Exec(std::string_view sql) const;
  // Runs a pragma / query returning a single value as text ("" if no row).
  Result<std::string> QueryText(std::string_view sql) const;

 private:
  std::unique_ptr<sqlite3, DbCloser> db_;
};

// A prepared statement. Reset() before reuse; bound values are cleared too.
class Stmt {
 public:
  Stmt() = default;
  static Result<Stmt> Prepare(sqlite3* db, std::string_view sql);

  sqlite3_stmt* get() const { return stmt_.get(); }
  bool valid() const { return stmt_ != nullptr; }
  void Reset();

  Stmt& Bind(int i, int64_t v);
  Stmt& Bind(int i, std::string_view text);
  Stmt& BindBlob(int i, std::span<const uint8_t> bytes);
  Stmt& BindNull(int i);

  // SQLITE_ROW -> true, SQLITE_DONE -> false, else error Status.
  Result<bool> Step();
  // Steps to completion (for INSERT/UPDATE/DELETE) and resets.
  Status Run();

  int64_t Int(int col) const { return sqlite3_column_int64(stmt_.get(), col); }
  std::string Text(int col) const;
  std::span<const uint8_t> BlobCol(int col) const;
  bool IsNull(int col) const { return sqlite3_column_type(stmt_.get(), col) == SQLITE_NULL; }

 private:
  std::unique_ptr<sqlite3_stmt, StmtFinalizer> stmt_;
};

// BEGIN [IMMEDIATE] ... COMMIT; rolls back on destruction unless committed.
class Transaction {
 public:
  enum class Kind { kDeferred, kImmediate };
  static Result<Transaction> Begin(sqlite3* db, Kind kind);
  Transaction(Transaction&& o) noexcept : db_(o.db_) { o.db_ = nullptr; }
  Transaction& operator=(Transaction&&) = delete;
  Transaction(const Transaction&) = delete;
  ~Transaction();
  Status Commit();

 private:
  explicit Transaction(sqlite3* db) : db_(db) {}
  sqlite3* db_;  // null once committed or rolled back
};

}  // namespace regfs::sqlite

#endif  // REGFS_CACHE_SQLITE_H_
