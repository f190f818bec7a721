// Portable matrix-unit kernels: one source compiled by Highway for every SIMD target of the
// architecture (x86: AVX-512, AVX2+FMA, SSE4, SSSE3, portable C++; Arm: SVE, NEON), the widest the
// CPU has chosen at run time (HWY_DYNAMIC_DISPATCH; sim/HostIsa can narrow the choice).
//
// Blocked path (any m, every transpose, every matrix dtype) - the GotoBLAS/BLIS structure (Goto and
// van de Geijn, "Anatomy of high-performance matrix multiplication", ACM TOMS 34(3), 2008; Van Zee
// and van de Geijn, "BLIS", ACM TOMS 41(3), 2015):
// - k is cut into chunks of kKc; per chunk, A is widened to fp32 as it is stored - [m][kc] or, for
//   A stored [k, m], [kc][m] - rows past m zero. No interleaved copy: the micro-kernel broadcasts
//   from kMR row pointers (or kMR neighbours), which measured faster on the AVX2 development host
//   than packing A into [block][p][kMR] (the copy cost more than the contiguous reads saved);
// - per panel of kNR = 2 vectors of columns, that k-chunk of B is widened and packed ([p][kNR], zero
//   columns past n): 2 KiB per k step on AVX-512, 1 KiB on AVX2, so a 256-deep panel stays in L1
//   while every row block of A streams past it (kernels/Gemm's tiles issue k = 64 to 128 per call
//   for 16-bit inputs, up to 512 for small m; A's chunk is at most 256 rows x 256 x 4 B = 256 KiB);
// - the micro-kernel keeps kMR x 2 vectors of C in registers (6 x 16 fp32 on AVX2: 12 of the 16
//   ymm registers, plus 2 for B and 1 for the broadcast of A), so each k step costs 2 loads of B
//   and kMR broadcasts for 2 kMR FMAs. The same 6 x 2-vector shape is used on every target: it fits
//   16 registers (SSE4, AVX2) and leaves AVX-512's 32 room; no arrays of vectors, so that it also
//   compiles for SVE's sizeless vector types.
// Each output is c + a_0 b_0 + a_1 b_1 + ... in increasing p, one fp32 rounding per addition (FMA
// or multiply-add: a product of two bf16/fp16/fp8 values is exact in fp32, so the two agree). Hence
// the result is identical on every target, for every blocking, and to a sequential fp32 loop.
//
// Dot path (decode: m <= 4 rows of activations times a weight matrix stored [n, k], bf16 or fp16):
// no packing of B - each weight is read once, straight from memory, so this path is as fast as the
// memory system reads. Four rows of B a quarter of n apart are walked together (four sequential
// streams; two, half of n apart, for m > 2, to keep m x streams accumulators in registers; see MmaAvx512.cpp for the measurement behind that and the prefetch distance), the row a
// few KiB further along each stream is prefetched, and A is widened once per call. bf16 is widened
// in pairs: a 32-bit lane holding (B[2l], B[2l+1]) gives B[2l+1] as an fp32 by masking its low half
// and B[2l] by shifting it up, so A is packed in the same even/odd order (as Highway's
// ReorderWidenMulAccumulate does). Sums: one vector accumulator per output, one horizontal sum.
#include "sim/MmaPortable.hpp"

#include <algorithm>
#include <cstring>

#include "sim/Mma.hpp"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "sim/MmaPortable.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/cache_control.h>
#include <hwy/highway.h>

