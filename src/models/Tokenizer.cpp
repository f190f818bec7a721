#include "models/Tokenizer.hpp"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <fmt/format.h>
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <unordered_map>
#include <utility>

#include "arch/Error.hpp"
#include "arch/Presets.hpp"

namespace ppu::models {
namespace {

using json = nlohmann::json;

// Words longer than this are encoded without caching: they rarely repeat, and a cache of long keys
// would cost more memory than it saves time.
constexpr size_t kMaxCachedWordBytes = 256;
// The word cache is dropped when it reaches this many entries (~10 MB), bounding memory on endless
// streams of new words. A typical 1 MB text has a few tens of thousands of distinct words.
constexpr size_t kMaxCacheEntries = size_t{1} << 16;
// Words with fewer symbols than this merge by rescanning an array of pair ranks (fast for the short
// words that dominate text); longer words use a heap so that a very long word stays O(n log n).
constexpr size_t kHeapMergeMinSymbols = 64;
// Ids above this are refused: a tokenizer with more ids than this is surely a corrupt file, and the
// id table is sized by the largest id.
constexpr int64_t kMaxTokenId = 16 * 1024 * 1024;
// PCRE2's JIT stack: starts small, may grow to this (the Qwen3 pattern needs little; this is headroom
// for a user's pattern with deep backtracking on long inputs).
constexpr size_t kJitStackMaxBytes = 8u << 20;
// PCRE2's work limits for one match (its defaults are 10,000,000 steps and a depth as large): the
// Qwen3 pattern needs a few dozen steps per word; a pattern that backtracks catastrophically hits
// these within milliseconds, and the loading probe (check_regex_terminates) refuses it.
constexpr uint32_t kRegexMatchLimit = 1'000'000;
constexpr uint32_t kRegexDepthLimit = 100'000;

// ---- the GPT-2 byte-level alphabet

// GPT-2's bytes_to_unicode(): bytes that are printable Latin-1 characters ('!'..'~', U+00A1..U+00AC,
// U+00AE..U+00FF) stand for themselves; the other 68 bytes (controls, space, DEL, NBSP, soft hyphen),
// in increasing order, become U+0100, U+0101, ... so that every byte is one visible character.
// Space (0x20) becomes U+0120 'Ġ', newline (0x0A) U+010A 'Ċ'.
constexpr size_t kByteAlphabetCodepoints = 256 + 68;

struct ByteAlphabet {
  std::array<char32_t, 256> byte_to_cp{};
  std::array<int16_t, kByteAlphabetCodepoints> cp_to_byte{};  // -1: not in the alphabet
};

const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet table = [] {
    ByteAlphabet t;
    t.cp_to_byte.fill(-1);
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool self = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const char32_t cp = self ? static_cast<char32_t>(b) : next++;
      t.byte_to_cp[b] = cp;
      t.cp_to_byte[cp] = static_cast<int16_t>(b);
    }
    PPU_CHECK(next == kByteAlphabetCodepoints, "GPT-2 byte alphabet must remap exactly 68 bytes");
    return t;
  }();
  return table;
}

// ---- UTF-8

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Length of the well-formed UTF-8 sequence starting at s[i] (RFC 3629: no overlong forms, no
// surrogates, nothing above U+10FFFF), or 0 if there is none.
size_t utf8_sequence_length(std::string_view s, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = byte(i);
  const size_t left = s.size() - i;
  const auto cont = [&](size_t k) { return (byte(k) & 0xC0) == 0x80; };
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return left >= 2 && cont(i + 1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (left < 3 || !cont(i + 1) || !cont(i + 2)) return 0;
    const unsigned char c1 = byte(i + 1);
    if (c == 0xE0 && c1 < 0xA0) return 0;   // overlong
    if (c == 0xED && c1 >= 0xA0) return 0;  // surrogate
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (left < 4 || !cont(i + 1) || !cont(i + 2) || !cont(i + 3)) return 0;
    const unsigned char c1 = byte(i + 1);
    if (c == 0xF0 && c1 < 0x90) return 0;  // overlong
    if (c == 0xF4 && c1 >= 0x90) return 0;  // above U+10FFFF
    return 4;
  }
  return 0;
}

// Throws UserError if `s` is not well-formed UTF-8, naming the first bad byte's offset; `what()`
// describes the text (called only then).
template <class What>
void check_utf8(std::string_view s, const What& what) {
  size_t i = 0;
  while (i < s.size()) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const size_t len = utf8_sequence_length(s, i);
    if (len == 0)
      throw UserError(fmt::format("{} is not valid UTF-8: byte 0x{:02X} at offset {} does not start a well-formed "
                                  "character",
                                  what(), static_cast<unsigned char>(s[i]), i));
    i += len;
  }
}

