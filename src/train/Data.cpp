// The training data pipeline (see Data.hpp).
#include "train/Data.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <unistd.h>

#include "arch/Error.hpp"
#include "arch/Presets.hpp"
#include "models/Tokenizer.hpp"

namespace ppu::train {

namespace fs = std::filesystem;

namespace {

static_assert(std::endian::native == std::endian::little, "the token cache is written in host (little-endian) order");

// Bumped whenever reading or tokenising a corpus changes its tokens (the KJV document layout, the
// folder rules, allow_special): part of the corpus fingerprint, so old caches are rebuilt.
constexpr uint64_t kReaderVersion = 1;

// ---------------------------------------------------------------------------------------------------
// Hashing and random numbers.

// FNV-1a, 64 bits (offset basis and prime from the published parameters).
constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ULL;
constexpr uint64_t kFnvPrime = 0x100000001b3ULL;

uint64_t fnv1a(std::string_view bytes, uint64_t h = kFnvOffset) {
  for (const char c : bytes) {
    h ^= static_cast<uint8_t>(c);
    h *= kFnvPrime;
  }
  return h;
}

uint64_t fnv1a_u64(uint64_t v, uint64_t h) {
  char b[8];
  std::memcpy(b, &v, 8);
  return fnv1a(std::string_view(b, 8), h);
}

// splitmix64 (Steele, Lea, Flood 2014): one step of the generator and its output mix.
uint64_t splitmix_next(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// ---------------------------------------------------------------------------------------------------
// Reading files.

// Offset of the first byte that is not part of well-formed UTF-8 (Unicode Table 3-7: no overlong forms,
// no surrogates, nothing above U+10FFFF), or npos.
size_t first_invalid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const uint8_t c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len = 0;
    uint8_t lo = 0x80, hi = 0xbf;  // range of the second byte
    if (c >= 0xc2 && c <= 0xdf) len = 2;
    else if (c == 0xe0) len = 3, lo = 0xa0;
    else if (c == 0xed) len = 3, hi = 0x9f;
    else if (c >= 0xe1 && c <= 0xef) len = 3;
    else if (c == 0xf0) len = 4, lo = 0x90;
    else if (c >= 0xf1 && c <= 0xf3) len = 4;
    else if (c == 0xf4) len = 4, hi = 0x8f;
    else return i;
    if (i + 1 >= n || p[i + 1] < lo || p[i + 1] > hi) return i;
    for (size_t k = 2; k < len; ++k)
      if (i + k >= n || p[i + k] < 0x80 || p[i + k] > 0xbf) return i;
    i += len;
  }
  return std::string_view::npos;
}

bool readable_extension(const fs::path& p) {
  const std::string ext = p.extension().string();
  return ext.empty() || ext == ".txt" || ext == ".md";
}

bool hidden(const fs::path& p) {
  const std::string name = p.filename().string();
  return !name.empty() && name[0] == '.';
}

// ---------------------------------------------------------------------------------------------------
// The bible-kjv data file. Layout, as bible-kjv-text 4.38 ships it (all integers big-endian):
//   0x00 "EC02Compressed Data File", zero-padded
//   0x54 u32 uncompressed bytes per block (65,536)
//   0x58 u32 blocks (68)
//   0x5c u32 offsets[blocks + 1]: block b's code stream is bytes [offsets[b], offsets[b+1]); the last
//        offset is the file size
// The three bytes before offsets[0] are the `compress` header (1f 9d, then flags: max code width in the
// low 5 bits, 0x80 block mode); each block is a separate code stream without a header of its own, and
// decodes to exactly the block size (the last block: the rest of the text).

constexpr std::string_view kKjvMagic = "EC02Compressed Data File";
constexpr size_t kKjvBlockSizeAt = 0x54, kKjvBlocksAt = 0x58, kKjvOffsetsAt = 0x5c;

bool is_kjv_file(std::string_view bytes) { return bytes.substr(0, kKjvMagic.size()) == kKjvMagic; }

uint32_t be32(std::string_view b, size_t at) {
  const auto* p = reinterpret_cast<const uint8_t*>(b.data()) + at;
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

// Decodes one Unix `compress` code stream (no header), as gzip's unlzw reads it: codes of n_bits
// (9 up to max_bits) packed least significant bit first; the code width grows when the table is full
// and, in block mode, code 256 clears the table; both then skip to the end of the current group of
// eight codes (n_bits bytes, counted from the stream start or the last skip), where the compressor
// flushed. Throws UserError naming `where` on a code the table does not hold yet.
std::string unlzw(std::string_view in, int max_bits, bool block_mode, const std::string& where) {
  constexpr int kInitBits = 9;
  constexpr int64_t kClear = 256;
  const int64_t max_max_code = int64_t{1} << max_bits;
  std::vector<uint16_t> prefix(static_cast<size_t>(max_max_code));
  std::vector<uint8_t> suffix(static_cast<size_t>(max_max_code));
  for (int c = 0; c < 256; ++c) suffix[static_cast<size_t>(c)] = static_cast<uint8_t>(c);
  const auto* p = reinterpret_cast<const uint8_t*>(in.data());
  const int64_t total_bits = static_cast<int64_t>(in.size()) * 8;
  int n_bits = kInitBits;
  int64_t max_code = (int64_t{1} << n_bits) - 1;
  int64_t free_ent = block_mode ? 257 : 256;
  int64_t pos = 0, origin = 0;  // bit positions
  int64_t old = -1;
  uint8_t fin = 0;
  std::string out, stack;
  auto skip_to_group_end = [&] {
    const int64_t group = int64_t{n_bits} * 8;
    pos = origin + (pos - origin + group - 1) / group * group;
    origin = pos;
  };
  for (;;) {
    if (free_ent > max_code) {
      skip_to_group_end();
      ++n_bits;
      max_code = n_bits == max_bits ? max_max_code : (int64_t{1} << n_bits) - 1;
      continue;
    }
    if (pos + n_bits > total_bits) break;
    uint32_t window = 0;
    const int64_t first = pos >> 3, last = (pos + n_bits - 1) >> 3;
    for (int64_t b = last; b >= first; --b) window = (window << 8) | p[b];
    int64_t code = (window >> (pos & 7)) & ((uint32_t{1} << n_bits) - 1);
    pos += n_bits;
    if (old == -1) {
      if (code >= 256) throw UserError(fmt::format("{}: first code {} is not a literal byte", where, code));
      old = code;
      fin = static_cast<uint8_t>(code);
      out.push_back(static_cast<char>(fin));
      continue;
    }
    if (code == kClear && block_mode) {
      free_ent = kClear;  // the next code defines the unused entry 256, as the compressor's table does
      skip_to_group_end();
      n_bits = kInitBits;
      max_code = (int64_t{1} << n_bits) - 1;
      continue;
    }
    const int64_t incode = code;
    stack.clear();
    if (code >= free_ent) {
      if (code > free_ent)
        throw UserError(fmt::format("{}: code {} at bit {} is beyond the table ({} entries)", where, code,
                                    pos - n_bits, free_ent));
      stack.push_back(static_cast<char>(fin));
      code = old;
    }
    while (code >= 256) {
      stack.push_back(static_cast<char>(suffix[static_cast<size_t>(code)]));
      code = prefix[static_cast<size_t>(code)];
    }
    fin = static_cast<uint8_t>(code);
    stack.push_back(static_cast<char>(fin));
    out.append(stack.rbegin(), stack.rend());
    if (free_ent < max_max_code) {
      prefix[static_cast<size_t>(free_ent)] = static_cast<uint16_t>(old);
      suffix[static_cast<size_t>(free_ent)] = fin;
      ++free_ent;
    }
    old = incode;
  }
  return out;
}

// The bible-kjv text: one verse per line ("Ge1:1 In the beginning ..."), after a title line.
std::string kjv_text(std::string_view bytes, const std::string& path) {
  auto bad = [&](const std::string& what) {
    return UserError(fmt::format("'{}' is not a readable bible-kjv data file: {} (reinstall bible-kjv-text)", path, what));
  };
  if (bytes.size() < kKjvOffsetsAt) throw bad(fmt::format("{} bytes, shorter than its header", bytes.size()));
  const uint32_t block_size = be32(bytes, kKjvBlockSizeAt), blocks = be32(bytes, kKjvBlocksAt);
  if (block_size == 0 || blocks == 0 || blocks > bytes.size() / 4)
    throw bad(fmt::format("header gives {} blocks of {} bytes", blocks, block_size));
  const size_t table_end = kKjvOffsetsAt + 4 * (size_t{blocks} + 1);
  if (table_end > bytes.size()) throw bad(fmt::format("the block table of {} blocks is cut off", blocks));
  std::vector<uint32_t> offsets(blocks + 1);
  for (size_t b = 0; b <= blocks; ++b) offsets[b] = be32(bytes, kKjvOffsetsAt + 4 * b);
  if (offsets[0] < table_end + 3 || offsets[blocks] != bytes.size())
    throw bad(fmt::format("blocks span bytes {}..{} of a {}-byte file", offsets[0], offsets[blocks], bytes.size()));
  const auto* hdr = reinterpret_cast<const uint8_t*>(bytes.data()) + offsets[0] - 3;
  const int max_bits = hdr[2] & 0x1f;
  if (hdr[0] != 0x1f || hdr[1] != 0x9d || max_bits < 9 || max_bits > 16)
    throw bad(fmt::format("no compress header (1f 9d, 9..16 bits) at byte {}", offsets[0] - 3));
  std::string text;
  for (size_t b = 0; b < blocks; ++b) {
    if (offsets[b + 1] <= offsets[b]) throw bad(fmt::format("block {} has offsets {}..{}", b, offsets[b], offsets[b + 1]));
    const std::string where = fmt::format("'{}' block {}", path, b);
    const std::string block =
        unlzw(bytes.substr(offsets[b], offsets[b + 1] - offsets[b]), max_bits, (hdr[2] & 0x80) != 0, where);
    if (block.size() != block_size && !(b + 1 == blocks && !block.empty() && block.size() < block_size))
      throw bad(fmt::format("block {} decodes to {} bytes, expected {}", b, block.size(), block_size));
    text += block;
  }
  if (const size_t at = first_invalid_utf8(text); at != std::string_view::npos)
    throw bad(fmt::format("its text is not UTF-8 at byte {}", at));
  return text;
}

struct KjvBook {
  std::string_view abbreviation;  // as the data file writes it
  std::string_view name;
};

// The 66 books in the data file's order, with the names the `bible` program prints.
constexpr std::array<KjvBook, 66> kKjvBooks = {{
    {"Ge", "Genesis"},       {"Exo", "Exodus"},          {"Lev", "Leviticus"},      {"Num", "Numbers"},
    {"Deu", "Deuteronomy"},  {"Josh", "Joshua"},         {"Jdgs", "Judges"},        {"Ruth", "Ruth"},
    {"1Sm", "1 Samuel"},     {"2Sm", "2 Samuel"},        {"1Ki", "1 Kings"},        {"2Ki", "2 Kings"},
    {"1Chr", "1 Chronicles"}, {"2Chr", "2 Chronicles"},  {"Ezra", "Ezra"},          {"Neh", "Nehemiah"},
    {"Est", "Esther"},       {"Job", "Job"},             {"Psa", "Psalms"},         {"Prv", "Proverbs"},
    {"Eccl", "Ecclesiastes"}, {"SSol", "Song of Solomon"}, {"Isa", "Isaiah"},       {"Jer", "Jeremiah"},
    {"Lam", "Lamentations"}, {"Eze", "Ezekiel"},         {"Dan", "Daniel"},         {"Hos", "Hosea"},
    {"Joel", "Joel"},        {"Amos", "Amos"},           {"Obad", "Obadiah"},       {"Jonah", "Jonah"},
    {"Mic", "Micah"},        {"Nahum", "Nahum"},         {"Hab", "Habakkuk"},       {"Zep", "Zephaniah"},
    {"Hag", "Haggai"},       {"Zec", "Zechariah"},       {"Mal", "Malachi"},        {"Mat", "Matthew"},
    {"Mark", "Mark"},        {"Luke", "Luke"},           {"John", "John"},          {"Acts", "Acts"},
    {"Rom", "Romans"},       {"1Cor", "1 Corinthians"},  {"2Cor", "2 Corinthians"}, {"Gal", "Galatians"},
    {"Eph", "Ephesians"},    {"Phi", "Philippians"},     {"Col", "Colossians"},     {"1Th", "1 Thessalonians"},
    {"2Th", "2 Thessalonians"}, {"1Tim", "1 Timothy"},   {"2Tim", "2 Timothy"},     {"Titus", "Titus"},
    {"Phmn", "Philemon"},    {"Heb", "Hebrews"},         {"Jas", "James"},          {"1Pet", "1 Peter"},
    {"2Pet", "2 Peter"},     {"1Jn", "1 John"},          {"2Jn", "2 John"},         {"3Jn", "3 John"},
    {"Jude", "Jude"},        {"Rev", "Revelation"},
}};

std::vector<Document> kjv_documents(std::string_view bytes, const std::string& path) {
  const std::string text = kjv_text(bytes, path);
  std::map<std::string_view, std::string_view> names;
  for (const auto& b : kKjvBooks) names.emplace(b.abbreviation, b.name);
  std::vector<Document> docs;
  std::string_view book;
  int64_t chapter = -1;
  size_t line_no = 0;
  for (size_t at = 0; at < text.size();) {
    const size_t eol = std::min(text.find('\n', at), text.size());
    const std::string_view line(text.data() + at, eol - at);
    at = eol + 1;
    if (++line_no == 1 || line.empty()) continue;  // line 1: the file's title
    // "<book><chapter>:<verse> <text>", the book possibly starting with a digit ("1Sm3:4 ...").
    const size_t space = line.find(' '), colon = line.find(':');
    bool shaped = space != std::string_view::npos && colon < space && colon + 1 < space;
    for (size_t k = colon + 1; shaped && k < space; ++k) shaped = std::isdigit(static_cast<unsigned char>(line[k]));
    size_t digits = shaped ? colon : 0;  // start of the chapter number
    while (digits > 0 && std::isdigit(static_cast<unsigned char>(line[digits - 1]))) --digits;
    if (!shaped || digits == 0 || digits == colon || colon - digits > 6)
      throw UserError(fmt::format("'{}' line {}: not a verse '<book><chapter>:<verse> <text>': '{}'", path, line_no,
                                  line.substr(0, 60)));
    const auto it = names.find(line.substr(0, digits));
    if (it == names.end())
      throw UserError(fmt::format("'{}' line {}: unknown book '{}'", path, line_no, line.substr(0, digits)));
    const int64_t ch = std::stoll(std::string(line.substr(digits, colon - digits)));
    if (it->second != book || ch != chapter) {
      book = it->second;
      chapter = ch;
      docs.push_back({fmt::format("{}:{} {}", path, book, chapter), fmt::format("{} {}\n", book, chapter)});
    }
    docs.back().text.append(line.substr(space + 1));
    docs.back().text.push_back('\n');
  }
  if (docs.empty()) throw UserError(fmt::format("'{}' holds no verses", path));
  return docs;
}

// The documents of one file whose bytes are `bytes`.
void append_documents(const std::string& path, const std::string& bytes, std::vector<Document>& docs) {
  if (bytes.empty()) return;
  if (is_kjv_file(bytes)) {
    auto kjv = kjv_documents(bytes, path);
    docs.insert(docs.end(), std::make_move_iterator(kjv.begin()), std::make_move_iterator(kjv.end()));
    return;
  }
  if (const size_t bad = first_invalid_utf8(bytes); bad != std::string_view::npos)
    throw UserError(fmt::format("corpus file '{}' is not valid UTF-8: byte offset {} (0x{:02x}); convert it to UTF-8 "
                                "or leave it out of the corpus",
                                path, bad, static_cast<uint8_t>(bytes[bad])));
  docs.push_back({path, bytes});
}

// Every file of the corpus with its bytes, and the documents they hold; checks each path yields text.
struct CorpusRead {
  std::vector<std::string> files;
  std::vector<std::string> bytes;  // [files]
};

CorpusRead read_files(const std::vector<std::string>& paths) {
  if (paths.empty()) throw UserError("the corpus is empty: give at least one file or folder");
  CorpusRead r;
  for (const auto& path : paths) {
    const auto files = corpus_files({path});
    uint64_t total = 0;
    for (const auto& f : files) {
      r.files.push_back(f);
      r.bytes.push_back(read_text_file(f));
      total += r.bytes.back().size();
    }
    if (total == 0)
      throw UserError(fmt::format("corpus path '{}' holds no text: {} file{}, 0 bytes", path, files.size(),
                                  files.size() == 1 ? "" : "s"));
  }
  return r;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

uint64_t corpus_fingerprint(const CorpusRead& r) {
  uint64_t h = fnv1a_u64(kReaderVersion, kFnvOffset);
  for (size_t i = 0; i < r.files.size(); ++i) {
    h = fnv1a(r.files[i], h);
    h = fnv1a_u64(r.bytes[i].size(), h);
    h = fnv1a_u64(fnv1a(r.bytes[i]), h);
  }
  return h;
}

// Hash of the tokenizer.json the tokenizer was loaded from; 0 if it was not loaded from a readable file.
uint64_t tokenizer_fingerprint(const models::Tokenizer& tok) {
  std::error_code ec;
  if (!fs::is_regular_file(tok.origin(), ec)) return 0;
  const uint64_t h = fnv1a_u64(static_cast<uint64_t>(tok.vocab_size()), fnv1a(read_text_file(tok.origin())));
  return h == 0 ? 1 : h;
}

// ---------------------------------------------------------------------------------------------------
// The cache file (little-endian):
//   header: char magic[8], u32 version, i32 endoftext id, u64 tokenizer fingerprint, i64 vocab size,
//           u64 corpus fingerprint, i64 documents, i64 tokens, i64 name bytes
//   payload: i64 doc_offsets[documents + 1], i32 tokens[tokens], per document (u32 length, bytes) of its name
//   trailer: u64 FNV-1a of every byte before it

constexpr std::string_view kCacheMagic("PPUTOKS\0", 8);
constexpr uint32_t kCacheVersion = 1;
constexpr size_t kCacheHeaderBytes = 8 + 4 + 4 + 8 + 8 + 8 + 8 + 8 + 8;

template <class T>
void put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof(T));
}

template <class T>
T get(std::string_view in, size_t& at) {
  T v;
  std::memcpy(&v, in.data() + at, sizeof(T));
  at += sizeof(T);
  return v;
}

std::string encode_cache(const TokenShard& s, int64_t vocab_size) {
  std::string names;
  for (const auto& n : s.doc_names) {
    put(names, static_cast<uint32_t>(n.size()));
    names += n;
  }
  std::string out;
  out.reserve(kCacheHeaderBytes + 8 * s.doc_offsets.size() + 4 * s.tokens.size() + names.size() + 8);
  out.append(kCacheMagic);
  put(out, kCacheVersion);
  put(out, s.endoftext_id);
  put(out, s.tokenizer_fingerprint);
  put(out, vocab_size);
  put(out, s.corpus_fingerprint);
  put(out, static_cast<int64_t>(s.doc_names.size()));
  put(out, static_cast<int64_t>(s.tokens.size()));
  put(out, static_cast<int64_t>(names.size()));
  out.append(reinterpret_cast<const char*>(s.doc_offsets.data()), 8 * s.doc_offsets.size());
  out.append(reinterpret_cast<const char*>(s.tokens.data()), 4 * s.tokens.size());
  out += names;
  put(out, fnv1a(out));
  return out;
}

enum class CacheCheck { kMissing, kHit, kStale, kCorrupt };

struct CacheRead {
  CacheCheck check = CacheCheck::kMissing;
  std::string reason;  // for kStale, kCorrupt
  TokenShard shard;
};

CacheRead read_cache(const std::string& path, uint64_t tokenizer_fp, int64_t vocab_size, uint64_t corpus_fp) {
  CacheRead r;
  std::error_code ec;
  if (!fs::exists(path, ec)) return r;
  const std::string bytes = read_text_file(path);
  auto corrupt = [&](std::string why) {
    r.check = CacheCheck::kCorrupt;
    r.reason = std::move(why);
    return r;
  };
  if (bytes.size() < kCacheMagic.size()) return corrupt(fmt::format("truncated to {} bytes", bytes.size()));
  if (std::string_view(bytes).substr(0, kCacheMagic.size()) != kCacheMagic)
    throw UserError(fmt::format("'{}' exists but is not an OpenPPU token cache (no PPUTOKS magic); it is left alone: "
                                "remove it or choose another cache path",
                                path));
  if (bytes.size() < kCacheHeaderBytes + 8) return corrupt(fmt::format("truncated to {} bytes", bytes.size()));
  size_t at = kCacheMagic.size();
  const auto version = get<uint32_t>(bytes, at);
  const auto eot = get<int32_t>(bytes, at);
  const auto tok_fp = get<uint64_t>(bytes, at);
  const auto vocab = get<int64_t>(bytes, at);
  const auto corp_fp = get<uint64_t>(bytes, at);
  const auto docs = get<int64_t>(bytes, at);
  const auto tokens = get<int64_t>(bytes, at);
  const auto name_bytes = get<int64_t>(bytes, at);
  const uint64_t limit = bytes.size();
  if (docs < 0 || tokens < 0 || name_bytes < 0 || static_cast<uint64_t>(docs) > limit ||
      static_cast<uint64_t>(tokens) > limit || static_cast<uint64_t>(name_bytes) > limit ||
      kCacheHeaderBytes + 8 * (static_cast<uint64_t>(docs) + 1) + 4 * static_cast<uint64_t>(tokens) +
              static_cast<uint64_t>(name_bytes) + 8 !=
          limit)
    return corrupt(fmt::format("{} bytes do not hold the {} documents and {} tokens its header gives", bytes.size(),
                               docs, tokens));
  size_t trailer_at = bytes.size() - 8;
  if (get<uint64_t>(bytes, trailer_at) != fnv1a(std::string_view(bytes).substr(0, bytes.size() - 8)))
    return corrupt("checksum mismatch");
  if (version != kCacheVersion) {
    r.check = CacheCheck::kStale;
    r.reason = fmt::format("format version {} (this build writes {})", version, kCacheVersion);
    return r;
  }
  if (tok_fp != tokenizer_fp || vocab != vocab_size) {
    r.check = CacheCheck::kStale;
    r.reason = "the tokenizer changed";
    return r;
  }
  if (corp_fp != corpus_fp) {
    r.check = CacheCheck::kStale;
    r.reason = "the corpus changed";
    return r;
  }
  TokenShard& s = r.shard;
  s.endoftext_id = eot;
  s.doc_offsets.resize(static_cast<size_t>(docs) + 1);
  std::memcpy(s.doc_offsets.data(), bytes.data() + at, 8 * s.doc_offsets.size());
  at += 8 * s.doc_offsets.size();
  s.tokens.resize(static_cast<size_t>(tokens));
  std::memcpy(s.tokens.data(), bytes.data() + at, 4 * s.tokens.size());
  at += 4 * s.tokens.size();
  const size_t names_end = at + static_cast<size_t>(name_bytes);
  for (int64_t d = 0; d < docs; ++d) {
    if (at + 4 > names_end) return corrupt("document names cut off");
    const auto len = get<uint32_t>(bytes, at);
    if (at + len > names_end) return corrupt("document names cut off");
    s.doc_names.emplace_back(bytes.data() + at, len);
    at += len;
  }
  // The checksum passed, so these hold unless the writer had a bug; checked anyway, as the data is about to
  // index memory.
  bool ok = at == names_end && s.doc_offsets.front() == 0 && s.doc_offsets.back() == tokens;
  for (size_t d = 0; ok && d + 1 < s.doc_offsets.size(); ++d) ok = s.doc_offsets[d] <= s.doc_offsets[d + 1];
  for (size_t i = 0; ok && i < s.tokens.size(); ++i) ok = s.tokens[i] >= 0 && s.tokens[i] < vocab;
  if (!ok) return corrupt("inconsistent document offsets or token ids");
  r.check = CacheCheck::kHit;
  return r;
}

void write_cache(const std::string& path, const std::string& bytes) {
  std::error_code ec;
  const fs::path parent = fs::path(path).parent_path();
  if (!parent.empty()) fs::create_directories(parent, ec);
  const std::string tmp = fmt::format("{}.tmp-{}", path, static_cast<long>(::getpid()));
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (out) out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) {
      const std::string why = std::strerror(errno);
      fs::remove(tmp, ec);
      throw UserError(fmt::format("cannot write token cache '{}': {}", tmp, why));
    }
  }
  fs::rename(tmp, path, ec);
  if (ec) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    throw UserError(fmt::format("cannot write token cache '{}': {}", path, ec.message()));
  }
}

