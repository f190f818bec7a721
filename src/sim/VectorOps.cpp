#include "sim/VectorOps.hpp"

#include <cmath>
#include <cstring>
#include <limits>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "sim/VectorOps.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>
#include <hwy/contrib/math/math-inl.h>

HWY_BEFORE_NAMESPACE();
namespace ppu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// exp with the guards the polynomial needs: 0 below the smallest normal's log, inf above overflow.
template <class D, class V>
HWY_INLINE V SafeExp(D d, V x) {
  const V lo = hn::Set(d, -87.3f), hi = hn::Set(d, 88.72f);
  V e = hn::Exp(d, hn::Min(hn::Max(x, lo), hi));
  e = hn::IfThenElse(hn::Lt(x, lo), hn::Zero(d), e);
  e = hn::IfThenElse(hn::Gt(x, hi), hn::Set(d, std::numeric_limits<float>::infinity()), e);
  return hn::IfThenElse(hn::Eq(x, x), e, x);  // NaN stays NaN
}

template <class D, class V>
HWY_INLINE V ApplyUnary(D d, int op, V x, float imm) {
  const V one = hn::Set(d, 1.0f);
  switch (static_cast<UnaryOp>(op)) {
    case UnaryOp::kCopy: return x;
    case UnaryOp::kNeg: return hn::Neg(x);
    case UnaryOp::kAbs: return hn::Abs(x);
    case UnaryOp::kExp: return SafeExp(d, x);
    case UnaryOp::kLog: {
      // Highway's Log covers normal positive inputs; subnormals are scaled by 2^24 first, and zero,
      // negatives, inf and NaN get their IEEE results.
      const V fmin = hn::Set(d, std::numeric_limits<float>::min());
      const auto sub = hn::Lt(x, fmin);
      const V xs = hn::IfThenElse(sub, hn::Mul(x, hn::Set(d, 16777216.0f)), x);
      V r = hn::Log(d, hn::Max(xs, fmin));
      r = hn::IfThenElse(sub, hn::Sub(r, hn::Set(d, 16.635532333438686f)), r);  // 24 ln 2
      r = hn::IfThenElse(hn::Eq(x, hn::Zero(d)), hn::Set(d, -std::numeric_limits<float>::infinity()), r);
      r = hn::IfThenElse(hn::Lt(x, hn::Zero(d)), hn::Set(d, std::numeric_limits<float>::quiet_NaN()), r);
      r = hn::IfThenElse(hn::Eq(x, hn::Set(d, std::numeric_limits<float>::infinity())), x, r);
      return hn::IfThenElse(hn::Eq(x, x), r, x);
    }
    case UnaryOp::kSqrt: return hn::Sqrt(x);
    case UnaryOp::kRsqrt: return hn::Div(one, hn::Sqrt(x));
    case UnaryOp::kRecip: return hn::Div(one, x);
    case UnaryOp::kSquare: return hn::Mul(x, x);
    case UnaryOp::kRelu: return hn::Max(x, hn::Zero(d));
    case UnaryOp::kSilu: return hn::Div(x, hn::Add(one, SafeExp(d, hn::Neg(x))));
    case UnaryOp::kSigmoid: return hn::Div(one, hn::Add(one, SafeExp(d, hn::Neg(x))));
    case UnaryOp::kTanh: return hn::Tanh(d, x);
    case UnaryOp::kGelu: {
      const V k0 = hn::Set(d, 0.7978845608028654f), k1 = hn::Set(d, 0.044715f), half = hn::Set(d, 0.5f);
      const V inner = hn::Mul(k0, hn::Add(x, hn::Mul(k1, hn::Mul(x, hn::Mul(x, x)))));
      return hn::Mul(hn::Mul(half, x), hn::Add(one, hn::Tanh(d, inner)));
    }
    case UnaryOp::kScale: return hn::Mul(x, hn::Set(d, imm));
    case UnaryOp::kAddImm: return hn::Add(x, hn::Set(d, imm));
    case UnaryOp::kCount: break;
  }
  return x;
}

