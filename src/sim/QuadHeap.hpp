// QuadHeap: a 4-ary min-heap in a vector, the priority queue of the timing engine's event loop.
//
// Same contract as std::priority_queue<T, std::vector<T>, Greater> with the order reversed to
// `Less` (top() is the smallest element), but half as deep: a pop compares the four children of a
// node, which sit in one or two cache lines, and the engine's queues (a few hundred events or flows)
// stay within three to five levels instead of eight or nine.
//
//   struct ByTime { bool operator()(const Ev& a, const Ev& b) const { return a.t < b.t; } };
//   QuadHeap<Ev, ByTime> q;
//   q.push({2.0}); q.push({1.0});
//   q.top().t;  // 1.0
//   q.pop();
//
// Determinism: which of several elements that compare equal comes out first depends on the order of
// pushes and pops, as with any binary heap. The engine's keys are unique (a sequence number or the
// event's whole payload breaks ties), so its pop order is fixed by the keys alone and is the same as
// std::priority_queue's.
//
// Not here: decrease-key or removal of an arbitrary element; thread safety (one owner).
#pragma once

#include <cstddef>
#include <vector>

namespace ppu {

template <class T, class Less>
class QuadHeap {
 public:
  bool empty() const { return v_.empty(); }
  size_t size() const { return v_.size(); }
  // The smallest element. Precondition: !empty().
  const T& top() const { return v_.front(); }
  void clear() { v_.clear(); }

  void push(const T& x) {
    size_t i = v_.size();
    v_.push_back(x);
    while (i > 0) {
      const size_t p = (i - 1) / 4;
      if (!less_(x, v_[p])) break;
      v_[i] = v_[p];
      i = p;
    }
    v_[i] = x;
  }

  // Removes the smallest element. Precondition: !empty().
  void pop() {
    const T x = v_.back();
    v_.pop_back();
    const size_t n = v_.size();
    if (n == 0) return;
    size_t i = 0;
    for (;;) {
      const size_t c = 4 * i + 1;
      if (c >= n) break;
      size_t m;
      if (c + 3 < n) {  // all four children: the smaller of each pair, then of the two (shallow chain)
        const size_t m01 = less_(v_[c + 1], v_[c]) ? c + 1 : c;
        const size_t m23 = less_(v_[c + 3], v_[c + 2]) ? c + 3 : c + 2;
        m = less_(v_[m23], v_[m01]) ? m23 : m01;
      } else {
        m = c;
        for (size_t j = c + 1; j < n; ++j) m = less_(v_[j], v_[m]) ? j : m;
      }
      if (!less_(v_[m], x)) break;
      v_[i] = v_[m];
      i = m;
    }
    v_[i] = x;
  }

 private:
  std::vector<T> v_;
  [[no_unique_address]] Less less_;
};

}  // namespace ppu