// Sequences of seq_len + 1 tokens, stride seq_len, in a stream of `tokens`.
int64_t sequences_in(int64_t tokens, int64_t seq_len) { return tokens > seq_len ? (tokens - 1) / seq_len : 0; }

}  // namespace

// -----------------------------------------------------------------------------------------------------
// Corpus.

std::vector<std::string> corpus_files(const std::vector<std::string>& paths) {
  std::vector<std::string> out;
  for (const auto& path : paths) {
    std::error_code ec;
    const auto st = fs::status(path, ec);
    if (!fs::exists(st)) {
      const std::string hint =
          path == kKjvDataPath ? " (the King James Bible of Debian's bible-kjv-text: run scripts/setup.sh)" : "";
      throw UserError(fmt::format("corpus path '{}' does not exist{}", path, hint));
    }
    if (fs::is_regular_file(st)) {
      out.push_back(path);
      continue;
    }
    if (!fs::is_directory(st))
      throw UserError(fmt::format("corpus path '{}' is neither a file nor a folder", path));
    std::vector<std::string> found;
    fs::recursive_directory_iterator it(path, fs::directory_options::none, ec), end;
    if (ec) throw UserError(fmt::format("cannot read corpus folder '{}': {}", path, ec.message()));
    for (; !ec && it != end; it.increment(ec)) {
      const fs::path& p = it->path();
      std::error_code type_ec;  // an entry that vanished or a broken link: neither file nor folder
      if (hidden(p)) {
        if (it->is_directory(type_ec)) it.disable_recursion_pending();
        continue;
      }
      if (it->is_regular_file(type_ec) && readable_extension(p)) found.push_back(p.generic_string());
    }
    if (ec) throw UserError(fmt::format("cannot read corpus folder '{}': {}", path, ec.message()));
    if (found.empty())
      throw UserError(fmt::format("corpus folder '{}' holds no file to read (.txt, .md or without extension)", path));
    std::sort(found.begin(), found.end());
    out.insert(out.end(), found.begin(), found.end());
  }
  return out;
}

