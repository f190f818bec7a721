#include "nn/Moe.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <numeric>

#include "ccl/Communicator.hpp"
#include "kernels/Elementwise.hpp"
#include "kernels/Gather.hpp"
#include "kernels/Gemm.hpp"
#include "kernels/Quantize.hpp"
#include "kernels/Softmax.hpp"

namespace ppu::nn {

namespace {

// out [n, rows_out] = x [n, k] . W^T with W [rows_out, k] (an expert's projection). With an int8 W
// (W8A8), x is the int8 rows and x_scale their per-token scales [n].
Kernel expert_gemm(const ChipSpec& chip, const Buffer& x, const Parameter& w, const Buffer& out, int64_t n,
                   int64_t rows_out, int64_t k, const Buffer* x_scale = nullptr) {
  const kernels::GemmShape s{n, rows_out, k, 1, false, true};
  if (!x_scale) return kernels::make_gemm(chip, s, x, w, out);
  const kernels::GemmScales scales{x_scale, &w.scale.get()};
  return kernels::make_gemm(chip, s, x, w, out, nullptr, &scales);
}

}  // namespace

void route_top_k(const std::vector<float>& p, int64_t rows, int64_t experts, int64_t k, bool norm_topk_prob,
                 std::vector<int32_t>& choice, std::vector<float>& weight) {
  choice.assign(static_cast<size_t>(rows * k), 0);
  weight.assign(static_cast<size_t>(rows * k), 0.0f);
  std::vector<int32_t> order(static_cast<size_t>(experts));
  for (int64_t t = 0; t < rows; ++t) {
    std::iota(order.begin(), order.end(), 0);
    const float* pt = p.data() + t * experts;
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [&](int32_t a, int32_t b) { return pt[a] != pt[b] ? pt[a] > pt[b] : a < b; });
    double sum = 0;
    for (int64_t j = 0; j < k; ++j) sum += pt[order[static_cast<size_t>(j)]];
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = order[static_cast<size_t>(j)];
      choice[static_cast<size_t>(t * k + j)] = e;
      weight[static_cast<size_t>(t * k + j)] = norm_topk_prob ? static_cast<float>(pt[e] / sum) : pt[e];
    }
  }
}

Moe::Moe(Device& dev, const MoeSpec& spec, const std::string& prefix, const ParallelGroups& groups) : spec_(spec) {
  const int tp = groups.degrees.tp, ep = groups.degrees.ep;
  local_ = spec.experts / ep;
  expert0_ = local_ * groups.ep_rank;
  ffn_ = ep > 1 ? spec.expert_ffn : spec.expert_ffn / tp;
  const int64_t H = spec.hidden;
  router = Linear(dev, prefix + "gate", spec.experts, H, spec.weight_dtype, false, TpSplit::kReplicated);
  // Experts another rank holds keep their place (no buffer), so random weights match on every layout.
  const Split rows = ep > 1 ? Split{} : Split{0, groups.tp_rank, tp}, cols = ep > 1 ? Split{} : Split{1, groups.tp_rank, tp};
  for (int64_t e = 0; e < spec.experts; ++e) {
    const bool mine = e >= expert0_ && e < expert0_ + local_;
    const std::string q = fmt::format("{}experts.{}.", prefix, e);
    auto make = [&](const char* name, std::vector<int64_t> shape, Split s) {
      return mine ? Parameter::make(dev, q + name, std::move(shape), spec.weight_dtype, Init::kRandom, s)
                  : Parameter::elsewhere(q + name, std::move(shape), s);
    };
    gate.push_back(make("gate_proj.weight", {spec.expert_ffn, H}, rows));
    up.push_back(make("up_proj.weight", {spec.expert_ffn, H}, rows));
    down.push_back(make("down_proj.weight", {H, spec.expert_ffn}, cols));
  }
}

