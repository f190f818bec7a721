#include "serve/Sqlite.hpp"

#include <fmt/format.h>

#include "arch/Error.hpp"

namespace ppu::serve {

SqliteDb::SqliteDb(std::string path, bool create) : path_(std::move(path)) {
  const int flags = SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0) | SQLITE_OPEN_NOMUTEX;
  // The destructor does not run when the constructor throws: the handle (which SQLite allocates even
  // when opening fails) is closed here.
  try {
    if (const int rc = sqlite3_open_v2(path_.c_str(), &db_, flags, nullptr); rc != SQLITE_OK) fail(rc, "opening");
    sqlite3_busy_timeout(db_, kSqliteBusyTimeoutMs);
    // In WAL mode (ensure_format sets it) NORMAL syncs at checkpoints, not at every commit: a commit
    // survives the process crashing or restarting, only an OS crash or power cut can lose the last
    // ones (SQLite's documentation of PRAGMA synchronous). FULL made a memory save wait ~4 ms for the disk.
    exec("PRAGMA synchronous = NORMAL", "setting the sync mode");
  } catch (...) {
    sqlite3_close_v2(db_);
    db_ = nullptr;
    throw;
  }
}

SqliteDb::~SqliteDb() {
  if (db_) sqlite3_close_v2(db_);
}

void SqliteDb::fail(int rc, const std::string& doing) const {
  if (rc == SQLITE_BUSY || rc == SQLITE_LOCKED)
    throw UserError(fmt::format("{}: {}: the database is locked by another writer (waited {} ms); try again when it is "
                                "done",
                                path_, doing, kSqliteBusyTimeoutMs));
  if (rc == SQLITE_NOTADB) throw UserError(fmt::format("{}: {}: not an SQLite database", path_, doing));
  throw UserError(fmt::format("{}: {}: {}", path_, doing, db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc)));
}

void SqliteDb::exec(const char* sql, const std::string& doing) const {
  if (const int rc = sqlite3_exec(db_, sql, nullptr, nullptr, nullptr); rc != SQLITE_OK) fail(rc, doing);
}

bool SqliteDb::has_table(std::string_view name) const {
  SqliteStmt q(*this, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?");
  q.text(1, name);
  return q.step("reading the schema");
}

void SqliteDb::ensure_format(const char* meta_table, const char* format, const char* schema, const char* what,
                             bool may_create) const {
  bool has_tables = false;
  {
    SqliteStmt q(*this, "SELECT 1 FROM sqlite_master WHERE type = 'table'");
    has_tables = q.step("reading the schema");
  }
  bool ours = false;
  if (has_table(meta_table)) {
    SqliteStmt q(*this, fmt::format("SELECT value FROM {} WHERE key = 'format'", meta_table).c_str());
    ours = q.step("reading the format") && q.column_text(0) == format;
  }
  if (has_tables && !ours)
    throw UserError(fmt::format("{}: an SQLite database but not {} of ours (format {}); give another file", path_, what,
                                format));
  if (has_tables) return;
  if (!may_create) throw UserError(fmt::format("{}: an empty database, not {}", path_, what));
  exec("PRAGMA journal_mode = WAL", "setting WAL mode");
  exec("BEGIN IMMEDIATE", fmt::format("creating {}", what));
  try {
    exec(schema, fmt::format("creating {}", what));
    SqliteStmt q(*this, fmt::format("INSERT OR IGNORE INTO {}(key, value) VALUES ('format', ?)", meta_table).c_str());
    q.text(1, format).run("writing the format");
    exec("COMMIT", fmt::format("creating {}", what));
  } catch (...) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

SqliteStmt::SqliteStmt(const SqliteDb& db, const char* sql) : db_(db) {
  if (const int rc = sqlite3_prepare_v2(db.handle(), sql, -1, &s_, nullptr); rc != SQLITE_OK)
    db.fail(rc, "preparing a query");
}

SqliteStmt::~SqliteStmt() { sqlite3_finalize(s_); }

SqliteStmt& SqliteStmt::text(int i, std::string_view v) {
  sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
  return *this;
}

SqliteStmt& SqliteStmt::integer(int i, int64_t v) {
  sqlite3_bind_int64(s_, i, v);
  return *this;
}

bool SqliteStmt::step(const char* doing) {
  const int rc = sqlite3_step(s_);
  if (rc == SQLITE_ROW) return true;
  if (rc != SQLITE_DONE) db_.fail(rc, doing);
  return false;
}

void SqliteStmt::run(const char* doing) {
  step(doing);
  reset();
}

void SqliteStmt::reset() {
  sqlite3_reset(s_);
  sqlite3_clear_bindings(s_);
}

std::string SqliteStmt::column_text(int i) const {
  const auto* p = sqlite3_column_text(s_, i);
  return p ? std::string(reinterpret_cast<const char*>(p), static_cast<size_t>(sqlite3_column_bytes(s_, i))) : "";
}

}  // namespace ppu::serve