// Decodes the code points of `s`, which is known to be valid UTF-8 (nlohmann::json checks strings).
std::vector<char32_t> code_points(std::string_view s) {
  std::vector<char32_t> out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    const size_t len = utf8_sequence_length(s, i);
    PPU_CHECK(len > 0, "JSON strings are valid UTF-8");
    char32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
    for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    out.push_back(cp);
    i += len;
  }
  return out;
}

bool is_ascii(std::string_view s) {
  for (char c : s)
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  return true;
}

// NFC via utf8proc (decompose canonically, then compose). `s` must be valid UTF-8.
std::string nfc(std::string_view s) {
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                          static_cast<utf8proc_ssize_t>(s.size()), &out,
                                          static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0) {
    std::free(out);
    throw UserError(fmt::format("cannot NFC-normalise the text: {}", utf8proc_errmsg(n)));
  }
  std::string result(reinterpret_cast<const char*>(out), static_cast<size_t>(n));
  std::free(out);
  return result;
}

// ---- hashing helpers

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <class V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

struct Merge {
  int32_t rank = 0;    // position in model.merges: lower merges first
  int32_t merged = 0;  // id of the concatenation
};

// Merges keyed by pair_key(left, right): open addressing with linear probing, at most half full, so
// that a lookup (the inner loop of BPE, most of them misses) usually costs one cache line rather
// than the bucket-and-node walk of std::unordered_map.
class MergeTable {
 public:
  void reserve(size_t count) {
    size_t cap = 16;
    int bits = 4;
    while (cap < 2 * count) {
      cap *= 2;
      ++bits;
    }
    slots_.assign(cap, Slot{});
    mask_ = cap - 1;
    shift_ = 64 - bits;
    size_ = 0;
  }
  // Inserts or overwrites.
  void put(uint64_t key, Merge m) {
    if (2 * (size_ + 1) > slots_.size()) grow();
    Slot& s = find_slot(key);
    if (!s.used) ++size_;
    s = Slot{key, m, true};
  }
  const Merge* find(uint64_t key) const {
    if (slots_.empty()) return nullptr;
    for (size_t i = home(key);; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (!s.used) return nullptr;
      if (s.key == key) return &s.merge;
    }
  }

 private:
  struct Slot {
    uint64_t key = 0;
    Merge merge;
    bool used = false;
  };
  // Fibonacci hashing: the top bits of key * 2^64/phi spread the (left, right) id pairs evenly.
  size_t home(uint64_t key) const { return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> shift_); }
  Slot& find_slot(uint64_t key) {
    for (size_t i = home(key);; i = (i + 1) & mask_)
      if (!slots_[i].used || slots_[i].key == key) return slots_[i];
  }
  void grow() {
    std::vector<Slot> old = std::move(slots_);
    reserve(std::max<size_t>(16, old.size()));
    for (const Slot& s : old)
      if (s.used) put(s.key, s.merge);
  }
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  int shift_ = 63;
  size_t size_ = 0;
};

struct TokenInfo {
  std::string text;   // as written in tokenizer.json
  std::string bytes;  // what decode() emits for it
  bool present = false;
  bool added = false;
  bool special = false;
};

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false;
};

std::string pcre2_message(int code) {
  std::array<PCRE2_UCHAR, 256> buf{};
  pcre2_get_error_message(code, buf.data(), buf.size());
  return std::string(reinterpret_cast<const char*>(buf.data()));
}

std::string json_quoted(std::string_view s) {
  return json(std::string(s)).dump();  // JSON-escaped, so control characters stay readable
}

}  // namespace

struct Tokenizer::Impl {
  std::string origin;
  std::vector<TokenInfo> tokens;             // indexed by id
  StringMap<int32_t> ids;                    // token text (as in the file) -> id
  std::array<int32_t, 256> byte_ids{};       // id of each one-byte token; -1 if the vocabulary lacks it
  MergeTable merges;                         // pair_key(left, right) -> merge
  std::vector<AddedToken> added;             // longest content first
  std::array<bool, 256> added_first_byte{};  // whether some added token starts with this byte
  bool normalize_nfc = false;
  bool ignore_merges = false;
  std::vector<std::string> warnings;  // Tokenizer::warnings()
  pcre2_code* regex = nullptr;
  bool regex_jit = false;
  std::optional<SpecialTokenIds> special;

  mutable std::mutex cache_mutex;
  mutable StringMap<std::vector<int32_t>> cache;  // word bytes -> ids

  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl() {
    if (regex) pcre2_code_free(regex);
  }

  // ---- loading

  [[noreturn]] void fail(const std::string& field, const std::string& what) const {
    throw UserError(fmt::format("{}: field '{}': {}", origin, field, what));
  }

  void load(const json& root);
  void load_model(const json& model);
  void load_added_tokens(const json& list);
  void load_normalizer(const json& node);
  void load_pre_tokenizer(const json& node);
  void load_decoder(const json& node, const char* field);
  // Records token `text` under `id`; `field` names the entry for an error (called only on failure,
  // so that loading 150k entries formats no strings).
  template <class FieldName>
  void set_token(int32_t id, const std::string& text, const FieldName& field);

