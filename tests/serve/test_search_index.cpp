// serve/SearchIndex: what `ppu index` puts in the index (text only, hidden and linked files left
// out), BM25 order and snippets, re-indexing only what changed, queries that are words and never
// FTS5 syntax, and one test per kind of bad input with its message.
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <filesystem>
#include <thread>

#include "TestUtil.hpp"
#include "serve/SearchIndex.hpp"

using namespace ppu;
using namespace ppu::serve;
namespace fs = std::filesystem;

namespace {

// A fresh folder of documents under the test's temporary directory.
struct Folder {
  fs::path root;
  explicit Folder(const std::string& name) : root(test::temp_path(name)) {
    fs::remove_all(root);
    fs::create_directories(root / "sub");
    fs::create_directories(root / ".git");
    put("kernels.md", "The paged attention kernel reads keys and values through a block table. Paged memory.");
    put("sub/serving.txt", "Continuous batching joins requests to a running batch; the block table grows per request.");
    put("sub/cafe.txt", "Le café est servi. Nothing about attention here.");
    put(".git/config", "paged attention block table in a hidden folder");
    put("image.bin", std::string("PNG\0\0data paged", 15));
  }
  void put(const std::string& rel, const std::string& text) const { test::write_file((root / rel).string(), text); }
  std::string db() const { return (root.parent_path() / (root.filename().string() + ".sqlite")).string(); }
};

SearchIndex fresh(const Folder& f) {
  fs::remove(f.db());
  fs::remove(f.db() + "-wal");
  fs::remove(f.db() + "-shm");
  return SearchIndex::open(f.db(), SearchIndex::Mode::kCreate);
}

std::vector<std::string> paths(const std::vector<SearchHit>& hits) {
  std::vector<std::string> out;
  for (const auto& h : hits) out.push_back(h.path);
  return out;
}

}  // namespace

TEST(SearchIndex, IndexesTextFilesOnly) {
  Folder f("search-text-only");
  fs::create_symlink(f.root / "kernels.md", f.root / "link.md");
  SearchIndex kb = fresh(f);
  std::vector<std::string> read;
  const IndexStats st = kb.index_folder(f.root.string(), [&](const std::string& p) { read.push_back(p); });
  EXPECT_EQ(st.added, 3);  // kernels.md, sub/serving.txt, sub/cafe.txt
  EXPECT_EQ(st.skipped, 1);  // image.bin (a NUL byte); .git and the link are not even looked at
  EXPECT_EQ(kb.size(), 3);
  std::sort(read.begin(), read.end());
  EXPECT_EQ(read, (std::vector<std::string>{"kernels.md", "sub/cafe.txt", "sub/serving.txt"}));
}

TEST(SearchIndex, RanksByBm25WithSnippets) {
  Folder f("search-rank");
  SearchIndex kb = fresh(f);
  kb.index_folder(f.root.string());
  const auto hits = kb.search("paged block table", 5);
  // kernels.md has "paged" twice and "block table"; serving.txt only "block table".
  ASSERT_EQ(paths(hits), (std::vector<std::string>{"kernels.md", "sub/serving.txt"}));
  EXPECT_GT(hits[0].score, hits[1].score);
  EXPECT_NE(hits[0].snippet.find("[paged]"), std::string::npos) << hits[0].snippet;
  EXPECT_NE(hits[1].snippet.find("[block] [table]"), std::string::npos) << hits[1].snippet;
  EXPECT_EQ(paths(kb.search("paged block table", 1)), std::vector<std::string>{"kernels.md"});
  // Diacritics fold: "cafe" finds "café".
  EXPECT_EQ(paths(kb.search("cafe", 5)), std::vector<std::string>{"sub/cafe.txt"});
  EXPECT_TRUE(kb.search("zebra", 5).empty());
}

TEST(SearchIndex, QueriesAreWordsNotSyntax) {
  EXPECT_EQ(fts_query("paged block-table"), "\"paged\" OR \"block\" OR \"table\"");
  EXPECT_EQ(fts_query("  \"NEAR( AND * ^ :  "), "\"NEAR\" OR \"AND\"");
  EXPECT_EQ(fts_query("café 2+2"), "\"café\" OR \"2\" OR \"2\"");
  EXPECT_EQ(fts_query("!?* "), "");
  Folder f("search-syntax");
  SearchIndex kb = fresh(f);
  kb.index_folder(f.root.string());
  for (const char* q : {"\"", "paged AND", "NOT attention", "col:value", "(", "*", "", "   ", "a\"b OR\"c"})
    EXPECT_NO_THROW(kb.search(q, 3)) << q;
  EXPECT_TRUE(kb.search("!?*", 3).empty());
}

