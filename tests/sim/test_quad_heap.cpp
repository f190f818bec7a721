// QuadHeap (the timing engine's event queue) against std::priority_queue, the heap it replaced: the
// same pop sequence for interleaved pushes and pops of seeded random keys, with many ties in the
// primary key (broken by a unique secondary key, as the engine's events are), at every size from
// empty through several levels; plus the edges (one element, equal keys, drain and refill).
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <queue>
#include <random>
#include <vector>

#include "sim/QuadHeap.hpp"

namespace ppu {
namespace {

struct Key {
  double time;
  uint64_t seq;
  bool operator>(const Key& o) const { return time != o.time ? time > o.time : seq > o.seq; }
  bool operator==(const Key& o) const { return time == o.time && seq == o.seq; }
  struct Less {
    bool operator()(const Key& a, const Key& b) const { return a.time != b.time ? a.time < b.time : a.seq < b.seq; }
  };
};

TEST(QuadHeap, MatchesStdPriorityQueueOnInterleavedPushAndPop) {
  for (int coarse : {1, 4, 1000000}) {  // few distinct times (ties everywhere) to almost none
    std::mt19937_64 rng(42 + coarse);
    QuadHeap<Key, Key::Less> q;
    std::priority_queue<Key, std::vector<Key>, std::greater<Key>> ref;
    uint64_t seq = 0;
    double now = 0;
    for (int step = 0; step < 20000; ++step) {
      // Grow to a few hundred elements, then shrink to empty, then grow again.
      const bool grow = (step / 2000) % 2 == 0;
      if (ref.empty() || rng() % 100 < (grow ? 70u : 30u)) {
        const Key k{now + static_cast<double>(rng() % static_cast<uint64_t>(coarse)), seq++};
        q.push(k);
        ref.push(k);
      } else {
        ASSERT_EQ(q.top(), ref.top()) << "step " << step;
        now = ref.top().time;  // times only grow, as in the engine
        q.pop();
        ref.pop();
      }
      ASSERT_EQ(q.size(), ref.size());
      ASSERT_EQ(q.empty(), ref.empty());
    }
    while (!ref.empty()) {
      ASSERT_EQ(q.top(), ref.top());
      q.pop();
      ref.pop();
    }
    EXPECT_TRUE(q.empty());
  }
}

TEST(QuadHeap, EdgesOneElementEqualKeysAndRefill) {
  QuadHeap<Key, Key::Less> q;
  EXPECT_TRUE(q.empty());
  q.push({3.0, 0});
  EXPECT_EQ(q.top(), (Key{3.0, 0}));
  q.pop();
  EXPECT_TRUE(q.empty());
  // Identical keys: all come out, whatever their order.
  for (int i = 0; i < 9; ++i) q.push({1.0, 7});
  for (int i = 0; i < 9; ++i) {
    EXPECT_EQ(q.top(), (Key{1.0, 7}));
    q.pop();
  }
  EXPECT_TRUE(q.empty());
  // Sizes 1..6 around the first level's four children, pushed in descending order.
  for (int n = 1; n <= 6; ++n) {
    for (int i = n; i > 0; --i) q.push({static_cast<double>(i), static_cast<uint64_t>(i)});
    for (int i = 1; i <= n; ++i) {
      ASSERT_EQ(q.top().seq, static_cast<uint64_t>(i)) << "size " << n;
      q.pop();
    }
    EXPECT_TRUE(q.empty());
  }
  q.push({2.0, 1});
  q.clear();
  EXPECT_EQ(q.size(), 0u);
}

}  // namespace
}  // namespace ppu