  // ---- encoding

  struct Scratch {
    pcre2_match_data* match = nullptr;
    pcre2_match_context* context = nullptr;
    pcre2_jit_stack* jit_stack = nullptr;
    std::vector<int32_t> symbols;
    Scratch(const pcre2_code* re, bool jit) {
      match = pcre2_match_data_create_from_pattern(re, nullptr);
      context = pcre2_match_context_create(nullptr);
      PPU_CHECK(match != nullptr && context != nullptr, "out of memory creating PCRE2 match data");
      pcre2_set_match_limit(context, kRegexMatchLimit);
      pcre2_set_depth_limit(context, kRegexDepthLimit);
      if (jit) {
        jit_stack = pcre2_jit_stack_create(32 * 1024, kJitStackMaxBytes, nullptr);
        PPU_CHECK(jit_stack != nullptr, "out of memory creating the PCRE2 JIT stack");
        pcre2_jit_stack_assign(context, nullptr, jit_stack);
      }
    }
    Scratch(const Scratch&) = delete;
    Scratch& operator=(const Scratch&) = delete;
    ~Scratch() {
      if (jit_stack) pcre2_jit_stack_free(jit_stack);
      if (context) pcre2_match_context_free(context);
      pcre2_match_data_free(match);
    }
  };

  void encode_section(std::string_view text, Scratch& scratch, std::vector<int32_t>& out) const;
  // The words of `text` as the pre-tokenizer regex splits it (matches and the gaps between them),
  // each passed to on_word in order. Returns 0, or PCRE2's error code when a match failed (its
  // work limits) at byte *at.
  template <class OnWord>
  int for_each_word(std::string_view text, Scratch& scratch, size_t* at, const OnWord& on_word) const;
  // Refuses a regex that backtracks catastrophically: it must split probe texts (long runs of one
  // letter, digit or space, then a different character) within PCRE2's work limits.
  void check_regex_terminates() const;
  void encode_word(std::string_view word, Scratch& scratch, std::vector<int32_t>& out) const;
  void merge_short(std::vector<int32_t>& sym) const;
  void merge_long(std::vector<int32_t>& sym) const;

  const Merge* find_merge(int32_t left, int32_t right) const { return merges.find(pair_key(left, right)); }
};

// ---------------------------------------------------------------------------------------------------
// Loading

template <class FieldName>
void Tokenizer::Impl::set_token(int32_t id, const std::string& text, const FieldName& field) {
  if (id < 0 || id > kMaxTokenId) fail(field(), fmt::format("id {} is outside 0..{}", id, kMaxTokenId));
  if (tokens.size() <= static_cast<size_t>(id)) tokens.resize(static_cast<size_t>(id) + 1);
  TokenInfo& t = tokens[static_cast<size_t>(id)];
  if (t.present && t.text != text)
    fail(field(), fmt::format("id {} is given to both {} and {}", id, json_quoted(t.text), json_quoted(text)));
  t.present = true;
  t.text = text;
}

void Tokenizer::Impl::load(const json& root) {
  if (!root.is_object()) throw UserError(fmt::format("{}: a tokenizer.json must be a JSON object", origin));
  const auto need = [&](const char* key) -> const json& {
    const auto it = root.find(key);
    if (it == root.end()) throw UserError(fmt::format("{}: missing field '{}'", origin, key));
    return *it;
  };
  load_model(need("model"));
  const auto added_it = root.find("added_tokens");
  if (added_it != root.end() && !added_it->is_null()) load_added_tokens(*added_it);
  const auto opt = [&](const char* key) -> const json& {
    static const json null_json;
    const auto it = root.find(key);
    return it == root.end() ? null_json : *it;
  };
  load_normalizer(opt("normalizer"));
  load_pre_tokenizer(need("pre_tokenizer"));
  load_decoder(opt("decoder"), "decoder");
  load_decoder(opt("post_processor"), "post_processor");

  const auto lookup = [&](const char* text) -> int32_t {
    const auto it = ids.find(std::string_view(text));
    return it == ids.end() ? -1 : it->second;
  };
  SpecialTokenIds s;
  s.endoftext = lookup("<|endoftext|>");
  s.im_start = lookup("<|im_start|>");
  s.im_end = lookup("<|im_end|>");
  s.think = lookup("<think>");
  s.think_end = lookup("</think>");
  if (s.endoftext >= 0 && s.im_start >= 0 && s.im_end >= 0 && s.think >= 0 && s.think_end >= 0) special = s;
}