HWY_BEFORE_NAMESPACE();
namespace ppu::detail {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;

constexpr int kMR = 6;     // rows of a micro-tile
constexpr int kKc = 256;   // k per packed chunk

int64_t PortableTarget() { return HWY_TARGET; }

// N fp16 values at p as fp32, exactly (subnormals, inf and NaN included). F16C's VCVTPH2PS on x86
// AVX2/AVX-512; elsewhere integer arithmetic, because Highway 1.0.3's software PromoteTo (SSE4,
// SSSE3, the C++ fallback, Arm without fp16 conversions) turns inf and NaN into finite numbers.
HWY_INLINE hn::Vec<DF> F16ToF32(const uint16_t* p) {
  const DF d;
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2 && !defined(HWY_DISABLE_F16C)
  return hn::PromoteTo(d, hn::LoadU(hn::Rebind<hwy::float16_t, DF>(), reinterpret_cast<const hwy::float16_t*>(p)));
#else
  const hn::RebindToUnsigned<DF> du;
  const hn::RebindToSigned<DF> di;
  const auto bits = hn::PromoteTo(du, hn::LoadU(hn::Rebind<uint16_t, DF>(), p));
  const auto sign = hn::ShiftLeft<16>(hn::And(bits, hn::Set(du, 0x8000u)));
  const auto exp = hn::And(hn::ShiftRight<10>(bits), hn::Set(du, 0x1Fu));
  const auto mant = hn::And(bits, hn::Set(du, 0x3FFu));
  const auto normal = hn::Or(hn::ShiftLeft<23>(hn::Add(exp, hn::Set(du, 112u))), hn::ShiftLeft<13>(mant));
  const auto inf_nan = hn::Or(hn::Set(du, 0x7F800000u), hn::ShiftLeft<13>(mant));
  const auto sub = hn::BitCast(du, hn::Mul(hn::ConvertTo(d, hn::BitCast(di, mant)), hn::Set(d, 1.0f / 16777216.0f)));
  auto r = hn::IfThenElse(hn::Eq(exp, hn::Zero(du)), sub, normal);
  r = hn::IfThenElse(hn::Eq(exp, hn::Set(du, 0x1Fu)), inf_nan, r);
  return hn::BitCast(d, hn::Or(sign, r));
#endif
}

// dst[0..n) = src[0..n) of dtype t as fp32: bf16 and fp16 with SIMD, fp8 through DType's tables.
HWY_INLINE void Widen(DType t, const unsigned char* src, float* HWY_RESTRICT dst, int n) {
  const DF d;
  const int N = static_cast<int>(hn::Lanes(d));
  int i = 0;
  if (t == DType::kBF16) {
    const hn::RebindToUnsigned<DF> du;
    const hn::Rebind<uint16_t, DF> du16;
    const auto* s16 = reinterpret_cast<const uint16_t*>(src);
    for (; i + N <= n; i += N)
      hn::StoreU(hn::BitCast(d, hn::ShiftLeft<16>(hn::PromoteTo(du, hn::LoadU(du16, s16 + i)))), d, dst + i);
  } else if (t == DType::kF16) {
    const auto* h = reinterpret_cast<const uint16_t*>(src);
    for (; i + N <= n; i += N) hn::StoreU(F16ToF32(h + i), d, dst + i);
  }
  if (i < n) convert_to_f32(t, src + int64_t{i} * dtype_size_bytes(t), dst + i, n - i);
}

// C[0..MR) x [0..2N) (row stride ldc) (+)= A Bp over kc steps; Bp: [kc][2N]; A[r][p] at
// ap[r * as + p] (kRowA) or ap[p * as + r].
template <int MR, bool kRowA>
HWY_INLINE void Micro(const float* HWY_RESTRICT ap, int64_t as, const float* HWY_RESTRICT bp, int kc,
                      float* HWY_RESTRICT c, int64_t ldc, bool accumulate) {
  const DF d;
  const size_t N = hn::Lanes(d);
  using V = hn::Vec<DF>;
  V c00 = hn::Zero(d), c01 = hn::Zero(d), c10 = hn::Zero(d), c11 = hn::Zero(d), c20 = hn::Zero(d), c21 = hn::Zero(d);
  V c30 = hn::Zero(d), c31 = hn::Zero(d), c40 = hn::Zero(d), c41 = hn::Zero(d), c50 = hn::Zero(d), c51 = hn::Zero(d);
#define PPU_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)
#define PPU_LOAD_C(r)                            \
  if constexpr (MR > r) {                        \
    c##r##0 = hn::LoadU(d, c + r * ldc);         \
    c##r##1 = hn::LoadU(d, c + r * ldc + N);     \
  }
#define PPU_FMA(r)                               \
  if constexpr (MR > r) {                        \
    const V a = hn::Set(d, kRowA ? a##r[p] : ap[r]); \
    c##r##0 = hn::MulAdd(a, b0, c##r##0);        \
    c##r##1 = hn::MulAdd(a, b1, c##r##1);        \
  }
#define PPU_STORE_C(r)                           \
  if constexpr (MR > r) {                        \
    hn::StoreU(c##r##0, d, c + r * ldc);         \
    hn::StoreU(c##r##1, d, c + r * ldc + N);     \
  }
  if (accumulate) {
    PPU_ROWS(PPU_LOAD_C)
  }
  // kRowA: one pointer per row, indexed by p (base + index addressing; per-row offsets kept in
  // registers were spilled and measured slower). Unused otherwise.
  const float* const a0 = ap;
  const float* const a1 = kRowA && MR > 1 ? ap + as : ap;
  const float* const a2 = kRowA && MR > 2 ? ap + 2 * as : ap;
  const float* const a3 = kRowA && MR > 3 ? ap + 3 * as : ap;
  const float* const a4 = kRowA && MR > 4 ? ap + 4 * as : ap;
  const float* const a5 = kRowA && MR > 5 ? ap + 5 * as : ap;
  for (int p = 0; p < kc; ++p, ap += kRowA ? 0 : as, bp += 2 * N) {
    const V b0 = hn::LoadU(d, bp), b1 = hn::LoadU(d, bp + N);
    PPU_ROWS(PPU_FMA)
  }
  PPU_ROWS(PPU_STORE_C)
#undef PPU_ROWS
#undef PPU_LOAD_C
#undef PPU_FMA
#undef PPU_STORE_C
}

template <bool kRowA>
HWY_INLINE void MicroRows(int rows, const float* ap, int64_t as, const float* bp, int kc, float* c, int64_t ldc,
                          bool accumulate) {
  switch (rows) {
    case 1: return Micro<1, kRowA>(ap, as, bp, kc, c, ldc, accumulate);
    case 2: return Micro<2, kRowA>(ap, as, bp, kc, c, ldc, accumulate);
    case 3: return Micro<3, kRowA>(ap, as, bp, kc, c, ldc, accumulate);
    case 4: return Micro<4, kRowA>(ap, as, bp, kc, c, ldc, accumulate);
    case 5: return Micro<5, kRowA>(ap, as, bp, kc, c, ldc, accumulate);
    default: return Micro<6, kRowA>(ap, as, bp, kc, c, ldc, accumulate);
  }
}

HWY_INLINE void MicroAny(bool row_a, int rows, const float* ap, int64_t as, const float* bp, int kc, float* c,
                         int64_t ldc, bool accumulate) {
  if (row_a) return MicroRows<true>(rows, ap, as, bp, kc, c, ldc, accumulate);
  MicroRows<false>(rows, ap, as, bp, kc, c, ldc, accumulate);
}

void PanelsImpl(DType t, const void* a, int lda, bool ta, const void* b, int ldb, bool tb, float* c, int ldc, int m,
                int n, int k, bool accumulate, MmaScratch* s) {
  const DF d;
  const int W = 2 * static_cast<int>(hn::Lanes(d));  // columns per panel
  const int64_t es = dtype_size_bytes(t);
  const auto* ab = static_cast<const unsigned char*>(a);
  const auto* bb = static_cast<const unsigned char*>(b);
  if (k <= 0) {
    if (!accumulate)
      for (int i = 0; i < m; ++i) std::fill_n(c + int64_t{i} * ldc, n, 0.0f);
    return;
  }
  const int mblocks = (m + kMR - 1) / kMR, mpad = mblocks * kMR;
  const int kc_max = std::min(k, kKc);
  s->a32.resize(static_cast<size_t>(mblocks) * kMR * kc_max);
  s->b32.resize(static_cast<size_t>(kc_max) * W);
  s->row.resize(static_cast<size_t>(std::max({m, kc_max, W})));
  float* ap = s->a32.data();
  float* bp = s->b32.data();
  float* row = s->row.data();
  HWY_ALIGN float tile[kMR * 2 * hn::MaxLanes(d)];  // an edge micro-tile's C
  for (int pc = 0; pc < k; pc += kKc) {
    const int kc = std::min(kKc, k - pc);
    // A chunk -> fp32, rows past m zero: row-major [mpad][kc] if A is stored [m, k], its transpose
    // [kc][mpad] if A is stored [k, m] - both plain widening copies of A's rows; the micro-kernel
    // broadcasts kMR values of one k step from kMR row pointers, or from kMR neighbours.
    if (!ta) {
      std::fill(ap + static_cast<size_t>(m) * kc, ap + static_cast<size_t>(mpad) * kc, 0.0f);
      for (int i = 0; i < m; ++i) Widen(t, ab + (int64_t{i} * lda + pc) * es, ap + static_cast<size_t>(i) * kc, kc);
    } else {
      // A^T [kc][mpad]: row p widened in place, the pad columns zero.
      for (int p = 0; p < kc; ++p) {
        float* dst = ap + static_cast<size_t>(p) * mpad;
        Widen(t, ab + int64_t{pc + p} * lda * es, dst, m);
        std::fill(dst + m, dst + mpad, 0.0f);
      }
    }
    const bool acc_here = accumulate || pc > 0;
    for (int j0 = 0; j0 < n; j0 += W) {
      const int nc = std::min(W, n - j0);
      // B chunk of this panel -> [p][W]; columns past n are zero.
      if (!tb) {
        for (int p = 0; p < kc; ++p) {
          float* dst = bp + static_cast<size_t>(p) * W;
          Widen(t, bb + (int64_t{pc + p} * ldb + j0) * es, dst, nc);
          std::fill(dst + nc, dst + W, 0.0f);
        }
      } else {
        if (nc < W) std::fill(bp, bp + static_cast<size_t>(kc) * W, 0.0f);
        for (int l = 0; l < nc; ++l) {
          Widen(t, bb + (int64_t{j0 + l} * ldb + pc) * es, row, kc);
          for (int p = 0; p < kc; ++p) bp[static_cast<size_t>(p) * W + l] = row[p];
        }
      }
      for (int mb = 0; mb < mblocks; ++mb) {
        const int rows = std::min(kMR, m - mb * kMR);
        const float* apb = ap + (ta ? static_cast<size_t>(mb) * kMR : static_cast<size_t>(mb) * kMR * kc);
        const int64_t as = ta ? mpad : kc;
        float* cc = c + int64_t{mb} * kMR * ldc + j0;
        if (nc == W) {
          MicroAny(!ta, rows, apb, as, bp, kc, cc, ldc, acc_here);
          continue;
        }
        // Edge panel: through a full-width copy of the valid columns (the rest is never stored).
        for (int r = 0; r < rows; ++r)
          for (int l = 0; l < W; ++l) tile[r * W + l] = acc_here && l < nc ? cc[int64_t{r} * ldc + l] : 0.0f;
        MicroAny(!ta, rows, apb, as, bp, kc, tile, W, acc_here);
        for (int r = 0; r < rows; ++r) std::memcpy(cc + int64_t{r} * ldc, tile + r * W, sizeof(float) * nc);
      }
    }
  }
}

// ---- dot path

// The two fp32 halves of a chunk of 2N elements of B (bf16: even and odd elements; fp16: first and
// second N), in the order A was packed in.
template <bool kBF16>
HWY_INLINE void LoadChunk(const uint16_t* p, hn::Vec<DF>& lo, hn::Vec<DF>& hi) {
  const DF d;
  if constexpr (kBF16) {
    const hn::RebindToUnsigned<DF> du;
    const auto v = hn::LoadU(du, reinterpret_cast<const uint32_t*>(p));
    lo = hn::BitCast(d, hn::ShiftLeft<16>(v));
    hi = hn::BitCast(d, hn::And(v, hn::Set(du, 0xFFFF0000u)));
  } else {
    lo = F16ToF32(p);
    hi = F16ToF32(p + hn::Lanes(d));
  }
}

// Outputs j0 + jj * stride for jj < J, all M rows; `ap`: A packed [M][chunks][2N] in LoadChunk's
// order; the row `ahead` further along each stream is prefetched.
template <bool kBF16, int M, int J>
HWY_NOINLINE void DotRows(const float* HWY_RESTRICT ap, int64_t apstride, const uint16_t* b, int64_t ldb, float* c,
                          int64_t ldc, int n, int j0, int stride, int ahead, int full, int rem, bool accumulate) {
  const DF d;
  const size_t N = hn::Lanes(d);
  using V = hn::Vec<DF>;
  const uint16_t* br[4];
  const char* pf[4];
  for (int jj = 0; jj < 4; ++jj) {
    const int j = j0 + (jj < J ? jj : 0) * stride;
    br[jj] = b + int64_t{j} * ldb;
    pf[jj] = reinterpret_cast<const char*>(b + int64_t{j + ahead < n ? j + ahead : n - 1} * ldb);
  }
  V s00 = hn::Zero(d), s01 = hn::Zero(d), s02 = hn::Zero(d), s03 = hn::Zero(d);
  V s10 = hn::Zero(d), s11 = hn::Zero(d), s12 = hn::Zero(d), s13 = hn::Zero(d);
  V s20 = hn::Zero(d), s21 = hn::Zero(d), s22 = hn::Zero(d), s23 = hn::Zero(d);
  V s30 = hn::Zero(d), s31 = hn::Zero(d), s32 = hn::Zero(d), s33 = hn::Zero(d);
  V l0 = hn::Zero(d), h0 = l0, l1 = l0, h1 = l0, l2 = l0, h2 = l0, l3 = l0, h3 = l0;
#define PPU_STREAMS(X) X(0) X(1) X(2) X(3)
#define PPU_ROWS(X) X(0) X(1) X(2) X(3)
#define PPU_LOADB(j) \
  if constexpr (J > j) LoadChunk<kBF16>(br[j] + boff, l##j, h##j);
#define PPU_PREFETCH(j) \
  if constexpr (J > j) hwy::Prefetch(pf[j] + off * 2);
#define PPU_DOT_ROW(r)                                               \
  if constexpr (M > r) {                                             \
    const V al = hn::LoadU(d, ap + r * apstride + off);              \
    const V ah = hn::LoadU(d, ap + r * apstride + off + N);          \
    if constexpr (J > 0) s##r##0 = hn::MulAdd(ah, h0, hn::MulAdd(al, l0, s##r##0)); \
    if constexpr (J > 1) s##r##1 = hn::MulAdd(ah, h1, hn::MulAdd(al, l1, s##r##1)); \
    if constexpr (J > 2) s##r##2 = hn::MulAdd(ah, h2, hn::MulAdd(al, l2, s##r##2)); \
    if constexpr (J > 3) s##r##3 = hn::MulAdd(ah, h3, hn::MulAdd(al, l3, s##r##3)); \
  }
  int64_t off = 0, boff = 0;  // elements into the rows of A and of B
  for (int q = 0; q < full; ++q, off += 2 * N) {
    boff = off;
    PPU_STREAMS(PPU_LOADB)
    PPU_STREAMS(PPU_PREFETCH)
    PPU_ROWS(PPU_DOT_ROW)
  }
  if (rem) {  // the last partial chunk, through a zero-padded copy (A is zero-padded already)
    HWY_ALIGN uint16_t tail[4][2 * hn::MaxLanes(d)];
    for (int jj = 0; jj < J; ++jj) {
      std::fill(tail[jj], tail[jj] + 2 * N, uint16_t{0});
      std::memcpy(tail[jj], br[jj] + off, sizeof(uint16_t) * rem);
      br[jj] = tail[jj];
    }
    boff = 0;
    PPU_STREAMS(PPU_LOADB)
    PPU_ROWS(PPU_DOT_ROW)
  }
#define PPU_SUM_ONE(r, j)                                                     \
  if constexpr (M > r && J > j) {                                             \
    const float v = hn::GetLane(hn::SumOfLanes(d, s##r##j));                  \
    float& out = c[int64_t{r} * ldc + j0 + int64_t{j} * stride];              \
    out = accumulate ? out + v : v;                                           \
  }
#define PPU_SUM_ROW(r) PPU_SUM_ONE(r, 0) PPU_SUM_ONE(r, 1) PPU_SUM_ONE(r, 2) PPU_SUM_ONE(r, 3)
  PPU_ROWS(PPU_SUM_ROW)
#undef PPU_STREAMS
#undef PPU_ROWS
#undef PPU_LOADB
#undef PPU_PREFETCH
#undef PPU_DOT_ROW
#undef PPU_SUM_ONE
#undef PPU_SUM_ROW
}

// Prefetch distance along each stream (bytes), as in MmaAvx512.cpp.
constexpr int64_t kDotPrefetchBytes = 4096;

template <bool kBF16, int M>
void DotM(const float* ap, int64_t apstride, const uint16_t* b, int ldb, float* c, int ldc, int n, int k,
          bool accumulate) {
  const DF d;
  const int C = 2 * static_cast<int>(hn::Lanes(d));
  const int full = k / C, rem = k - full * C;
  // Four streams for one or two rows of A; two for more (register pressure: M x J accumulators).
  constexpr int J = M <= 2 ? 4 : 2;
  const int part = n / J;
  const int64_t row_bytes = int64_t{ldb} * 2;
  const int ahead = static_cast<int>(std::max<int64_t>(1, (kDotPrefetchBytes + row_bytes - 1) / row_bytes));
  for (int j = 0; j < part; ++j)
    DotRows<kBF16, M, J>(ap, apstride, b, ldb, c, ldc, n, j, part, ahead, full, rem, accumulate);
  for (int j = J * part; j < n; ++j)
    DotRows<kBF16, M, 1>(ap, apstride, b, ldb, c, ldc, n, j, 1, ahead, full, rem, accumulate);
}

void DotImpl(DType t, const uint16_t* a, int lda, const uint16_t* b, int ldb, float* c, int ldc, int m, int n, int k,
             bool accumulate, MmaScratch* s) {
  const DF d;
  const int N = static_cast<int>(hn::Lanes(d)), C = 2 * N;
  const int chunks = (k + C - 1) / C;
  const int64_t apstride = int64_t{chunks} * C;
  s->a32.assign(static_cast<size_t>(m * apstride), 0.0f);
  s->row.resize(static_cast<size_t>(k));
  const bool bf16 = t == DType::kBF16;
  for (int i = 0; i < m; ++i) {
    float* row = s->row.data();
    Widen(t, reinterpret_cast<const unsigned char*>(a + int64_t{i} * lda), row, k);
    float* dst = s->a32.data() + i * apstride;
    for (int p = 0; p < k; ++p) {
      const int q = p / C, e = p % C;
      // bf16: element e of a chunk is lane e/2 of the even (e even) or odd half.
      const int at = bf16 ? (e & 1) * N + e / 2 : e;
      dst[q * C + at] = row[p];
    }
  }
  const float* ap = s->a32.data();
  switch (m * 2 + (bf16 ? 1 : 0)) {
    case 3: return DotM<true, 1>(ap, apstride, b, ldb, c, ldc, n, k, accumulate);
    case 5: return DotM<true, 2>(ap, apstride, b, ldb, c, ldc, n, k, accumulate);
    case 7: return DotM<true, 3>(ap, apstride, b, ldb, c, ldc, n, k, accumulate);
    case 9: return DotM<true, 4>(ap, apstride, b, ldb, c, ldc, n, k, accumulate);
    case 2: return DotM<false, 1>(ap, apstride, b, ldb, c, ldc, n, k, accumulate);
    case 4: return DotM<false, 2>(ap, apstride, b, ldb, c, ldc, n, k, accumulate);
    case 6: return DotM<false, 3>(ap, apstride, b, ldb, c, ldc, n, k, accumulate);
    case 8: return DotM<false, 4>(ap, apstride, b, ldb, c, ldc, n, k, accumulate);
    default: return;
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace ppu::detail
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace ppu::detail {
HWY_EXPORT(PortableTarget);
HWY_EXPORT(PanelsImpl);
HWY_EXPORT(DotImpl);

int64_t portable_target() { return HWY_DYNAMIC_DISPATCH(PortableTarget)(); }

void mma_portable_panels(DType t, const void* a, int lda, bool trans_a, const void* b, int ldb, bool trans_b, float* c,
                         int ldc, int m, int n, int k, bool accumulate, MmaScratch& s) {
  HWY_DYNAMIC_DISPATCH(PanelsImpl)(t, a, lda, trans_a, b, ldb, trans_b, c, ldc, m, n, k, accumulate, &s);
}

bool mma_portable_dot_supports(DType t) { return t == DType::kBF16 || t == DType::kF16; }

void mma_portable_dot(DType t, const uint16_t* a, int lda, const uint16_t* b, int ldb, float* c, int ldc, int m, int n,
                      int k, bool accumulate, MmaScratch& s) {
  HWY_DYNAMIC_DISPATCH(DotImpl)(t, a, lda, b, ldb, c, ldc, m, n, k, accumulate, &s);
}
}  // namespace ppu::detail
#endif