std::vector<Document> read_corpus(const std::vector<std::string>& paths) {
  const CorpusRead r = read_files(paths);
  std::vector<Document> docs;
  for (size_t i = 0; i < r.files.size(); ++i) append_documents(r.files[i], r.bytes[i], docs);
  return docs;
}

std::vector<Document> read_kjv(const std::string& path) {
  if (std::error_code ec; fs::is_directory(path, ec))
    throw UserError(fmt::format("'{}' is a folder, not the bible-kjv data file", path));
  corpus_files({path});  // throws for a missing path
  const std::string bytes = read_text_file(path);
  if (!is_kjv_file(bytes))
    throw UserError(fmt::format("'{}' is not a bible-kjv data file (no '{}' magic)", path, kKjvMagic));
  return kjv_documents(bytes, path);
}

std::vector<std::string> default_corpus(const std::string& source_dir) {
  const fs::path root(source_dir);
  return {(root / "docs").string(), (root / "README.md").string(), kKjvDataPath};
}

void print_warning(const std::string& message) { std::fprintf(stderr, "warning: %s\n", message.c_str()); }

// -----------------------------------------------------------------------------------------------------
// Tokenising and the cache.

TokenShard load_token_shard(const std::vector<std::string>& corpus, const models::Tokenizer& tok,
                            const std::string& cache_path, const std::function<void(const std::string&)>& on_warning) {
  const CorpusRead files = read_files(corpus);
  TokenShard s;
  s.corpus = join(corpus);
  s.corpus_fingerprint = corpus_fingerprint(files);
  s.tokenizer_fingerprint = tokenizer_fingerprint(tok);
  const int64_t vocab = tok.vocab_size();
  const bool use_cache = !cache_path.empty() && s.tokenizer_fingerprint != 0;
  CacheState state = CacheState::kOff;
  if (use_cache) {
    CacheRead c = read_cache(cache_path, s.tokenizer_fingerprint, vocab, s.corpus_fingerprint);
    switch (c.check) {
      case CacheCheck::kHit:
        c.shard.corpus = s.corpus;
        c.shard.corpus_fingerprint = s.corpus_fingerprint;
        c.shard.tokenizer_fingerprint = s.tokenizer_fingerprint;
        c.shard.cache = CacheState::kHit;
        return std::move(c.shard);
      case CacheCheck::kMissing: state = CacheState::kBuilt; break;
      case CacheCheck::kStale: state = CacheState::kRebuiltStale; break;
      case CacheCheck::kCorrupt:
        state = CacheState::kRebuiltCorrupt;
        (on_warning ? on_warning : print_warning)(
            fmt::format("token cache '{}' is corrupt ({}); rebuilding it", cache_path, c.reason));
        break;
    }
  }
  std::vector<Document> docs;
  for (size_t i = 0; i < files.files.size(); ++i) append_documents(files.files[i], files.bytes[i], docs);
  s.endoftext_id = tok.special_ids().endoftext;
  s.doc_offsets.reserve(docs.size() + 1);
  s.doc_offsets.push_back(0);
  for (auto& d : docs) {
    const std::vector<int32_t> ids = tok.encode(d.text, /*allow_special=*/false);
    s.tokens.insert(s.tokens.end(), ids.begin(), ids.end());
    s.tokens.push_back(s.endoftext_id);
    s.doc_offsets.push_back(static_cast<int64_t>(s.tokens.size()));
    s.doc_names.push_back(std::move(d.name));
  }
  if (use_cache) write_cache(cache_path, encode_cache(s, vocab));
  s.cache = state;
  return s;
}