void Tokenizer::Impl::load_model(const json& model) {
  if (!model.is_object()) fail("model", "must be an object");
  const auto type_it = model.find("type");
  if (type_it != model.end() && !(type_it->is_string() && type_it->get<std::string>() == "BPE"))
    fail("model.type", fmt::format("is {}; only \"BPE\" (byte-level, as Qwen3 ships) is supported", type_it->dump()));
  const auto must_be_null = [&](const char* key, const char* why) {
    const auto it = model.find(key);
    if (it != model.end() && !it->is_null())
      fail(fmt::format("model.{}", key), fmt::format("is {}; {}", it->dump(), why));
  };
  must_be_null("dropout", "BPE dropout is not supported (only null)");
  must_be_null("unk_token", "a byte-level vocabulary needs no unknown token; only null is supported");
  const auto empty_or_null = [&](const char* key) {
    const auto it = model.find(key);
    if (it != model.end() && !it->is_null() && !(it->is_string() && it->get<std::string>().empty()))
      fail(fmt::format("model.{}", key), fmt::format("is {}; only \"\" or null is supported", it->dump()));
  };
  empty_or_null("continuing_subword_prefix");
  empty_or_null("end_of_word_suffix");
  const auto flag = [&](const char* key) {
    const auto it = model.find(key);
    if (it == model.end() || it->is_null()) return false;
    if (!it->is_boolean()) fail(fmt::format("model.{}", key), fmt::format("is {}; must be true or false", it->dump()));
    return it->get<bool>();
  };
  if (flag("byte_fallback")) fail("model.byte_fallback", "is true; byte-fallback tokenizers are not supported");
  ignore_merges = flag("ignore_merges");

  // Vocabulary.
  const auto vocab_it = model.find("vocab");
  if (vocab_it == model.end() || !vocab_it->is_object())
    fail("model.vocab", "missing or not an object of token -> id");
  ids.reserve(vocab_it->size() + 64);
  for (const auto& item : vocab_it->items()) {
    // Named references rather than a structured binding, which clang before 16 cannot capture in a
    // lambda (the fuzz build, scripts/fuzz.sh, uses Debian's clang 14).
    const std::string& text = item.key();
    const json& id_json = item.value();
    const auto field = [&] { return fmt::format("model.vocab[{}]", json_quoted(text)); };
    if (!id_json.is_number_integer()) fail(field(), fmt::format("id is {}; must be an integer", id_json.dump()));
    const int64_t id = id_json.get<int64_t>();
    if (id < 0 || id > kMaxTokenId) fail(field(), fmt::format("id {} is outside 0..{}", id, kMaxTokenId));
    set_token(static_cast<int32_t>(id), text, field);
    ids[text] = static_cast<int32_t>(id);
  }
  // Every vocabulary token is a string over the byte alphabet; its bytes are what decode() emits.
  const ByteAlphabet& alpha = byte_alphabet();
  for (size_t id = 0; id < tokens.size(); ++id) {
    TokenInfo& t = tokens[id];
    if (!t.present) continue;
    t.bytes.reserve(t.text.size());
    for (char32_t cp : code_points(t.text)) {
      const int b = cp < kByteAlphabetCodepoints ? alpha.cp_to_byte[cp] : -1;
      if (b < 0)
        fail(fmt::format("model.vocab[{}]", json_quoted(t.text)),
             fmt::format("character U+{:04X} is not in the byte-level alphabet (GPT-2 bytes_to_unicode); only "
                         "byte-level BPE vocabularies are supported",
                         static_cast<uint32_t>(cp)));
      t.bytes += static_cast<char>(b);
    }
  }
  for (int b = 0; b < 256; ++b) {
    std::string one;
    append_utf8(one, alpha.byte_to_cp[b]);
    const auto it = ids.find(one);
    byte_ids[b] = it == ids.end() ? -1 : it->second;
  }

  // Merges, in rank order. A pair listed twice keeps its last rank, as `tokenizers` does.
  const auto merges_it = model.find("merges");
  if (merges_it == model.end() || !merges_it->is_array())
    fail("model.merges", "missing or not an array of \"a b\" strings or [\"a\", \"b\"] pairs");
  if (merges_it->empty())
    warnings.push_back(fmt::format("{}: model.merges is empty: every word is encoded byte by byte, with no BPE merge "
                                   "(a tokenizer without merges is rarely what was meant)",
                                   origin));
  merges.reserve(merges_it->size());
  std::string left;
  std::string right;
  std::string joined;
  for (size_t rank = 0; rank < merges_it->size(); ++rank) {
    const json& m = (*merges_it)[rank];
    const auto field = [&] { return fmt::format("model.merges[{}]", rank); };
    if (m.is_string()) {
      const std::string& s = m.get_ref<const std::string&>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || space == 0 || space + 1 == s.size() ||
          s.find(' ', space + 1) != std::string::npos)
        fail(field(), fmt::format("is {}; a merge string is two tokens separated by one space", json_quoted(s)));
      left.assign(s, 0, space);
      right.assign(s, space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      fail(field(), fmt::format("is {}; must be an \"a b\" string or an [\"a\", \"b\"] pair", m.dump()));
    }
    const auto id_of = [&](const std::string& tok) {
      const auto it = ids.find(tok);
      if (it == ids.end()) fail(field(), fmt::format("token {} is not in model.vocab", json_quoted(tok)));
      return it->second;
    };
    const int32_t a = id_of(left);
    const int32_t b = id_of(right);
    joined.assign(left).append(right);
    const int32_t merged = id_of(joined);
    merges.put(pair_key(a, b), Merge{static_cast<int32_t>(rank), merged});
  }
}

