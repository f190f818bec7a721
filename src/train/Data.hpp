// Data: the training data pipeline. A text corpus is read into documents, tokenised with the Qwen3
// tokenizer (cached on disk as a token shard), split into training and held-out validation documents,
// packed into fixed-length sequences and served as shuffled, resumable batches.
//
//   const models::Tokenizer tok = models::Tokenizer::from_file(tokenizer_json);
//   DataOptions opt;
//   opt.seq_len = 256;
//   opt.cache_path = "build/corpus.tokens";
//   const TokenDataset data = TokenDataset::load(default_corpus(source_dir), tok, opt);
//   BatchIterator it(data, /*batch=*/8, /*seed=*/1);
//   const std::vector<int32_t> b = it.next();   // b: [8, 257]; inputs b[r][0..255], targets b[r][1..256]
//   const BatchState s = it.state();             // save in a checkpoint; BatchIterator(data, 8, 1, s) resumes
//   const double h = data.stats().train_unigram_entropy_nats;  // the loss a unigram model reaches
//
// Corpus. A corpus is a list of paths, each a file or a folder. A folder is walked recursively and its
// files are read in sorted path order (byte-wise on the path); only files ending in .txt or .md, or
// with no extension, are read, and names starting with '.' (files and folders) are skipped. Every
// file is one document, and must be valid UTF-8, except the King James Bible data file of Debian's
// bible-kjv-text (/usr/lib/bible.data, recognised by its magic bytes wherever it is), which is decoded
// (read_kjv) into one document per chapter. Empty files are skipped; a path that yields no text is an
// error.
//
// Packing. Every document's tokens are followed by <|endoftext|>; the documents in corpus order form
// one stream. Special-token text inside a document ("<|endoftext|>" typed in a file) is tokenised as
// ordinary text, so the separator id appears only between documents. Sequence i holds stream tokens
// [i*seq_len, i*seq_len + seq_len] (seq_len + 1 tokens: the input and, shifted by one, the target);
// consecutive sequences share one token, so every adjacent pair of the stream is predicted exactly once
// per epoch. No padding: the tail that does not fill a sequence is dropped and counted.
//
// Validation split. validation_fraction of the documents (rounded to nearest, at least one), spread
// evenly over the corpus - with v of n held out, document i is held out when floor((i + 1) v / n) >
// floor(i v / n), the last of every n / v (so one held-out document is the last) - form their own
// stream in corpus order, packed the same way and never shuffled; no validation token is in a
// training sequence. Spread, not a tail: the held-out text is drawn from the whole corpus, so its loss
// is comparable with the corpus's unigram entropy (the default corpus's last 5% would be the Bible's
// last 60 chapters alone, on which the training text's unigram model scores 6.41 nats, not 6.29).
//
// Cache. With a cache_path the tokenised corpus (every document's tokens and name) is kept in one file:
// a header (magic, format version, tokenizer identity: a hash of its tokenizer.json and its vocab
// size, corpus fingerprint: a hash of every file's path, size and content, token and document counts),
// the payload, and an FNV-1a-64 checksum of everything before it. The cache does not depend on seq_len
// or the split, so changing either reuses it. It is re-used when it matches, rebuilt when the corpus or
// the tokenizer changed, and rebuilt with a warning when it is truncated or its checksum fails; it is
// written under a temporary name and renamed into place. A tokenizer that was not loaded from a file
// (Tokenizer::from_json) has no identity to check, so the cache is not used (DataStats says kOff).
//
// Shuffling. Each epoch visits the training sequences in its own order: a Fisher-Yates shuffle driven
// by splitmix64, seeded from (seed, epoch), the same on every machine. Batches run across epoch ends.
//
// Not here: tokenisers other than byte-level BPE (models/Tokenizer), document-boundary attention
// masks (a sequence may span documents; the separator is all the model sees), padding or variable
// length batches, sampling weights per source, streaming corpora larger than memory, multi-rank
// sharding of batches (a data-parallel rank can take every n-th row), and data on the device (the
// batch is host memory; the training loop copies it).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ppu::models {
class Tokenizer;
}

