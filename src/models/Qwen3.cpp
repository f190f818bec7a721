#include "models/Qwen3.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "arch/Error.hpp"
#include "ccl/Communicator.hpp"
#include "kernels/Elementwise.hpp"
#include "kernels/Gather.hpp"
#include "kernels/Gemm.hpp"
#include "kernels/PagedAttention.hpp"
#include "kernels/Quantize.hpp"
#include "kernels/Sampling.hpp"
#include "models/Safetensors.hpp"

namespace ppu {

// One decoder layer, top to bottom: norm, attention, norm, MLP or MoE.
struct Qwen3Model::Layer {
  nn::Norm in_norm, post_norm;  // input_layernorm, post_attention_layernorm
  nn::SelfAttention attn;       // self_attn.*
  nn::Mlp mlp;                  // dense models: mlp.*
  nn::Moe moe;                  // MoE models: mlp.gate (router), mlp.experts.*
};

namespace {

// splitmix64: a per-tensor seed stream for reproducible random weights.
uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

nn::ParallelGroups groups_of(const Qwen3Options& o) {
  nn::ParallelGroups g;
  g.degrees.tp = o.tp_size;
  g.degrees.sp = o.sequence_parallel;
  g.degrees.ep = o.ep_size;
  g.tp_rank = o.tp_rank;
  g.ep_rank = o.ep_rank;
  g.tp_comm = o.tp_comm;
  g.ep_comm = o.ep_comm;
  g.capture = o.capture;
  return g;
}

}  // namespace

Qwen3Model::Qwen3Model(Device& dev, ModelConfig cfg, const Qwen3Weights& weights, Qwen3Options opt)
    : dev_(dev),
      cfg_(std::move(cfg)),
      opt_(opt),
      // W8A8 (int8 weights): the GEMM inputs stay in the activation dtype; each linear layer
      // quantises its input per token (nn::Linear).
      ctx_(dev, groups_of(opt), opt.act_dtype, opt.matmul_dtype == DType::kI8 ? opt.act_dtype : opt.matmul_dtype) {
  if (cfg_.num_shared_experts > 0)
    throw UserError(fmt::format("model '{}': shared experts are not supported", cfg_.name));
  if (cfg_.activation != Activation::kSwiGlu && cfg_.activation != Activation::kGelu)
    throw UserError(fmt::format("model '{}': activation {} is not supported (valid: swiglu, gelu)", cfg_.name,
                                activation_name(cfg_.activation)));
  if (cfg_.is_moe() && cfg_.activation != Activation::kSwiGlu)
    throw UserError(fmt::format("model '{}': MoE experts must be SwiGLU", cfg_.name));
  if (cfg_.mlp_bias && cfg_.activation == Activation::kSwiGlu)
    throw UserError(fmt::format("model '{}': MLP biases are supported with the GELU MLP only", cfg_.name));
  if (cfg_.family == ModelFamily::kGpt && !weights.checkpoint.empty())
    throw UserError(fmt::format("model '{}': reading GPT checkpoints is not supported yet (their layout differs: fused "
                                "QKV, Conv1D weights); use random weights or timing only",
                                cfg_.name));
  if (!cfg_.rope_scaling_type.empty() && cfg_.rope_scaling_type != "llama3" && cfg_.rope_scaling_type != "default" &&
      dev_.functional())
    throw UserError(fmt::format("model '{}': rope scaling '{}' is not implemented in the functional path (supported: "
                                "llama3); run with timing only, where it does not change the time",
                                cfg_.name, cfg_.rope_scaling_type));
  max_context_ = opt_.max_context > 0 ? opt_.max_context : std::min<int64_t>(cfg_.max_position_embeddings, 4096);
  if (max_context_ > cfg_.max_position_embeddings)
    throw UserError(fmt::format("model '{}': context {} exceeds max_position_embeddings {}", cfg_.name, max_context_,
                                cfg_.max_position_embeddings));
  const int64_t H = cfg_.hidden_size, d = cfg_.head_dim;
  const DType mm = opt_.matmul_dtype;
  if (mm == DType::kF32)
    throw UserError(fmt::format("model '{}': matmul dtype fp32 is not a matrix-unit input; valid: bf16, fp16, fp8e4m3, "
                                "fp8e5m2",
                                cfg_.name));
  if (!dev_.chip().supports(mm))
    throw UserError(fmt::format("model '{}': {}", cfg_.name, matrix_unit_refusal(dev_.chip(), mm)));
  if (dtype_is_int(opt_.kv_dtype) || dtype_is_int(opt_.act_dtype))
    throw UserError(fmt::format("model '{}': {} {} is not supported: int8 is a matmul dtype only (W8A8: weights and "
                                "GEMM inputs, with scales); the KV cache and activations take bf16, fp16 or fp8",
                                cfg_.name, dtype_is_int(opt_.kv_dtype) ? "KV cache dtype" : "activation dtype",
                                dtype_name(dtype_is_int(opt_.kv_dtype) ? opt_.kv_dtype : opt_.act_dtype)));
  const int tp = opt_.tp_size;
  if (opt_.capture && dev_.functional())
    throw UserError(fmt::format("model '{}': capture mode (Qwen3Options::capture) is for timing-only devices", cfg_.name));
  if (opt_.attention_impl == Qwen3Options::AttentionImpl::kUnfused && dev_.functional())
    throw UserError(fmt::format("model '{}': unfused attention (Qwen3Options::attention_impl) is timing-only", cfg_.name));
  if (opt_.kv_block_size < 0 || opt_.kv_blocks < 0 || (opt_.kv_block_size == 0) != (opt_.kv_blocks == 0))
    throw UserError(fmt::format("model '{}': kv_block_size {} and kv_blocks {}; valid: both 0 (contiguous slots) or both "
                                "positive (a paged KV cache)",
                                cfg_.name, opt_.kv_block_size, opt_.kv_blocks));
  if (paged()) {
    const int64_t bs = opt_.kv_block_size;
    if ((bs & (bs - 1)) != 0 || bs < kernels::kPagedMinBlockSize || bs > kernels::kPagedMaxBlockSize)
      throw UserError(fmt::format("model '{}': kv_block_size {}; valid: a power of two from {} to {} (16 is vLLM's "
                                  "default)",
                                  cfg_.name, bs, kernels::kPagedMinBlockSize, kernels::kPagedMaxBlockSize));
    if (opt_.kv_blocks > (int64_t{1} << 31) - 1)
      throw UserError(fmt::format("model '{}': kv_blocks {}; valid: 1 to 2147483647 (block ids are int32)", cfg_.name,
                                  opt_.kv_blocks));
    if (!opt_.slot_capacity.empty())
      throw UserError(fmt::format("model '{}': slot_capacity is for contiguous slots; a paged KV cache (kv_block_size "
                                  "{}) sizes memory in blocks (kv_blocks)",
                                  cfg_.name, bs));
    if (opt_.attention_impl == Qwen3Options::AttentionImpl::kUnfused)
      throw UserError(fmt::format("model '{}': unfused attention reads a contiguous KV cache; a paged one (kv_block_size "
                                  "{}) needs the fused kernel (attention_impl kFused)",
                                  cfg_.name, bs));
  }
  if (opt_.vocab_parallel && !opt_.capture)
    throw UserError(fmt::format("model '{}': a vocab-parallel LM head needs capture mode (its logits are sharded)", cfg_.name));
  const nn::ParallelGroups& g = ctx_.groups();
  g.check_wiring(cfg_.name);
  nn::check_split(split_dims(cfg_), g.degrees);
  const float eps = static_cast<float>(cfg_.norm_eps);
  const bool ln = cfg_.norm == NormType::kLayerNorm;
  embed_ = nn::Embedding(dev_, cfg_.vocab_size, H,
                         cfg_.positions == PositionEncoding::kLearned ? cfg_.max_position_embeddings : 0);
  nn::AttentionSpec as;
  as.hidden = H;
  as.heads = cfg_.num_heads;
  as.kv_heads = cfg_.num_kv_heads;
  as.head_dim = d;
  as.bias = cfg_.attention_bias;
  as.qk_norm = cfg_.qk_norm;
  as.rope = cfg_.positions == PositionEncoding::kRope;
  as.norm_eps = eps;
  as.weight_dtype = mm;
  as.kv_dtype = opt_.kv_dtype;
  as.unfused = opt_.attention_impl == Qwen3Options::AttentionImpl::kUnfused;
  as.style = opt_.attention_style;
  nn::MoeSpec ms;
  ms.hidden = H;
  ms.experts = cfg_.num_experts;
  ms.top_k = cfg_.num_experts_per_tok;
  ms.expert_ffn = cfg_.moe_intermediate_size;
  ms.norm_topk_prob = cfg_.norm_topk_prob;
  ms.weight_dtype = mm;
  for (int64_t l = 0; l < cfg_.num_layers; ++l) {
    auto L = std::make_unique<Layer>();
    const std::string p = fmt::format("model.layers.{}.", l);
    L->in_norm = nn::Norm(dev_, p + "input_layernorm", H, ln, eps);
    L->post_norm = nn::Norm(dev_, p + "post_attention_layernorm", H, ln, eps);
    L->attn = nn::SelfAttention(dev_, as, p + "self_attn.", g);
    if (cfg_.is_moe())
      L->moe = nn::Moe(dev_, ms, p + "mlp.", g);
    else
      L->mlp = nn::Mlp(dev_, p + "mlp.", H, cfg_.intermediate_size, cfg_.activation == Activation::kGelu, cfg_.mlp_bias,
                       mm, g);
    layers_.push_back(std::move(L));
  }
  final_norm_ = nn::Norm(dev_, "model.norm", H, ln, eps);
  head_vocab_ = opt_.vocab_parallel ? (cfg_.vocab_size + tp - 1) / tp : cfg_.vocab_size;
  if (cfg_.tie_word_embeddings && !opt_.vocab_parallel) {
    lm_head_ = embed_.table;
  } else {
    lm_head_own_ = nn::Parameter::make(dev_, "lm_head.weight", {head_vocab_, H}, DType::kBF16, nn::Init::kRandom);
    lm_head_ = lm_head_own_;
  }
  for (const nn::Parameter* w : parameters()) weight_bytes_ += w->bytes();
  if (opt_.max_batch < 1) throw UserError(fmt::format("model '{}': max_batch {} must be at least 1", cfg_.name, opt_.max_batch));
  past_.assign(static_cast<size_t>(opt_.max_batch), 0);
  if (!opt_.slot_capacity.empty() && static_cast<int64_t>(opt_.slot_capacity.size()) != opt_.max_batch)
    throw UserError(fmt::format("model '{}': slot_capacity has {} entries; it needs one per sequence slot (max_batch = {})",
                                cfg_.name, opt_.slot_capacity.size(), opt_.max_batch));
  int64_t positions = 0;
  for (int64_t b = 0; b < opt_.max_batch; ++b) {
    const int64_t cap = opt_.slot_capacity.empty() ? max_context_ : opt_.slot_capacity[static_cast<size_t>(b)];
    if (cap < 1 || cap > max_context_)
      throw UserError(fmt::format("model '{}': slot_capacity[{}] = {}; valid: 1 to the context of {} positions",
                                  cfg_.name, b, cap, max_context_));
    slot_off_.push_back(positions);
    slot_cap_.push_back(cap);
    positions += cap;
  }
  for (auto& L : layers_) {
    if (paged()) L->attn.allocate_paged_cache(dev_, opt_.kv_blocks, opt_.kv_block_size);
    else L->attn.allocate_cache(dev_, positions);
    kv_bytes_ += L->attn.cache_bytes();
  }
  kernels::RopeScaling scaling{cfg_.rope_scaling_factor, cfg_.rope_low_freq_factor, cfg_.rope_high_freq_factor,
                              cfg_.rope_original_max_positions};
  rope_ = kernels::make_rope_table(dev_, cfg_.rope_theta, d, max_context_, nullptr,
                                   cfg_.rope_scaling_type == "llama3" ? &scaling : nullptr);
  attn_ws_ = kernels::make_attention_workspace(dev_);
  if (dev_.functional()) load_weights(weights);
}

Qwen3Model::~Qwen3Model() {
  if (attn_ws_.mask.valid()) kernels::free_attention_workspace(dev_, attn_ws_);
  if (rope_.cos.valid()) kernels::free_rope_table(dev_, rope_);
}

std::vector<const nn::Parameter*> Qwen3Model::parameters() const {
  // The checkpoint order, which is also the order random weights are drawn in.
  std::vector<const nn::Parameter*> all = {&embed_.table};
  auto add = [&](const nn::Parameter& p) {
    if (!p.name.empty()) all.push_back(&p);
  };
  if (embed_.positions.held()) all.push_back(&embed_.positions);
  for (const auto& L : layers_) {
    add(L->in_norm.weight);
    add(L->post_norm.weight);
    if (L->in_norm.bias.held()) {
      add(L->in_norm.bias);
      add(L->post_norm.bias);
    }
    const nn::SelfAttention& a = L->attn;
    for (const nn::Linear* x : {&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj}) add(x->weight);
    if (a.q_proj.bias.held())
      for (const nn::Linear* x : {&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj}) add(x->bias);
    if (a.q_norm.weight.held()) {
      add(a.q_norm.weight);
      add(a.k_norm.weight);
    }
    if (cfg_.is_moe()) {
      add(L->moe.router.weight);
      for (size_t e = 0; e < L->moe.gate.size(); ++e) {
        add(L->moe.gate[e]);
        add(L->moe.up[e]);
        add(L->moe.down[e]);
      }
    } else {
      if (L->mlp.gate_proj.weight.held()) add(L->mlp.gate_proj.weight);
      add(L->mlp.up_proj.weight);
      add(L->mlp.down_proj.weight);
      if (L->mlp.up_proj.bias.held()) {
        add(L->mlp.up_proj.bias);
        add(L->mlp.down_proj.bias);
      }
    }
  }
  add(final_norm_.weight);
  if (final_norm_.bias.held()) add(final_norm_.bias);
  if (lm_head_own_.held()) add(lm_head_own_);
  return all;
}

void Qwen3Model::load_weights(const Qwen3Weights& src) {
  // Capture mode never loads; the LM head is then vocab-parallel and not a checkpoint tensor.
  const std::vector<const nn::Parameter*> all = parameters();
  if (!src.checkpoint.empty()) {
    CheckpointSet ck(src.checkpoint);
    std::vector<std::string> names;
    for (const nn::Parameter* p : all) names.push_back(p->name);
    ck.require_names(names);
    for (const nn::Parameter* p : all)
      if (p->held()) upload_weight(*p, p->shard_of(ck.read_f32(p->name, p->shape)));
    return;
  }
  // Random weights: matrices (and biases) uniform with std 0.02 (Qwen's initializer_range), norms 1.
  uint64_t state = src.seed;
  for (const nn::Parameter* p : all) {
    if (!p->held()) {  // held by another rank: its seed is drawn all the same
      splitmix(state);
      continue;
    }
    std::vector<float> v(static_cast<size_t>(p->numel()));
    if (p->init == nn::Init::kOnes) {
      std::fill(v.begin(), v.end(), 1.0f);
    } else {
      uint64_t s = splitmix(state);
      const float a = 0.02f * std::sqrt(3.0f);
      for (auto& x : v) x = a * (static_cast<float>(splitmix(s) >> 40) * (2.0f / 16777216.0f) - 1.0f);
    }
    upload_weight(*p, p->shard_of(v));
  }
}

void Qwen3Model::upload_weight(const nn::Parameter& p, const std::vector<float>& v) {
  if (p.value->dtype != DType::kI8) {
    dev_.upload(p.value, v);
    return;
  }
  // W8A8: quantised per output channel (row) at load, as SmoothQuant's static weight scales; the
  // same arithmetic as kernels::quantize_rows_int8, on the host (loading is not timed).
  const int64_t rows = p.scale->numel, cols = p.value->numel / rows;
  std::vector<int8_t> q;
  std::vector<float> s;
  kernels::quantize_rows_int8_reference(v, rows, cols, q, s);
  dev_.upload(p.value, std::vector<float>(q.begin(), q.end()));
  dev_.upload(p.scale, s);
}

std::vector<float> Qwen3Model::read_weight(const std::string& name) {
  if (!dev_.functional())
    throw UserError(fmt::format("model '{}': read_weight needs real numbers (functional mode)", cfg_.name));
  for (const nn::Parameter* p : parameters())
    if (p->held() && p->name == name) return dev_.download(p->value);
  throw UserError(fmt::format("model '{}': no weight named '{}'", cfg_.name, name));
}

void Qwen3Model::assume_past(size_t seq, int64_t n) {
  if (dev_.functional())
    throw UserError(fmt::format("model '{}': assume_past works in timing-only mode only (a functional cache would "
                                "hold no keys and values for those positions)",
                                cfg_.name));
  if (paged())
    throw UserError(fmt::format("model '{}': assume_past is for contiguous slots; a paged model's forward_paged takes each "
                                "sequence's past length",
                                cfg_.name));
  if (seq >= past_.size() || n < 0 || n > slot_cap_[seq])
    throw UserError(fmt::format("model '{}': assume_past({}, {}); valid: a slot below {} and 0 to its capacity{}",
                                cfg_.name, seq, n, past_.size(),
                                seq < past_.size() ? fmt::format(" ({})", slot_cap_[seq]) : std::string()));
  past_[seq] = n;
}

namespace {
// Slots first_slot .. first_slot + n - 1 (range-checked by run()).
std::vector<int64_t> consecutive_slots(size_t n, int64_t first_slot) {
  std::vector<int64_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = first_slot + static_cast<int64_t>(i);
  return v;
}
}  // namespace

ForwardResult Qwen3Model::forward(const std::vector<int32_t>& tokens, bool all_logits, ForwardTaps* taps) {
  return run({tokens}, {0}, all_logits, taps);
}

ForwardResult Qwen3Model::forward_batch(const std::vector<std::vector<int32_t>>& seqs, int64_t first_slot) {
  return run(seqs, consecutive_slots(seqs.size(), first_slot), false, nullptr);
}

ForwardResult Qwen3Model::forward_slots(const std::vector<std::vector<int32_t>>& seqs, const std::vector<int64_t>& slots) {
  if (slots.size() != seqs.size())
    throw UserError(fmt::format("forward_slots: {} sequences and {} slots; give one slot per sequence", seqs.size(),
                                slots.size()));
  return run(seqs, slots, false, nullptr);
}

ForwardResult Qwen3Model::forward_sampled(const std::vector<std::vector<int32_t>>& seqs, Sampler& sampler,
                                         int64_t first_slot) {
  return run(seqs, consecutive_slots(seqs.size(), first_slot), false, nullptr, &sampler);
}

ForwardResult Qwen3Model::forward_paged(const std::vector<std::vector<int32_t>>& seqs,
                                       const std::vector<std::vector<int32_t>>& tables,
                                       const std::vector<int64_t>& past_lens) {
  if (!paged())
    throw UserError(fmt::format("forward_paged: model '{}' keeps contiguous per-slot KV caches; give it a paged one "
                                "(Qwen3Options::kv_block_size and kv_blocks) or use forward_slots",
                                cfg_.name));
  if (tables.size() != seqs.size() || past_lens.size() != seqs.size())
    throw UserError(fmt::format("forward_paged: {} sequences, {} block tables and {} past lengths; give one of each per "
                                "sequence",
                                seqs.size(), tables.size(), past_lens.size()));
  const auto B = static_cast<int64_t>(seqs.size());
  if (B == 0 || B > opt_.max_batch)
    throw UserError(fmt::format("forward_paged: {} sequences; this model was built for 1 to {} (Qwen3Options::max_batch)",
                                B, opt_.max_batch));
  const int64_t bs = opt_.kv_block_size;
  nn::BatchLayout batch;
  std::vector<int32_t> tokens;
  std::map<int32_t, int64_t> writer;  // block -> the sequence writing it in this forward
  for (int64_t b = 0; b < B; ++b) {
    const auto i = static_cast<size_t>(b);
    const auto n = static_cast<int64_t>(seqs[i].size());
    const int64_t past = past_lens[i];
    const std::vector<int32_t>& table = tables[i];
    if (n == 0) throw UserError(fmt::format("forward_paged: sequence {} has no tokens", b));
    if (past < 0) throw UserError(fmt::format("forward_paged: sequence {} has past length {}; valid: 0 or more", b, past));
    if (past + n > max_context_)
      throw UserError(fmt::format("forward_paged: sequence {}: {} tokens after {} already in the cache exceed the context "
                                  "of {} positions",
                                  b, n, past, max_context_));
    const int64_t need = (past + n + bs - 1) / bs;
    if (static_cast<int64_t>(table.size()) < need)
      throw UserError(fmt::format("forward_paged: sequence {}: its block table has {} entries but positions 0 .. {} need "
                                  "{} blocks of {}",
                                  b, table.size(), past + n - 1, need, bs));
    for (int64_t k = 0; k < need; ++k) {
      const int32_t blk = table[static_cast<size_t>(k)];
      if (blk < 0 || blk >= opt_.kv_blocks)
        throw UserError(fmt::format("forward_paged: sequence {}: block table entry {} is block {}; the pool has blocks 0 "
                                    ".. {} (Qwen3Options::kv_blocks)",
                                    b, k, blk, opt_.kv_blocks - 1));
      if (k < past / bs) continue;  // read only
      const auto [at, fresh] = writer.emplace(blk, b);
      if (!fresh && at->second != b)
        throw UserError(fmt::format("forward_paged: sequences {} and {} both write block {}", at->second, b, blk));
    }
    batch.row.push_back(static_cast<int64_t>(tokens.size()));
    batch.len.push_back(n);
    batch.past.push_back(past);
    batch.block_tables.emplace_back(table.begin(), table.begin() + need);
    tokens.insert(tokens.end(), seqs[i].begin(), seqs[i].end());
    for (int64_t t = 0; t < n; ++t) batch.positions.push_back(static_cast<int32_t>(past + t));
  }
  batch.tokens = static_cast<int64_t>(tokens.size());
  return run_layout(batch, tokens, false, nullptr, nullptr);
}

void Qwen3Model::reset_slot(size_t slot) {
  if (slot >= past_.size())
    throw UserError(fmt::format("reset_slot: slot {}; this model has {} (Qwen3Options::max_batch)", slot, past_.size()));
  past_[slot] = 0;
}

void Qwen3Model::sample_on_device(const Buffer& logits, int64_t rows, Sampler& sampler, ForwardResult& r) {
  const int64_t vocab = cfg_.vocab_size;
  const SamplerOptions& so = sampler.options();
  if (!sampler.device_capable()) {  // the whole row is needed: download it, sample on the host
    if (!dev_.functional()) {
      dev_.copy_to_host_timed(logits);
      return;
    }
    const std::vector<float> l = dev_.download(logits);
    for (int64_t b = 0; b < rows; ++b)
      r.tokens.push_back(sampler.sample(std::span<const float>(l).subspan(static_cast<size_t>(b * vocab),
                                                                          static_cast<size_t>(vocab))));
    return;
  }
  const kernels::SamplingParams params{so.temperature, std::min<int64_t>(so.top_k, vocab), so.top_p};
  if (dev_.functional()) {
    std::vector<double> uniforms;
    if (so.temperature > 0)
      for (int64_t b = 0; b < rows; ++b) uniforms.push_back(sampler.next_uniform());
    r.tokens = kernels::sample_tokens(dev_, logits, rows, vocab, params, uniforms);
    return;
  }
  // Timing only: the same kernels and downloads, no values.
  if (so.temperature == 0) {
    Buffer ids = dev_.alloc(DType::kF32, rows, "sampled ids");
    kernels::argmax(dev_, logits, ids, rows, vocab);
    dev_.copy_to_host_timed(ids);
    dev_.free(ids);
  } else {
    Buffer vals = dev_.alloc(DType::kF32, rows * params.top_k, "top-k values"),
           ids = dev_.alloc(DType::kF32, rows * params.top_k, "top-k ids");
    kernels::top_k(dev_, logits, vals, ids, rows, vocab, params.top_k);
    dev_.copy_to_host_timed(vals);
    dev_.copy_to_host_timed(ids);
    dev_.free(vals);
    dev_.free(ids);
  }
}

std::vector<const nn::Parameter*> Qwen3Model::trainable_parameters() const {
  std::vector<const nn::Parameter*> held;
  for (const nn::Parameter* p : parameters())
    if (p->held()) held.push_back(p);
  return held;
}

nn::VarPtr Qwen3Model::training_loss(nn::Graph& g, const std::vector<int32_t>& inputs,
                                     const std::vector<int32_t>& targets, int64_t batch, int64_t seq,
                                     nn::Recompute recompute) {
  const std::string what = fmt::format("training model '{}'", cfg_.name);
  if (opt_.matmul_dtype == DType::kI8)
    throw UserError(what + ": int8 (W8A8) is an inference dtype; training takes bf16 or fp16");
  if (cfg_.is_moe() && (opt_.tp_size > 1 || opt_.ep_size > 1))
    throw UserError(fmt::format("{}: mixture-of-experts training runs on one chip for now (got tp {}, ep {}); expert "
                                "and tensor parallelism in training are not supported yet",
                                what, opt_.tp_size, opt_.ep_size));
  if (cfg_.family == ModelFamily::kGpt || cfg_.positions != PositionEncoding::kRope || cfg_.attention_bias)
    throw UserError(what + ": only Qwen3/Llama-style models (RoPE, no biases, SwiGLU) can be trained yet");
  if (opt_.ep_size > 1) throw UserError(what + ": expert parallelism in training is not supported yet");
  if (opt_.tp_size > 1 && opt_.sequence_parallel)
    throw UserError(what + ": sequence parallelism in training is not supported yet (tensor parallelism is)");
  if (opt_.tp_size > 1 && opt_.vocab_parallel)
    throw UserError(what + ": a vocab-parallel LM head in training is not supported yet (it stays replicated)");
  if (batch < 1 || seq < 1 || static_cast<int64_t>(inputs.size()) != batch * seq ||
      static_cast<int64_t>(targets.size()) != batch * seq)
    throw UserError(fmt::format("{}: {} sequences of {} tokens need {} inputs and targets; got {} and {}", what, batch, seq,
                                batch * seq, inputs.size(), targets.size()));
  if (seq > max_context_)
    throw UserError(fmt::format("{}: sequences of {} tokens exceed the model's context of {} positions (Qwen3Options::"
                                "max_context)",
                                what, seq, max_context_));
  // Under tensor parallelism this rank holds nh / tp query and nkv / tp key-value heads (and ffn / tp
  // of the MLP): Megatron's column/row split, tp_copy before and tp_sum after each split block.
  const int tp = opt_.tp_size;
  const int64_t T = batch * seq, d = cfg_.head_dim, nh = cfg_.num_heads / tp, nkv = cfg_.num_kv_heads / tp;
  const DType at = opt_.act_dtype, mm = opt_.matmul_dtype;
  std::vector<int32_t> pos;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < seq; ++t) pos.push_back(static_cast<int32_t>(t));
  // x: the residual stream [T, hidden], fp32 (as bf16-autocast training keeps it).
  nn::VarPtr x = g.embedding(embed_, inputs);
  std::vector<nn::MoeRoute> routes;  // MoE: each layer's routing, for the load-balancing loss
  // The attention core and one layer from its input: {its output} (MoE: and the route's probs, which
  // the load-balancing loss reads; the route itself goes to *route). Checkpointed regions run them
  // again in the backward, after this function returns: they capture by value (the graph and the
  // model outlive the tape).
  const auto att = [this, &g, batch, seq, nh, nkv, d](const nn::VarPtr& q, const nn::VarPtr& k, const nn::VarPtr& v) {
    return g.attention(q, k, v, batch, seq, nh, nkv, d, /*causal=*/true, attn_ws_, opt_.attention_style);
  };
  const auto layer = [this, &g, att, T, nh, nkv, at, mm, pos, recompute](const Layer& L, const nn::VarPtr& xin,
                                                                        nn::MoeRoute* route) -> std::vector<nn::VarPtr> {
    const nn::SelfAttention& A = L.attn;
    nn::VarPtr h = g.tp_copy(g.norm(xin, L.in_norm, T, mm));
    nn::VarPtr q = g.linear(h, A.q_proj, T, at), k = g.linear(h, A.k_proj, T, at), v = g.linear(h, A.v_proj, T, at);
    if (cfg_.qk_norm) {  // RMSNorm per head (on this rank's heads: its weight's gradient is summed over TP)
      q = g.norm(q, A.q_norm, T * nh, at);
      k = g.norm(k, A.k_norm, T * nkv, at);
      g.sum_grad_over_tp(A.q_norm.weight);
      g.sum_grad_over_tp(A.k_norm.weight);
    }
    q = g.rope(q, rope_, T, nh, pos);
    k = g.rope(k, rope_, T, nkv, pos);
    // Selective recomputation: the attention core alone (inside a fully recomputed layer it is part
    // of the region already; Graph::checkpoint then just runs it).
    const nn::VarPtr a = recompute == nn::Recompute::kSelective
                             ? g.checkpoint({q, k, v}, [att](const std::vector<nn::VarPtr>& in) {
                                  return std::vector<nn::VarPtr>{att(in[0], in[1], in[2])};
                                })[0]
                             : att(q, k, v);
    nn::VarPtr x1 = g.add(xin, g.tp_sum(g.linear(a, A.o_proj, T, DType::kF32)), DType::kF32);
    nn::VarPtr h2 = g.tp_copy(g.norm(x1, L.post_norm, T, mm));
    if (cfg_.is_moe()) {  // router, top-k, experts, combine (nn::Moe::training_forward); one chip
      std::vector<nn::MoeRoute> rs;
      nn::VarPtr out = g.add(x1, L.moe.training_forward(g, h2, T, rs), DType::kF32);
      if (route) *route = rs.at(0);
      return {out, rs.at(0).probs};
    }
    nn::VarPtr gu = g.swiglu(g.linear(h2, L.mlp.gate_proj, T, at), g.linear(h2, L.mlp.up_proj, T, at), mm);
    return {g.add(x1, g.tp_sum(g.linear(gu, L.mlp.down_proj, T, DType::kF32)), DType::kF32)};
  };
  for (const auto& Lp : layers_) {
    const Layer& L = *Lp;
    nn::MoeRoute route;
    std::vector<nn::VarPtr> out;
    if (recompute == nn::Recompute::kFull) {
      // The route of the first forward; the recompute makes the same one again (not kept).
      auto first = std::make_shared<nn::MoeRoute*>(&route);
      out = g.checkpoint({x}, [layer, Lq = &L, first](const std::vector<nn::VarPtr>& in) {
        nn::MoeRoute* r = *first;
        *first = nullptr;
        return layer(*Lq, in[0], r);
      });
      if (cfg_.is_moe()) route.probs = out.at(1);  // the load-balancing loss's gradient reaches the region's output
    } else {
      out = layer(L, x, &route);
    }
    x = out[0];
    if (cfg_.is_moe()) routes.push_back(route);
  }
  const nn::Parameter& head = lm_head_own_.held() ? lm_head_own_ : embed_.table;
  nn::VarPtr hn = g.norm(x, final_norm_, T, head.value->dtype);  // bf16 as the head, also with fp16 matrices
  nn::VarPtr loss = g.lm_head_cross_entropy(hn, head, T, targets);
  // MoE: the load-balancing loss of every layer's routing, weighted by router_aux_loss_coef.
  if (cfg_.is_moe()) g.add_load_balancing_loss(loss, targets, routes, cfg_.router_aux_loss_coef);
  return loss;
}

