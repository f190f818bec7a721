#include "serve/MemoryStore.hpp"

#include <fmt/format.h>

#include <chrono>

#include "arch/Error.hpp"
#include "serve/SearchIndex.hpp"
#include "serve/Sqlite.hpp"

namespace ppu::serve {

namespace {

constexpr const char* kFormat = "ppu-memory-1";

const char* const kSchema = R"sql(
CREATE TABLE IF NOT EXISTS memory_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS memories(id INTEGER PRIMARY KEY, user TEXT NOT NULL, text TEXT NOT NULL,
                                    created INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS memories_by_user ON memories(user, id);
-- A memory's full-text row has the memory's id as its rowid.
CREATE VIRTUAL TABLE IF NOT EXISTS memory_text USING fts5(text, tokenize = 'unicode61 remove_diacritics 2');
)sql";

void check_user(std::string_view user) {
  if (user.empty()) throw UserError("memory: no user; every memory belongs to a user (the API key's or the request's)");
  if (user.size() > kMemoryMaxUserBytes)
    throw UserError(fmt::format("memory: a user name of {} bytes; valid: 1 to {}", user.size(), kMemoryMaxUserBytes));
}

void check_limit(int limit) {
  if (limit < 1) throw UserError(fmt::format("memory: limit {}; valid: 1 or more", limit));
}

}  // namespace

struct MemoryStore::Impl {
  std::unique_ptr<SqliteDb> db;
};

MemoryStore::MemoryStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
MemoryStore::MemoryStore(MemoryStore&&) noexcept = default;
MemoryStore& MemoryStore::operator=(MemoryStore&&) noexcept = default;
MemoryStore::~MemoryStore() = default;

MemoryStore MemoryStore::open(const std::string& path) {
  auto m = std::make_unique<Impl>();
  m->db = std::make_unique<SqliteDb>(path, /*create=*/true);
  m->db->ensure_format("memory_meta", kFormat, kSchema, "a memory store", /*may_create=*/true);
  return MemoryStore(std::move(m));
}

int64_t MemoryStore::save(std::string_view user, std::string_view text) {
  check_user(user);
  if (text.empty()) throw UserError("memory: nothing to save (empty text)");
  if (text.size() > kMemoryMaxTextBytes)
    throw UserError(fmt::format("memory: a text of {} bytes; valid: up to {} (a memory is a fact, not a document)",
                                text.size(), kMemoryMaxTextBytes));
  const SqliteDb& db = *impl_->db;
  const int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  db.exec("BEGIN IMMEDIATE", "saving a memory");
  try {
    SqliteStmt add(db, "INSERT INTO memories(user, text, created) VALUES (?, ?, ?)");
    add.text(1, user).text(2, text).integer(3, now).run("saving a memory");
    const int64_t id = db.last_insert_rowid();
    SqliteStmt index(db, "INSERT INTO memory_text(rowid, text) VALUES (?, ?)");
    index.integer(1, id).text(2, text).run("indexing a memory");
    db.exec("COMMIT", "saving a memory");
    return id;
  } catch (...) {
    sqlite3_exec(db.handle(), "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

std::vector<Memory> MemoryStore::recall(std::string_view user, std::string_view query, int limit) const {
  check_user(user);
  check_limit(limit);
  std::vector<Memory> out;
  const std::string q = fts_query(query);
  if (q.empty()) return out;
  SqliteStmt s(*impl_->db,
               "SELECT m.id, m.text, m.created, -bm25(memory_text) FROM memory_text JOIN memories m ON m.id = "
               "memory_text.rowid WHERE memory_text MATCH ? AND m.user = ? ORDER BY bm25(memory_text), m.id DESC LIMIT ?");
  s.text(1, q).text(2, user).integer(3, limit);
  while (s.step("recalling")) out.push_back({s.column_int(0), s.column_text(1), s.column_int(2), s.column_double(3)});
  return out;
}

std::vector<Memory> MemoryStore::list(std::string_view user, int limit, int offset) const {
  check_user(user);
  check_limit(limit);
  if (offset < 0) throw UserError(fmt::format("memory: offset {}; valid: 0 or more", offset));
  std::vector<Memory> out;
  SqliteStmt s(*impl_->db, "SELECT id, text, created FROM memories WHERE user = ? ORDER BY id DESC LIMIT ? OFFSET ?");
  s.text(1, user).integer(2, limit).integer(3, offset);
  while (s.step("listing")) out.push_back({s.column_int(0), s.column_text(1), s.column_int(2), 0});
  return out;
}

bool MemoryStore::forget(std::string_view user, int64_t id) {
  check_user(user);
  const SqliteDb& db = *impl_->db;
  db.exec("BEGIN IMMEDIATE", "forgetting a memory");
  try {
    SqliteStmt del(db, "DELETE FROM memories WHERE id = ? AND user = ?");
    del.integer(1, id).text(2, user).run("forgetting a memory");
    const bool found = db.changes() > 0;
    if (found) {
      SqliteStmt unindex(db, "DELETE FROM memory_text WHERE rowid = ?");
      unindex.integer(1, id).run("forgetting a memory");
    }
    db.exec("COMMIT", "forgetting a memory");
    return found;
  } catch (...) {
    sqlite3_exec(db.handle(), "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

}  // namespace ppu::serve
