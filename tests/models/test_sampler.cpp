// Sampler: greedy, temperature, top-k, top-p against direct computations; reproducibility; errors.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "TestUtil.hpp"
#include "models/Sampler.hpp"

namespace ppu {
namespace {

TEST(Sampler, GreedyIsArgmaxWithTiesToTheLowestId) {
  Sampler s({});
  EXPECT_EQ(s.sample(std::vector<float>{0.1f, 3.0f, -2.0f, 3.0f}), 1);
  EXPECT_EQ(s.sample(std::vector<float>{-5.0f}), 0);
}

TEST(Sampler, TopKOfOneIsGreedyAtAnyTemperature) {
  Sampler s({.temperature = 5.0, .top_k = 1, .top_p = 1.0, .seed = 3});
  for (int i = 0; i < 50; ++i) EXPECT_EQ(s.sample(std::vector<float>{0.0f, 0.5f, 0.4f}), 1);
}

TEST(Sampler, SameSeedSameTokensDifferentSeedDifferentStream) {
  const std::vector<float> logits = {0.0f, 0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f};
  Sampler a({.temperature = 1.0, .top_k = 0, .top_p = 1.0, .seed = 9}), b({.temperature = 1.0, .top_k = 0, .top_p = 1.0, .seed = 9}),
      c({.temperature = 1.0, .top_k = 0, .top_p = 1.0, .seed = 10});
  std::vector<int32_t> ra, rb, rc;
  for (int i = 0; i < 64; ++i) {
    ra.push_back(a.sample(logits));
    rb.push_back(b.sample(logits));
    rc.push_back(c.sample(logits));
  }
  EXPECT_EQ(ra, rb);
  EXPECT_NE(ra, rc);
}

TEST(Sampler, FrequenciesFollowTheTemperedSoftmax) {
  // p_i = exp(l_i / T) / sum: with 40000 draws each frequency is within 4 standard deviations.
  const std::vector<float> logits = {1.0f, 0.0f, -1.0f, 2.0f};
  const double T = 0.8;
  Sampler s({.temperature = T, .top_k = 0, .top_p = 1.0, .seed = 1});
  std::map<int32_t, int> count;
  const int n = 40000;
  for (int i = 0; i < n; ++i) ++count[s.sample(logits)];
  double z = 0;
  for (float l : logits) z += std::exp(l / T);
  for (int32_t i = 0; i < 4; ++i) {
    const double p = std::exp(logits[static_cast<size_t>(i)] / T) / z;
    const double sd = std::sqrt(p * (1 - p) / n);
    EXPECT_NEAR(count[i] / double(n), p, 4 * sd) << "token " << i;
  }
}

TEST(Sampler, TopPKeepsTheSmallestPrefixReachingTheMass) {
  // Probabilities at T=1: token 3 ~0.64, token 0 ~0.24, others ~0.12 together: top_p 0.8 keeps {3, 0}.
  const std::vector<float> logits = {1.0f, 0.0f, -1.0f, 2.0f};
  Sampler s({.temperature = 1.0, .top_k = 0, .top_p = 0.8, .seed = 2});
  for (int i = 0; i < 2000; ++i) {
    const int32_t t = s.sample(logits);
    EXPECT_TRUE(t == 3 || t == 0) << t;
  }
}

TEST(Sampler, TopKExcludesTheRest) {
  Sampler s({.temperature = 2.0, .top_k = 2, .top_p = 1.0, .seed = 4});
  for (int i = 0; i < 2000; ++i) {
    const int32_t t = s.sample(std::vector<float>{1.0f, 0.0f, -1.0f, 2.0f});
    EXPECT_TRUE(t == 3 || t == 0) << t;
  }
}

TEST(Sampler, BadOptions) {
  test::expect_error([] { Sampler({.temperature = -1.0}); }, {"temperature -1"});
  test::expect_error([] { Sampler({.temperature = 1.0, .top_k = -2}); }, {"top_k -2"});
  test::expect_error([] { Sampler({.temperature = 1.0, .top_k = 0, .top_p = 0.0}); }, {"top_p 0", "(0, 1]"});
  test::expect_error([] { Sampler({}).sample(std::vector<float>{}); }, {"empty logits"});
}

}  // namespace
}  // namespace ppu
