#include "serve/StreamText.hpp"

#include <algorithm>

#include "arch/Error.hpp"

namespace ppu::serve {

size_t utf8_safe_end(const std::string& s, size_t end) {
  // The lead byte of the character the last byte before `end` belongs to (at most 3 bytes back).
  size_t i = end;
  for (int back = 0; back < 4 && i > 0; ++back) {
    --i;
    const auto c = static_cast<unsigned char>(s[i]);
    if ((c & 0xC0) != 0x80) {
      const size_t need = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
      return i + need > end ? i : end;
    }
  }
  return end;  // only continuation bytes: invalid, passed on
}

StreamText::StreamText(const models::Tokenizer& tokenizer, std::vector<std::string> stop)
    : tok_(tokenizer), stop_(std::move(stop)) {
  for (const std::string& s : stop_) {
    if (s.empty()) throw UserError("stop strings: an empty one; each needs at least one character");
    hold_ = std::max(hold_, s.size() - 1);
  }
}

std::string StreamText::release(size_t end) {
  if (end <= released_) return {};
  std::string out = bytes_.substr(released_, end - released_);
  released_ = end;
  return out;
}

std::string StreamText::add(int32_t id) {
  if (stopped_) return {};
  const size_t before = bytes_.size();
  // Ids past the tokenizer's vocabulary (padding rows of the model's embedding table, which a model
  // can still sample) stand for no text.
  if (id >= 0 && id < tok_.vocab_size()) bytes_ += tok_.decode(std::span<const int32_t>(&id, 1), /*skip_special=*/true);
  // A stop string not seen before ends in the new bytes, so it starts at most hold_ bytes before them.
  const size_t from = before > hold_ ? before - hold_ : 0;
  size_t cut = std::string::npos;
  for (const std::string& s : stop_) cut = std::min(cut, bytes_.find(s, from));
  if (cut != std::string::npos) {
    bytes_.resize(cut);
    stopped_ = true;
    return release(cut);
  }
  const size_t held = bytes_.size() > hold_ ? bytes_.size() - hold_ : 0;
  return release(utf8_safe_end(bytes_, held));
}

std::string StreamText::finish() { return release(bytes_.size()); }

}  // namespace ppu::serve