void Tokenizer::Impl::load_added_tokens(const json& list) {
  if (!list.is_array()) fail("added_tokens", "must be an array of token objects");
  for (size_t i = 0; i < list.size(); ++i) {
    const json& a = list[i];
    const std::string field = fmt::format("added_tokens[{}]", i);  // few entries: formatting is cheap
    if (!a.is_object()) fail(field, "must be an object with id and content");
    const auto id_it = a.find("id");
    const auto content_it = a.find("content");
    if (id_it == a.end() || !id_it->is_number_integer()) fail(field + ".id", "missing or not an integer");
    if (content_it == a.end() || !content_it->is_string() || content_it->get_ref<const std::string&>().empty())
      fail(field + ".content", "missing or not a non-empty string");
    for (const char* unsupported : {"lstrip", "rstrip", "single_word"}) {
      const auto it = a.find(unsupported);
      if (it != a.end() && it->is_boolean() && it->get<bool>())
        fail(fmt::format("{}.{}", field, unsupported), "is true; only false is supported");
    }
    const int64_t id = id_it->get<int64_t>();
    if (id < 0 || id > kMaxTokenId) fail(field + ".id", fmt::format("{} is outside 0..{}", id, kMaxTokenId));
    const std::string& content = content_it->get_ref<const std::string&>();
    const auto special_it = a.find("special");
    const bool special = special_it != a.end() && special_it->is_boolean() && special_it->get<bool>();
    set_token(static_cast<int32_t>(id), content, [&] { return field + ".id"; });
    TokenInfo& t = tokens[static_cast<size_t>(id)];
    t.bytes = content;  // added tokens decode to their text as written
    t.added = true;
    t.special = special;
    ids[content] = static_cast<int32_t>(id);
    added.push_back({content, static_cast<int32_t>(id), special});
  }
  // Longest first, so that the first candidate that matches at a position is the longest match.
  std::stable_sort(added.begin(), added.end(),
                   [](const AddedToken& x, const AddedToken& y) { return x.content.size() > y.content.size(); });
  for (const auto& a : added) added_first_byte[static_cast<unsigned char>(a.content[0])] = true;
}

void Tokenizer::Impl::load_normalizer(const json& node) {
  if (node.is_null()) return;
  const auto type_it = node.is_object() ? node.find("type") : node.end();
  if (type_it == node.end() || !(type_it->is_string() && type_it->get<std::string>() == "NFC"))
    fail("normalizer", fmt::format("is {}; only null or {{\"type\": \"NFC\"}} is supported", node.dump()));
  normalize_nfc = true;
}

void Tokenizer::Impl::load_pre_tokenizer(const json& node) {
  static const char* kSupported =
      "supported: {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": {\"Regex\": ...}, "
      "\"behavior\": \"Isolated\", \"invert\": false}, {\"type\": \"ByteLevel\", \"add_prefix_space\": false, "
      "\"use_regex\": false}]} as Qwen2/Qwen3 ship";
  const auto type_of = [](const json& n) -> std::string {
    if (!n.is_object()) return n.dump();
    const auto it = n.find("type");
    return it != n.end() && it->is_string() ? it->get<std::string>() : std::string("(no type)");
  };
  if (type_of(node) != "Sequence")
    fail("pre_tokenizer.type", fmt::format("is {}; {}", json_quoted(type_of(node)), kSupported));
  const auto list_it = node.find("pretokenizers");
  if (list_it == node.end() || !list_it->is_array() || list_it->size() != 2)
    fail("pre_tokenizer.pretokenizers", fmt::format("must hold exactly two entries; {}", kSupported));
  const json& split = (*list_it)[0];
  const json& byte_level = (*list_it)[1];
  if (type_of(split) != "Split")
    fail("pre_tokenizer.pretokenizers[0].type", fmt::format("is {}; {}", json_quoted(type_of(split)), kSupported));
  const auto behavior_it = split.find("behavior");
  if (behavior_it == split.end() || !behavior_it->is_string() || behavior_it->get<std::string>() != "Isolated")
    fail("pre_tokenizer.pretokenizers[0].behavior",
         fmt::format("is {}; {}", behavior_it == split.end() ? "missing" : behavior_it->dump(), kSupported));
  const auto invert_it = split.find("invert");
  if (invert_it != split.end() && !(invert_it->is_boolean() && !invert_it->get<bool>()))
    fail("pre_tokenizer.pretokenizers[0].invert", fmt::format("is {}; {}", invert_it->dump(), kSupported));
  const auto pattern_it = split.find("pattern");
  const json* regex_json = nullptr;
  if (pattern_it != split.end() && pattern_it->is_object()) {
    const auto r = pattern_it->find("Regex");
    if (r != pattern_it->end() && r->is_string()) regex_json = &*r;
  }
  if (!regex_json)
    fail("pre_tokenizer.pretokenizers[0].pattern",
         fmt::format("is {}; only a {{\"Regex\": \"...\"}} pattern is supported",
                     pattern_it == split.end() ? "missing" : pattern_it->dump()));
  if (type_of(byte_level) != "ByteLevel")
    fail("pre_tokenizer.pretokenizers[1].type", fmt::format("is {}; {}", json_quoted(type_of(byte_level)), kSupported));
  for (const char* key : {"add_prefix_space", "use_regex"}) {
    const auto it = byte_level.find(key);
    if (it != byte_level.end() && !(it->is_boolean() && !it->get<bool>()))
      fail(fmt::format("pre_tokenizer.pretokenizers[1].{}", key), fmt::format("is {}; {}", it->dump(), kSupported));
  }

  const std::string& pattern = regex_json->get_ref<const std::string&>();
  if (pattern.empty())
    fail("pre_tokenizer.pretokenizers[0].pattern.Regex",
         "is empty; an empty pattern matches only empty strings, so every text would be one word (give the "
         "model's pre-tokenizer pattern, e.g. Qwen3's)");
  int error = 0;
  PCRE2_SIZE error_offset = 0;
  regex = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP, &error,
                        &error_offset, nullptr);
  if (!regex)
    fail("pre_tokenizer.pretokenizers[0].pattern.Regex",
         fmt::format("PCRE2 cannot compile it: {} at offset {}", pcre2_message(error), error_offset));
  uint32_t has_jit = 0;
  pcre2_config(PCRE2_CONFIG_JIT, &has_jit);
  regex_jit = has_jit != 0 && pcre2_jit_compile(regex, PCRE2_JIT_COMPLETE) == 0;
  check_regex_terminates();
}