TEST(SearchIndex, ReindexesOnlyWhatChanged) {
  Folder f("search-reindex");
  SearchIndex kb = fresh(f);
  kb.index_folder(f.root.string());
  IndexStats st = kb.index_folder(f.root.string());
  EXPECT_EQ(st.added + st.updated + st.removed, 0);
  EXPECT_EQ(st.unchanged, 3);
  EXPECT_EQ(st.bytes_read, 0);  // nothing read again
  // A changed file, a touched but identical one, a new one, a deleted one, one turned binary.
  f.put("kernels.md", "Now about tensor cores only.");
  const auto t = fs::last_write_time(f.root / "sub/serving.txt");
  fs::last_write_time(f.root / "sub/serving.txt", t + std::chrono::seconds(5));
  f.put("new.txt", "zebra stripes");
  fs::remove(f.root / "sub/cafe.txt");
  st = kb.index_folder(f.root.string());
  EXPECT_EQ(st.updated, 1);
  EXPECT_EQ(st.added, 1);
  EXPECT_EQ(st.removed, 1);
  EXPECT_EQ(st.unchanged, 1);  // serving.txt: read again, same content, not re-indexed
  EXPECT_EQ(paths(kb.search("zebra", 5)), std::vector<std::string>{"new.txt"});
  EXPECT_EQ(paths(kb.search("paged", 5)), std::vector<std::string>{});  // the old text of kernels.md is gone
  EXPECT_EQ(paths(kb.search("tensor", 5)), std::vector<std::string>{"kernels.md"});
  EXPECT_TRUE(kb.search("cafe", 5).empty());
  f.put("new.txt", std::string("zebra\0", 6));
  st = kb.index_folder(f.root.string());
  EXPECT_EQ(st.removed, 1);
  EXPECT_TRUE(kb.search("zebra", 5).empty());
  // The index survives reopening.
  const SearchIndex again = SearchIndex::open(f.db(), SearchIndex::Mode::kOpen);
  EXPECT_EQ(again.size(), 2);
  EXPECT_EQ(paths(again.search("batching", 5)), std::vector<std::string>{"sub/serving.txt"});
}

TEST(SearchIndex, Errors) {
  Folder f("search-errors");
  const std::string missing = test::temp_path("no-such-index.sqlite");
  fs::remove(missing);
  test::expect_error([&] { SearchIndex::open(missing, SearchIndex::Mode::kOpen); }, {missing, "no such index file", "ppu index"});
  const std::string text = test::temp_path("not-a-db.sqlite");
  test::write_file(text, "this is not a database, just some text that is long enough to be a header........");
  test::expect_error([&] { SearchIndex::open(text, SearchIndex::Mode::kOpen); }, {text, "not an SQLite database"});
  const std::string other = test::temp_path("other.sqlite");
  fs::remove(other);
  {
    sqlite3* db = nullptr;
    sqlite3_open(other.c_str(), &db);
    sqlite3_exec(db, "CREATE TABLE customers(name TEXT)", nullptr, nullptr, nullptr);
    sqlite3_close(db);
  }
  test::expect_error([&] { SearchIndex::open(other, SearchIndex::Mode::kCreate); }, {other, "not a search index of ours"});
  SearchIndex kb = fresh(f);
  test::expect_error([&] { kb.index_folder((f.root / "nope").string()); }, {"nope", "no such folder"});
  test::expect_error([&] { kb.search("x", 0); }, {"limit 0", "1 or more"});
}

TEST(SearchIndex, ALockedDatabaseIsAnErrorAfterTheBusyTimeout) {
  Folder f("search-locked");
  SearchIndex kb = fresh(f);
  sqlite3* other = nullptr;
  ASSERT_EQ(sqlite3_open(f.db().c_str(), &other), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(other, "BEGIN EXCLUSIVE", nullptr, nullptr, nullptr), SQLITE_OK);
  const auto t0 = std::chrono::steady_clock::now();
  test::expect_error([&] { kb.index_folder(f.root.string()); }, {f.db(), "locked by another writer"});
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(kSearchBusyTimeoutMs - 100));
  sqlite3_exec(other, "ROLLBACK", nullptr, nullptr, nullptr);
  sqlite3_close(other);
  EXPECT_EQ(kb.index_folder(f.root.string()).added, 3);  // fine once the other writer is gone
}
