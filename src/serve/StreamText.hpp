// StreamText: a request's generated text as it becomes final - token by token, each token's bytes
// appended (Qwen3's byte-level BPE decodes a sequence as the concatenation of its tokens' bytes),
// released only up to the last complete UTF-8 character and never in the last bytes that could still
// be the start of a stop string; a stop string ends the text just before it (OpenAI's rule: the stop
// string is not returned).
//
//   StreamText t(tokenizer, {"\n\n"});
//   for (int32_t id : generated) {
//     send(t.add(id));          // the newly final text, often empty
//     if (t.stopped()) break;   // a stop string appeared: cancel the request
//   }
//   send(t.finish());           // what was held back
//
// Special tokens (<|im_end|>, ...) and ids past the tokenizer's vocabulary (the padding rows of the
// model's embedding table: Qwen3's tokenizer has 151,669 ids, its models 151,936 rows) add no text; <think> and <tool_call> are text (Qwen3 does not
// flag them special). Invalid UTF-8 from the model is passed on as bytes (the JSON writer replaces it).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "models/Tokenizer.hpp"

namespace ppu::serve {

class StreamText {
 public:
  // `tokenizer` must outlive this. UserError for an empty stop string.
  StreamText(const models::Tokenizer& tokenizer, std::vector<std::string> stop);
  // Appends token `id`'s text; returns what became final. After a stop string: nothing more is taken.
  std::string add(int32_t id);
  // Releases all that is held (the request is over); returns it.
  std::string finish();
  bool stopped() const { return stopped_; }
  // All text released so far (after finish(): the whole output, stop string excluded).
  std::string text() const { return bytes_.substr(0, released_); }

 private:
  std::string release(size_t end);

  const models::Tokenizer& tok_;
  std::vector<std::string> stop_;
  size_t hold_ = 0;  // bytes that could begin a stop string: the longest one's length - 1
  std::string bytes_;
  size_t released_ = 0;
  bool stopped_ = false;
};

// The end of `s`'s longest prefix up to `end` that does not end inside a UTF-8 character (invalid
// bytes count as whole characters).
size_t utf8_safe_end(const std::string& s, size_t end);

}  // namespace ppu::serve