// -----------------------------------------------------------------------------------------------------
// Packing and the split.

TokenDataset::TokenDataset(TokenShard shard, const DataOptions& opt) : shard_(std::move(shard)), seq_len_(opt.seq_len) {
  if (opt.seq_len < 1) throw UserError(fmt::format("seq_len {}: must be at least 1", opt.seq_len));
  if (!(opt.validation_fraction >= 0.0 && opt.validation_fraction < 1.0))
    throw UserError(fmt::format("validation_fraction {}: must be in [0, 1)", opt.validation_fraction));
  const auto docs = static_cast<int64_t>(shard_.doc_names.size());
  PPU_CHECK(shard_.doc_offsets.size() == static_cast<size_t>(docs) + 1 && shard_.doc_offsets.back() ==
                static_cast<int64_t>(shard_.tokens.size()),
            "TokenShard offsets do not match its tokens");
  if (docs == 0) throw UserError(fmt::format("corpus '{}' has no documents", shard_.corpus));
  int64_t val_docs = 0;
  if (opt.validation_fraction > 0)
    val_docs = std::max<int64_t>(1, std::llround(opt.validation_fraction * static_cast<double>(docs)));
  if (val_docs >= docs)
    throw UserError(fmt::format("validation_fraction {} of the {} document{} of corpus '{}' leaves no training "
                                "document: give more documents or a smaller fraction (0: no validation split)",
                                opt.validation_fraction, docs, docs == 1 ? "" : "s", shard_.corpus));
  // Document i is held out when floor((i + 1) v / n) > floor(i v / n): v documents, evenly spread.
  for (int64_t i = 0; i < docs; ++i) {
    std::vector<int32_t>& to = (i + 1) * val_docs / docs > i * val_docs / docs ? validation_ : train_;
    to.insert(to.end(), shard_.tokens.begin() + shard_.doc_offsets[static_cast<size_t>(i)],
              shard_.tokens.begin() + shard_.doc_offsets[static_cast<size_t>(i) + 1]);
  }
  DataStats& st = stats_;
  st.tokens = static_cast<int64_t>(shard_.tokens.size());
  // The two streams hold every token now: the shard keeps its identity, not a second copy.
  std::vector<int32_t>().swap(shard_.tokens);
  st.documents = docs;
  st.train_documents = docs - val_docs;
  st.validation_documents = val_docs;
  st.train_tokens = static_cast<int64_t>(train_.size());
  st.validation_tokens = static_cast<int64_t>(validation_.size());
  st.train_sequences = sequences_in(st.train_tokens, seq_len_);
  st.validation_sequences = sequences_in(st.validation_tokens, seq_len_);
  if (st.train_sequences == 0)
    throw UserError(fmt::format("corpus '{}' is too small: its {} training tokens ({} documents) do not fill one "
                                "sequence of seq_len + 1 = {} tokens; use a smaller seq_len or more text",
                                shard_.corpus, st.train_tokens, st.train_documents, seq_len_ + 1));
  if (val_docs > 0 && st.validation_sequences == 0)
    throw UserError(fmt::format("corpus '{}': its {} validation tokens ({} documents) do not fill one sequence of "
                                "seq_len + 1 = {} tokens; use a smaller seq_len or a larger validation_fraction",
                                shard_.corpus, st.validation_tokens, val_docs, seq_len_ + 1));
  st.train_dropped_tokens = st.train_tokens - (st.train_sequences * seq_len_ + 1);
  st.validation_dropped_tokens =
      st.validation_sequences > 0 ? st.validation_tokens - (st.validation_sequences * seq_len_ + 1) : st.validation_tokens;
  st.train_unigram_entropy_nats = unigram_entropy_nats(train_tokens());
  st.cache = shard_.cache;
}

