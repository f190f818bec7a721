#include "nn/SelfAttention.hpp"

#include <fmt/format.h>

#include "arch/Error.hpp"
#include "kernels/Elementwise.hpp"
#include "kernels/Gemm.hpp"
#include "kernels/PagedAttention.hpp"
#include "kernels/RmsNorm.hpp"
#include "kernels/Softmax.hpp"

namespace ppu::nn {

SelfAttention::SelfAttention(Device& dev, const AttentionSpec& spec, const std::string& prefix,
                             const ParallelGroups& groups)
    : spec_(spec) {
  const int tp = groups.degrees.tp, r = groups.tp_rank;
  const int64_t H = spec.hidden, d = spec.head_dim;
  heads_ = spec.heads / tp;
  kv_heads_ = spec.kv_heads / tp;
  q_proj = Linear(dev, prefix + "q_proj", spec.heads * d, H, spec.weight_dtype, spec.bias, TpSplit::kColumn, r, tp);
  k_proj = Linear(dev, prefix + "k_proj", spec.kv_heads * d, H, spec.weight_dtype, spec.bias, TpSplit::kColumn, r, tp);
  v_proj = Linear(dev, prefix + "v_proj", spec.kv_heads * d, H, spec.weight_dtype, spec.bias, TpSplit::kColumn, r, tp);
  o_proj = Linear(dev, prefix + "o_proj", H, spec.heads * d, spec.weight_dtype, spec.bias, TpSplit::kRow, r, tp);
  if (spec.qk_norm) {
    q_norm = Norm(dev, prefix + "q_norm", d, false, spec.norm_eps);
    k_norm = Norm(dev, prefix + "k_norm", d, false, spec.norm_eps);
  }
}

void SelfAttention::allocate_cache(Device& dev, int64_t positions) {
  k_cache_ = dev.alloc_owned(spec_.kv_dtype, positions * kv_width(), "k_cache");
  v_cache_ = dev.alloc_owned(spec_.kv_dtype, positions * kv_width(), "v_cache");
  block_size_ = 0;
}

void SelfAttention::allocate_paged_cache(Device& dev, int64_t blocks, int64_t block_size) {
  PPU_CHECK(blocks > 0 && block_size > 0, "allocate_paged_cache: an empty pool");
  k_cache_ = dev.alloc_owned(spec_.kv_dtype, blocks * block_size * kv_width(), "k_pool");
  v_cache_ = dev.alloc_owned(spec_.kv_dtype, blocks * block_size * kv_width(), "v_pool");
  block_size_ = block_size;
}

AttentionScratch SelfAttention::scratch(Context& ctx, int64_t T) const {
  const DType at = ctx.act_dtype();
  AttentionScratch s;
  s.q = ctx.alloc(T * q_width(), "q", at);
  s.qn = ctx.alloc(T * q_width(), "qn", at);
  s.k = ctx.alloc(T * kv_width(), "k", at);
  s.kn = ctx.alloc(T * kv_width(), "kn", at);
  s.v = ctx.alloc(T * kv_width(), "v", at);
  s.out = ctx.alloc(T * q_width(), "attn", ctx.matmul_dtype());
  return s;
}

void SelfAttention::forward(Context& ctx, const BatchLayout& batch, const Buffer& h, const Buffer& o,
                            const AttentionScratch& s, const kernels::RopeTable& rope,
                            const kernels::AttentionWorkspace& ws, const Tap& tap) {
  Device& dev = ctx.dev();
  const int64_t T = batch.tokens, d = spec_.head_dim, nh = heads_, nkv = kv_heads_;
  const int64_t qw = q_width(), kvw = kv_width();
  const auto B = static_cast<int64_t>(batch.size());
  PPU_CHECK(!paged() || batch.block_tables.size() == batch.size(), "a paged forward without a block table per sequence");
  auto tap_if = [&](const char* name, const Buffer& b) {
    if (tap) tap(name, dev.download(b));
  };
  ctx.op("attention gemm", [&] {
    q_proj.forward(dev, h, s.q, T);
    k_proj.forward(dev, h, s.k, T);
    v_proj.forward(dev, h, s.v, T);
    q_proj.add_bias(dev, s.q, T);
    k_proj.add_bias(dev, s.k, T);
    v_proj.add_bias(dev, s.v, T);
  });
  tap_if("layer0.q", s.q);
  tap_if("layer0.k", s.k);
  tap_if("layer0.v", s.v);
  // Sequence b's cache: its slot's positions of the layer's cache.
  auto cache_of = [&](const Buffer& c, size_t b) {
    return c.view(batch.slot_offset[b] * kvw, batch.slot_capacity[b] * kvw);
  };
  ctx.op(spec_.qk_norm || spec_.rope ? "qk-norm and rope" : "kv cache write", [&] {
    if (spec_.qk_norm) {
      q_norm.forward(dev, s.q, s.qn, T * nh);
      k_norm.forward(dev, s.k, s.kn, T * nkv);
    } else {
      kernels::copy(dev, s.q, s.qn);
      kernels::copy(dev, s.k, s.kn);
    }
    if (spec_.rope) kernels::rope(dev, rope, s.qn, s.qn, T, nh, batch.positions);
    // Each sequence's rotated keys and its values go to its own cache rows: one launch each for the
    // batch.
    std::vector<Kernel> kr, vc;
    for (size_t b = 0; b < batch.size(); ++b) {
      const int64_t r0 = batch.row[b], n = batch.len[b], pb0 = batch.past[b];
      const std::vector<int32_t> pb(batch.positions.begin() + r0, batch.positions.begin() + r0 + n);
      if (paged()) {  // through the sequence's block table, one kernel part per run inside a block
        const std::vector<int32_t>& table = batch.block_tables[b];
        if (spec_.rope)
          kr.push_back(kernels::make_paged_rope_write(rope, s.kn.view(r0 * kvw, n * kvw), k_cache_, block_size_, nkv,
                                                      table, pb0, pb));
        else
          kr.push_back(kernels::make_paged_kv_write(dev.chip(), s.kn.view(r0 * kvw, n * kvw), k_cache_, block_size_,
                                                    nkv, d, table, pb0, n));
        vc.push_back(kernels::make_paged_kv_write(dev.chip(), s.v.view(r0 * kvw, n * kvw), v_cache_, block_size_, nkv,
                                                  d, table, pb0, n));
        continue;
      }
      const Buffer kc = cache_of(k_cache_, b), vcache = cache_of(v_cache_, b);
      if (spec_.rope) kr.push_back(kernels::make_rope(rope, s.kn.view(r0 * kvw, n * kvw), kc, n, nkv, pb, pb0));
      else kr.push_back(kernels::make_copy(dev.chip(), s.kn.view(r0 * kvw, n * kvw), kc.view(pb0 * kvw, n * kvw)));
      vc.push_back(kernels::make_copy(dev.chip(), s.v.view(r0 * kvw, n * kvw), vcache.view(pb0 * kvw, n * kvw)));
    }
    // Copies into the cache are inference's alone: training has no KV cache (nn/OpBackward).
    if (!spec_.rope)
      for (Kernel& c : kr) set_elementwise_fn(c, ElementwiseFn::kKvCacheWrite);
    for (Kernel& c : vc) set_elementwise_fn(c, ElementwiseFn::kKvCacheWrite);
    dev.launch(B == 1 ? std::move(kr[0]) : concat_kernels(fmt::format("rope k batch {}", B), std::move(kr)));
    dev.launch(B == 1 ? std::move(vc[0]) : concat_kernels(fmt::format("cache v batch {}", B), std::move(vc)));
  });
  tap_if("layer0.q_rope", s.qn);
  PPU_CHECK(!paged() || (!tap && !spec_.unfused), "the layer-0 K tap and unfused attention read a contiguous cache");
  if (tap) tap_if("layer0.k_rope", k_cache_.view(batch.past[0] * kvw, T * kvw));
  if (paged()) {
    ctx.op("attention", [&] {
      std::vector<kernels::PagedAttentionBatchItem> items;
      for (size_t b = 0; b < batch.size(); ++b) {
        const int64_t r0 = batch.row[b], n = batch.len[b];
        kernels::PagedAttentionBatchItem it;
        it.shape = kernels::AttentionShape{n, nh, nkv, d, 0, batch.past[b], 0.0f};
        it.q = s.qn.view(r0 * qw, n * qw);
        it.out = s.out.view(r0 * qw, n * qw);
        it.block_table = batch.block_tables[b];
        items.push_back(std::move(it));
      }
      kernels::paged_attention_batch(dev, ws, kernels::PagedKvCache{k_cache_, v_cache_, block_size_}, items, nullptr,
                                     spec_.style);
    });
  } else if (spec_.unfused) {
    ctx.op("attention", [&] { unfused(ctx, batch); });
  } else {
    ctx.op("attention", [&] {
      std::vector<kernels::AttentionBatchItem> items;
      for (size_t b = 0; b < batch.size(); ++b) {
        const int64_t r0 = batch.row[b], n = batch.len[b];
        kernels::AttentionBatchItem it;
        it.shape = kernels::AttentionShape{n, nh, nkv, d, batch.slot_capacity[b], batch.past[b], 0.0f};
        it.q = s.qn.view(r0 * qw, n * qw);
        it.k_cache = cache_of(k_cache_, b);
        it.v_cache = cache_of(v_cache_, b);
        it.out = s.out.view(r0 * qw, n * qw);
        items.push_back(it);
      }
      kernels::attention_batch(dev, ws, items, nullptr, spec_.style);
    });
  }
  tap_if("layer0.attn_out", s.out);
  ctx.op("attention gemm", [&] { o_proj.forward(dev, s.out, o, T); });
}

void SelfAttention::unfused(Context& ctx, const BatchLayout& batch) {
  Device& dev = ctx.dev();
  const int64_t d = spec_.head_dim, nh = heads_;
  const DType at = ctx.act_dtype();
  for (size_t b = 0; b < batch.size(); ++b) {
    const int64_t n = batch.len[b], kv = batch.past[b] + batch.len[b];  // new tokens, visible positions
    DeviceBuffer q = ctx.alloc(nh * n * d, "q_heads", at), k = ctx.alloc(nh * kv * d, "k_heads", at);
    DeviceBuffer v = ctx.alloc(nh * kv * d, "v_heads", at), out = ctx.alloc(nh * n * d, "attn_heads", at);
    DeviceBuffer sc = ctx.alloc(nh * n * kv, "scores", at), p = ctx.alloc(nh * n * kv, "probs", at);
    DeviceBuffer mask = ctx.alloc(nh * n * kv, "dropout_mask", at);
    kernels::gemm(dev, kernels::GemmShape{n, kv, d, nh, false, true}, q, k, sc);  // Q . K^T per head
    kernels::softmax(dev, sc, p, nh * n, kv);                                     // masked, the whole square
    kernels::binary(dev, BinaryOp::kMul, p, mask, sc);                            // dropout
    kernels::gemm(dev, kernels::GemmShape{n, d, kv, nh, false, false}, sc, v, out);  // P . V per head
  }
}

}  // namespace ppu::nn