ForwardResult Qwen3Model::run(const std::vector<std::vector<int32_t>>& seqs, const std::vector<int64_t>& slots,
                               bool all_logits, ForwardTaps* taps, Sampler* sampler) {
  if (paged())
    throw UserError(fmt::format("forward: model '{}' keeps a paged KV cache (Qwen3Options::kv_block_size {}); use "
                                "forward_paged with each sequence's block table",
                                cfg_.name, opt_.kv_block_size));
  const auto B = static_cast<int64_t>(seqs.size());
  const bool in_range = std::all_of(slots.begin(), slots.end(), [&](int64_t s) { return s >= 0 && s < opt_.max_batch; });
  if (B == 0 || !in_range)
    throw UserError(fmt::format("forward: {} sequences in slots {}; this model was built for 1 to {} (slots 0 .. {}, "
                                "Qwen3Options::max_batch)",
                                B, slots.empty() ? std::string("-") : fmt::format("{} .. {}", slots.front(), slots.back()),
                                opt_.max_batch, opt_.max_batch - 1));
  for (size_t i = 0; i < slots.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (slots[i] == slots[j])
        throw UserError(fmt::format("forward: sequences {} and {} both continue slot {}", j, i, slots[i]));
  // The token rows of all sequences, one after another, and where each continues its cache.
  nn::BatchLayout batch;
  std::vector<int32_t> tokens;
  for (int64_t b = 0; b < B; ++b) {
    const auto& sq = seqs[static_cast<size_t>(b)];
    const auto n = static_cast<int64_t>(sq.size());
    const auto slot = static_cast<size_t>(slots[static_cast<size_t>(b)]);
    if (n == 0) throw UserError(fmt::format("forward: sequence {} has no tokens", b));
    const int64_t cap = slot_cap_[slot], past = past_[slot];
    if (past + n > cap)
      throw UserError(fmt::format("forward: {} tokens after {} already in the cache exceed the context of {} positions{}",
                                  n, past, cap, cap < max_context_ ? " (this sequence slot's capacity)" : ""));
    batch.row.push_back(static_cast<int64_t>(tokens.size()));
    batch.len.push_back(n);
    batch.past.push_back(past);
    batch.slot_offset.push_back(slot_off_[slot]);
    batch.slot_capacity.push_back(cap);
    tokens.insert(tokens.end(), sq.begin(), sq.end());
    for (int64_t t = 0; t < n; ++t) batch.positions.push_back(static_cast<int32_t>(past + t));
  }
  batch.tokens = static_cast<int64_t>(tokens.size());
  ForwardResult r = run_layout(batch, tokens, all_logits, taps, sampler);
  for (int64_t b = 0; b < B; ++b) past_[static_cast<size_t>(slots[static_cast<size_t>(b)])] += batch.len[static_cast<size_t>(b)];
  return r;
}

ForwardResult Qwen3Model::run_layout(const nn::BatchLayout& batch, const std::vector<int32_t>& tokens, bool all_logits,
                                     ForwardTaps* taps, Sampler* sampler) {
  const auto B = static_cast<int64_t>(batch.size());
  const int64_t T = batch.tokens;
  const double t0 = dev_.synchronize();
  const int64_t H = cfg_.hidden_size;
  const DType at = opt_.act_dtype, mm = ctx_.matmul_dtype();  // W8A8: bf16 here, int8 inside each linear
  const bool tapping = taps && dev_.functional();
  auto tap = [&](const std::string& name, const Buffer& b) {
    if (tapping) taps->values[name] = dev_.download(b);
  };
  const nn::Tap layer0_tap = [&](const std::string& name, const std::vector<float>& v) { taps->values[name] = v; };
  nn::Context& ctx = ctx_;
  const nn::ParallelGroups& g = ctx.groups();

  // The residual stream x stays fp32 (as inference engines keep it); what feeds the matrix unit is mm.
  // Sequence parallelism: this shard keeps residual rows [own0, own0 + own) in xs (chunk rows, the
  // last shard's padded), and o is padded to tp x chunk rows for the reduce-scatter.
  const int tp = g.degrees.tp;
  const bool sp = g.degrees.sp && tp > 1;
  const int64_t chunk = sp ? (T + tp - 1) / tp : T, Tp = sp ? chunk * tp : T;
  const int64_t own0 = sp ? std::min(T, chunk * g.tp_rank) : 0, own = sp ? std::min(T, own0 + chunk) - own0 : T;
  DeviceBuffer x = ctx.alloc(T * H, "x", DType::kF32), h = ctx.alloc(T * H, "h", mm), of = ctx.alloc(Tp * H, "o", at);
  const Buffer o = of.view(0, T * H);
  DeviceBuffer xs, hs, hg, os;
  if (sp) {
    xs = ctx.alloc(chunk * H, "x_shard", DType::kF32);
    hs = ctx.alloc(chunk * H, "h_shard", mm);
    hg = ctx.alloc(Tp * H, "h_gathered", mm);
    os = ctx.alloc(chunk * H, "o_shard", at);
  }
  const nn::AttentionScratch scratch = layers_.front()->attn.scratch(ctx, T);
  embed_.forward(ctx, tokens, batch.positions, x);
  if (sp) {  // this shard's rows of the residual stream (padding rows zero)
    ctx.op("embedding", [&] {
      if (own > 0) kernels::copy(dev_, x.view(own0 * H, own * H), xs.view(0, own * H));
      if (own < chunk && dev_.functional())
        dev_.upload(xs.view(own * H, (chunk - own) * H), std::vector<float>(static_cast<size_t>((chunk - own) * H), 0.0f));
    });
  }
  // The normalised residual stream, all T rows (gathered from the shards under sequence parallelism).
  auto normed = [&](const nn::Norm& n) -> Buffer {
    if (!sp) {
      ctx.op("norm", [&] { n.forward(dev_, x, h, T); });
      return h;
    }
    ctx.op("norm", [&] { n.forward(dev_, xs, hs, chunk); });
    if (!ctx.log_collective("tp all-gather", "tp", ccl::Collective::kAllGather, static_cast<double>(hg->bytes)))
      ctx.op("tp all-gather", [&] { g.tp_comm->all_gather(g.tp_rank, hs, hg); });
    return hg.view(0, T * H);
  };
  // Adds a row-parallel projection's partial sums o (+ its bias) to the residual stream.
  auto add_partial = [&](const nn::Linear* proj) {
    if (!sp) {
      ctx.tp_all_reduce(o);
      ctx.op("residual", [&] {
        if (proj) proj->add_bias(dev_, o, T);
        kernels::binary(dev_, BinaryOp::kAdd, x, o, x);
      });
      return;
    }
    if (!ctx.log_collective("tp reduce-scatter", "tp", ccl::Collective::kReduceScatter, static_cast<double>(of->bytes)))
      ctx.op("tp reduce-scatter", [&] { g.tp_comm->reduce_scatter(g.tp_rank, of, os); });
    ctx.op("residual", [&] {
      if (proj) proj->add_bias(dev_, os, chunk);
      kernels::binary(dev_, BinaryOp::kAdd, xs, os, xs);
    });
  };
  tap("embed", x);
  for (size_t l = 0; l < layers_.size(); ++l) {
    Layer& L = *layers_[l];
    const bool first = l == 0;
    const nn::Tap& ltap = first && tapping ? layer0_tap : nn::Tap{};
    const Buffer hin = normed(L.in_norm);
    if (first) tap("layer0.attn_norm", hin);
    L.attn.forward(ctx, batch, hin, o, scratch, rope_, attn_ws_, ltap);
    add_partial(&L.attn.o_proj);  // partial sums over this shard's heads
    if (first) tap("layer0.attn_block", x);
    const Buffer h2 = normed(L.post_norm);
    if (cfg_.is_moe() && sp) {  // the output to this shard's rows: reduce-scatter a partial sum, or keep our rows
      if (L.moe.forward(ctx, h2, x, T, ltap, o)) {
        add_partial(nullptr);
      } else if (own > 0) {
        ctx.op("residual", [&] {
          kernels::binary(dev_, BinaryOp::kAdd, xs.view(0, own * H), o.view(own0 * H, own * H), xs.view(0, own * H));
        });
      }
    } else if (cfg_.is_moe()) {
      L.moe.forward(ctx, h2, x, T, ltap);
    } else {
      L.mlp.forward(ctx, h2, o, T);
      add_partial(&L.mlp.down_proj);
      if (first) tap("layer0.mlp_out", o);
    }
    tap(fmt::format("layer{}.out", l), x);
  }
  // Logits of every token (one sequence, all_logits; capture mode) or of each sequence's last token.
  const int64_t rows = (all_logits && B == 1) || opt_.capture ? T : B;
  std::vector<int32_t> last;
  for (int64_t b = 0; b < B; ++b)
    last.push_back(static_cast<int32_t>(batch.row[static_cast<size_t>(b)] + batch.len[static_cast<size_t>(b)] - 1));
  DeviceBuffer last_rows;
  DeviceBuffer hn = ctx.alloc(rows * H, "final_norm", at);
  DeviceBuffer logits = dev_.alloc_owned(DType::kF32, rows * head_vocab_, "logits");
  if (sp) {  // norm every shard's rows, gather them, keep the rows that need logits
    const Buffer all = normed(final_norm_);
    ctx.op("logit rows", [&] {
      if (rows != T) kernels::gather_rows(dev_, all, H, last, hn);
      else kernels::copy(dev_, all, hn);
    });
  } else {
    // Every row is x itself; otherwise the last row of each sequence is gathered.
    if (rows != T) {
      last_rows = ctx.alloc(rows * H, "x_last", DType::kF32);
      ctx.op("logit rows", [&] { kernels::gather_rows(dev_, x, H, last, last_rows); });
    }
    const Buffer& xr = rows == T ? x.get() : last_rows.get();
    ctx.op("norm", [&] { final_norm_.forward(dev_, xr, hn, rows); });
  }
  tap("final_norm", hn);
  ctx.op("lm head", [&] {
    kernels::gemm(dev_, kernels::GemmShape{rows, head_vocab_, H, 1, false, true}, hn, lm_head_, logits);
  });
  ForwardResult r;
  r.rows = rows;
  if (sampler) ctx.op("sampling", [&] { sample_on_device(logits, rows, *sampler, r); });
  else if (dev_.functional()) r.logits = dev_.download(logits);
  r.sim_time_s = dev_.synchronize() - t0;
  return r;
}

}  // namespace ppu