void Tokenizer::Impl::check_regex_terminates() const {
  // 1 KiB probes with a tenth of the encode limit per match: a catastrophic pattern exceeds it at
  // once, and a pattern that stays under it costs at most ~1,000 matches x 100k steps to check.
  constexpr size_t kProbeBytes = 1024;
  constexpr uint32_t kProbeMatchLimit = kRegexMatchLimit / 10;
  std::string words;
  while (words.size() < kProbeBytes) words += "ab c1 ";
  const std::pair<const char*, std::string> probes[] = {
      {"1,024 'a' then '!'", std::string(kProbeBytes, 'a') + "!"},
      {"1,024 spaces then 'x'", std::string(kProbeBytes, ' ') + "x"},
      {"1,024 '7' then 'a'", std::string(kProbeBytes, '7') + "a"},
      {"'ab c1 ' repeated to 1 KiB then a newline and '!'", words + "\n!"}};
  Scratch scratch(regex, regex_jit);
  pcre2_set_match_limit(scratch.context, kProbeMatchLimit);
  for (const auto& [what, probe] : probes) {
    size_t at = 0;
    if (const int rc = for_each_word(probe, scratch, &at, [](std::string_view) {}))
      fail("pre_tokenizer.pretokenizers[0].pattern.Regex",
           fmt::format("backtracks catastrophically: splitting a probe text ({}) it fails at byte {} with PCRE2's "
                       "'{}'; simplify it (nested quantifiers such as (a+)+ are the usual cause)",
                       what, at, pcre2_message(rc)));
  }
}

void Tokenizer::Impl::load_decoder(const json& node, const char* field) {
  if (node.is_null()) return;
  const auto it = node.is_object() ? node.find("type") : node.end();
  if (it == node.end() || !(it->is_string() && it->get<std::string>() == "ByteLevel"))
    fail(field, fmt::format("is {}; only null or {{\"type\": \"ByteLevel\"}} is supported",
                            it == node.end() ? node.dump() : it->dump()));
}

// ---------------------------------------------------------------------------------------------------
// Encoding

// Lowest-rank merge first, leftmost among equal ranks, until no adjacent pair has a merge. `rank[i]`
// holds the rank of the pair (sym[i], sym[i+1]); a merge at i changes only the ranks at i-1 and i.
void Tokenizer::Impl::merge_short(std::vector<int32_t>& sym) const {
  constexpr int32_t kNone = INT32_MAX;
  std::array<int32_t, kHeapMergeMinSymbols> rank{};
  std::array<int32_t, kHeapMergeMinSymbols> merged{};
  size_t n = sym.size();
  const auto update = [&](size_t i) {
    const Merge* m = find_merge(sym[i], sym[i + 1]);
    rank[i] = m ? m->rank : kNone;
    merged[i] = m ? m->merged : -1;
  };
  for (size_t i = 0; i + 1 < n; ++i) update(i);
  while (n > 1) {
    size_t best = 0;
    for (size_t i = 1; i + 1 < n; ++i)
      if (rank[i] < rank[best]) best = i;
    if (rank[best] == kNone) break;
    sym[best] = merged[best];
    for (size_t i = best + 1; i + 1 < n; ++i) {
      sym[i] = sym[i + 1];
      rank[i] = rank[i + 1];
      merged[i] = merged[i + 1];
    }
    --n;
    if (best > 0) update(best - 1);
    if (best + 1 < n) update(best);
  }
  sym.resize(n);
}