TokenDataset TokenDataset::load(const std::vector<std::string>& corpus, const models::Tokenizer& tok,
                                const DataOptions& opt) {
  if (opt.seq_len < 1) throw UserError(fmt::format("seq_len {}: must be at least 1", opt.seq_len));
  return TokenDataset(load_token_shard(corpus, tok, opt.cache_path, opt.on_warning), opt);
}

std::span<const int32_t> TokenDataset::train_tokens() const { return train_; }

std::span<const int32_t> TokenDataset::validation_tokens() const { return validation_; }

std::span<const int32_t> TokenDataset::train_sequence(int64_t i) const {
  if (i < 0 || i >= stats_.train_sequences)
    throw UserError(fmt::format("training sequence {} of {}: out of range", i, stats_.train_sequences));
  return train_tokens().subspan(static_cast<size_t>(i * seq_len_), static_cast<size_t>(seq_len_ + 1));
}

std::span<const int32_t> TokenDataset::validation_sequence(int64_t i) const {
  if (i < 0 || i >= stats_.validation_sequences)
    throw UserError(fmt::format("validation sequence {} of {}: out of range", i, stats_.validation_sequences));
  return validation_tokens().subspan(static_cast<size_t>(i * seq_len_), static_cast<size_t>(seq_len_ + 1));
}

