#include "serve/SearchIndex.hpp"

#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "arch/Error.hpp"
#include "serve/Sqlite.hpp"

namespace ppu::serve {

namespace fs = std::filesystem;

namespace {

constexpr const char* kFormat = "ppu-search-1";  // the index's schema version, in meta

const char* const kSchema = R"sql(
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files(id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, size INTEGER NOT NULL,
                                 mtime_ns INTEGER NOT NULL, hash INTEGER NOT NULL);
-- A document's rowid is its file's id.
CREATE VIRTUAL TABLE IF NOT EXISTS docs USING fts5(path UNINDEXED, body, tokenize = 'unicode61 remove_diacritics 2');
)sql";

// FNV-1a, 64 bits: a content fingerprint (not security: an index is the user's own).
int64_t content_hash(std::string_view s) {
  uint64_t h = 1469598103934665603ull;
  for (const char c : s) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  return static_cast<int64_t>(h);
}

bool is_text(std::string_view s) { return s.find('\0') == std::string_view::npos; }

bool hidden(const fs::path& p) {
  const std::string name = p.filename().string();
  return !name.empty() && name[0] == '.';
}

}  // namespace

std::string fts_query(std::string_view words) {
  std::string out, word;
  const auto flush = [&] {
    if (word.empty()) return;
    out += (out.empty() ? "\"" : " OR \"") + word + "\"";
    word.clear();
  };
  for (const char c : words) {
    const auto u = static_cast<unsigned char>(c);
    if (std::isalnum(u) || u >= 0x80) word += c;
    else flush();
  }
  flush();
  return out;
}

static_assert(kSearchBusyTimeoutMs == kSqliteBusyTimeoutMs, "SearchIndex documents the wrapper's busy timeout");

struct SearchIndex::Impl {
  std::unique_ptr<SqliteDb> db;
};

