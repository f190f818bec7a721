// Tokenizer: the byte-level BPE tokenizer Qwen3 ships, loaded from a Hugging Face tokenizer.json.
//
//   Tokenizer tok = Tokenizer::from_file("tokenizer.json");
//   std::vector<int32_t> ids = tok.encode("Hello world");    // {9707, 1879}
//   std::string text = tok.decode(ids);                      // "Hello world"
//   int32_t eos = tok.special_ids().im_end;                  // 151645
//
// The pipeline, in the order Hugging Face's `tokenizers` runs it:
//  1. Added tokens (tokenizer.json `added_tokens`, e.g. <|im_start|>, <think>) are split out of the
//     raw text first, leftmost then longest match; each becomes its own id. With allow_special=false
//     the tokens flagged "special" are not split out but tokenized as ordinary text; the others
//     (<think>, <tool_call>, ...) always are, as `tokenizers` does with encode_special_tokens.
//  2. Every stretch of text between them is NFC-normalised (`normalizer` NFC, via utf8proc).
//  3. The pre-tokenizer regex from the file (`pre_tokenizer` Split, behavior Isolated) cuts the
//     stretch into words (PCRE2 in UTF + UCP mode, JIT-compiled where PCRE2 has a JIT).
//  4. Each word's UTF-8 bytes start as one symbol per byte (the GPT-2 byte-to-unicode alphabet of
//     `ByteLevel`); the merges of `model.merges` are applied lowest rank first, leftmost first among
//     equal ranks, until no adjacent pair has a merge; the symbols' ids are the output. Results are
//     cached per word.
// decode() is the inverse: each id's bytes concatenated (byte-level tokens mapped back through the
// alphabet, added tokens as their text). The bytes are returned as they are: a sequence of ids that
// ends inside a multi-byte character gives invalid UTF-8 rather than a replacement character.
//
// Supported tokenizer.json shape (anything else is refused with a UserError naming the file and the
// field): model.type "BPE" with vocab, merges ("a b" strings or ["a", "b"] pairs), no dropout, no
// unk_token, no byte_fallback, no subword prefix/suffix (ignore_merges is honoured); normalizer null
// or NFC; pre_tokenizer Sequence[Split(Regex, Isolated, invert false), ByteLevel(use_regex false,
// add_prefix_space false)]; decoder null or ByteLevel; added tokens without lstrip, rstrip or
// single_word. Added tokens are matched on the raw input (their `normalized` flag is ignored; every
// Qwen3 added token is ASCII, which NFC leaves alone).
//
// Regex semantics are PCRE2's (UTF + UCP). The JavaScript port our tests compare against
// (transformers.js) differs on two code points: U+0085 (NEL) is \s for PCRE2 and not for JavaScript,
// U+FEFF (BOM) the other way round; Unicode's White_Space property sides with PCRE2, but Hugging
// Face's Rust `tokenizers` has not been checked on them. PCRE2's Unicode tables (14.0 in Debian 12's
// PCRE2 10.42) and utf8proc's (15.0 in its 2.8) also decide \p{L}/\p{N} and NFC for recently assigned
// characters.
//
// Thread safety: a loaded Tokenizer is immutable apart from its word cache, which is guarded by a
// mutex; encode and decode may be called from several threads at once.
//
// Not here: the chat template (ChatTemplate.hpp), truncation, padding, post-processing templates,
// offsets/alignment, WordPiece/Unigram models, byte-fallback tokenizers.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ppu::models {

// Ids of the tokens Qwen3's chat format and generation loop use.
struct SpecialTokenIds {
  int32_t endoftext = -1;  // <|endoftext|>: end of a document, padding
  int32_t im_start = -1;   // <|im_start|>: start of a chat turn
  int32_t im_end = -1;     // <|im_end|>: end of a chat turn (the chat models' end-of-sequence)
  int32_t think = -1;      // <think>
  int32_t think_end = -1;  // </think>
};

class Tokenizer {
 public:
  // Loads and validates a tokenizer.json. Throws UserError naming `path` if the file cannot be read,
  // is not valid JSON, or has a field outside the supported shape above (the message names the field,
  // e.g. "pre_tokenizer.pretokenizers[0].behavior", the value found and what is supported).
  static Tokenizer from_file(const std::string& path);

  // The same from the file's text; `origin` names it in error messages.
  static Tokenizer from_json(std::string_view json_text, const std::string& origin);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Token ids of `text` (UTF-8). allow_special=false tokenizes the text of special added tokens
  // (e.g. a user typing "<|im_end|>") as ordinary text instead of emitting their ids. Empty text
  // gives no ids. Throws UserError if `text` is not valid UTF-8, or if a byte has no token in the
  // vocabulary (impossible with a complete byte-level vocabulary such as Qwen3's).
  std::vector<int32_t> encode(std::string_view text, bool allow_special = true) const;

  // The bytes the ids stand for, concatenated (see the file comment). skip_special=true leaves out
  // the added tokens flagged special (<|im_end|>, ...; <think> is not flagged special in Qwen3).
  // Throws UserError for an id that is not in the vocabulary.
  std::string decode(std::span<const int32_t> ids, bool skip_special = false) const;

  // The token's string as written in tokenizer.json (byte-level alphabet, e.g. "Ġworld" for " world").
  // Throws UserError for an id outside the vocabulary.
  const std::string& id_to_token(int32_t id) const;
  // The id of a token string as written in tokenizer.json. Throws UserError if there is none.
  int32_t token_to_id(std::string_view token) const;
  // The same, without throwing.
  std::optional<int32_t> find_token(std::string_view token) const;

  // Number of ids: the largest id in model.vocab or added_tokens, plus one (151,669 for Qwen3; its
  // embedding tables are padded further, to 151,936 rows).
  int32_t vocab_size() const;
  // Whether `id` is an added token flagged special (false for ids outside the vocabulary).
  bool is_special(int32_t id) const;
  // What loading noticed in a file that loads but is unlikely to be what was meant (an empty
  // model.merges), one message each naming the file; the caller shows them as warnings.
  const std::vector<std::string>& warnings() const;
  // Ids of Qwen3's chat and thinking tokens. Throws UserError if the file lacks one of them.
  const SpecialTokenIds& special_ids() const;

  // `text` as encode() normalises the stretches between added tokens: its NFC form if the file's
  // normalizer is NFC (Qwen3's is), else unchanged. Throws UserError on invalid UTF-8.
  std::string normalize(std::string_view text) const;

  // Where the tokenizer was loaded from (the path, or from_json's `origin`).
  const std::string& origin() const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ppu::models
