#include "nn/OpBackward.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <tuple>

#include "arch/Error.hpp"
#include "kernels/ActivationBackward.hpp"
#include "kernels/AttentionBackward.hpp"
#include "kernels/Elementwise.hpp"
#include "kernels/EmbeddingBackward.hpp"
#include "kernels/GatherBackward.hpp"
#include "kernels/Gemm.hpp"
#include "kernels/NormBackward.hpp"
#include "kernels/Optimizer.hpp"
#include "kernels/Rope.hpp"
#include "kernels/RopeBackward.hpp"
#include "kernels/RouterBackward.hpp"

namespace ppu::nn {

namespace {

// Buffers of one backward, freed when it goes out of scope.
struct Scratch {
  Device& dev;
  std::vector<DeviceBuffer> bufs;
  Buffer operator()(DType t, int64_t n, const char* name) {
    bufs.push_back(dev.alloc_owned(t, n, name));
    return bufs.back();
  }
};

double gemm_backward(Device& dev, const Kernel& k, DType in) {
  Scratch buf{dev, {}};
  std::vector<Kernel> dgrad, wgrad;
  for (const KernelOp& o : k.ops) {
    const GemmDims& g = o.gemm_dims();
    const int64_t M = g.m, N = g.n, K = g.k, B = g.batch;
    const Buffer dc = buf(in, B * M * N, "grad_out"), a = buf(in, B * M * K, "saved_a"), b = buf(in, B * K * N, "saved_b");
    // dA [M, K] = dC [M, N] . op(B)^T; dB [K, N] = op(A)^T [K, M] . dC [M, N].
    dgrad.push_back(kernels::make_gemm(dev.chip(), kernels::GemmShape{M, K, N, B, false, !g.trans_b}, dc, b,
                                       buf(in, B * M * K, "grad_a")));
    wgrad.push_back(kernels::make_gemm(dev.chip(), kernels::GemmShape{K, N, M, B, !g.trans_a, false}, a, dc,
                                       buf(DType::kF32, B * K * N, "grad_b")));
  }
  double t = kernels::launch_grouped(dev, k.name + " dgrad", std::move(dgrad)).time_s;
  t += kernels::launch_grouped(dev, k.name + " wgrad", std::move(wgrad)).time_s;
  return t;
}

double attention_backward(Device& dev, const std::map<AttentionDims, int64_t>& groups, DType in,
                          kernels::AttentionStyle style) {
  // Sequences of one batched launch with the same shape run as one backward call.
  double t = 0;
  kernels::AttentionWorkspace ws = kernels::make_attention_workspace(dev);
  for (const auto& [d, count] : groups) {
    kernels::AttentionBackwardShape s;
    s.batch = count * d.batch;
    s.seq_q = d.q_tokens;
    s.seq_k = d.kv_len;
    s.q_heads = d.q_heads;
    s.kv_heads = d.kv_heads;
    s.head_dim = d.head_dim;
    s.causal = d.causal;
    const int64_t qn = s.batch * s.seq_q * s.q_heads * s.head_dim, kn = s.batch * s.seq_k * s.kv_heads * s.head_dim;
    std::vector<DeviceBuffer> b;
    for (auto [n, t_, name] : {std::tuple{qn, in, "q"}, {kn, in, "k"}, {kn, in, "v"}, {qn, in, "o"}, {qn, in, "d_o"},
                               {s.batch * s.q_heads * s.seq_q, DType::kF32, "lse"}, {qn, in, "dq"}, {kn, in, "dk"},
                               {kn, in, "dv"}})
      b.push_back(dev.alloc_owned(t_, n, name));
    kernels::AttentionBackwardConfig cfg;
    cfg.style = style;
    cfg = kernels::choose_attention_backward_config(dev.chip(), s, in, cfg);
    t += kernels::attention_backward(dev, ws, s, b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], nullptr, &cfg)
             .time_s();
  }
  kernels::free_attention_workspace(dev, ws);
  return t;
}

// Ids 0, 1, ..., n - 1 modulo `range`: a spread over the table (the forward's ids are not recorded).
std::vector<int32_t> spread(int64_t n, int64_t range) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = static_cast<int32_t>(i % range);
  return v;
}