SearchIndex::SearchIndex(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SearchIndex::SearchIndex(SearchIndex&&) noexcept = default;
SearchIndex& SearchIndex::operator=(SearchIndex&&) noexcept = default;
SearchIndex::~SearchIndex() = default;

SearchIndex SearchIndex::open(const std::string& db_path, Mode mode) {
  std::error_code ec;
  if (mode == Mode::kOpen && !fs::is_regular_file(db_path, ec))
    throw UserError(fmt::format("{}: no such index file (create one with `ppu index FOLDER --out {}`)", db_path, db_path));
  auto ix = std::make_unique<Impl>();
  ix->db = std::make_unique<SqliteDb>(db_path, mode == Mode::kCreate);
  // An existing file must be one of our indexes: an SQLite file with other tables is refused rather
  // than written into.
  ix->db->ensure_format("meta", kFormat, kSchema, "a search index", mode == Mode::kCreate);
  return SearchIndex(std::move(ix));
}

IndexStats SearchIndex::index_folder(const std::string& folder, const std::function<void(const std::string&)>& progress) {
  const SqliteDb& ix = *impl_->db;
  std::error_code ec;
  if (!fs::is_directory(folder, ec)) throw UserError(fmt::format("{}: no such folder to index", folder));
  IndexStats st;
  // What the index holds: path -> its row.
  struct Row {
    int64_t id, size, mtime, hash;
  };
  std::map<std::string, Row> known;
  {
    SqliteStmt q(ix, "SELECT path, id, size, mtime_ns, hash FROM files");
    while (q.step("reading the file list"))
      known[q.column_text(0)] = {q.column_int(1), q.column_int(2), q.column_int(3), q.column_int(4)};
  }
  ix.exec("BEGIN IMMEDIATE", "starting the update");
  try {
    SqliteStmt add_file(ix, "INSERT INTO files(path, size, mtime_ns, hash) VALUES (?, ?, ?, ?)");
    SqliteStmt set_file(ix, "UPDATE files SET size = ?, mtime_ns = ?, hash = ? WHERE id = ?");
    SqliteStmt del_file(ix, "DELETE FROM files WHERE id = ?");
    SqliteStmt put_doc(ix, "INSERT INTO docs(rowid, path, body) VALUES (?, ?, ?)");
    SqliteStmt del_doc(ix, "DELETE FROM docs WHERE rowid = ?");
    std::set<std::string> seen;
    const fs::path root(folder);
    for (auto it = fs::recursive_directory_iterator(root, fs::directory_options::skip_permission_denied, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      const fs::directory_entry& e = *it;
      if (hidden(e.path())) {
        if (e.is_directory(ec)) it.disable_recursion_pending();
        continue;
      }
      if (e.is_symlink(ec) || !e.is_regular_file(ec)) continue;
      const std::string rel = fs::relative(e.path(), root, ec).generic_string();
      const auto size = static_cast<int64_t>(e.file_size(ec));
      const int64_t mtime = static_cast<int64_t>(e.last_write_time(ec).time_since_epoch().count());
      const auto was = known.find(rel);
      if (was != known.end() && was->second.size == size && was->second.mtime == mtime) {
        seen.insert(rel);
        ++st.unchanged;
        continue;
      }
      std::string body;
      if (size <= kSearchMaxFileBytes) {
        std::ifstream in(e.path(), std::ios::binary);
        body.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
        if (in.bad()) body = std::string(1, '\0');
      }
      if (size > kSearchMaxFileBytes || !is_text(body)) {  // too large, binary or unreadable: not (or no longer) indexed
        ++st.skipped;
        continue;
      }
      seen.insert(rel);
      if (progress) progress(rel);
      st.bytes_read += static_cast<int64_t>(body.size());
      const int64_t h = content_hash(body);
      if (was == known.end()) {
        add_file.text(1, rel).integer(2, size).integer(3, mtime).integer(4, h).run("recording a file");
        put_doc.integer(1, ix.last_insert_rowid()).text(2, rel).text(3, body).run("indexing a file");
        ++st.added;
        continue;
      }
      const int64_t id = was->second.id;
      set_file.integer(1, size).integer(2, mtime).integer(3, h).integer(4, id).run("recording a file");
      if (h == was->second.hash) {  // touched, same content
        ++st.unchanged;
        continue;
      }
      del_doc.integer(1, id).run("removing a changed file's text");
      put_doc.integer(1, id).text(2, rel).text(3, body).run("indexing a file");
      ++st.updated;
    }
    if (ec) throw UserError(fmt::format("{}: reading the folder: {}", folder, ec.message()));
    for (const auto& [rel, row] : known)
      if (!seen.count(rel)) {
        del_doc.integer(1, row.id).run("removing a file's text");
        del_file.integer(1, row.id).run("removing a file");
        ++st.removed;
      }
    ix.exec("COMMIT", "saving the update");
  } catch (...) {
    sqlite3_exec(ix.handle(), "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
  return st;
}

std::vector<SearchHit> SearchIndex::search(std::string_view query, int limit) const {
  if (limit < 1) throw UserError(fmt::format("search: limit {}; valid: 1 or more", limit));
  std::vector<SearchHit> out;
  const std::string q = fts_query(query);
  if (q.empty()) return out;
  SqliteStmt s(*impl_->db,
               "SELECT path, -bm25(docs), snippet(docs, 1, '[', ']', ' ... ', 16) FROM docs WHERE docs MATCH ? "
               "ORDER BY bm25(docs), path LIMIT ?");
  s.text(1, q).integer(2, limit);
  while (s.step("searching")) out.push_back({s.column_text(0), s.column_double(1), s.column_text(2)});
  return out;
}

int64_t SearchIndex::size() const {
  SqliteStmt s(*impl_->db, "SELECT count(*) FROM files");
  s.step("counting files");
  return s.column_int(0);
}

const std::string& SearchIndex::path() const { return impl_->db->path(); }

}  // namespace ppu::serve