template <class D, class V>
HWY_INLINE V ApplyBinary(int op, V a, V b) {
  switch (static_cast<BinaryOp>(op)) {
    case BinaryOp::kAdd: return hn::Add(a, b);
    case BinaryOp::kSub: return hn::Sub(a, b);
    case BinaryOp::kMul: return hn::Mul(a, b);
    case BinaryOp::kDiv: return hn::Div(a, b);
    case BinaryOp::kMax: return hn::Max(a, b);
    case BinaryOp::kMin: return hn::Min(a, b);
    case BinaryOp::kCmpGt: return hn::IfThenElseZero(hn::Gt(a, b), hn::Set(D(), 1.0f));
    case BinaryOp::kCmpEq: return hn::IfThenElseZero(hn::Eq(a, b), hn::Set(D(), 1.0f));
    case BinaryOp::kSelect:  // handled by the callers, which also read dst
    case BinaryOp::kCount: break;
  }
  return a;
}

// Full vectors, then the tail through a padded buffer so that every element goes through the same
// vector code (and so gets the same approximation).
void UnaryImpl(int op, const float* src, float* dst, int64_t n, float imm) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  int64_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(ApplyUnary(d, op, hn::LoadU(d, src + i), imm), d, dst + i);
  if (i < n) {
    HWY_ALIGN float buf[hn::MaxLanes(d)] = {};
    std::memcpy(buf, src + i, static_cast<size_t>(n - i) * sizeof(float));
    hn::Store(ApplyUnary(d, op, hn::Load(d, buf), imm), d, buf);
    std::memcpy(dst + i, buf, static_cast<size_t>(n - i) * sizeof(float));
  }
}

// dst[i] = a[i] != 0 ? b[i] (or the scalar b) : dst[i]. A plain copy decides per element, so the
// tails need no special care.
void SelectImpl(const float* a, const float* b, float b_scalar, float* dst, int64_t n) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const auto zero = hn::Zero(d);
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    const auto bv = b ? hn::LoadU(d, b + i) : hn::Set(d, b_scalar);
    // "a == 0 keeps dst" rather than "a != 0 takes b": x86's Ne is ordered, false for NaN.
    const auto keep = hn::Eq(hn::LoadU(d, a + i), zero);
    hn::StoreU(hn::IfThenElse(keep, hn::LoadU(d, dst + i), bv), d, dst + i);
  }
  for (; i < n; ++i)
    if (a[i] != 0.0f) dst[i] = b ? b[i] : b_scalar;
}

void BinaryImpl(int op, const float* a, const float* b, float* dst, int64_t n) {
  if (static_cast<BinaryOp>(op) == BinaryOp::kSelect) return SelectImpl(a, b, 0.0f, dst, n);
  const hn::ScalableTag<float> d;
  using V = hn::Vec<decltype(d)>;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  int64_t i = 0;
  for (; i + N <= n; i += N)
    hn::StoreU(ApplyBinary<decltype(d), V>(op, hn::LoadU(d, a + i), hn::LoadU(d, b + i)), d, dst + i);
  for (; i < n; ++i) {  // tail: one lane at a time (IEEE ops give the same bits as the vector code)
    const auto d1 = hn::CappedTag<float, 1>();
    using V1 = hn::Vec<decltype(d1)>;
    hn::StoreU(ApplyBinary<decltype(d1), V1>(op, hn::LoadU(d1, a + i), hn::LoadU(d1, b + i)), d1, dst + i);
  }
}

