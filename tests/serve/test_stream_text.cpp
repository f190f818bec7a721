// serve/StreamText: text released token by token equals the whole decode (stop strings aside);
// UTF-8 characters split over tokens are held back whole; a stop string ends the text before it,
// wherever the token boundaries fall; text that could begin a stop string is held until it cannot.
#include <gtest/gtest.h>

#include <random>

#include "TestUtil.hpp"
#include "serve/StreamText.hpp"

using namespace ppu;
using namespace ppu::serve;

namespace {

const models::Tokenizer& qwen3() {
  static const models::Tokenizer t = models::Tokenizer::from_file(test::qwen3_tokenizer_path());
  return t;
}

// Everything StreamText releases for `ids`, piece by piece, then finish().
struct Streamed {
  std::vector<std::string> pieces;
  std::string all;
  bool stopped = false;
};
Streamed stream(const std::vector<int32_t>& ids, std::vector<std::string> stop) {
  StreamText t(qwen3(), std::move(stop));
  Streamed s;
  for (const int32_t id : ids) {
    s.pieces.push_back(t.add(id));
    s.all += s.pieces.back();
    if (t.stopped()) break;
  }
  s.pieces.push_back(t.finish());
  s.all += s.pieces.back();
  s.stopped = t.stopped();
  EXPECT_EQ(s.all, t.text());
  return s;
}

}  // namespace

TEST(StreamText, Utf8SafeEnd) {
  const std::string s = "a\xC3\xA9" "b\xE4\xB8\xAD\xF0\x9F\x98\x80";  // a é b 中 😀
  EXPECT_EQ(utf8_safe_end(s, s.size()), s.size());
  EXPECT_EQ(utf8_safe_end(s, s.size() - 1), 7u);  // inside the emoji: before it
  EXPECT_EQ(utf8_safe_end(s, s.size() - 3), 7u);
  EXPECT_EQ(utf8_safe_end(s, 6), 4u);  // inside 中
  EXPECT_EQ(utf8_safe_end(s, 2), 1u);  // inside é
  EXPECT_EQ(utf8_safe_end(s, 0), 0u);
  EXPECT_EQ(utf8_safe_end("\x80\x80\x80\x80\x80", 5), 5u);  // invalid bytes pass
  EXPECT_EQ(utf8_safe_end("ab\xFF", 3), 3u);
}

TEST(StreamText, ReleasesTheWholeDecodeWithoutStops) {
  const std::string text = "Hello, 世界! Ünïcödé 😀 emoji and\ttabs\n\nnew lines";
  const std::vector<int32_t> ids = qwen3().encode(text);
  const Streamed s = stream(ids, {});
  EXPECT_EQ(s.all, text);
  EXPECT_FALSE(s.stopped);
  // Byte-level tokens split the emoji and CJK characters: no piece ever ends inside a character.
  for (const std::string& p : s.pieces) EXPECT_EQ(utf8_safe_end(p, p.size()), p.size()) << p;
}

TEST(StreamText, SpecialTokensAddNoText) {
  const models::Tokenizer& t = qwen3();
  std::vector<int32_t> ids = t.encode("done");
  ids.push_back(t.special_ids().im_end);
  EXPECT_EQ(stream(ids, {}).all, "done");
}

TEST(StreamText, StopStringEndsTheTextBeforeIt) {
  const models::Tokenizer& t = qwen3();
  const std::string text = "one two three. four five";
  const std::vector<int32_t> ids = t.encode(text);
  const Streamed s = stream(ids, {"three.", "zzz"});
  EXPECT_TRUE(s.stopped);
  EXPECT_EQ(s.all, "one two ");
  // The earliest of several stops wins; a stop inside one token and one spanning tokens.
  EXPECT_EQ(stream(ids, {"five", "o t"}).all, "one tw");
  EXPECT_EQ(stream(ids, {"e. f"}).all, "one two thre");
  // A stop at the very start leaves nothing.
  EXPECT_EQ(stream(ids, {"one"}).all, "");
}

TEST(StreamText, HeldTextIsNeverTakenBack) {
  // Random token sequences and stops drawn from their own text: the released text is always a prefix
  // of the final text, and the final text is the decode cut at the first stop.
  const models::Tokenizer& t = qwen3();
  const std::vector<int32_t> base = t.encode("The quick brown fox jumps over the lazy dog; 狐狸跳过了懒狗. ¡Olé! 😀😀 end.");
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<int32_t> ids;
    const size_t n = 1 + rng() % base.size();
    for (size_t i = 0; i < n; ++i) ids.push_back(base[rng() % base.size()]);
    const std::string whole = t.decode(ids, true);
    std::vector<std::string> stops;
    if (!whole.empty() && rng() % 4 != 0) {
      const size_t at = rng() % whole.size(), len = 1 + rng() % 5;
      stops.push_back(whole.substr(at, len));
    }
    const Streamed s = stream(ids, stops);
    size_t cut = whole.size();
    for (const auto& stop : stops) cut = std::min(cut, whole.find(stop));
    SCOPED_TRACE(::testing::Message() << "trial " << trial);
    EXPECT_EQ(s.all, whole.substr(0, cut));
    EXPECT_EQ(s.stopped, cut != whole.size());
  }
}

TEST(StreamText, EmptyStopIsRefused) {
  EXPECT_THROW(StreamText(qwen3(), {"a", ""}), UserError);
}

TEST(StreamText, IdsPastTheTokenizerAddNoText) {
  // Qwen3's models have 151,936 embedding rows, its tokenizer 151,669 ids: a sampled padding row is no text.
  const models::Tokenizer& t = qwen3();
  std::vector<int32_t> ids = t.encode("ab");
  ids.insert(ids.begin() + 1, {t.vocab_size(), 151935});
  EXPECT_EQ(stream(ids, {}).all, "ab");
}