bool Moe::forward(Context& ctx, const Buffer& h, const Buffer& x, int64_t T, const Tap& tap, const Buffer& dst) {
  Device& dev = ctx.dev();
  const int64_t H = spec_.hidden, E = spec_.experts, K = spec_.top_k;
  const DType at = ctx.act_dtype();
  DeviceBuffer logits = dev.alloc_owned(DType::kF32, T * E, "router_logits");
  DeviceBuffer probs = dev.alloc_owned(DType::kF32, T * E, "router_probs");
  ctx.op("moe router", [&] {
    router.forward(dev, h, logits, T);
    Kernel sm = kernels::make_softmax(logits, probs, T, E);
    sm.ops = {KernelOp::rows(OpClass::kSoftmax, RowDims{T, E, 0, K, spec_.norm_topk_prob})};  // for its backward
    dev.launch(std::move(sm));
  });
  // Top-k per token (host), renormalised; ties go to the lower expert index.
  std::vector<int32_t> choice(static_cast<size_t>(T * K));
  std::vector<float> weight(static_cast<size_t>(T * K), 1.0f / static_cast<float>(K));
  if (dev.functional()) {
    const std::vector<float> p = dev.download(probs);
    if (tap) tap("layer0.router_probs", p);
    route_top_k(p, T, E, K, spec_.norm_topk_prob, choice, weight);
    if (tap) tap("layer0.router_topk", std::vector<float>(choice.begin(), choice.end()));
  } else {
    for (int64_t i = 0; i < T * K; ++i) choice[static_cast<size_t>(i)] = static_cast<int32_t>(i % E);
  }
  DeviceBuffer w = dev.alloc_owned(DType::kF32, T * K, "router_weights");
  dev.upload(w, weight);
  if (ctx.degrees().ep > 1) {
    if (dst.valid()) {
      expert_parallel(ctx, h, dst, T, choice, w);
    } else {
      DeviceBuffer y = ctx.alloc(T * H, "moe_out", at);
      expert_parallel(ctx, h, y, T, choice, w);
      ctx.op("residual", [&] { kernels::binary(dev, BinaryOp::kAdd, x, y, x); });
    }
    return false;
  }
  // Rows routed to each expert, in token order; `slot` maps (t, j) to its row of the outputs.
  std::vector<std::vector<int32_t>> rows(static_cast<size_t>(E));
  std::vector<int32_t> slot(static_cast<size_t>(T * K));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < K; ++j) rows[static_cast<size_t>(choice[static_cast<size_t>(t * K + j)])].push_back(static_cast<int32_t>(t));
  // Grouped experts: the routed rows of every expert one after another (expert e's at first_row[e]),
  // then one launch per stage for all experts - gather, gate and up GEMMs, activation, down GEMM -
  // as grouped-GEMM MoE kernels run.
  const int64_t R = T * K;
  std::vector<int32_t> src_rows;
  std::vector<int64_t> first_row(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) {
    first_row[static_cast<size_t>(e)] = static_cast<int64_t>(src_rows.size());
    const auto& r = rows[static_cast<size_t>(e)];
    src_rows.insert(src_rows.end(), r.begin(), r.end());
  }
  DeviceBuffer out = ctx.alloc(R * H, "expert_out", at);
  DeviceBuffer xin = ctx.alloc(R * H, "expert_in", ctx.matmul_dtype());
  ctx.op("moe dispatch", [&] { kernels::gather_rows(dev, h, H, src_rows, xin); });
  std::vector<int64_t> counts(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) counts[static_cast<size_t>(e)] = static_cast<int64_t>(rows[static_cast<size_t>(e)].size());
  expert_ffn(ctx, xin, counts, out);
  xin.reset();
  std::vector<int64_t> next(first_row);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < K; ++j) {
      const auto e = static_cast<size_t>(choice[static_cast<size_t>(t * K + j)]);
      slot[static_cast<size_t>(t * K + j)] = static_cast<int32_t>(next[e]++);
    }
  bool partial = false;
  if (dst.valid()) {  // the caller adds it (sequence parallelism)
    ctx.op("moe combine", [&] { kernels::gather_combine(dev, out, H, slot, K, w, dst); });
    partial = ctx.degrees().tp > 1;
  } else if (ctx.degrees().tp == 1) {
    ctx.op("moe combine", [&] { kernels::gather_combine(dev, out, H, slot, K, w, x, /*accumulate=*/true); });
  } else {  // each shard holds part of every expert's width: combine, sum over the shards, then add
    DeviceBuffer y = ctx.alloc(T * H, "moe_out", at);
    ctx.op("moe combine", [&] { kernels::gather_combine(dev, out, H, slot, K, w, y); });
    ctx.tp_all_reduce(y);
    ctx.op("residual", [&] { kernels::binary(dev, BinaryOp::kAdd, x, y, x); });
  }
  return partial;
}