// The same rule for long words: a doubly linked list of symbols and a min-heap of (rank, position)
// candidates. Entries go stale when a neighbour merges; a popped entry is applied only if its pair
// still exists and still has that rank. Positions are the left symbol's original index, so equal
// ranks pop leftmost first, as in merge_short.
void Tokenizer::Impl::merge_long(std::vector<int32_t>& sym) const {
  const auto n = static_cast<int32_t>(sym.size());
  std::vector<int32_t> prev(static_cast<size_t>(n));
  std::vector<int32_t> next(static_cast<size_t>(n));
  for (int32_t i = 0; i < n; ++i) {
    prev[static_cast<size_t>(i)] = i - 1;
    next[static_cast<size_t>(i)] = i + 1 < n ? i + 1 : -1;
  }
  using Candidate = std::pair<int32_t, int32_t>;  // (rank, left position)
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  const auto push = [&](int32_t left) {
    const int32_t right = next[static_cast<size_t>(left)];
    if (right < 0) return;
    if (const Merge* m = find_merge(sym[static_cast<size_t>(left)], sym[static_cast<size_t>(right)]))
      heap.emplace(m->rank, left);
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i);
  constexpr int32_t kDead = -1;
  while (!heap.empty()) {
    const auto [rank, left] = heap.top();
    heap.pop();
    const auto l = static_cast<size_t>(left);
    if (sym[l] == kDead || next[l] < 0) continue;
    const auto r = static_cast<size_t>(next[l]);
    const Merge* m = find_merge(sym[l], sym[r]);
    if (!m || m->rank != rank) continue;  // stale
    sym[l] = m->merged;
    sym[r] = kDead;
    next[l] = next[r];
    if (next[l] >= 0) prev[static_cast<size_t>(next[l])] = left;
    if (prev[l] >= 0) push(prev[l]);
    push(left);
  }
  size_t out = 0;
  for (int32_t i = 0; i >= 0; i = next[static_cast<size_t>(i)]) sym[out++] = sym[static_cast<size_t>(i)];
  sym.resize(out);
}

void Tokenizer::Impl::encode_word(std::string_view word, Scratch& scratch, std::vector<int32_t>& out) const {
  if (word.size() == 1 && byte_ids[static_cast<unsigned char>(word[0])] >= 0) {
    out.push_back(byte_ids[static_cast<unsigned char>(word[0])]);
    return;
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex);
    const auto it = cache.find(word);
    if (it != cache.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t>& sym = scratch.symbols;
  sym.clear();
  if (ignore_merges) {
    std::string text;
    for (char c : word) append_utf8(text, byte_alphabet().byte_to_cp[static_cast<unsigned char>(c)]);
    const auto it = ids.find(text);
    if (it != ids.end() && !tokens[static_cast<size_t>(it->second)].added) sym.push_back(it->second);
  }
  if (sym.empty()) {
    for (char c : word) {
      const int32_t id = byte_ids[static_cast<unsigned char>(c)];
      if (id < 0)
        throw UserError(fmt::format("{}: the text contains byte 0x{:02X}, which has no token in model.vocab "
                                    "(a byte-level vocabulary must hold all 256 byte characters)",
                                    origin, static_cast<unsigned char>(c)));
      sym.push_back(id);
    }
    if (sym.size() < kHeapMergeMinSymbols)
      merge_short(sym);
    else
      merge_long(sym);
  }
  out.insert(out.end(), sym.begin(), sym.end());
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex);
    if (cache.size() >= kMaxCacheEntries) cache.clear();
    cache.emplace(std::string(word), sym);
  }
}