// The backward of `count` ops of one row class with dims `d`, as one launch of count x d.rows rows.
double rows_backward(Device& dev, OpClass c, RowDims d, int64_t count, DType in, DType weight) {
  Scratch buf{dev, {}};
  const DType f32 = DType::kF32;
  d.rows *= count;
  const int64_t R = d.rows, C = d.cols;
  switch (c) {
    case OpClass::kRmsNorm:
    case OpClass::kLayerNorm: {  // nn::Graph::norm: the kernels, then dx added into the input's gradient
      const Buffer &x = buf(in, R * C, "saved_x"), &w = buf(weight, C, "weight"), &dy = buf(f32, R * C, "grad_y"),
                   &dx = buf(f32, R * C, "grad_x"), &dw = buf(f32, C, "grad_w"), &gx = buf(f32, R * C, "x.grad");
      double t = c == OpClass::kRmsNorm
                     ? kernels::rms_norm_backward(dev, x, w, dy, dx, dw, R, C, 1e-6f).time_s()
                     : kernels::layer_norm_backward(dev, x, w, dy, dx, dw, buf(f32, C, "grad_b"), R, C, 1e-5f).time_s();
      return t + kernels::binary(dev, BinaryOp::kAdd, gx, dx, gx).time_s;
    }
    case OpClass::kSoftmax: {  // nn::Graph::moe_route's backward; a plain softmax: its Jacobian product
      const bool router = d.k >= 1;
      // The kernel holds a row of at most kRouterTileElems columns: longer rows as several of them.
      const int64_t cols = router ? C : std::min<int64_t>(C, kernels::kRouterTileElems);
      const int64_t rows = router ? R : R * ((C + cols - 1) / cols), k = router ? d.k : 1;
      const Buffer &p = buf(f32, rows * cols, "probs"), &ids = buf(f32, rows * k, "ids"),
                   &dw = buf(f32, rows * k, "grad_weights"), &dl = buf(f32, rows * cols, "grad_logits");
      const Buffer dp = router ? Buffer{} : buf(f32, rows * cols, "grad_probs");
      return kernels::moe_router_backward(dev, p, ids, dw, dp, dl, rows, cols, k, router && d.renormalize).time_s;
    }
    case OpClass::kEmbedding:
    case OpClass::kGather: {
      if (d.source_rows < 1)
        throw UserError(fmt::format("op backward: a '{}' record of {} x {} does not say its source rows; its backward "
                                    "scatters into them",
                                    op_class_name(c), R, C));
      if (c == OpClass::kGather && d.k >= 1) {  // nn::Graph::combine
        const int64_t S = d.source_rows * count, slots = R * d.k;
        if (slots > S)
          throw UserError(fmt::format("op backward: a combine of {} rows x k = {} from {} source rows; each source row "
                                      "is combined once",
                                      R, d.k, S));
        const Buffer &src = buf(in, S * C, "saved_src"), &w = buf(f32, slots, "weights"), &dy = buf(f32, R * C, "grad_y"),
                     &ds = buf(f32, S * C, "grad_src"), &dw = buf(f32, slots, "grad_weights");
        double t = 0;
        if (slots < S) t += kernels::fill(dev, ds, 0.0f).time_s;  // rows no slot names get 0, as nn::Graph does
        return t + kernels::gather_combine_backward(dev, src, C, spread(slots, slots), d.k, w, dy, ds, dw).time_s;
      }
      // nn::Graph::embedding / gather_rows: a zeroed gradient, then the rows' gradients added at their ids.
      const int64_t S = c == OpClass::kGather ? d.source_rows * count : d.source_rows;
      const Buffer &dy = buf(f32, R * C, "grad_rows"), &dt = buf(f32, S * C, "grad_source");
      return kernels::embedding_grad_zero(dev, dt).time_s +
             kernels::embedding_backward(dev, dy, dt, S, C, spread(R, S)).time_s;
    }
    default: break;
  }
  throw UserError(fmt::format("op backward: '{}' has no row backward", op_class_name(c)));
}