void Moe::expert_ffn(Context& ctx, const Buffer& xin, const std::vector<int64_t>& counts, const Buffer& out) {
  Device& dev = ctx.dev();
  // Grouped experts: one launch per stage for all of this model's experts - gate and up GEMMs,
  // activation, down GEMM - as grouped-GEMM MoE kernels run.
  const int64_t H = spec_.hidden, Fe = ffn_, E = static_cast<int64_t>(counts.size());
  int64_t R = 0;
  for (int64_t n : counts) R += n;
  if (R == 0) return;
  const DType at = ctx.act_dtype();
  DeviceBuffer g = ctx.alloc(R * Fe, "expert_gate", at), u = ctx.alloc(R * Fe, "expert_up", at),
               gu = ctx.alloc(R * Fe, "expert_gate_up", ctx.matmul_dtype());
  const ChipSpec& chip = dev.chip();
  // W8A8 experts: every routed row is quantised once per GEMM input (the rows of all experts in one
  // kernel; a row's scale is its own whatever expert it goes to), then the grouped int8 GEMMs.
  const bool int8 = spec_.weight_dtype == DType::kI8;
  DeviceBuffer xq, sx, gq, sg;
  if (int8) {
    xq = ctx.alloc(R * H, "expert_in_int8", DType::kI8);
    sx = ctx.alloc(R, "expert_in_scales", DType::kF32);
    gq = ctx.alloc(R * Fe, "expert_gate_up_int8", DType::kI8);
    sg = ctx.alloc(R, "expert_gate_up_scales", DType::kF32);
    ctx.op("moe expert gemm", [&] { kernels::quantize_rows_int8(dev, xin.view(0, R * H), xq, sx, R, H); });
  }
  std::vector<Kernel> gate_up_k, down_k;
  int64_t r0 = 0;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t n = counts[static_cast<size_t>(e)];
    if (n == 0) continue;
    const Buffer ge = g.view(r0 * Fe, n * Fe), ue = u.view(r0 * Fe, n * Fe), oe = out.view(r0 * H, n * H);
    const auto& gw = gate[static_cast<size_t>(expert0_ + e)];
    const auto& uw = up[static_cast<size_t>(expert0_ + e)];
    const auto& dw = down[static_cast<size_t>(expert0_ + e)];
    if (int8) {
      const Buffer xe = xq.view(r0 * H, n * H), se = sx.view(r0, n), de = gq.view(r0 * Fe, n * Fe), sd = sg.view(r0, n);
      gate_up_k.push_back(expert_gemm(chip, xe, gw, ge, n, Fe, H, &se));
      gate_up_k.push_back(expert_gemm(chip, xe, uw, ue, n, Fe, H, &se));
      down_k.push_back(expert_gemm(chip, de, dw, oe, n, H, Fe, &sd));
    } else {
      const Buffer xe = xin.view(r0 * H, n * H);
      gate_up_k.push_back(expert_gemm(chip, xe, gw, ge, n, Fe, H));
      gate_up_k.push_back(expert_gemm(chip, xe, uw, ue, n, Fe, H));
      down_k.push_back(expert_gemm(chip, gu.view(r0 * Fe, n * Fe), dw, oe, n, H, Fe));
    }
    r0 += n;
  }
  ctx.op("moe expert gemm", [&] { kernels::launch_grouped(dev, fmt::format("moe gate/up grouped gemm {} experts", E), std::move(gate_up_k)); });
  ctx.op("mlp activation", [&] {
    Kernel gate = kernels::make_unary(chip, UnaryOp::kSilu, g.view(0, R * Fe), g.view(0, R * Fe));
    Kernel prod = kernels::make_binary(chip, BinaryOp::kMul, g.view(0, R * Fe), u.view(0, R * Fe), gu.view(0, R * Fe));
    set_elementwise_fn(gate, ElementwiseFn::kSwigluGate);  // SwiGLU: its backward is one kernel (nn/OpBackward)
    set_elementwise_fn(prod, ElementwiseFn::kSwiglu);
    dev.launch(std::move(gate));
    dev.launch(std::move(prod));
  });
  if (int8)
    ctx.op("moe expert gemm",
           [&] { kernels::quantize_rows_int8(dev, gu.view(0, R * Fe), gq.view(0, R * Fe), sg.view(0, R), R, Fe); });
  ctx.op("moe expert gemm", [&] { kernels::launch_grouped(dev, fmt::format("moe down grouped gemm {} experts", E), std::move(down_k)); });
}

