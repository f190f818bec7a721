// The read loop of bench_host_decode's memory roof, compiled by Highway for every SIMD target of the
// architecture and dispatched to the widest this CPU has (the width the decode kernels read with).
// Why not a plain loop: without -march the compiler uses 16-byte loads, and a core that can keep
// only so many loads in flight then reads less than the wide loads of the decode kernels do. Why four
// streams: one sequential stream per core leaves bandwidth unused here (measured on the 2-core
// development host: 30 GB/s with one stream per thread, 38 GB/s with four, 35 with eight), and the
// decode kernels walk four weight rows at a time; the roof should be the best read this host can do.
#include <cstddef>
#include <cstdint>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "bench/read_bandwidth.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

HWY_BEFORE_NAMESPACE();
namespace bench {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

uint64_t SumWordsImpl(const uint64_t* p, size_t n) {
  const hn::ScalableTag<uint64_t> d;
  const size_t N = hn::Lanes(d), q = n / 4 / N * N;
  auto a = hn::Zero(d), b = a, c = a, e = a;
  for (size_t i = 0; i < q; i += N) {
    a = hn::Add(a, hn::LoadU(d, p + i));
    b = hn::Add(b, hn::LoadU(d, p + q + i));
    c = hn::Add(c, hn::LoadU(d, p + 2 * q + i));
    e = hn::Add(e, hn::LoadU(d, p + 3 * q + i));
  }
  uint64_t sum = hn::GetLane(hn::SumOfLanes(d, hn::Add(hn::Add(a, b), hn::Add(c, e))));
  for (size_t i = 4 * q; i < n; ++i) sum += p[i];
  return sum;
}

}  // namespace HWY_NAMESPACE
}  // namespace bench
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace bench {
HWY_EXPORT(SumWordsImpl);
}  // namespace bench

// Sum of p[0..n), reading the four quarters of the range together.
uint64_t sum_words_wide(const uint64_t* p, size_t n) { return HWY_DYNAMIC_DISPATCH(bench::SumWordsImpl)(p, n); }
#endif
