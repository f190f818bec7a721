#include "nn/OpBackward.hpp"

#include <algorithm>
#include <map>
#include <tuple>

#include "kernels/AttentionBackward.hpp"
#include "kernels/Gemm.hpp"

namespace ppu::nn {

namespace {

bool all_of_class(const std::vector<KernelOp>& ops, OpClass c) {
  return !ops.empty() && std::all_of(ops.begin(), ops.end(), [c](const KernelOp& o) { return o.op == c; });
}

double gemm_backward(Device& dev, const Kernel& k) {
  const DType in = k.args.front().dtype;
  std::vector<DeviceBuffer> bufs;
  auto buf = [&](DType t, int64_t n, const char* name) -> const Buffer& {
    bufs.push_back(dev.alloc_owned(t, n, name));
    return bufs.back();
  };
  bufs.reserve(5 * k.ops.size());
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

double attention_backward(Device& dev, const Kernel& k, kernels::AttentionStyle style) {
  // Sequences of one batched launch with the same shape run as one backward call.
  std::map<AttentionDims, int64_t> groups;
  for (const KernelOp& o : k.ops) ++groups[o.attention_dims()];
  const DType in = k.args.front().dtype;
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

}  // namespace

BackwardMethod backward_method(const std::vector<KernelOp>& ops) {
  if (all_of_class(ops, OpClass::kGemm)) return BackwardMethod::kGemmDgradWgrad;
  if (all_of_class(ops, OpClass::kAttention)) return BackwardMethod::kAttentionKernel;
  return BackwardMethod::kTwiceForward;
}

double backward_seconds(Device& dev, const Kernel& forward, double forward_s, kernels::AttentionStyle style) {
  switch (backward_method(forward.ops)) {
    case BackwardMethod::kGemmDgradWgrad: return gemm_backward(dev, forward);
    case BackwardMethod::kAttentionKernel: return attention_backward(dev, forward, style);
    case BackwardMethod::kTwiceForward:
    case BackwardMethod::kCount: break;
  }
  return 2.0 * forward_s;  // memory-bound: the backward moves about twice the forward's bytes
}

}  // namespace ppu::nn