template <class OnWord>
int Tokenizer::Impl::for_each_word(std::string_view text, Scratch& scratch, size_t* at, const OnWord& on_word) const {
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const size_t length = text.size();
  size_t emitted = 0;  // bytes of `text` already turned into words
  size_t search = 0;   // where the next match may start
  while (search < length) {
    const int rc = regex_jit ? pcre2_jit_match(regex, subject, length, search, PCRE2_NO_UTF_CHECK, scratch.match,
                                               scratch.context)
                             : pcre2_match(regex, subject, length, search, PCRE2_NO_UTF_CHECK, scratch.match,
                                           scratch.context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      *at = search;
      return rc;
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(scratch.match);
    const size_t begin = ov[0];
    const size_t end = ov[1];
    if (begin > emitted) on_word(text.substr(emitted, begin - emitted));
    if (end > begin) {
      on_word(text.substr(begin, end - begin));
      emitted = end;
      search = end;
    } else {
      // An empty match yields no word but still splits (the text before it was emitted above);
      // step over one character so that the search moves on.
      emitted = begin;
      if (begin >= length) break;
      search = begin + std::max<size_t>(1, utf8_sequence_length(text, begin));
    }
  }
  if (emitted < length) on_word(text.substr(emitted));
  return 0;
}

// One stretch of text between added tokens: normalise, split with the pre-tokenizer regex (matches
// and the gaps between them are words, as behavior Isolated keeps both), BPE each word.
void Tokenizer::Impl::encode_section(std::string_view text, Scratch& scratch, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  std::string normalized;
  if (normalize_nfc && !is_ascii(text)) {
    normalized = nfc(text);
    text = normalized;
  }
  size_t at = 0;
  if (const int rc = for_each_word(text, scratch, &at, [&](std::string_view w) { encode_word(w, scratch, out); }))
    throw UserError(fmt::format("{}: the pre-tokenizer regex failed on the text at byte {}: {}", origin, at,
                                pcre2_message(rc)));
}

}  // namespace ppu::models

// ---------------------------------------------------------------------------------------------------
// Public interface

namespace ppu::models {

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_file(const std::string& path) {
  const std::string text = read_input_file(path, "tokenizer.json", kTokenizerFileMaxBytes);
  return from_json(text, path);
}

Tokenizer Tokenizer::from_json(std::string_view json_text, const std::string& origin) {
  auto impl = std::make_unique<Impl>();
  impl->origin = origin;
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::exception& e) {  // syntax, or a number beyond a double (out_of_range.406)
    throw UserError(fmt::format("{}: not valid JSON: {}", origin, e.what()));
  }
  impl->load(root);
  return Tokenizer(std::move(impl));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool allow_special) const {
  const Impl& m = *impl_;
  check_utf8(text, [&] { return fmt::format("text to encode with {}", m.origin); });
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 8);
  Impl::Scratch scratch(m.regex, m.regex_jit);
  size_t start = 0;  // start of the text not yet encoded
  size_t i = 0;
  while (i < text.size()) {
    if (!m.added_first_byte[static_cast<unsigned char>(text[i])]) {
      ++i;
      continue;
    }
    const AddedToken* hit = nullptr;
    for (const AddedToken& a : m.added) {
      if (!allow_special && a.special) continue;
      if (text.compare(i, a.content.size(), a.content) == 0) {
        hit = &a;
        break;
      }
    }
    if (!hit) {
      ++i;
      continue;
    }
    m.encode_section(text.substr(start, i - start), scratch, out);
    out.push_back(hit->id);
    i += hit->content.size();
    start = i;
  }
  m.encode_section(text.substr(start), scratch, out);
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string out;
  out.reserve(ids.size() * 4);
  for (int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= impl_->tokens.size() || !impl_->tokens[static_cast<size_t>(id)].present)
      throw UserError(fmt::format("{}: token id {} is not in the vocabulary (ids 0..{})", impl_->origin, id,
                                  vocab_size() - 1));
    const TokenInfo& t = impl_->tokens[static_cast<size_t>(id)];
    if (skip_special && t.special) continue;
    out += t.bytes;
  }
  return out;
}

const std::string& Tokenizer::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= impl_->tokens.size() || !impl_->tokens[static_cast<size_t>(id)].present)
    throw UserError(fmt::format("{}: token id {} is not in the vocabulary (ids 0..{})", impl_->origin, id,
                                vocab_size() - 1));
  return impl_->tokens[static_cast<size_t>(id)].text;
}

std::optional<int32_t> Tokenizer::find_token(std::string_view token) const {
  const auto it = impl_->ids.find(token);
  if (it == impl_->ids.end()) return std::nullopt;
  return it->second;
}

int32_t Tokenizer::token_to_id(std::string_view token) const {
  const auto id = find_token(token);
  if (!id)
    throw UserError(fmt::format("{}: token {} is not in the vocabulary (model.vocab or added_tokens)", impl_->origin,
                                json_quoted(token)));
  return *id;
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->tokens.size()); }

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->tokens.size() && impl_->tokens[static_cast<size_t>(id)].special;
}

const SpecialTokenIds& Tokenizer::special_ids() const {
  if (!impl_->special)
    throw UserError(fmt::format("{}: not a Qwen3 tokenizer: it lacks one of <|endoftext|>, <|im_start|>, "
                                "<|im_end|>, <think>, </think>",
                                impl_->origin));
  return *impl_->special;
}

std::string Tokenizer::normalize(std::string_view text) const {
  check_utf8(text, [] { return std::string("text to normalise"); });
  if (!impl_->normalize_nfc || is_ascii(text)) return std::string(text);
  return nfc(text);
}

const std::string& Tokenizer::origin() const { return impl_->origin; }

const std::vector<std::string>& Tokenizer::warnings() const { return impl_->warnings; }

}  // namespace ppu::models