namespace ppu::train {

// Where Debian's bible-kjv-text installs the King James Bible (public domain; see docs/training-data.md).
inline constexpr const char* kKjvDataPath = "/usr/lib/bible.data";

// One document of a corpus.
struct Document {
  std::string name;  // the file's path; for a Bible chapter "PATH:Genesis 1"
  std::string text;  // UTF-8
};

// The files `paths` stand for, in reading order (see the file comment: folders walked recursively in
// sorted order, .txt/.md/extension-less files, hidden names skipped). Throws UserError naming the path
// for a path that does not exist or is neither a file nor a folder, and for a folder without any file
// to read. A file listed twice is read twice.
std::vector<std::string> corpus_files(const std::vector<std::string>& paths);

// Every document of the corpus, in order. Throws UserError as corpus_files, and naming the file for a
// file that cannot be read, a file that is not valid UTF-8 (with the byte offset of the first bad byte),
// a Bible data file that is damaged, and a path that yields no text (all its files empty), and for an
// empty `paths`.
std::vector<Document> read_corpus(const std::vector<std::string>& paths);

// The King James Bible from bible-kjv-text's data file: 1,189 documents, one per chapter, each
// "Book N\n" followed by one verse per line without its reference ("In the beginning God created the
// heaven and the earth.\n"). The file is the `bible` program's format (as bible-kjv-text 4.38 ships
// it): a header, a table of big-endian block offsets and blocks of 64 KiB of text, each compressed
// as a Unix `compress` (LZW) code stream. Throws UserError naming `path` if it cannot be read, is not
// in that format, or is damaged (the message says where).
std::vector<Document> read_kjv(const std::string& path);

// The default training corpus: `source_dir`/docs (the project's documentation), `source_dir`/README.md
// and the King James Bible (kKjvDataPath), in that order. Paths only: nothing is checked until read.
std::vector<std::string> default_corpus(const std::string& source_dir);

// What load_token_shard did with the cache file.
enum class CacheState : uint8_t { kOff, kHit, kBuilt, kRebuiltStale, kRebuiltCorrupt, kCount };
inline constexpr std::array<std::string_view, 5> kCacheStateNames = {"off", "hit", "built", "rebuilt (stale)",
                                                                     "rebuilt (corrupt)"};
static_assert(kCacheStateNames.size() == static_cast<size_t>(CacheState::kCount), "one name per CacheState");

// A tokenised corpus: what the cache file holds.
struct TokenShard {
  std::vector<int32_t> tokens;         // [total]: each document's ids followed by endoftext_id
  std::vector<int64_t> doc_offsets;    // [documents + 1]: document d is tokens[doc_offsets[d], doc_offsets[d+1])
  std::vector<std::string> doc_names;  // [documents]
  int32_t endoftext_id = -1;           // the separator
  std::string corpus;                  // the corpus paths, for messages
  uint64_t corpus_fingerprint = 0;     // hash of every file's path, size and content (and the reader's version)
  uint64_t tokenizer_fingerprint = 0;  // hash of tokenizer.json; 0 for a tokenizer not loaded from a file
  CacheState cache = CacheState::kOff;
};

// Prints "warning: MESSAGE" on stderr: the default for DataOptions::on_warning.
void print_warning(const std::string& message);

// Reads and tokenises `corpus` (read_corpus) with `tok`, or loads the result from `cache_path` when the
// file there matches the corpus and the tokenizer (see the file comment). An empty cache_path uses no
// cache. A stale cache is rebuilt silently; a corrupt (truncated, checksum) one is rebuilt after
// calling on_warning (default print_warning) with the path and the reason. Throws UserError as
// read_corpus; naming cache_path when it cannot be written, or when a file exists there that is not a
// token cache (it is not overwritten). Needs `tok`'s special token <|endoftext|>.
TokenShard load_token_shard(const std::vector<std::string>& corpus, const models::Tokenizer& tok,
                            const std::string& cache_path,
                            const std::function<void(const std::string&)>& on_warning = {});

struct DataOptions {
  int64_t seq_len = 0;                // tokens per input; sequences hold seq_len + 1 (>= 1)
  double validation_fraction = 0.05;  // share of documents held out, in [0, 1)
  std::string cache_path;             // token cache file; empty: none
  std::function<void(const std::string&)> on_warning;  // null: print_warning
};

struct DataStats {
  int64_t documents = 0;
  int64_t train_documents = 0;
  int64_t validation_documents = 0;
  int64_t tokens = 0;             // whole stream, separators included
  int64_t train_tokens = 0;       // training stream
  int64_t validation_tokens = 0;  // validation stream
  int64_t train_sequences = 0;
  int64_t validation_sequences = 0;
  int64_t train_dropped_tokens = 0;       // tail of the training stream that no sequence predicts
  int64_t validation_dropped_tokens = 0;  // likewise for validation
  double train_unigram_entropy_nats = 0;  // unigram_entropy_nats(training stream)
  CacheState cache = CacheState::kOff;
};

// A packed, split, tokenised corpus. Immutable; sequences are views into it (valid while it lives).
class TokenDataset {
 public:
  // Packs `shard` (see the file comment). Throws UserError naming the value for seq_len < 1, a
  // validation_fraction outside [0, 1), a split that leaves no training document, and naming the
  // corpus and the token counts when the training or validation stream is too short for one sequence
  // of seq_len + 1 tokens.
  TokenDataset(TokenShard shard, const DataOptions& opt);