// -----------------------------------------------------------------------------------------------------
// Shuffling and batches.

std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch) {
  if (n < 1) throw UserError(fmt::format("epoch_order of {} sequences: needs at least 1", n));
  if (epoch < 0) throw UserError(fmt::format("epoch {}: must be at least 0", epoch));
  // One stream per (seed, epoch): seed and epoch each pass through the output mix before combining, so
  // nearby seeds or epochs give unrelated streams.
  uint64_t a = seed, b = static_cast<uint64_t>(epoch);
  uint64_t state = splitmix_next(a) ^ (splitmix_next(b) * 0x9e3779b97f4a7c15ULL);
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
  for (int64_t i = n - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(splitmix_next(state) % static_cast<uint64_t>(i + 1));
    std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(j)]);
  }
  return order;
}

BatchIterator::BatchIterator(const TokenDataset& data, int64_t batch, uint64_t seed, BatchState start)
    : data_(&data), batch_(batch), seed_(seed), state_(start) {
  if (batch < 1) throw UserError(fmt::format("batch {}: must be at least 1", batch));
  const int64_t n = data.train_sequences();
  if (start.epoch < 0 || start.position < 0 || start.position >= n)
    throw UserError(fmt::format("batch state (epoch {}, position {}) is outside this dataset: epoch must be >= 0 "
                                "and position in [0, {}) (its training sequences)",
                                start.epoch, start.position, n));
  order_ = epoch_order(n, seed_, state_.epoch);
}

