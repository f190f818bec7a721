// Tests of nn/ParallelGroups: the one split validation (every kind of impossible split gets its own
// message naming the degree, what it must divide and the valid values), the rank map, and the
// wiring check (ranks inside their degrees, communicators of the right size unless capturing).
#include <gtest/gtest.h>

#include "TestUtil.hpp"
#include "nn/ParallelGroups.hpp"

namespace ppu::nn {
namespace {

// A small MoE-shaped and a dense-shaped model.
SplitDims dense() { return SplitDims{"dense", 16, 4, 96, 0, 0, 4}; }
SplitDims moe() { return SplitDims{"moe", 8, 4, 0, 12, 48, 4}; }

ParallelDegrees deg(int tp, int ep = 1, int cp = 1, int dp = 1) {
  ParallelDegrees d;
  d.tp = tp;
  d.ep = ep;
  d.cp = cp;
  d.dp = dp;
  return d;
}

TEST(ParallelSplit, ValidSplitsPass) {
  for (int tp : {1, 2, 4}) EXPECT_NO_THROW(check_split(dense(), deg(tp)));
  EXPECT_NO_THROW(check_split(moe(), deg(2, 2)));
  EXPECT_NO_THROW(check_split(moe(), deg(2, 4, 1, 2)));  // EP 4 divides TP x DP = 4
  EXPECT_NO_THROW(check_split(moe(), deg(1, 12)));
  EXPECT_NO_THROW(check_split(dense(), deg(1, 1, 4), 1024));
  EXPECT_NO_THROW(check_split(dense(), deg(1, 1, 4)));  // no sequence length given: not checked
}

TEST(ParallelSplit, EachImpossibleSplitNamesWhatIsValid) {
  test::expect_error([] { check_split(dense(), deg(8)); },
                     {"model 'dense'", "TP degree of 8 does not divide the 4 key/value heads", "valid TP: 1, 2, 4"});
  test::expect_error([] { check_split(dense(), deg(3)); }, {"TP degree of 3 does not divide the 16 attention heads"});
  SplitDims narrow = dense();
  narrow.ffn = 90;  // 4 does not divide 90
  test::expect_error([&] { check_split(narrow, deg(4)); }, {"does not divide the 90 MLP width", "valid TP: 1, 2"});
  SplitDims odd_expert = moe();
  odd_expert.expert_ffn = 6;  // TP 4 without EP splits every expert's width
  test::expect_error([&] { check_split(odd_expert, deg(4)); }, {"the 6 expert MLP width", "valid TP: 1, 2"});
  EXPECT_NO_THROW(check_split(odd_expert, deg(4, 4)));  // with EP experts stay whole
  test::expect_error([] { check_split(dense(), deg(1, 2)); }, {"EP degree of 2 needs an MoE model", "dense", "valid EP: 1"});
  test::expect_error([] { check_split(moe(), deg(1, 5)); },
                     {"EP degree of 5 does not divide the 12 experts", "valid EP: 1, 2, 3, 4, 6, 12"});
  test::expect_error([] { check_split(moe(), deg(4, 6)); },
                     {"EP degree of 6 is not a multiple of the TP degree 4", "valid EP: 1, 4, 12"});
  test::expect_error([] { check_split(moe(), deg(2, 6, 1, 2)); },
                     {"EP degree of 6 does not divide TP x DP = 4", "valid EP: 1, 2, 4"});
  test::expect_error([] { check_split(dense(), deg(1, 1, 3), 100); },
                     {"CP degree of 3", "sequence length (100)", "multiple of 2 x CP = 6"});
  for (auto bad : {deg(0), deg(1, 0), deg(1, 1, 0), deg(1, 1, 1, 0)})
    test::expect_error([&] { check_split(dense(), bad); }, {"every degree must be >= 1"});
  ParallelDegrees pp0 = deg(1);
  pp0.pp = 0;
  test::expect_error([&] { check_split(dense(), pp0); }, {"PP degree 0"});
}

TEST(ParallelSplit, DivisorsText) {
  EXPECT_EQ(divisors_text(12), "1, 2, 3, 4, 6, 12");
  EXPECT_EQ(divisors_text(1), "1");
  EXPECT_EQ(divisors_text(7), "1, 7");
}

TEST(ParallelGroupsTest, RankMapPlacesTpAndEpRanks) {
  const ParallelDegrees d = deg(2, 4);
  for (int r = 0; r < 4; ++r) {
    const ParallelGroups g = ParallelGroups::for_rank(d, r);
    EXPECT_EQ(g.world(), 4);
    EXPECT_EQ(g.tp_rank, r % 2);
    EXPECT_EQ(g.ep_rank, r);
    EXPECT_NO_THROW({
      ParallelGroups c = g;
      ForwardCapture cap;
      c.capture = &cap;  // capturing: no communicators needed
      c.check_wiring("m");
    });
  }
  const ParallelGroups t = ParallelGroups::for_rank(deg(4), 3);
  EXPECT_EQ(t.world(), 4);
  EXPECT_EQ(t.tp_rank, 3);
  EXPECT_EQ(t.ep_rank, 0);
  test::expect_error([&] { ParallelGroups::for_rank(d, 4); }, {"parallel rank 4", "valid ranks: 0 to 3"});
  test::expect_error([&] { ParallelGroups::for_rank(d, -1); }, {"parallel rank -1"});
}

TEST(ParallelGroupsTest, WiringNeedsCommunicatorsAndRanksInRange) {
  ParallelGroups g = ParallelGroups::for_rank(deg(2), 1);
  test::expect_error([&] { g.check_wiring("m"); }, {"model 'm'", "tensor parallelism over 2 chips needs a communicator of 2 ranks"});
  g = ParallelGroups::for_rank(deg(1, 2), 1);
  test::expect_error([&] { g.check_wiring("m"); }, {"expert parallelism over 2 chips needs a communicator of 2 ranks"});
  g = ParallelGroups::for_rank(deg(2), 0);
  g.tp_rank = 2;
  test::expect_error([&] { g.check_wiring("m"); }, {"tensor-parallel rank 2 of 2"});
  g = ParallelGroups::for_rank(deg(2, 4), 1);
  g.ep_rank = 2;  // EP rank 2 is TP rank 0 of its group, not 1
  test::expect_error([&] { g.check_wiring("m"); }, {"EP rank 2 is not in the TP group of TP rank 1"});
  g.ep_rank = 4;
  test::expect_error([&] { g.check_wiring("m"); }, {"expert-parallel rank 4 of 4"});
  EXPECT_NO_THROW(ParallelGroups{}.check_wiring("m"));  // one chip: nothing to wire
}

}  // namespace
}  // namespace ppu::nn