  // load_token_shard(corpus, tok, opt.cache_path, opt.on_warning), then the constructor.
  static TokenDataset load(const std::vector<std::string>& corpus, const models::Tokenizer& tok,
                           const DataOptions& opt);

  int64_t seq_len() const { return seq_len_; }
  int64_t train_sequences() const { return stats_.train_sequences; }
  int64_t validation_sequences() const { return stats_.validation_sequences; }
  // Sequence i: [seq_len + 1] token ids. Throws UserError for i outside [0, count).
  std::span<const int32_t> train_sequence(int64_t i) const;
  std::span<const int32_t> validation_sequence(int64_t i) const;
  // The whole streams, before packing.
  std::span<const int32_t> train_tokens() const;
  std::span<const int32_t> validation_tokens() const;
  // The corpus's identity: names, document offsets, fingerprints, cache state. Its `tokens` are
  // empty: they moved into the two streams (train_tokens(), validation_tokens()).
  const TokenShard& shard() const { return shard_; }
  const DataStats& stats() const { return stats_; }

 private:
  TokenShard shard_;
  int64_t seq_len_ = 0;
  std::vector<int32_t> train_, validation_;  // the two streams, documents in corpus order
  DataStats stats_;
};

// Where a batch iterator stands: the next sequence is the position-th of epoch `epoch`'s order.
// A checkpoint saves it (with the dataset's fingerprints and seq_len, to refuse resuming on other data).
struct BatchState {
  int64_t epoch = 0;
  int64_t position = 0;  // in [0, train_sequences)
};

// The order in which epoch `epoch` visits n sequences: a permutation of 0..n-1, a Fisher-Yates
// shuffle driven by splitmix64 seeded from (seed, epoch). Deterministic on every machine (the draw
// j = r mod (i + 1) has a bias below n / 2^64, negligible). Throws UserError for n < 1 or epoch < 0.
std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch);

// Training batches in shuffled order. Holds a reference to `data`, which must outlive it.
// Not thread-safe (one iterator per consumer).
class BatchIterator {
 public:
  // Starts at `start` (default: the first batch). Throws UserError for batch < 1, and naming the
  // values for a start state outside [0, ...) x [0, train_sequences).
  BatchIterator(const TokenDataset& data, int64_t batch, uint64_t seed, BatchState start = {});

  // The next batch: [batch, seq_len + 1] token ids, row-major. A batch that reaches the end of an epoch
  // continues with the next epoch's order (a batch larger than the epoch spans several).
  std::vector<int32_t> next();
  // The same into `out` ([batch * (seq_len + 1)]; PPU_CHECK on another size).
  void next(std::span<int32_t> out);

  // The state before the next batch: BatchIterator(data, batch, seed, state()) yields the same batches.
  BatchState state() const { return state_; }
  int64_t batch() const { return batch_; }
  uint64_t seed() const { return seed_; }

 private:
  const TokenDataset* data_;
  int64_t batch_;
  uint64_t seed_;
  BatchState state_;
  std::vector<int64_t> order_;  // state_.epoch's order
};

// Shannon entropy of the tokens' empirical unigram distribution, in nats per token:
// -sum over ids of p * ln p, p = count / tokens.size(). A model that ignores context at best reaches
// this loss on text drawn from the same distribution; a validation loss below it shows the model uses
// context. Summed in id order (deterministic). Throws UserError for an empty span.
double unigram_entropy_nats(std::span<const int32_t> tokens);

}  // namespace ppu::train