std::vector<int32_t> BatchIterator::next() {
  std::vector<int32_t> out(static_cast<size_t>(batch_ * (data_->seq_len() + 1)));
  next(out);
  return out;
}

void BatchIterator::next(std::span<int32_t> out) {
  const auto row = static_cast<size_t>(data_->seq_len() + 1);
  PPU_CHECK(out.size() == static_cast<size_t>(batch_) * row, "BatchIterator::next: output is not [batch, seq_len + 1]");
  const int64_t n = data_->train_sequences();
  for (int64_t r = 0; r < batch_; ++r) {
    const auto seq = data_->train_sequence(order_[static_cast<size_t>(state_.position)]);
    std::copy(seq.begin(), seq.end(), out.begin() + static_cast<std::ptrdiff_t>(static_cast<size_t>(r) * row));
    if (++state_.position == n) {
      ++state_.epoch;
      state_.position = 0;
      order_ = epoch_order(n, seed_, state_.epoch);
    }
  }
}

// -----------------------------------------------------------------------------------------------------

double unigram_entropy_nats(std::span<const int32_t> tokens) {
  if (tokens.empty()) throw UserError("unigram entropy of an empty token stream: undefined");
  std::vector<int32_t> sorted(tokens.begin(), tokens.end());
  std::sort(sorted.begin(), sorted.end());
  const auto n = static_cast<double>(sorted.size());
  double h = 0;
  for (size_t i = 0; i < sorted.size();) {
    size_t j = i;
    while (j < sorted.size() && sorted[j] == sorted[i]) ++j;
    const double p = static_cast<double>(j - i) / n;
    h -= p * std::log(p);
    i = j;
  }
  return h;
}

}  // namespace ppu::train