void Moe::expert_parallel(Context& ctx, const Buffer& h, const Buffer& y, int64_t T, const std::vector<int32_t>& choice,
                          const Buffer& w) {
  Device& dev = ctx.dev();
  const int64_t H = spec_.hidden, K = spec_.top_k, E = spec_.experts;
  const int ep = ctx.degrees().ep, tp = ctx.degrees().tp, me = ctx.groups().ep_rank;
  const DType at = ctx.act_dtype();
  const bool real = dev.functional();
  // The tokens of rank r's share of its group: [chunk * (r % tp), ...), clipped to T.
  const int64_t chunk = (T + tp - 1) / tp;
  auto share = [&](int r) {
    const int64_t a = std::min(T, chunk * (r % tp));
    return std::pair<int64_t, int64_t>{a, std::min(T, a + chunk)};
  };
  auto owner = [&](int64_t e) { return static_cast<int>(e / local_); };
  // Rank r's pairs (t, j) by destination, in (t, j) order; from `route` (choice of pair t*K+j).
  auto pairs_of = [&](int r, const std::function<int64_t(int64_t)>& route) {
    std::vector<std::vector<int64_t>> by(static_cast<size_t>(ep));
    const auto [a, b] = share(r);
    for (int64_t t = a; t < b; ++t)
      for (int64_t j = 0; j < K; ++j) by[static_cast<size_t>(owner(route(t * K + j)))].push_back(t * K + j);
    return by;
  };
  const auto mine = pairs_of(me, [&](int64_t i) { return choice[static_cast<size_t>(i)]; });
  // Timing only: every rank routes like this one would (balanced: pair i -> expert i mod E).
  auto balanced = [&](int64_t i) { return i % E; };
  std::vector<int64_t> send_counts(static_cast<size_t>(ep));
  for (int p = 0; p < ep; ++p) send_counts[static_cast<size_t>(p)] = static_cast<int64_t>(mine[static_cast<size_t>(p)].size());

  // 1. Counts: every rank learns how many rows each sends to each (all-gather).
  std::vector<int64_t> recv_counts(static_cast<size_t>(ep));
  {
    DeviceBuffer c1 = dev.alloc_owned(DType::kF32, ep, "ep_counts");
    DeviceBuffer call = dev.alloc_owned(DType::kF32, int64_t{ep} * ep, "ep_count_matrix");
    if (real) dev.upload(c1, std::vector<float>(send_counts.begin(), send_counts.end()));
    if (!ctx.log_collective("moe dispatch", "ep", ccl::Collective::kAllGather, static_cast<double>(call->bytes)))
      ctx.op("moe dispatch", [&] { ctx.groups().ep_comm->all_gather(me, c1, call); });
    if (real) {
      const std::vector<float> m = dev.download(call);
      for (int p = 0; p < ep; ++p) recv_counts[static_cast<size_t>(p)] = static_cast<int64_t>(m[static_cast<size_t>(p * ep + me)]);
    } else {
      for (int p = 0; p < ep; ++p)
        recv_counts[static_cast<size_t>(p)] = static_cast<int64_t>(pairs_of(p, balanced)[static_cast<size_t>(me)].size());
    }
  }
  int64_t n_send = 0, n_recv = 0;
  for (int p = 0; p < ep; ++p) n_send += send_counts[static_cast<size_t>(p)], n_recv += recv_counts[static_cast<size_t>(p)];
  auto scaled = [&](const std::vector<int64_t>& c, int64_t f) {
    std::vector<int64_t> v(c);
    for (auto& x : v) x *= f;
    return v;
  };
  // 2. Dispatch: the rows and their experts' local indices, grouped by destination.
  std::vector<int32_t> send_rows;
  std::vector<float> send_ids;
  for (int p = 0; p < ep; ++p)
    for (int64_t i : mine[static_cast<size_t>(p)]) {
      send_rows.push_back(static_cast<int32_t>(i / K));
      send_ids.push_back(static_cast<float>(choice[static_cast<size_t>(i)] - int64_t{p} * local_));
    }
  DeviceBuffer send = ctx.alloc(std::max<int64_t>(1, n_send) * H, "ep_send", at);
  DeviceBuffer ids_send = dev.alloc_owned(DType::kF32, std::max<int64_t>(1, n_send), "ep_send_ids");
  DeviceBuffer recv = ctx.alloc(std::max<int64_t>(1, n_recv) * H, "ep_recv", at);
  DeviceBuffer ids_recv = dev.alloc_owned(DType::kF32, std::max<int64_t>(1, n_recv), "ep_recv_ids");
  ctx.op("moe dispatch", [&] {
    if (n_send > 0) kernels::gather_rows(dev, h, H, send_rows, send.view(0, n_send * H));
    if (real) {
      send_ids.resize(static_cast<size_t>(ids_send->numel), 0.0f);
      dev.upload(ids_send, send_ids);
    } else {
      dev.copy_to_device_timed(ids_send);
    }
    const double row_bytes = static_cast<double>(H * dtype_size_bytes(at) + 4);  // the row and its expert id
    if (!ctx.log_collective("moe dispatch", "ep", ccl::Collective::kAllToAllV, static_cast<double>(n_send) * row_bytes)) {
      ctx.groups().ep_comm->all_to_all_v(me, send, recv, scaled(send_counts, H));
      ctx.groups().ep_comm->all_to_all_v(me, ids_send, ids_recv, send_counts);
    }
  });
  // 3. This rank's experts on the rows it received, grouped by expert; results back in arrival order.
  std::vector<int64_t> expert_of(static_cast<size_t>(n_recv));
  if (real) {
    const std::vector<float> v = dev.download(ids_recv);
    for (int64_t i = 0; i < n_recv; ++i) expert_of[static_cast<size_t>(i)] = static_cast<int64_t>(v[static_cast<size_t>(i)]);
  } else {
    int64_t i = 0;
    for (int p = 0; p < ep; ++p) {
      const auto theirs = pairs_of(p, balanced);  // (a named copy: the loop must not walk a temporary's element)
      for (int64_t pi : theirs[static_cast<size_t>(me)]) expert_of[static_cast<size_t>(i++)] = balanced(pi) - expert0_;
    }
  }
  std::vector<int64_t> counts(static_cast<size_t>(local_));
  for (int64_t e : expert_of) ++counts[static_cast<size_t>(e)];
  std::vector<int64_t> start(static_cast<size_t>(local_));
  for (int64_t e = 1; e < local_; ++e) start[static_cast<size_t>(e)] = start[static_cast<size_t>(e - 1)] + counts[static_cast<size_t>(e - 1)];
  std::vector<int32_t> sorted(static_cast<size_t>(n_recv)), position(static_cast<size_t>(n_recv));
  {
    std::vector<int64_t> next(start);
    for (int64_t i = 0; i < n_recv; ++i) {
      const int64_t pos = next[static_cast<size_t>(expert_of[static_cast<size_t>(i)])]++;
      sorted[static_cast<size_t>(pos)] = static_cast<int32_t>(i);
      position[static_cast<size_t>(i)] = static_cast<int32_t>(pos);
    }
  }
  DeviceBuffer back = ctx.alloc(std::max<int64_t>(1, n_recv) * H, "ep_back", at);
  if (n_recv > 0) {
    DeviceBuffer xin = ctx.alloc(n_recv * H, "expert_in", ctx.matmul_dtype()), out = ctx.alloc(n_recv * H, "expert_out", at);
    ctx.op("moe dispatch", [&] { kernels::gather_rows(dev, recv, H, sorted, xin); });
    expert_ffn(ctx, xin, counts, out);
    ctx.op("moe combine", [&] { kernels::gather_rows(dev, out, H, position, back.view(0, n_recv * H)); });
  }
  // 4. Return: every row to the rank that sent it, in the order it was sent.
  DeviceBuffer ret = ctx.alloc(std::max<int64_t>(1, n_send) * H, "ep_return", at);
  if (!ctx.log_collective("moe combine", "ep", ccl::Collective::kAllToAllV, static_cast<double>(n_recv * H * dtype_size_bytes(at))))
    ctx.op("moe combine", [&] { ctx.groups().ep_comm->all_to_all_v(me, back, ret, scaled(recv_counts, H)); });
  // 5. Combine this rank's tokens; the group gathers every rank's share.
  const auto [t0, t1] = share(me);
  std::vector<int32_t> slot(static_cast<size_t>((t1 - t0) * K));
  {
    int64_t pos = 0;
    for (int p = 0; p < ep; ++p)
      for (int64_t i : mine[static_cast<size_t>(p)]) slot[static_cast<size_t>(i - t0 * K)] = static_cast<int32_t>(pos++);
  }
  if (tp == 1) {
    ctx.op("moe combine", [&] { kernels::gather_combine(dev, ret, H, slot, K, w, y); });
  } else {
    DeviceBuffer part = ctx.alloc(chunk * H, "ep_part", at), all = ctx.alloc(tp * chunk * H, "ep_group", at);
    if (real && t1 - t0 < chunk)  // rows past the end of the group's tokens: defined, never read
      dev.upload(part.view((t1 - t0) * H, (chunk - (t1 - t0)) * H),
                  std::vector<float>(static_cast<size_t>((chunk - (t1 - t0)) * H), 0.0f));
    ctx.op("moe combine", [&] {
      if (t1 > t0)
        kernels::gather_combine(dev, ret, H, slot, K, w.view(t0 * K, (t1 - t0) * K), part.view(0, (t1 - t0) * H));
    });
    if (!ctx.log_collective("moe combine", "tp", ccl::Collective::kAllGather, static_cast<double>(all->bytes)))
      ctx.op("moe combine", [&] { ctx.groups().tp_comm->all_gather(ctx.groups().tp_rank, part, all); });
    ctx.op("moe combine", [&] { kernels::copy(dev, all.view(0, T * H), y); });
  }
}

