#include "cache/sqlite.h"

#include <chrono>
#include <thread>

namespace regfs::sqlite {

Status SqliteStatus(int rc, sqlite3* db, std::string_view what) {
  if (rc == SQLITE_OK || rc == SQLITE_ROW || rc == SQLITE_DONE) return Status::Ok();
  std::string msg = std::string(what) + ": " + sqlite3_errstr(rc);
  if (db) {
    const char* m = sqlite3_errmsg(db);
    if (m && std::string_view(m) != sqlite3_errstr(rc)) msg += std::string(" (") + m + ")";
  }
  switch (rc & 0xff) {
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return Status::Corrupt(msg);
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return Status::Transient(msg);
    default:
      return Status::IoError(msg);
  }
}

bool IsWriteUnavailable(int rc) {
  switch (rc & 0xff) {
    case SQLITE_FULL:
    case SQLITE_READONLY:
    case SQLITE_CANTOPEN:
    case SQLITE_IOERR:
    case SQLITE_PERM:
      return true;
    default:
      return false;
  }
}

Result<Db> Db::Open(const std::string& path, int flags, int busy_timeout_ms) {
  sqlite3* raw = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &raw, flags, nullptr);
  Db db;
  db.db_.reset(raw);  // owned even on failure: sqlite allocates a handle anyway
  if (rc != SQLITE_OK) return SqliteStatus(rc, raw, "open " + path);
  sqlite3_extended_result_codes(raw, 1);
  sqlite3_busy_timeout(raw, busy_timeout_ms);
  return db;
}

Status Db::Exec(std::string_view sql) const {
  std::string s(sql);
  int rc = sqlite3_exec(db_.get(), s.c_str(), nullptr, nullptr, nullptr);
  return SqliteStatus(rc, db_.get(), s.substr(0, 60));
}

Result<std::string> Db::QueryText(std::string_view sql) const {
  ASSIGN_OR_RETURN(Stmt st, Stmt::Prepare(db_.get(), sql));
  ASSIGN_OR_RETURN(bool row, st.Step());
  if (!row) return std::string();
  return st.Text(0);
}

Result<Stmt> Stmt::Prepare(sqlite3* db, std::string_view sql) {
  sqlite3_stmt* raw = nullptr;
  int rc = sqlite3_prepare_v3(db, sql.data(), static_cast<int>(sql.size()),
                              SQLITE_PREPARE_PERSISTENT, &raw, nullptr);
  Stmt st;
  st.stmt_.reset(raw);
  if (rc != SQLITE_OK) return SqliteStatus(rc, db, "prepare " + std::string(sql.substr(0, 60)));
  return st;
}

void Stmt::Reset() {
  sqlite3_reset(stmt_.get());
  sqlite3_clear_bindings(stmt_.get());
}

Stmt& Stmt::Bind(int i, int64_t v) {
  sqlite3_bind_int64(stmt_.get(), i, v);
  return *this;
}
Stmt& Stmt::Bind(int i, std::string_view text) {
  sqlite3_bind_text(stmt_.get(), i, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
  return *this;
}
Stmt& Stmt::BindBlob(int i, std::span<const uint8_t> bytes) {
  // SQLITE_STATIC: callers keep the bytes alive until Run()/Reset().
  sqlite3_bind_blob64(stmt_.get(), i, bytes.data(), bytes.size(), SQLITE_STATIC);
  return *this;
}
Stmt& Stmt::BindNull(int i) {
  sqlite3_bind_null(stmt_.get(), i);
  return *this;
}

Result<bool> Stmt::Step() {
  int rc = sqlite3_step(stmt_.get());
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  sqlite3* db = sqlite3_db_handle(stmt_.get());
  Status s = SqliteStatus(rc, db, "step");
  Reset();
  return s;
}

Status Stmt::Run() {
  auto r = Step();
  Reset();
  return r.ok() ? Status::Ok() : r.status();
}

std::string Stmt::Text(int col) const {
  const unsigned char* p = sqlite3_column_text(stmt_.get(), col);
  int n = sqlite3_column_bytes(stmt_.get(), col);
  return p ? std::string(reinterpret_cast<const char*>(p), n) : std::string();
}

std::span<const uint8_t> Stmt::BlobCol(int col) const {
  const void* p = sqlite3_column_blob(stmt_.get(), col);
  int n = sqlite3_column_bytes(stmt_.get(), col);
  if (!p) return {};
  return {static_cast<const uint8_t*>(p), static_cast<size_t>(n)};
}

Result<Transaction> Transaction::Begin(sqlite3* db, Kind kind) {
  const char* sql = kind == Kind::kImmediate ? "BEGIN IMMEDIATE" : "BEGIN";
  // busy_timeout covers most contention; BEGIN IMMEDIATE can still report
  // SQLITE_BUSY at once when a deadlock-avoiding path is taken, so retry a few
  // times with a short back-off.
  int rc = SQLITE_OK;
  for (int attempt = 0; attempt < 50; ++attempt) {
    rc = sqlite3_exec(db, sql, nullptr, nullptr, nullptr);
    if ((rc & 0xff) != SQLITE_BUSY) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5 + attempt));
  }
  if (rc != SQLITE_OK) return SqliteStatus(rc, db, sql);
  return Transaction(db);
}

Transaction::~Transaction() {
  if (db_ && !sqlite3_get_autocommit(db_)) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
}

Status Transaction::Commit() {
  int rc = sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) return SqliteStatus(rc, db_, "commit");  // destructor rolls back
  db_ = nullptr;
  return Status::Ok();
}

}  // namespace regfs::sqlite
