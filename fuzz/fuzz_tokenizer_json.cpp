// Fuzzes the tokenizer.json loader (models/Tokenizer::from_json, what `--tokenizer` and a checkpoint's
// tokenizer.json go through): the input is the file's text, including the pre-tokenizer regex PCRE2
// compiles. A tokenizer that loads then encodes and decodes a short text with added tokens, multi-byte
// characters and digits.
// Finding: anything but a UserError (fuzz/FuzzInput.hpp); a hang in a regex is one too (-timeout).
// Seeds: a cut-down Qwen3 tokenizer.json (its byte alphabet, first merges, every added token) and the
// hand-written tiny tokenizer of tests/models/test_tokenizer.cpp.
#include "FuzzInput.hpp"
#include "models/Tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ppu;
  return fuzz::run([&] {
    const models::Tokenizer tok = models::Tokenizer::from_json(fuzz::text(data, size), "fuzz-tokenizer.json");
    const auto ids = tok.encode("<|im_start|>user\nHello, wörld 123 café\t\n<think>x</think><|im_end|>");
    (void)tok.decode(ids, true);
    (void)tok.vocab_size();
  });
}