double rope_backward(Device& dev, RopeDims d, int64_t count) {
  d.tokens *= count;
  kernels::RopeTable table = kernels::make_rope_table(dev, 1e6, d.head_dim, d.tokens);
  double t = 0;
  {
    Scratch buf{dev, {}};
    const int64_t n = d.tokens * d.heads * d.head_dim;
    const Buffer &dy = buf(DType::kF32, n, "grad_y"), &dx = buf(DType::kF32, n, "grad_x");
    t = kernels::rope_backward(dev, table, dy, dx, d.tokens, d.heads, spread(d.tokens, d.tokens)).time_s;
  }
  kernels::free_rope_table(dev, table);
  return t;
}

double elementwise_backward(Device& dev, ElementwiseDims d, int64_t count, DType in) {
  Scratch buf{dev, {}};
  const DType f32 = DType::kF32;
  const int64_t n = d.numel * count;
  switch (backward_method(KernelOp::elementwise(d))) {
    case BackwardMethod::kNone: return 0;
    case BackwardMethod::kGradientPassedOn: {  // nn::Graph::add / cast: each input's gradient gets a copy
      const Buffer &dy = buf(f32, n, "grad_y"), &dx = buf(f32, n, "grad_x");
      const int copies = d.fn == ElementwiseFn::kAdd ? 2 : 1;
      double t = 0;
      for (int i = 0; i < copies; ++i) t += kernels::copy(dev, dy, dx).time_s;
      return t;
    }
    case BackwardMethod::kProduct: {  // y = x * mask: dx = dy * mask (the mask, a constant, has no gradient)
      const Buffer &dy = buf(f32, n, "grad_y"), &mask = buf(in, n, "saved_mask"), &dx = buf(f32, n, "grad_x");
      return kernels::binary(dev, BinaryOp::kMul, dy, mask, dx).time_s;
    }
    case BackwardMethod::kActivationKernel: {
      if (d.fn == ElementwiseFn::kSwiglu) {  // nn::Graph::swiglu
        const Buffer &g = buf(in, n, "saved_gate"), &u = buf(in, n, "saved_up"), &dy = buf(f32, n, "grad_y"),
                     &dg = buf(f32, n, "grad_gate"), &du = buf(f32, n, "grad_up");
        return kernels::swiglu_backward(dev, g, u, dy, dg, du, 1, n).time_s;
      }
      const int64_t cols = d.fn == ElementwiseFn::kGelu ? n : d.cols;
      if (cols < 1 || n % cols != 0)
        throw UserError(fmt::format("op backward: a '{}' record of {} elements says rows of {}; the bias's length must "
                                    "divide them",
                                    elementwise_fn_name(d.fn), n, cols));
      const int64_t rows = n / cols;
      const Buffer &dy = buf(f32, n, "grad_y"), &db = buf(f32, cols, "grad_bias");
      if (d.fn == ElementwiseFn::kBias) return kernels::bias_grad(dev, dy, db, rows, cols).time_s;  // dx = dy, passed on
      const Buffer &x = buf(in, n, "saved_x"), &dx = buf(f32, n, "grad_x");
      if (d.fn == ElementwiseFn::kGelu) return kernels::gelu_backward(dev, x, dy, dx, 1, n).time_s;
      const Buffer& bias = buf(in, cols, "bias");
      return kernels::gelu_backward(dev, x, dy, dx, rows, cols, &bias, &db).time_s;
    }
    default: break;
  }
  throw UserError(fmt::format("op backward: method for elementwise '{}' not handled", elementwise_fn_name(d.fn)));
}

}  // namespace

