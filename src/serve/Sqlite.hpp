// Sqlite: the small wrapper over SQLite's C API that the agent's tools share (SearchIndex,
// MemoryStore): an open database whose errors become UserErrors naming the file and what was being
// done, and prepared statements finalized on scope exit.
//
//   SqliteDb db("mem.sqlite", /*create=*/true);
//   db.exec("PRAGMA journal_mode = WAL", "setting WAL mode");
//   SqliteStmt q(db, "SELECT text FROM memories WHERE user = ?");
//   q.text(1, user);
//   while (q.step("recalling")) use(q.column_text(0));
//
// A busy database is waited for kSqliteBusyTimeoutMs, then "locked by another writer". One SqliteDb
// per thread (opened with SQLITE_OPEN_NOMUTEX).
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <string>
#include <string_view>

namespace ppu::serve {

inline constexpr int kSqliteBusyTimeoutMs = 2000;

class SqliteDb {
 public:
  // Opens `path` read-write (creating it when `create`). UserError naming the file if it cannot.
  SqliteDb(std::string path, bool create);
  ~SqliteDb();
  SqliteDb(const SqliteDb&) = delete;
  SqliteDb& operator=(const SqliteDb&) = delete;

  // Runs `sql` (several statements allowed); UserError "<path>: <doing>: <why>" on failure.
  void exec(const char* sql, const std::string& doing) const;
  // Throws the UserError for SQLite result `rc` (busy and not-a-database get messages of their own).
  [[noreturn]] void fail(int rc, const std::string& doing) const;
  // Whether a table named `name` exists.
  bool has_table(std::string_view name) const;
  // Makes this file one of our stores of `format`: an empty database gets WAL mode, `schema` (which
  // must create `meta_table(key, value)`) and meta_table's 'format' row, in one transaction (two
  // processes creating it at once both succeed); a file already of this format is left as it is.
  // UserError for a file with other tables ("an SQLite database but not <what> of ours"), or an empty
  // one when !may_create.
  void ensure_format(const char* meta_table, const char* format, const char* schema, const char* what, bool may_create) const;
  int64_t last_insert_rowid() const { return sqlite3_last_insert_rowid(db_); }
  int changes() const { return sqlite3_changes(db_); }
  const std::string& path() const { return path_; }
  sqlite3* handle() const { return db_; }

 private:
  std::string path_;
  sqlite3* db_ = nullptr;
};

class SqliteStmt {
 public:
  SqliteStmt(const SqliteDb& db, const char* sql);
  ~SqliteStmt();
  SqliteStmt(const SqliteStmt&) = delete;
  SqliteStmt& operator=(const SqliteStmt&) = delete;

  SqliteStmt& text(int i, std::string_view v);
  SqliteStmt& integer(int i, int64_t v);
  // True while there is a row; UserError on an error (`doing` names what for the message).
  bool step(const char* doing);
  // Steps to the end, then resets the statement and its bindings for the next use.
  void run(const char* doing);
  void reset();
  std::string column_text(int i) const;
  int64_t column_int(int i) const { return sqlite3_column_int64(s_, i); }
  double column_double(int i) const { return sqlite3_column_double(s_, i); }

 private:
  const SqliteDb& db_;
  sqlite3_stmt* s_ = nullptr;
};

}  // namespace ppu::serve