void BinaryScalarImpl(int op, const float* a, float b, float* dst, int64_t n) {
  if (static_cast<BinaryOp>(op) == BinaryOp::kSelect) return SelectImpl(a, nullptr, b, dst, n);
  const hn::ScalableTag<float> d;
  using V = hn::Vec<decltype(d)>;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const V bv = hn::Set(d, b);
  int64_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(ApplyBinary<decltype(d), V>(op, hn::LoadU(d, a + i), bv), d, dst + i);
  for (; i < n; ++i) {
    const auto d1 = hn::CappedTag<float, 1>();
    using V1 = hn::Vec<decltype(d1)>;
    hn::StoreU(ApplyBinary<decltype(d1), V1>(op, hn::LoadU(d1, a + i), hn::Set(d1, b)), d1, dst + i);
  }
}

// Maximum of the non-NaN values among x[0, n) (-inf if there are none). hn::Max is not used: on
// x86 it returns its second operand when either is NaN, which would forget a lane's maximum.
float MaxIgnoringNaN(const float* x, int64_t n) {
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  auto acc = hn::Set(d, -std::numeric_limits<float>::infinity());
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    const auto v = hn::LoadU(d, x + i);
    acc = hn::IfThenElse(hn::Gt(v, acc), v, acc);  // NaN compares false
  }
  float r = hn::GetLane(hn::MaxOfLanes(d, acc));
  for (; i < n; ++i)
    if (x[i] > r) r = x[i];
  return r;
}

float ReduceImpl(int op, const float* x, int64_t n) {
  if (static_cast<ReduceOp>(op) == ReduceOp::kMax) return MaxIgnoringNaN(x, n);
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  auto acc = hn::Zero(d);
  int64_t i = 0;
  for (; i + N <= n; i += N) acc = hn::Add(acc, hn::LoadU(d, x + i));
  float r = hn::GetLane(hn::SumOfLanes(d, acc));
  for (; i < n; ++i) r += x[i];
  return r;
}

// First index of the maximum of the non-NaN values (0 if all are NaN): the maximum, then the first
// element equal to it (-0 and +0 are equal, as in a sequential `x[i] > best` scan).
int64_t ArgMaxImpl(const float* x, int64_t n) {
  const float m = MaxIgnoringNaN(x, n);
  const hn::ScalableTag<float> d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const auto mv = hn::Set(d, m);
  int64_t i = 0;
  for (; i + N <= n; i += N) {
    const intptr_t j = hn::FindFirstTrue(d, hn::Eq(hn::LoadU(d, x + i), mv));
    if (j >= 0) return i + j;
  }
  for (; i < n; ++i)
    if (x[i] == m) return i;
  return 0;
}

}  // namespace HWY_NAMESPACE
}  // namespace ppu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "sim/HostIsa.hpp"

namespace ppu {
HWY_EXPORT(UnaryImpl);
HWY_EXPORT(BinaryImpl);
HWY_EXPORT(BinaryScalarImpl);
HWY_EXPORT(ReduceImpl);
HWY_EXPORT(ArgMaxImpl);

void vec_unary(UnaryOp op, const float* src, float* dst, int64_t n, float imm) {
  init_host_isa_from_env();
  HWY_DYNAMIC_DISPATCH(UnaryImpl)(static_cast<int>(op), src, dst, n, imm);
}
void vec_binary(BinaryOp op, const float* a, const float* b, float* dst, int64_t n) {
  init_host_isa_from_env();
  HWY_DYNAMIC_DISPATCH(BinaryImpl)(static_cast<int>(op), a, b, dst, n);
}
void vec_binary_scalar(BinaryOp op, const float* a, float b, float* dst, int64_t n) {
  init_host_isa_from_env();
  HWY_DYNAMIC_DISPATCH(BinaryScalarImpl)(static_cast<int>(op), a, b, dst, n);
}
float vec_reduce(ReduceOp op, const float* x, int64_t n) {
  init_host_isa_from_env();
  return HWY_DYNAMIC_DISPATCH(ReduceImpl)(static_cast<int>(op), x, n);
}
int64_t vec_argmax(const float* x, int64_t n) {
  init_host_isa_from_env();
  return HWY_DYNAMIC_DISPATCH(ArgMaxImpl)(x, n);
}
}  // namespace ppu
#endif
