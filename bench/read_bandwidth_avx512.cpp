// The read loop of bench_host_decode's memory roof with 64-byte AVX-512 loads. This file alone is
// compiled with a target attribute; call only where the CPU reports avx512f (host_decode.cpp checks).
// Why not a portable loop: without -march the compiler uses 16-byte loads, and a core that can keep
// only so many loads in flight then reads less than the wide loads of the decode kernels do. Why four
// streams: one sequential stream per core leaves bandwidth unused here (measured on the 2-core
// development host: 30 GB/s with one stream per thread, 38 GB/s with four, 35 with eight), and the
// decode kernels walk four weight rows at a time; the roof should be the best read this host can do.
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

// Sum of p[0..n) (n a multiple of 32); p 64-byte aligned. Reads the four quarters of the range
// together.
__attribute__((target("avx512f"))) uint64_t sum_words_avx512(const uint64_t* p, size_t n) {
  const size_t q = n / 4;
  __m512i a = _mm512_setzero_si512(), b = a, c = a, d = a;
  for (size_t i = 0; i < q; i += 8) {
    a = _mm512_add_epi64(a, _mm512_load_si512(p + i));
    b = _mm512_add_epi64(b, _mm512_load_si512(p + q + i));
    c = _mm512_add_epi64(c, _mm512_load_si512(p + 2 * q + i));
    d = _mm512_add_epi64(d, _mm512_load_si512(p + 3 * q + i));
  }
  const __m512i sum = _mm512_add_epi64(_mm512_add_epi64(a, b), _mm512_add_epi64(c, d));
  return static_cast<uint64_t>(_mm512_reduce_add_epi64(sum));
}
