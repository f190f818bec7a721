// MemoryStore: the agent's `memory` tool - what a user asked the model to remember, kept per user in
// one SQLite file (WAL): save, recall by query (FTS5, BM25), list, forget. Durable across restarts;
// several writers at once (threads or processes, each with its own MemoryStore) are safe; every
// operation is scoped to one user, so a user can never read, list or forget another's memories.
//
//   MemoryStore mem = MemoryStore::open("mem.sqlite");
//   int64_t id = mem.save("alice", "prefers answers in French");
//   mem.recall("alice", "language French", 3);   // alice's matching memories, best first
//   mem.recall("bob", "French", 3);              // nothing: bob's own memories only
//   mem.forget("alice", id);                      // true; false for an id that is not alice's
//
// Users are strings the server derives (the API key's user, or the request's `user` field); they are
// compared exactly. Recall queries are words, as SearchIndex takes them (never FTS5 syntax).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace ppu::serve {

inline constexpr size_t kMemoryMaxTextBytes = 16 << 10;  // one memory at most (a fact, not a document)
inline constexpr size_t kMemoryMaxUserBytes = 256;

struct Memory {
  int64_t id = 0;
  std::string text;
  int64_t created_unix_s = 0;
  double score = 0;  // recall: -bm25, larger is better; 0 for list
};

class MemoryStore {
 public:
  // Opens `path`, creating it (and its schema) when missing. UserError naming the file: not an SQLite
  // file, an SQLite file of another kind, locked beyond the busy timeout.
  static MemoryStore open(const std::string& path);
  MemoryStore(MemoryStore&&) noexcept;
  MemoryStore& operator=(MemoryStore&&) noexcept;
  ~MemoryStore();

  // Stores `text` for `user`; returns its id. UserError for an empty or over-long user or text.
  int64_t save(std::string_view user, std::string_view text);
  // The user's memories matching the words of `query`, best first, at most `limit` (>= 1).
  std::vector<Memory> recall(std::string_view user, std::string_view query, int limit) const;
  // The user's memories, newest first, at most `limit` (>= 1) after skipping `offset` (>= 0).
  std::vector<Memory> list(std::string_view user, int limit, int offset = 0) const;
  // Deletes the user's memory `id`; false when the user has no memory of that id.
  bool forget(std::string_view user, int64_t id);

 private:
  struct Impl;
  explicit MemoryStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ppu::serve
