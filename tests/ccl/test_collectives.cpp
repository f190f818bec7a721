// Every collective x algorithm against a plain reference, over rank counts 1, 2, 3, 5, 8 (16 on the
// two-mesh node), dtypes fp32/bf16/fp16, in place and out of place, with chunks small enough that
// every buffer travels as many pipelined chunks.
//
// Tolerance: each element of a reduction over n ranks is rounded to the dtype at most n times (once
// per ring/tree step; direct and in-switch reductions once), each rounding adding at most u times the
// partial sum, so |error| <= n * u * sum_r |x_r| (u = unit roundoff of the dtype); copies are exact.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cmath>
#include <numeric>

#include "CclTestUtil.hpp"
#include "TestUtil.hpp"

namespace ppu::ccl {
namespace {

using test::Rig;

struct Case {
  Collective collective;
  Algorithm algorithm;
  std::string node;
  int ranks;
  std::vector<int> chips;
};

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  std::string s = fmt::format("{}_{}_{}_{}", collective_name(c.collective), algorithm_name(c.algorithm), c.node, c.ranks);
  if (!c.chips.empty()) s += "_placed";
  for (char& ch : s)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return s;
}

std::vector<Case> all_cases() {
  std::vector<Case> v;
  using A = Algorithm;
  using C = Collective;
  const std::vector<int> counts = {1, 2, 3, 5, 8};
  auto add = [&](C c, std::initializer_list<A> algos, const std::string& node, const std::vector<int>& ranks) {
    for (A a : algos)
      for (int n : ranks) v.push_back({c, a, node, n, {}});
  };
  add(C::kAllReduce, {A::kRing, A::kTree, A::kDirect, A::kHalvingDoubling}, "zhenwu-8", counts);
  add(C::kAllReduce, {A::kNvls, A::kRing}, "h100-dgx", {1, 3, 8});
  add(C::kAllReduce, {A::kHierarchical, A::kRing}, "zhenwu-16", {16});
  v.push_back({C::kAllReduce, A::kHierarchical, "zhenwu-16", 4, {0, 1, 8, 9}});
  v.push_back({C::kAllReduce, A::kHierarchical, "zhenwu-8-pcie", 6, {0, 1, 2, 4, 5, 6}});
  add(C::kReduceScatter, {A::kRing, A::kDirect}, "zhenwu-8", counts);
  add(C::kReduceScatter, {A::kNvls}, "h100-dgx", {2, 5});
  add(C::kAllGather, {A::kRing, A::kDirect}, "zhenwu-8", counts);
  add(C::kAllGather, {A::kNvls}, "h100-dgx", {3, 8});
  add(C::kBroadcast, {A::kRing, A::kTree, A::kDirect}, "zhenwu-8", counts);
  add(C::kBroadcast, {A::kNvls}, "h100-dgx", {5});
  add(C::kReduce, {A::kRing, A::kTree, A::kDirect}, "zhenwu-8", counts);
  add(C::kAllToAll, {A::kDirect, A::kPairwise}, "zhenwu-8", counts);
  add(C::kAllToAllV, {A::kDirect, A::kPairwise}, "zhenwu-8", counts);
  add(C::kSendRecv, {A::kDirect}, "zhenwu-8", {2, 3, 8});
  add(C::kAllToAll, {A::kDirect}, "zhenwu-16", {16});
  return v;
}

class Collectives : public ::testing::TestWithParam<Case> {};

// Runs one collective on fresh random data; checks every rank's output against the reference.
void check(const Case& c, DType t, bool in_place, int64_t count) {
  SCOPED_TRACE(fmt::format("dtype {} in_place {} count {}", dtype_name(t), in_place, count));
  Rig rig(c.node, c.ranks, c.chips);
  const int n = c.ranks;
  const int root = n / 2;
  using C = Collective;
  // Layouts (ccl/Algorithms.hpp).
  int64_t send_n = count, recv_n = count;
  std::vector<std::vector<int64_t>> counts(static_cast<size_t>(n), std::vector<int64_t>(static_cast<size_t>(n)));
  for (int r = 0; r < n; ++r)
    for (int p = 0; p < n; ++p) counts[static_cast<size_t>(r)][static_cast<size_t>(p)] = (r + 2 * p) % 3 + (count % 5);
  if (c.collective == C::kReduceScatter) send_n = count * n;
  if (c.collective == C::kAllGather) recv_n = count * n;
  if (c.collective == C::kAllToAll) send_n = recv_n = count * n;
  std::vector<std::vector<float>> in(static_cast<size_t>(n));
  std::vector<Buffer> send(static_cast<size_t>(n)), recv(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) {
    int64_t sn = send_n, rn = recv_n;
    if (c.collective == C::kAllToAllV) {
      sn = rn = 0;
      for (int p = 0; p < n; ++p) sn += counts[static_cast<size_t>(r)][static_cast<size_t>(p)], rn += counts[static_cast<size_t>(p)][static_cast<size_t>(r)];
      sn = std::max<int64_t>(sn, 1), rn = std::max<int64_t>(rn, 1);
    }
    in[static_cast<size_t>(r)] = ppu::test::random_values(static_cast<size_t>(sn), t, 1000 + static_cast<uint64_t>(r));
    Device& d = rig.dev(r);
    if (in_place && c.collective == C::kAllGather) {
      recv[static_cast<size_t>(r)] = d.alloc(t, rn, "recv");
      send[static_cast<size_t>(r)] = recv[static_cast<size_t>(r)].view(r * count, count);
    } else if (in_place && c.collective == C::kReduceScatter) {
      send[static_cast<size_t>(r)] = d.alloc(t, sn, "send");
      recv[static_cast<size_t>(r)] = send[static_cast<size_t>(r)].view(r * count, count);
    } else {
      send[static_cast<size_t>(r)] = d.alloc(t, sn, "send");
      recv[static_cast<size_t>(r)] = in_place ? send[static_cast<size_t>(r)] : d.alloc(t, rn, "recv");
    }
    d.upload(send[static_cast<size_t>(r)], in[static_cast<size_t>(r)]);
  }
  CollectiveOptions o;
  o.algorithm = c.algorithm;
  o.root = root;
  CollectiveResult res;
  switch (c.collective) {
    case C::kAllReduce: res = rig.comm->all_reduce(send, recv, o); break;
    case C::kReduceScatter: res = rig.comm->reduce_scatter(send, recv, o); break;
    case C::kAllGather: res = rig.comm->all_gather(send, recv, o); break;
    case C::kBroadcast: {
      std::vector<Buffer> s2(static_cast<size_t>(n));  // only the root's send buffer counts
      s2[static_cast<size_t>(root)] = send[static_cast<size_t>(root)];
      res = rig.comm->broadcast(s2, recv, o);
      break;
    }
    case C::kReduce: {
      std::vector<Buffer> r2(static_cast<size_t>(n));
      r2[static_cast<size_t>(root)] = recv[static_cast<size_t>(root)];
      res = rig.comm->reduce(send, r2, o);
      break;
    }
    case C::kAllToAll: res = rig.comm->all_to_all(send, recv, o); break;
    case C::kAllToAllV: res = rig.comm->all_to_all_v(send, recv, counts, o); break;
    case C::kSendRecv: {
      std::vector<P2P> pairs;
      for (int r = 0; r < n; ++r) pairs.push_back({r, (r + 1) % n, send[static_cast<size_t>(r)], recv[static_cast<size_t>((r + 1) % n)]});
      res = rig.comm->send_recv(pairs, o);
      break;
    }
    default: FAIL();
  }
  EXPECT_EQ(res.algorithm, c.algorithm);
  EXPECT_GT(res.time_s, 0);
  const double u = unit_roundoff(t);
  for (int r = 0; r < n; ++r) {
    if (c.collective == C::kReduce && r != root) continue;
    const std::vector<float> got = rig.dev(r).download(recv[static_cast<size_t>(r)]);
    auto expect_at = [&](size_t i, double want, double sum_abs) {
      const double tol = n * u * sum_abs + 1e-6;
      ASSERT_NEAR(got[i], want, tol) << "rank " << r << " element " << i;
    };
    auto reduced = [&](int64_t src_off, size_t out_i) {
      double s = 0, a = 0;
      for (int p = 0; p < n; ++p) {
        const double x = in[static_cast<size_t>(p)][static_cast<size_t>(src_off)];
        s += x;
        a += std::fabs(x);
      }
      expect_at(out_i, s, a);
    };
    switch (c.collective) {
      case C::kAllReduce:
      case C::kReduce:
        for (int64_t i = 0; i < count; ++i) reduced(i, static_cast<size_t>(i));
        break;
      case C::kReduceScatter:
        for (int64_t i = 0; i < count; ++i) reduced(r * count + i, static_cast<size_t>(i));
        break;
      case C::kAllGather:
        for (int p = 0; p < n; ++p)
          for (int64_t i = 0; i < count; ++i) expect_at(static_cast<size_t>(p * count + i), in[static_cast<size_t>(p)][static_cast<size_t>(i)], 0);
        break;
      case C::kBroadcast:
        for (int64_t i = 0; i < count; ++i) expect_at(static_cast<size_t>(i), in[static_cast<size_t>(root)][static_cast<size_t>(i)], 0);
        break;
      case C::kAllToAll:
        for (int p = 0; p < n; ++p)
          for (int64_t i = 0; i < count; ++i)
            expect_at(static_cast<size_t>(p * count + i), in[static_cast<size_t>(p)][static_cast<size_t>(r * count + i)], 0);
        break;
      case C::kAllToAllV: {
        size_t out = 0;
        for (int p = 0; p < n; ++p) {
          int64_t off = 0;
          for (int q = 0; q < r; ++q) off += counts[static_cast<size_t>(p)][static_cast<size_t>(q)];
          for (int64_t i = 0; i < counts[static_cast<size_t>(p)][static_cast<size_t>(r)]; ++i)
            expect_at(out++, in[static_cast<size_t>(p)][static_cast<size_t>(off + i)], 0);
        }
        break;
      }
      case C::kSendRecv: {
        const int from = (r - 1 + n) % n;
        for (int64_t i = 0; i < count; ++i) expect_at(static_cast<size_t>(i), in[static_cast<size_t>(from)][static_cast<size_t>(i)], 0);
        break;
      }
      default: break;
    }
  }
}

TEST_P(Collectives, MatchesReference) {
  const Case& c = GetParam();
  const bool can_in_place = c.collective != Collective::kAllToAll && c.collective != Collective::kAllToAllV &&
                            c.collective != Collective::kSendRecv;
  for (DType t : {DType::kF32, DType::kBF16, DType::kF16})
    for (bool ip : {false, true}) {
      if (ip && !can_in_place) continue;
      check(c, t, ip, 203);  // 203 = 7 x 29: not a multiple of the rank counts or of the chunk
    }
  check(c, DType::kF32, false, 1);  // fewer elements than ranks
}

INSTANTIATE_TEST_SUITE_P(All, Collectives, ::testing::ValuesIn(all_cases()), case_name);

TEST(Collectives, MaxAndMin) {
  Rig rig("zhenwu-8", 5);
  std::vector<Buffer> b;
  for (int r = 0; r < 5; ++r) {
    b.push_back(rig.dev(r).alloc(DType::kF32, 3, "x"));
    rig.dev(r).upload(b.back(), {static_cast<float>(r), static_cast<float>(-r), static_cast<float>(r % 3)});
  }
  CollectiveOptions o;
  o.op = ReductionOp::kMax;
  rig.comm->all_reduce(b, b, o);
  EXPECT_EQ(rig.dev(3).download(b[3]), (std::vector<float>{4, 0, 2}));
  o.op = ReductionOp::kMin;
  rig.comm->all_reduce(b, b, o);
  EXPECT_EQ(rig.dev(1).download(b[1]), (std::vector<float>{4, 0, 2}));  // min of equal values
}

TEST(Collectives, TimingOnlyDevicesMoveNoDataButTakeTime) {
  Rig rig("zhenwu-8", 8, {}, ExecMode::kTimingOnly, 4 << 20);
  std::vector<Buffer> b;
  for (int r = 0; r < 8; ++r) b.push_back(rig.dev(r).alloc(DType::kBF16, int64_t{1} << 30, "grad"));  // 2 GB each
  const CollectiveResult res = rig.comm->all_reduce(b, b);
  EXPECT_GT(res.time_s, 0);
  // A ring moves 2(n-1)/n of the buffer over each 50 GB/s link direction: no faster than that.
  EXPECT_LE(res.busbw_bytes_per_s, 50e9 * 7 * 1.001);  // direct uses all 7 links
  EXPECT_EQ(rig.dev(3).records().back().kind, OpKind::kCollective);
}

}  // namespace
}  // namespace ppu::ccl
