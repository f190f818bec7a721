// SearchIndex: full-text search over a folder of text files - the agent's `search` tool and
// `ppu index`. One SQLite file (FTS5, BM25 ranking, snippets around the matches).
//
//   SearchIndex kb = SearchIndex::open("kb.sqlite", SearchIndex::Mode::kCreate);
//   IndexStats st = kb.index_folder("docs/");   // only new and changed files are read again
//   for (const SearchHit& h : kb.search("paged attention block table", 5))
//     print(h.path, h.score, h.snippet);        // best first; the snippet marks matches [like this]
//
// What is indexed: every regular file under the folder whose bytes are UTF-8 text (no NUL byte),
// up to kSearchMaxFileBytes each; hidden files and folders (".git", ".cache") are skipped, as are
// symbolic links (an index must not escape its folder). Paths are stored relative to the folder.
// A file is read again only when its size or modification time changed, and its row replaced only
// when its content did (a 64-bit hash); files that are gone are removed.
//
// Queries are plain words, not FTS5 syntax: each word is matched as a term (quotes and operators in
// the query are just characters), any word may match, and BM25 ranks documents with more and rarer
// matches first. score = -bm25, larger is better.
//
// Errors (UserError naming the file): a database that does not exist (kOpen), is not an SQLite file or
// not an index of ours, or stays locked by another writer for more than kSearchBusyTimeoutMs; a folder
// that does not exist. One SearchIndex per thread; several processes may read one file at once.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace ppu::serve {

inline constexpr int64_t kSearchMaxFileBytes = 8 << 20;  // larger files are skipped (and counted)
inline constexpr int kSearchBusyTimeoutMs = 2000;       // wait this long for another writer's lock

struct IndexStats {
  int64_t added = 0, updated = 0, unchanged = 0, removed = 0;
  int64_t skipped = 0;  // binary, too large, or unreadable
  int64_t bytes_read = 0;
};

struct SearchHit {
  std::string path;     // relative to the indexed folder
  double score = 0;     // -bm25: larger is better
  std::string snippet;  // the best-matching passage, matches in [brackets], cuts marked " ... "
};

class SearchIndex {
 public:
  enum class Mode { kOpen, kCreate };  // kOpen: the file must exist
  static SearchIndex open(const std::string& db_path, Mode mode);
  SearchIndex(SearchIndex&&) noexcept;
  SearchIndex& operator=(SearchIndex&&) noexcept;
  ~SearchIndex();

  // Brings the index up to date with `folder` (file comment). `progress`, if set, is called with each
  // path read.
  IndexStats index_folder(const std::string& folder, const std::function<void(const std::string&)>& progress = {});
  // At most `limit` (>= 1) documents for the words of `query`, best first; none for a query without
  // words. UserError for limit < 1.
  std::vector<SearchHit> search(std::string_view query, int limit = 5) const;
  // Documents in the index.
  int64_t size() const;
  const std::string& path() const;

 private:
  struct Impl;
  explicit SearchIndex(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The FTS5 query for a user's words: each word (letters, digits, and any byte >= 0x80) as a quoted
// term, joined by OR; "" when there is none.
std::string fts_query(std::string_view words);

}  // namespace ppu::serve
