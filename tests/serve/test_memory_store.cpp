// serve/MemoryStore: per-user memories that survive a restart, recalled by words, listed newest
// first, forgotten by id; one user never sees another's; parallel writers lose nothing; one test per
// kind of bad input with its message.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <filesystem>
#include <atomic>
#include <set>
#include <thread>

#include "TestUtil.hpp"
#include "serve/MemoryStore.hpp"

using namespace ppu;
using namespace ppu::serve;
namespace fs = std::filesystem;

namespace {

std::string fresh_path(const std::string& name) {
  const std::string p = test::temp_path(name + ".sqlite");
  for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(p + suffix);
  return p;
}

std::vector<std::string> texts(const std::vector<Memory>& ms) {
  std::vector<std::string> out;
  for (const auto& m : ms) out.push_back(m.text);
  return out;
}

}  // namespace

TEST(MemoryStore, SaveRecallListForget) {
  const std::string path = fresh_path("memory-basic");
  MemoryStore mem = MemoryStore::open(path);
  const int64_t a = mem.save("alice", "prefers answers in French");
  const int64_t b = mem.save("alice", "works on the PPU's paged attention kernels");
  const int64_t c = mem.save("alice", "her cat is called Paged");
  EXPECT_LT(a, b);
  // Best match first: both words beat one.
  EXPECT_EQ(texts(mem.recall("alice", "paged attention", 5)),
            (std::vector<std::string>{"works on the PPU's paged attention kernels", "her cat is called Paged"}));
  EXPECT_EQ(mem.recall("alice", "paged attention", 1).size(), 1u);
  EXPECT_TRUE(mem.recall("alice", "zebra", 5).empty());
  EXPECT_TRUE(mem.recall("alice", "?!", 5).empty());
  EXPECT_EQ(texts(mem.list("alice", 10)), (std::vector<std::string>{"her cat is called Paged",
                                                                     "works on the PPU's paged attention kernels",
                                                                     "prefers answers in French"}));
  EXPECT_EQ(texts(mem.list("alice", 1, 1)), std::vector<std::string>{"works on the PPU's paged attention kernels"});
  EXPECT_TRUE(mem.forget("alice", c));
  EXPECT_FALSE(mem.forget("alice", c));  // already gone
  EXPECT_EQ(texts(mem.recall("alice", "paged", 5)), std::vector<std::string>{"works on the PPU's paged attention kernels"});
  EXPECT_GT(mem.list("alice", 10)[0].created_unix_s, 1'700'000'000);
}

TEST(MemoryStore, UsersNeverSeeEachOthersMemories) {
  MemoryStore mem = MemoryStore::open(fresh_path("memory-users"));
  const int64_t secret = mem.save("alice", "the launch code is 0000");
  mem.save("bob", "likes launch parties");
  EXPECT_EQ(texts(mem.recall("bob", "launch code", 5)), std::vector<std::string>{"likes launch parties"});
  EXPECT_EQ(texts(mem.list("bob", 10)), std::vector<std::string>{"likes launch parties"});
  EXPECT_FALSE(mem.forget("bob", secret));  // not bob's to forget
  EXPECT_EQ(mem.list("alice", 10).size(), 1u);
  EXPECT_TRUE(mem.list("Alice", 10).empty());  // users compare exactly
  EXPECT_TRUE(mem.recall("alice ", "launch", 5).empty());
}

TEST(MemoryStore, SurvivesARestart) {
  const std::string path = fresh_path("memory-durable");
  {
    MemoryStore mem = MemoryStore::open(path);
    mem.save("alice", "remember the milk");
  }
  const MemoryStore again = MemoryStore::open(path);
  EXPECT_EQ(texts(again.recall("alice", "milk", 5)), std::vector<std::string>{"remember the milk"});
}

TEST(MemoryStore, ParallelWritersLoseNothing) {
  // Four threads, each with its own connection, open the same new file at once and save 50 memories
  // each (WAL, BEGIN IMMEDIATE and the busy timeout serialise them).
  const std::string path = fresh_path("memory-parallel");
  std::vector<std::thread> writers;
  std::atomic<int> failures{0};
  for (int w = 0; w < 4; ++w)
    writers.emplace_back([&, w] {
      try {
        MemoryStore mem = MemoryStore::open(path);
        for (int i = 0; i < 50; ++i) mem.save(w % 2 ? "bob" : "alice", fmt::format("writer {} note {}", w, i));
      } catch (const std::exception& e) {
        ADD_FAILURE() << e.what();
        ++failures;
      }
    });
  for (auto& t : writers) t.join();
  ASSERT_EQ(failures.load(), 0);
  const MemoryStore mem = MemoryStore::open(path);
  const auto alice = mem.list("alice", 1000), bob = mem.list("bob", 1000);
  EXPECT_EQ(alice.size(), 100u);
  EXPECT_EQ(bob.size(), 100u);
  std::set<std::string> all;
  for (const auto* ms : {&alice, &bob})
    for (const auto& m : *ms) all.insert(m.text);
  EXPECT_EQ(all.size(), 200u);
  EXPECT_EQ(mem.recall("bob", "writer 3 note 49", 200).front().text, "writer 3 note 49");
}

TEST(MemoryStore, Errors) {
  MemoryStore mem = MemoryStore::open(fresh_path("memory-errors"));
  test::expect_error([&] { mem.save("", "x"); }, {"no user"});
  test::expect_error([&] { mem.save(std::string(300, 'u'), "x"); }, {"user name of 300 bytes", "1 to 256"});
  test::expect_error([&] { mem.save("alice", ""); }, {"empty text"});
  test::expect_error([&] { mem.save("alice", std::string(20000, 'x')); }, {"20000 bytes", "up to 16384"});
  test::expect_error([&] { mem.recall("alice", "x", 0); }, {"limit 0", "1 or more"});
  test::expect_error([&] { mem.list("alice", 5, -1); }, {"offset -1", "0 or more"});
  const std::string text = test::temp_path("memory-not-a-db.sqlite");
  test::write_file(text, "not a database, only text long enough to look like a header to SQLite................");
  test::expect_error([&] { MemoryStore::open(text); }, {text, "not an SQLite database"});
  const std::string other = fresh_path("memory-other");
  {
    sqlite3* db = nullptr;
    sqlite3_open(other.c_str(), &db);
    sqlite3_exec(db, "CREATE TABLE orders(id INTEGER)", nullptr, nullptr, nullptr);
    sqlite3_close(db);
  }
  test::expect_error([&] { MemoryStore::open(other); }, {other, "not a memory store of ours"});
}