BackwardMethod backward_method(const KernelOp& op) {
  switch (op.op) {
    case OpClass::kGemm: return BackwardMethod::kGemmDgradWgrad;
    case OpClass::kAttention: return BackwardMethod::kAttentionKernel;
    case OpClass::kRmsNorm:
    case OpClass::kLayerNorm: return BackwardMethod::kNormKernel;
    case OpClass::kSoftmax: return BackwardMethod::kRouterKernel;
    case OpClass::kEmbedding: return BackwardMethod::kEmbeddingScatter;
    case OpClass::kGather: return op.row_dims().k >= 1 ? BackwardMethod::kCombineKernel : BackwardMethod::kEmbeddingScatter;
    case OpClass::kRope: return BackwardMethod::kRopeKernel;
    case OpClass::kElementwise: {
      const ElementwiseFn fn = op.elementwise_dims().fn;
      switch (fn) {
        case ElementwiseFn::kCopy:
        case ElementwiseFn::kAdd: return BackwardMethod::kGradientPassedOn;
        case ElementwiseFn::kMul: return BackwardMethod::kProduct;
        case ElementwiseFn::kSwiglu:
        case ElementwiseFn::kGelu:
        case ElementwiseFn::kBias:
        case ElementwiseFn::kBiasGelu: return BackwardMethod::kActivationKernel;
        case ElementwiseFn::kSwigluGate:
        case ElementwiseFn::kKvCacheWrite:
        case ElementwiseFn::kSplitKReduce:
        case ElementwiseFn::kOptimizer:
        case ElementwiseFn::kBackward: return BackwardMethod::kNone;
        case ElementwiseFn::kUnspecified:
        case ElementwiseFn::kUnary:
        case ElementwiseFn::kBinary:
        case ElementwiseFn::kTriad:
        case ElementwiseFn::kCount: break;
      }
      throw UserError(fmt::format("op backward: elementwise function '{}' has no training backward defined; valid: "
                                  "copy, add, mul, swiglu_gate, swiglu, gelu, bias, bias_gelu, kv_cache_write, "
                                  "split_k_reduce, optimizer, backward (set it where the kernel is built)",
                                  static_cast<size_t>(fn) < kElementwiseFnNames.size() ? elementwise_fn_name(fn) : "?"));
    }
    case OpClass::kCount: break;
  }
  throw UserError("op backward: a record of no known op class");
}

double backward_seconds(Device& dev, const Kernel& forward, kernels::AttentionStyle style) {
  if (forward.ops.empty())
    throw UserError(fmt::format("op backward: kernel '{}' has no op record, so its backward is unknown (give its "
                                "family a KernelOp)",
                                forward.name));
  // Saved activations in the forward's first input's dtype; a norm's weight in its second's.
  const DType in = forward.args.empty() ? DType::kBF16 : forward.args.front().dtype;
  const DType weight = forward.args.size() > 1 ? forward.args[1].dtype : in;
  for (const KernelOp& o : forward.ops) (void)backward_method(o);  // refuses what has none, before any launch
  // GEMMs as the forward grouped them; every other class per distinct dims, count of each.
  Kernel gemms = forward;
  gemms.ops.clear();
  std::map<AttentionDims, int64_t> attention;
  std::map<std::tuple<OpClass, RowDims>, int64_t> rows;
  std::map<RopeDims, int64_t> rope;
  std::map<ElementwiseDims, int64_t> elementwise;
  for (const KernelOp& o : forward.ops) {
    switch (o.op) {
      case OpClass::kGemm: gemms.ops.push_back(o); break;
      case OpClass::kAttention: ++attention[o.attention_dims()]; break;
      case OpClass::kRope: ++rope[o.rope_dims()]; break;
      case OpClass::kElementwise: ++elementwise[o.elementwise_dims()]; break;
      default: ++rows[{o.op, o.row_dims()}]; break;
    }
  }
  // The time is that of every kernel launched (also the zeroing launches some backward calls make
  // apart from the kernel whose timing they return; not the rope table's upload).
  const size_t first = dev.records().size();
  if (!gemms.ops.empty()) gemm_backward(dev, gemms, in);
  if (!attention.empty()) attention_backward(dev, attention, in, style);
  for (const auto& [key, count] : rows) rows_backward(dev, std::get<0>(key), std::get<1>(key), count, in, weight);
  for (const auto& [d, count] : rope) rope_backward(dev, d, count);
  for (const auto& [d, count] : elementwise) elementwise_backward(dev, d, count, in);
  double t = 0;
  for (size_t i = first; i < dev.records().size(); ++i) {
    const OpRecord& r = dev.records()[i];
    if (r.kind == OpKind::kKernel) t += r.end_s - r.start_s;
  }
  return t;
}

}  // namespace ppu::nn
