// The real Qwen3 tokenizer for the server tests (loaded once; scripts/setup.sh installs it).
#pragma once

#include "TestUtil.hpp"
#include "models/Tokenizer.hpp"

namespace ppu::test {

inline const models::Tokenizer& qwen3() {
  static const models::Tokenizer t = models::Tokenizer::from_file(qwen3_tokenizer_path());
  return t;
}

}  // namespace ppu::test