VarPtr Moe::training_forward(Graph& g, const VarPtr& h, int64_t T, std::vector<MoeRoute>& routes) const {
  Context& ctx = g.ctx();
  if (ctx.degrees().ep > 1 || ctx.degrees().tp > 1)
    throw UserError(fmt::format("training MoE '{}': expert or tensor parallelism (ep {}, tp {}) is not supported in "
                                "training yet; train on one chip (ep 1, tp 1)",
                                router.weight.name, ctx.degrees().ep, ctx.degrees().tp));
  const int64_t H = spec_.hidden, E = spec_.experts, K = spec_.top_k;
  const DType at = ctx.act_dtype(), mm = ctx.matmul_dtype();
  VarPtr logits = g.linear(h, router, T, DType::kF32);  // [T, E] fp32, as the inference forward keeps them
  MoeRoute route = g.moe_route(logits, T, E, K, spec_.norm_topk_prob);
  // Rows grouped by expert in token order (expert e's first at first_row[e]); slot: (t, j) -> its row.
  std::vector<std::vector<int32_t>> rows(static_cast<size_t>(E));
  for (int64_t i = 0; i < T * K; ++i) rows[static_cast<size_t>(route.choice[static_cast<size_t>(i)])].push_back(static_cast<int32_t>(i / K));
  std::vector<int32_t> src_rows, slot(static_cast<size_t>(T * K));
  std::vector<int64_t> counts(static_cast<size_t>(E)), next(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) {
    next[static_cast<size_t>(e)] = static_cast<int64_t>(src_rows.size());
    counts[static_cast<size_t>(e)] = static_cast<int64_t>(rows[static_cast<size_t>(e)].size());
    src_rows.insert(src_rows.end(), rows[static_cast<size_t>(e)].begin(), rows[static_cast<size_t>(e)].end());
  }
  for (int64_t i = 0; i < T * K; ++i)
    slot[static_cast<size_t>(i)] = static_cast<int32_t>(next[static_cast<size_t>(route.choice[static_cast<size_t>(i)])]++);
  auto params = [&](const std::vector<Parameter>& v) {
    std::vector<const Parameter*> ps;
    for (const Parameter& p : v) ps.push_back(&p);
    return ps;
  };
  VarPtr xin = g.gather_rows(h, H, src_rows, mm);                       // [T*K, H], grouped by expert
  VarPtr gu = g.swiglu(g.grouped_linear(xin, params(gate), counts, at), g.grouped_linear(xin, params(up), counts, at), mm);
  VarPtr out = g.grouped_linear(gu, params(down), counts, at);          // [T*K, H]
  VarPtr y = g.combine(out, H, slot, K, route.weights, DType::kF32);       // [T, H]
  routes.push_back(std::move(route));
  return y;
}

}  // namespace ppu::nn
