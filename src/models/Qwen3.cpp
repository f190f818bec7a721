#include "models/Qwen3.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>

#include "arch/Error.hpp"
#include "ccl/Communicator.hpp"
#include "kernels/Elementwise.hpp"
#include "kernels/Embedding.hpp"
#include "kernels/Gather.hpp"
#include "kernels/BiasActivation.hpp"
#include "kernels/Gemm.hpp"
#include "kernels/LayerNorm.hpp"
#include "kernels/RmsNorm.hpp"
#include "kernels/Rope.hpp"
#include "kernels/Sampling.hpp"
#include "kernels/Softmax.hpp"
#include "models/Safetensors.hpp"

namespace ppu {

struct Qwen3Model::Layer {
  Buffer in_norm, post_norm;      // [hidden]
  Buffer in_norm_b, post_norm_b;  // [hidden] (LayerNorm biases, GPT)
  Buffer bq, bk, bv, bo;          // attention biases (attention_bias): [heads*d], [kv*d] x2, [hidden]
  Buffer b_up, b_down;            // MLP biases (mlp_bias): [ffn], [hidden]
  Buffer wq, wk, wv, wo;          // [heads*d, hidden], [kv*d, hidden] x2, [hidden, heads*d]
  Buffer q_norm, k_norm;          // [head_dim] (qk_norm)
  Buffer w_gate, w_up, w_down;    // dense: [ffn, hidden] x2, [hidden, ffn]
  Buffer router;                  // MoE: [experts, hidden]
  std::vector<Buffer> e_gate, e_up, e_down;  // MoE: per expert [fe, hidden] x2, [hidden, fe]
  Buffer k_cache, v_cache;        // [max_context, kv_heads, head_dim]
};

namespace {

using kernels::GemmShape;

// out [T, n] = x [T, k] . W^T with W [n, k] (a linear layer's weight layout).
Kernel make_linear(const ChipSpec& chip, const Buffer& x, const Buffer& w, const Buffer& out, int64_t T, int64_t n,
                   int64_t k) {
  return kernels::make_gemm(chip, GemmShape{T, n, k, 1, false, true}, x, w, out);
}

KernelTiming linear(Device& dev, const Buffer& x, const Buffer& w, const Buffer& out, int64_t T, int64_t n, int64_t k) {
  return dev.launch(make_linear(dev.chip(), x, w, out, T, n, k));
}

// splitmix64: a per-tensor seed stream for reproducible random weights.
uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace

template <class F>
void Qwen3Model::op(const std::string& kind, F&& f) {
  const size_t before = dev_.records().size();
  if (opt_.capture) {
    dev_.set_launch_observer([this, &kind](const Kernel& k, const KernelTiming& t) {
      opt_.capture->launches.push_back(CapturedLaunch{kind, k, t.time_s});
    });
  }
  f();
  if (opt_.capture) dev_.set_launch_observer({});
  double t = 0;
  for (size_t i = before; i < dev_.records().size(); ++i) t += dev_.records()[i].end_s - dev_.records()[i].start_s;
  op_times_[kind] += t;
}

Buffer Qwen3Model::alloc_act(int64_t numel, const std::string& name, DType t) { return dev_.alloc(t, numel, name); }

Qwen3Model::Qwen3Model(Device& dev, ModelConfig cfg, const Qwen3Weights& weights, Qwen3Options opt)
    : dev_(dev), cfg_(std::move(cfg)), opt_(opt) {
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
    throw UserError(fmt::format("model '{}': {} has no {} matrix unit", cfg_.name, dev_.chip().name, dtype_name(mm)));
  auto w = [&](int64_t numel, const std::string& name, DType t = DType::kBF16) {
    weight_bytes_ += numel * dtype_size_bytes(t);
    return dev_.alloc(t, numel, name);
  };
  const int tp = opt_.tp_size, ep = opt_.ep_size;
  if (opt_.capture && dev_.functional())
    throw UserError(fmt::format("model '{}': capture mode (Qwen3Options::capture) is for timing-only devices", cfg_.name));
  if (opt_.attention_impl == Qwen3Options::AttentionImpl::kUnfused && dev_.functional())
    throw UserError(fmt::format("model '{}': unfused attention (Qwen3Options::attention_impl) is timing-only", cfg_.name));
  if (opt_.vocab_parallel && !opt_.capture)
    throw UserError(fmt::format("model '{}': a vocab-parallel LM head needs capture mode (its logits are sharded)", cfg_.name));
  {
    nn::ParallelGroups pg;
    pg.degrees.tp = tp;
    pg.degrees.sp = opt_.sequence_parallel;
    pg.degrees.ep = ep;
    pg.tp_rank = opt_.tp_rank;
    pg.ep_rank = opt_.ep_rank;
    pg.tp_comm = opt_.tp_comm;
    pg.ep_comm = opt_.ep_comm;
    pg.capture = opt_.capture;
    pg.check_wiring(cfg_.name);
    nn::check_split(split_dims(cfg_), pg.degrees);
  }
  nh_ = cfg_.num_heads / tp;
  nkv_ = cfg_.num_kv_heads / tp;
  experts_ = cfg_.num_experts / ep;
  expert0_ = experts_ * opt_.ep_rank;
  if (cfg_.is_moe()) ffn_expert_ = ep > 1 ? cfg_.moe_intermediate_size : cfg_.moe_intermediate_size / tp;
  else ffn_ = cfg_.intermediate_size / tp;
  const int64_t qw_l = nh_ * d, kvw_l = nkv_ * d;
  const bool ln = cfg_.norm == NormType::kLayerNorm;
  embed_ = w(cfg_.vocab_size * H, "model.embed_tokens.weight");
  if (cfg_.positions == PositionEncoding::kLearned)
    pos_embed_ = w(cfg_.max_position_embeddings * H, "model.embed_positions.weight");
  for (int64_t l = 0; l < cfg_.num_layers; ++l) {
    auto L = std::make_unique<Layer>();
    const std::string p = fmt::format("model.layers.{}.", l);
    L->in_norm = w(H, p + "input_layernorm.weight");
    L->post_norm = w(H, p + "post_attention_layernorm.weight");
    if (ln) {
      L->in_norm_b = w(H, p + "input_layernorm.bias");
      L->post_norm_b = w(H, p + "post_attention_layernorm.bias");
    }
    L->wq = w(qw_l * H, p + "self_attn.q_proj.weight", mm);
    L->wk = w(kvw_l * H, p + "self_attn.k_proj.weight", mm);
    L->wv = w(kvw_l * H, p + "self_attn.v_proj.weight", mm);
    L->wo = w(H * qw_l, p + "self_attn.o_proj.weight", mm);
    if (cfg_.attention_bias) {
      L->bq = w(qw_l, p + "self_attn.q_proj.bias");
      L->bk = w(kvw_l, p + "self_attn.k_proj.bias");
      L->bv = w(kvw_l, p + "self_attn.v_proj.bias");
      L->bo = w(H, p + "self_attn.o_proj.bias");
    }
    if (cfg_.qk_norm) {
      L->q_norm = w(d, p + "self_attn.q_norm.weight");
      L->k_norm = w(d, p + "self_attn.k_norm.weight");
    }
    if (cfg_.is_moe()) {
      L->router = w(cfg_.num_experts * H, p + "mlp.gate.weight", mm);
      const int64_t fe = ffn_expert_;
      for (int64_t e = expert0_; e < expert0_ + experts_; ++e) {
        const std::string q = fmt::format("{}mlp.experts.{}.", p, e);
        L->e_gate.push_back(w(fe * H, q + "gate_proj.weight", mm));
        L->e_up.push_back(w(fe * H, q + "up_proj.weight", mm));
        L->e_down.push_back(w(H * fe, q + "down_proj.weight", mm));
      }
    } else {
      const int64_t F = ffn_;
      if (cfg_.activation == Activation::kSwiGlu) L->w_gate = w(F * H, p + "mlp.gate_proj.weight", mm);
      L->w_up = w(F * H, p + "mlp.up_proj.weight", mm);
      L->w_down = w(H * F, p + "mlp.down_proj.weight", mm);
      if (cfg_.mlp_bias) {
        L->b_up = w(F, p + "mlp.up_proj.bias");
        L->b_down = w(H, p + "mlp.down_proj.bias");
      }
    }
    layers_.push_back(std::move(L));
  }
  final_norm_ = w(H, "model.norm.weight");
  if (ln) final_norm_b_ = w(H, "model.norm.bias");
  head_vocab_ = opt_.vocab_parallel ? (cfg_.vocab_size + tp - 1) / tp : cfg_.vocab_size;
  lm_head_ = cfg_.tie_word_embeddings && !opt_.vocab_parallel ? embed_ : w(head_vocab_ * H, "lm_head.weight");
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
    L->k_cache = dev_.alloc(opt_.kv_dtype, positions * kvw_l, "k_cache");
    L->v_cache = dev_.alloc(opt_.kv_dtype, positions * kvw_l, "v_cache");
    kv_bytes_ += 2 * L->k_cache.bytes;
  }
  kernels::RopeScaling scaling{cfg_.rope_scaling_factor, cfg_.rope_low_freq_factor, cfg_.rope_high_freq_factor,
                              cfg_.rope_original_max_positions};
  rope_ = kernels::make_rope_table(dev_, cfg_.rope_theta, d, max_context_, nullptr,
                                   cfg_.rope_scaling_type == "llama3" ? &scaling : nullptr);
  attn_ws_ = kernels::make_attention_workspace(dev_);
  if (dev_.functional()) load_weights(weights);
}

Qwen3Model::~Qwen3Model() = default;

void Qwen3Model::load_weights(const Qwen3Weights& src) {
  // Every weight buffer, with its name and shape, in one list.
  // shape: the whole (single-chip) tensor's; split_dim >= 0: this shard holds part tp_rank of
  // tp_size equal blocks along that dimension (tensor parallelism).
  struct Entry {
    const Buffer* b;
    TensorShape shape;
    bool norm;
    int split_dim = -1;
    std::string held_elsewhere = {};  // b == nullptr: the tensor's name (another rank holds it)
  };
  std::vector<Entry> all;
  const int64_t H = cfg_.hidden_size;
  all.push_back({&embed_, {cfg_.vocab_size, H}, false});
  if (pos_embed_.valid()) all.push_back({&pos_embed_, {cfg_.max_position_embeddings, H}, false});
  for (auto& L : layers_) {
    all.push_back({&L->in_norm, {H}, true});
    all.push_back({&L->post_norm, {H}, true});
    if (L->in_norm_b.valid()) {
      all.push_back({&L->in_norm_b, {H}, false});
      all.push_back({&L->post_norm_b, {H}, false});
    }
    all.push_back({&L->wq, {cfg_.q_width(), H}, false, 0});
    all.push_back({&L->wk, {cfg_.kv_width(), H}, false, 0});
    all.push_back({&L->wv, {cfg_.kv_width(), H}, false, 0});
    all.push_back({&L->wo, {H, cfg_.q_width()}, false, 1});
    if (L->bq.valid()) {
      all.push_back({&L->bq, {cfg_.q_width()}, false, 0});
      all.push_back({&L->bk, {cfg_.kv_width()}, false, 0});
      all.push_back({&L->bv, {cfg_.kv_width()}, false, 0});
      all.push_back({&L->bo, {H}, false});
    }
    if (cfg_.qk_norm) {
      all.push_back({&L->q_norm, {cfg_.head_dim}, true});
      all.push_back({&L->k_norm, {cfg_.head_dim}, true});
    }
    if (cfg_.is_moe()) {
      all.push_back({&L->router, {cfg_.num_experts, H}, false});
      // Experts another rank holds (expert parallelism) keep their place in the list (no buffer), so
      // that random weights are the same on every layout.
      const int split0 = opt_.ep_size > 1 ? -1 : 0, split1 = opt_.ep_size > 1 ? -1 : 1;
      for (int64_t e = 0; e < cfg_.num_experts; ++e) {
        const bool mine = e >= expert0_ && e < expert0_ + experts_;
        const auto i = static_cast<size_t>(e - expert0_);
        const std::string q = fmt::format("{}mlp.experts.{}.", L->in_norm.name.substr(0, L->in_norm.name.find("input_layernorm")), e);
        all.push_back({mine ? &L->e_gate[i] : nullptr, {cfg_.moe_intermediate_size, H}, false, split0, q + "gate_proj.weight"});
        all.push_back({mine ? &L->e_up[i] : nullptr, {cfg_.moe_intermediate_size, H}, false, split0, q + "up_proj.weight"});
        all.push_back({mine ? &L->e_down[i] : nullptr, {H, cfg_.moe_intermediate_size}, false, split1, q + "down_proj.weight"});
      }
    } else {
      if (L->w_gate.valid()) all.push_back({&L->w_gate, {cfg_.intermediate_size, H}, false, 0});
      all.push_back({&L->w_up, {cfg_.intermediate_size, H}, false, 0});
      all.push_back({&L->w_down, {H, cfg_.intermediate_size}, false, 1});
      if (L->b_up.valid()) {
        all.push_back({&L->b_up, {cfg_.intermediate_size}, false, 0});
        all.push_back({&L->b_down, {H}, false});
      }
    }
  }
  all.push_back({&final_norm_, {H}, true});
  if (final_norm_b_.valid()) all.push_back({&final_norm_b_, {H}, false});
  if (!cfg_.tie_word_embeddings) all.push_back({&lm_head_, {cfg_.vocab_size, H}, false});

  // This shard's block of a whole tensor (rows for split_dim 0, columns for 1; row-major).
  auto shard = [&](const Entry& e, std::vector<float> v) {
    const int tp = opt_.tp_size, r = opt_.tp_rank;
    if (tp == 1 || e.split_dim < 0) return v;
    const int64_t rows = e.shape[0], cols = e.shape.size() > 1 ? e.shape[1] : 1;
    std::vector<float> out;
    out.reserve(v.size() / static_cast<size_t>(tp));
    if (e.split_dim == 0) {
      const int64_t r0 = rows / tp * r, r1 = rows / tp * (r + 1);
      out.assign(v.begin() + r0 * cols, v.begin() + r1 * cols);
    } else {
      const int64_t c0 = cols / tp * r, c1 = cols / tp * (r + 1);
      for (int64_t i = 0; i < rows; ++i) out.insert(out.end(), v.begin() + i * cols + c0, v.begin() + i * cols + c1);
    }
    return out;
  };
  if (!src.checkpoint.empty()) {
    CheckpointSet ck(src.checkpoint);
    std::vector<std::string> names;
    for (const auto& e : all) names.push_back(e.b ? e.b->name : e.held_elsewhere);
    ck.require_names(names);
    for (const auto& e : all)
      if (e.b) dev_.upload(*e.b, shard(e, ck.read_f32(e.b->name, e.shape)));
    return;
  }
  // Random weights: matrices (and biases) uniform with std 0.02 (Qwen's initializer_range), norms 1.
  uint64_t state = src.seed;
  for (const auto& e : all) {
    if (!e.b) {  // held by another rank: its seed is drawn all the same
      splitmix(state);
      continue;
    }
    int64_t full = 1;
    for (int64_t n : e.shape) full *= n;
    std::vector<float> v(static_cast<size_t>(full));
    if (e.norm) {
      std::fill(v.begin(), v.end(), 1.0f);
    } else {
      uint64_t s = splitmix(state);
      const float a = 0.02f * std::sqrt(3.0f);
      for (auto& x : v) x = a * (static_cast<float>(splitmix(s) >> 40) * (2.0f / 16777216.0f) - 1.0f);
    }
    dev_.upload(*e.b, shard(e, std::move(v)));
  }
}

std::vector<float> Qwen3Model::read_weight(const std::string& name) {
  if (!dev_.functional())
    throw UserError(fmt::format("model '{}': read_weight needs real numbers (functional mode)", cfg_.name));
  std::vector<const Buffer*> all = {&embed_, &pos_embed_, &final_norm_, &final_norm_b_, &lm_head_};
  for (const auto& L : layers_) {
    for (const Buffer* b : {&L->in_norm, &L->post_norm, &L->in_norm_b, &L->post_norm_b, &L->wq, &L->wk, &L->wv, &L->wo,
                            &L->bq, &L->bk, &L->bv, &L->bo, &L->q_norm, &L->k_norm, &L->w_gate, &L->w_up, &L->w_down,
                            &L->b_up, &L->b_down, &L->router})
      all.push_back(b);
    for (const auto* v : {&L->e_gate, &L->e_up, &L->e_down})
      for (const Buffer& b : *v) all.push_back(&b);
  }
  for (const Buffer* b : all)
    if (b->valid() && b->name == name) return dev_.download(*b);
  throw UserError(fmt::format("model '{}': no weight named '{}'", cfg_.name, name));
}

bool Qwen3Model::log_collective(const std::string& kind, const char* group, ccl::Collective c, double bytes) {
  if (!opt_.capture) return false;
  opt_.capture->collectives.push_back(CapturedCollective{kind, group, c, bytes});
  return true;
}

void Qwen3Model::tp_all_reduce(const Buffer& b) {
  if (opt_.tp_size == 1) return;
  if (log_collective("tp all-reduce", "tp", ccl::Collective::kAllReduce, static_cast<double>(b.bytes))) return;
  op("tp all-reduce", [&] { opt_.tp_comm->all_reduce(opt_.tp_rank, b, b); });
}

void Qwen3Model::assume_past(size_t seq, int64_t n) {
  if (dev_.functional())
    throw UserError(fmt::format("model '{}': assume_past works in timing-only mode only (a functional cache would "
                                "hold no keys and values for those positions)",
                                cfg_.name));
  if (seq >= past_.size() || n < 0 || n > slot_cap_[seq])
    throw UserError(fmt::format("model '{}': assume_past({}, {}); valid: a slot below {} and 0 to its capacity{}",
                                cfg_.name, seq, n, past_.size(),
                                seq < past_.size() ? fmt::format(" ({})", slot_cap_[seq]) : std::string()));
  past_[seq] = n;
}

ForwardResult Qwen3Model::forward(const std::vector<int32_t>& tokens, bool all_logits, ForwardTaps* taps) {
  return run({tokens}, 0, all_logits, taps);
}

ForwardResult Qwen3Model::forward_batch(const std::vector<std::vector<int32_t>>& seqs, int64_t first_slot) {
  return run(seqs, first_slot, false, nullptr);
}

ForwardResult Qwen3Model::forward_sampled(const std::vector<std::vector<int32_t>>& seqs, Sampler& sampler,
                                         int64_t first_slot) {
  return run(seqs, first_slot, false, nullptr, &sampler);
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

ForwardResult Qwen3Model::run(const std::vector<std::vector<int32_t>>& seqs, int64_t first_slot, bool all_logits,
                               ForwardTaps* taps, Sampler* sampler) {
  const auto B = static_cast<int64_t>(seqs.size());
  if (B == 0 || first_slot < 0 || first_slot + B > opt_.max_batch)
    throw UserError(fmt::format("forward: {} sequences from slot {}; this model was built for 1 to {} "
                                "(Qwen3Options::max_batch)",
                                B, first_slot, opt_.max_batch));
  // past(b): positions already cached for the b-th sequence of this call.
  auto past = [&](int64_t b) -> int64_t& { return past_[static_cast<size_t>(first_slot + b)]; };
  // Token rows of all sequences, one after another; seq_row[b] = first row of sequence b.
  std::vector<int32_t> tokens, pos;
  std::vector<int64_t> seq_row, seq_len;
  for (int64_t b = 0; b < B; ++b) {
    const auto& sq = seqs[static_cast<size_t>(b)];
    const auto n = static_cast<int64_t>(sq.size());
    if (n == 0) throw UserError(fmt::format("forward: sequence {} has no tokens", b));
    const int64_t cap = slot_cap_[static_cast<size_t>(first_slot + b)];
    if (past(b) + n > cap)
      throw UserError(fmt::format("forward: {} tokens after {} already in the cache exceed the context of {} positions{}",
                                  n, past(b), cap, cap < max_context_ ? " (this sequence slot's capacity)" : ""));
    seq_row.push_back(static_cast<int64_t>(tokens.size()));
    seq_len.push_back(n);
    tokens.insert(tokens.end(), sq.begin(), sq.end());
    for (int64_t t = 0; t < n; ++t) pos.push_back(static_cast<int32_t>(past(b) + t));
  }
  const auto T = static_cast<int64_t>(tokens.size());
  const double t0 = dev_.synchronize();
  const int64_t H = cfg_.hidden_size, d = cfg_.head_dim, nh = nh_, nkv = nkv_;  // this shard's heads
  const int64_t qw = nh * d, kvw = nkv * d;
  const float eps = static_cast<float>(cfg_.norm_eps);
  const DType at = opt_.act_dtype;
  auto tap = [&](const std::string& name, const Buffer& b) {
    if (taps && dev_.functional()) taps->values[name] = dev_.download(b);
  };

  // The residual stream stays fp32 (as inference engines keep it); what feeds the matrix unit is `at`.
  const DType mm = opt_.matmul_dtype;
  // Sequence parallelism: this shard keeps residual rows [own0, own0 + own) in xs (chunk rows, the
  // last shard's padded), and o is padded to tp x chunk rows for the reduce-scatter.
  const bool sp = opt_.sequence_parallel && opt_.tp_size > 1;
  const int64_t chunk = sp ? (T + opt_.tp_size - 1) / opt_.tp_size : T, Tp = sp ? chunk * opt_.tp_size : T;
  const int64_t own0 = sp ? std::min(T, chunk * opt_.tp_rank) : 0, own = sp ? std::min(T, own0 + chunk) - own0 : T;
  Buffer x = alloc_act(T * H, "x", DType::kF32), h = alloc_act(T * H, "h", mm), of = alloc_act(Tp * H, "o", at);
  const Buffer o = of.view(0, T * H);
  Buffer xs, hs, hg, os;
  if (sp) {
    xs = alloc_act(chunk * H, "x_shard", DType::kF32);
    hs = alloc_act(chunk * H, "h_shard", mm);
    hg = alloc_act(Tp * H, "h_gathered", mm);
    os = alloc_act(chunk * H, "o_shard", at);
  }
  Buffer q = alloc_act(T * qw, "q", at), qn = alloc_act(T * qw, "qn", at);
  Buffer k = alloc_act(T * kvw, "k", at), kn = alloc_act(T * kvw, "kn", at);
  Buffer v = alloc_act(T * kvw, "v", at), a = alloc_act(T * qw, "attn", mm);
  op("embedding", [&] {
    kernels::embedding(dev_, embed_, x, cfg_.vocab_size, H, tokens);
    if (pos_embed_.valid()) {  // learned positions (GPT): x += wpe[position]
      Buffer pe = alloc_act(T * H, "position_embedding", DType::kF32);
      kernels::gather_rows(dev_, pos_embed_, H, pos, pe);
      kernels::binary(dev_, BinaryOp::kAdd, x, pe, x);
      dev_.free(pe);
    }
  });
  // RMSNorm, or LayerNorm with its bias (GPT).
  auto norm = [&](const Buffer& in, const Buffer& w, const Buffer& b, const Buffer& out, int64_t rows) {
    if (b.valid()) kernels::layer_norm(dev_, in, w, b, out, rows, H, eps);
    else kernels::rms_norm(dev_, in, w, out, rows, H, eps);
  };
  auto bias = [&](const Buffer& y, const Buffer& b, int64_t rows, int64_t cols) {
    if (b.valid()) kernels::bias_activation(dev_, y, b, y, rows, cols);
  };
  const bool rope = cfg_.positions == PositionEncoding::kRope;
  if (sp) {  // this shard's rows of the residual stream (padding rows zero)
    op("embedding", [&] {
      if (own > 0) kernels::copy(dev_, x.view(own0 * H, own * H), xs.view(0, own * H));
      if (own < chunk && dev_.functional())
        dev_.upload(xs.view(own * H, (chunk - own) * H), std::vector<float>(static_cast<size_t>((chunk - own) * H), 0.0f));
    });
  }
  // The normalised residual stream, all T rows (gathered from the shards under sequence parallelism).
  auto normed = [&](const Buffer& w, const Buffer& b) -> Buffer {
    if (!sp) {
      op("norm", [&] { norm(x, w, b, h, T); });
      return h;
    }
    op("norm", [&] { norm(xs, w, b, hs, chunk); });
    if (!log_collective("tp all-gather", "tp", ccl::Collective::kAllGather, static_cast<double>(hg.bytes)))
      op("tp all-gather", [&] { opt_.tp_comm->all_gather(opt_.tp_rank, hs, hg); });
    return hg.view(0, T * H);
  };
  // Adds a row-parallel projection's partial sums o (+ bias) to the residual stream.
  auto add_partial = [&](const Buffer& b) {
    if (!sp) {
      tp_all_reduce(o);
      op("residual", [&] {
        bias(o, b, T, H);
        kernels::binary(dev_, BinaryOp::kAdd, x, o, x);
      });
      return;
    }
    if (!log_collective("tp reduce-scatter", "tp", ccl::Collective::kReduceScatter, static_cast<double>(of.bytes)))
      op("tp reduce-scatter", [&] { opt_.tp_comm->reduce_scatter(opt_.tp_rank, of, os); });
    op("residual", [&] {
      bias(os, b, chunk, H);
      kernels::binary(dev_, BinaryOp::kAdd, xs, os, xs);
    });
  };
  tap("embed", x);
  for (size_t l = 0; l < layers_.size(); ++l) {
    Layer& L = *layers_[l];
    const bool first = l == 0;
    // Sequence b's cache: positions [slot_off, slot_off + slot_cap) of the layer's cache.
    auto cache_of = [&](const Buffer& c, int64_t b) {
      const auto s = static_cast<size_t>(first_slot + b);
      return c.view(slot_off_[s] * kvw, slot_cap_[s] * kvw);
    };
    const Buffer hin = normed(L.in_norm, L.in_norm_b);
    if (first) tap("layer0.attn_norm", hin);
    op("attention gemm", [&] {
      linear(dev_, hin, L.wq, q, T, qw, H);
      linear(dev_, hin, L.wk, k, T, kvw, H);
      linear(dev_, hin, L.wv, v, T, kvw, H);
      bias(q, L.bq, T, qw);
      bias(k, L.bk, T, kvw);
      bias(v, L.bv, T, kvw);
    });
    if (first) {
      tap("layer0.q", q);
      tap("layer0.k", k);
      tap("layer0.v", v);
    }
    op(cfg_.qk_norm || rope ? "qk-norm and rope" : "kv cache write", [&] {
      if (cfg_.qk_norm) {
        kernels::rms_norm(dev_, q, L.q_norm, qn, T * nh, d, eps);
        kernels::rms_norm(dev_, k, L.k_norm, kn, T * nkv, d, eps);
      } else {
        kernels::copy(dev_, q, qn);
        kernels::copy(dev_, k, kn);
      }
      if (rope) kernels::rope(dev_, rope_, qn, qn, T, nh, pos);
      // Each sequence's rotated keys and its values go to its own cache rows: one launch each for
      // the batch.
      std::vector<Kernel> kr, vc;
      for (int64_t b = 0; b < B; ++b) {
        const int64_t r0 = seq_row[static_cast<size_t>(b)], n = seq_len[static_cast<size_t>(b)];
        const int64_t pb0 = past(b);
        const std::vector<int32_t> pb(pos.begin() + r0, pos.begin() + r0 + n);
        const Buffer kc = cache_of(L.k_cache, b), vcache = cache_of(L.v_cache, b);
        if (rope) kr.push_back(kernels::make_rope(rope_, kn.view(r0 * kvw, n * kvw), kc, n, nkv, pb, pb0));
        else kr.push_back(kernels::make_copy(dev_.chip(), kn.view(r0 * kvw, n * kvw), kc.view(pb0 * kvw, n * kvw)));
        vc.push_back(kernels::make_copy(dev_.chip(), v.view(r0 * kvw, n * kvw), vcache.view(pb0 * kvw, n * kvw)));
      }
      dev_.launch(B == 1 ? std::move(kr[0]) : concat_kernels(fmt::format("rope k batch {}", B), std::move(kr)));
      dev_.launch(B == 1 ? std::move(vc[0]) : concat_kernels(fmt::format("cache v batch {}", B), std::move(vc)));
    });
    if (first) {
      tap("layer0.q_rope", qn);
      if (taps && dev_.functional()) taps->values["layer0.k_rope"] = dev_.download(L.k_cache.view(past(0) * kvw, T * kvw));
    }
    if (opt_.attention_impl == Qwen3Options::AttentionImpl::kUnfused) {
      std::vector<std::pair<int64_t, int64_t>> shapes;  // (new tokens, visible positions) per sequence
      for (int64_t b = 0; b < B; ++b) shapes.emplace_back(seq_len[static_cast<size_t>(b)], past(b) + seq_len[static_cast<size_t>(b)]);
      op("attention", [&] { unfused_attention(shapes); });
    } else op("attention", [&] {
      std::vector<kernels::AttentionBatchItem> items;
      for (int64_t b = 0; b < B; ++b) {
        const int64_t r0 = seq_row[static_cast<size_t>(b)], n = seq_len[static_cast<size_t>(b)];
        kernels::AttentionBatchItem it;
        it.shape = kernels::AttentionShape{n, nh, nkv, d, slot_cap_[static_cast<size_t>(first_slot + b)], past(b), 0.0f};
        it.q = qn.view(r0 * qw, n * qw);
        it.k_cache = cache_of(L.k_cache, b);
        it.v_cache = cache_of(L.v_cache, b);
        it.out = a.view(r0 * qw, n * qw);
        items.push_back(it);
      }
      kernels::attention_batch(dev_, attn_ws_, items, nullptr, opt_.attention_style);
    });
    if (first) tap("layer0.attn_out", a);
    op("attention gemm", [&] { linear(dev_, a, L.wo, o, T, H, qw); });
    add_partial(L.bo);  // partial sums over this shard's heads
    if (first) tap("layer0.attn_block", x);
    const Buffer h2 = normed(L.post_norm, L.post_norm_b);
    if (cfg_.is_moe() && sp) {  // the output to this shard's rows: reduce-scatter a partial sum, or keep our rows
      if (moe(L, h2, x, T, first ? taps : nullptr, o)) {
        add_partial(Buffer{});
      } else if (own > 0) {
        op("residual", [&] {
          kernels::binary(dev_, BinaryOp::kAdd, xs.view(0, own * H), o.view(own0 * H, own * H), xs.view(0, own * H));
        });
      }
    } else if (cfg_.is_moe()) {
      moe(L, h2, x, T, first ? taps : nullptr);
    } else if (cfg_.activation == Activation::kGelu) {  // GPT: fc2(gelu(fc1 h + b1)) + b2
      const int64_t F = ffn_;
      Buffer u = alloc_act(T * F, "up", at), gu = alloc_act(T * F, "gelu", mm);
      op("mlp gemm", [&] { linear(dev_, h2, L.w_up, u, T, F, H); });
      op("mlp activation", [&] {
        if (L.b_up.valid()) kernels::bias_activation(dev_, u, L.b_up, gu, T, F, UnaryOp::kGelu);
        else kernels::unary(dev_, UnaryOp::kGelu, u, gu);
      });
      op("mlp gemm", [&] { linear(dev_, gu, L.w_down, o, T, H, F); });
      add_partial(L.b_down);
      if (first) tap("layer0.mlp_out", o);
      for (Buffer* b : {&u, &gu}) dev_.free(*b);
    } else {
      const int64_t F = ffn_;
      Buffer g = alloc_act(T * F, "gate", at), u = alloc_act(T * F, "up", at), gu = alloc_act(T * F, "gate_up", mm);
      op("mlp gemm", [&] {
        linear(dev_, h2, L.w_gate, g, T, F, H);
        linear(dev_, h2, L.w_up, u, T, F, H);
      });
      op("mlp activation", [&] {
        kernels::unary(dev_, UnaryOp::kSilu, g, g);
        kernels::binary(dev_, BinaryOp::kMul, g, u, gu);
      });
      op("mlp gemm", [&] { linear(dev_, gu, L.w_down, o, T, H, F); });
      add_partial(Buffer{});
      if (first) tap("layer0.mlp_out", o);
      for (Buffer* b : {&g, &u, &gu}) dev_.free(*b);
    }
    tap(fmt::format("layer{}.out", l), x);
  }
  // Logits of every token (one sequence, all_logits) or of each sequence's last token.
  const int64_t rows = (all_logits && B == 1) || opt_.capture ? T : B;
  std::vector<int32_t> last;
  for (int64_t b = 0; b < B; ++b)
    last.push_back(static_cast<int32_t>(seq_row[static_cast<size_t>(b)] + seq_len[static_cast<size_t>(b)] - 1));
  Buffer last_rows;
  Buffer hn = alloc_act(rows * H, "final_norm", at);
  Buffer logits = dev_.alloc(DType::kF32, rows * head_vocab_, "logits");
  if (sp) {  // norm every shard's rows, gather them, keep the rows that need logits
    const Buffer all = normed(final_norm_, final_norm_b_);
    op("logit rows", [&] {
      if (rows != T) kernels::gather_rows(dev_, all, H, last, hn);
      else kernels::copy(dev_, all, hn);
    });
  } else {
    // Every row is x itself; otherwise the last row of each sequence is gathered.
    if (rows != T) {
      last_rows = alloc_act(rows * H, "x_last", DType::kF32);
      op("logit rows", [&] { kernels::gather_rows(dev_, x, H, last, last_rows); });
    }
    const Buffer& xr = rows == T ? x : last_rows;
    op("norm", [&] { norm(xr, final_norm_, final_norm_b_, hn, rows); });
  }
  tap("final_norm", hn);
  op("lm head", [&] { linear(dev_, hn, lm_head_, logits, rows, head_vocab_, H); });
  ForwardResult r;
  r.rows = rows;
  if (sampler) op("sampling", [&] { sample_on_device(logits, rows, *sampler, r); });
  else if (dev_.functional()) r.logits = dev_.download(logits);
  if (last_rows.valid()) dev_.free(last_rows);
  for (Buffer* b : {&x, &h, &of, &q, &qn, &k, &kn, &v, &a, &hn, &logits}) dev_.free(*b);
  for (Buffer* b : {&xs, &hs, &hg, &os})
    if (b->valid()) dev_.free(*b);
  for (int64_t b = 0; b < B; ++b) past(b) += seq_len[static_cast<size_t>(b)];
  r.sim_time_s = dev_.synchronize() - t0;
  return r;
}

void Qwen3Model::unfused_attention(const std::vector<std::pair<int64_t, int64_t>>& shapes) {
  const int64_t d = cfg_.head_dim, nh = nh_;
  const DType at = opt_.act_dtype;
  for (const auto& [n, kv] : shapes) {
    Buffer q = alloc_act(nh * n * d, "q_heads", at), k = alloc_act(nh * kv * d, "k_heads", at);
    Buffer v = alloc_act(nh * kv * d, "v_heads", at), out = alloc_act(nh * n * d, "attn_heads", at);
    Buffer s = alloc_act(nh * n * kv, "scores", at), p = alloc_act(nh * n * kv, "probs", at);
    Buffer mask = alloc_act(nh * n * kv, "dropout_mask", at);
    kernels::gemm(dev_, kernels::GemmShape{n, kv, d, nh, false, true}, q, k, s);  // Q . K^T per head
    kernels::softmax(dev_, s, p, nh * n, kv);                                      // masked, the whole square
    kernels::binary(dev_, BinaryOp::kMul, p, mask, s);                             // dropout
    kernels::gemm(dev_, kernels::GemmShape{n, d, kv, nh, false, false}, s, v, out);  // P . V per head
    for (Buffer* x : {&q, &k, &v, &out, &s, &p, &mask}) dev_.free(*x);
  }
}

bool Qwen3Model::moe(Layer& L, const Buffer& h, const Buffer& x, int64_t T, ForwardTaps* taps, const Buffer& dst) {
  const int64_t H = cfg_.hidden_size, E = cfg_.num_experts, K = cfg_.num_experts_per_tok;
  const DType at = opt_.act_dtype;
  Buffer logits = dev_.alloc(DType::kF32, T * E, "router_logits"), probs = dev_.alloc(DType::kF32, T * E, "router_probs");
  op("moe router", [&] {
    linear(dev_, h, L.router, logits, T, E, H);
    kernels::softmax(dev_, logits, probs, T, E);
  });
  // Top-k per token (host), renormalised; ties go to the lower expert index.
  std::vector<int32_t> choice(static_cast<size_t>(T * K));
  std::vector<float> weight(static_cast<size_t>(T * K), 1.0f / static_cast<float>(K));
  if (dev_.functional()) {
    const std::vector<float> p = dev_.download(probs);
    if (taps) taps->values["layer0.router_probs"] = p;
    for (int64_t t = 0; t < T; ++t) {
      std::vector<int32_t> order(static_cast<size_t>(E));
      std::iota(order.begin(), order.end(), 0);
      const float* pt = p.data() + t * E;
      std::partial_sort(order.begin(), order.begin() + K, order.end(),
                        [&](int32_t a, int32_t b) { return pt[a] != pt[b] ? pt[a] > pt[b] : a < b; });
      double sum = 0;
      for (int64_t j = 0; j < K; ++j) sum += pt[order[static_cast<size_t>(j)]];
      for (int64_t j = 0; j < K; ++j) {
        const int32_t e = order[static_cast<size_t>(j)];
        choice[static_cast<size_t>(t * K + j)] = e;
        weight[static_cast<size_t>(t * K + j)] = cfg_.norm_topk_prob ? static_cast<float>(pt[e] / sum) : pt[e];
      }
    }
    if (taps) {
      std::vector<float> ids(choice.begin(), choice.end());
      taps->values["layer0.router_topk"] = ids;
    }
  } else {
    for (int64_t i = 0; i < T * K; ++i) choice[static_cast<size_t>(i)] = static_cast<int32_t>(i % E);
  }
  Buffer w = dev_.alloc(DType::kF32, T * K, "router_weights");
  dev_.upload(w, weight);
  if (opt_.ep_size > 1) {
    if (dst.valid()) {
      moe_expert_parallel(L, h, dst, T, choice, w);
    } else {
      Buffer y = alloc_act(T * H, "moe_out", at);
      moe_expert_parallel(L, h, y, T, choice, w);
      op("residual", [&] { kernels::binary(dev_, BinaryOp::kAdd, x, y, x); });
      dev_.free(y);
    }
    for (Buffer* b : {&logits, &probs, &w}) dev_.free(*b);
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
  Buffer out = alloc_act(R * H, "expert_out", at);
  Buffer xin = alloc_act(R * H, "expert_in", opt_.matmul_dtype);
  op("moe dispatch", [&] { kernels::gather_rows(dev_, h, H, src_rows, xin); });
  std::vector<int64_t> counts(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) counts[static_cast<size_t>(e)] = static_cast<int64_t>(rows[static_cast<size_t>(e)].size());
  expert_ffn(L, xin, counts, out);
  dev_.free(xin);
  std::vector<int64_t> next(first_row);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < K; ++j) {
      const auto e = static_cast<size_t>(choice[static_cast<size_t>(t * K + j)]);
      slot[static_cast<size_t>(t * K + j)] = static_cast<int32_t>(next[e]++);
    }
  bool partial = false;
  if (dst.valid()) {  // the caller adds it (sequence parallelism)
    op("moe combine", [&] { kernels::gather_combine(dev_, out, H, slot, K, w, dst); });
    partial = opt_.tp_size > 1;
  } else if (opt_.tp_size == 1) {
    op("moe combine", [&] { kernels::gather_combine(dev_, out, H, slot, K, w, x, /*accumulate=*/true); });
  } else {  // each shard holds part of every expert's width: combine, sum over the shards, then add
    Buffer y = alloc_act(T * H, "moe_out", at);
    op("moe combine", [&] { kernels::gather_combine(dev_, out, H, slot, K, w, y); });
    tp_all_reduce(y);
    op("residual", [&] { kernels::binary(dev_, BinaryOp::kAdd, x, y, x); });
    dev_.free(y);
  }
  for (Buffer* b : {&logits, &probs, &w, &out}) dev_.free(*b);
  return partial;
}

void Qwen3Model::expert_ffn(Layer& L, const Buffer& xin, const std::vector<int64_t>& counts, const Buffer& out) {
  // Grouped experts: one launch per stage for all of this model's experts - gate and up GEMMs,
  // activation, down GEMM - as grouped-GEMM MoE kernels run.
  const int64_t H = cfg_.hidden_size, Fe = ffn_expert_, E = static_cast<int64_t>(counts.size());
  int64_t R = 0;
  for (int64_t n : counts) R += n;
  if (R == 0) return;
  const DType at = opt_.act_dtype;
  Buffer g = alloc_act(R * Fe, "expert_gate", at), u = alloc_act(R * Fe, "expert_up", at),
         gu = alloc_act(R * Fe, "expert_gate_up", opt_.matmul_dtype);
  const ChipSpec& chip = dev_.chip();
  std::vector<Kernel> gate_up, down;
  int64_t r0 = 0;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t n = counts[static_cast<size_t>(e)];
    if (n == 0) continue;
    const Buffer xe = xin.view(r0 * H, n * H), ge = g.view(r0 * Fe, n * Fe), ue = u.view(r0 * Fe, n * Fe);
    gate_up.push_back(make_linear(chip, xe, L.e_gate[static_cast<size_t>(e)], ge, n, Fe, H));
    gate_up.push_back(make_linear(chip, xe, L.e_up[static_cast<size_t>(e)], ue, n, Fe, H));
    down.push_back(make_linear(chip, gu.view(r0 * Fe, n * Fe), L.e_down[static_cast<size_t>(e)],
                               out.view(r0 * H, n * H), n, H, Fe));
    r0 += n;
  }
  op("moe expert gemm", [&] { kernels::launch_grouped(dev_, fmt::format("moe gate/up grouped gemm {} experts", E), std::move(gate_up)); });
  op("mlp activation", [&] {
    kernels::unary(dev_, UnaryOp::kSilu, g.view(0, R * Fe), g.view(0, R * Fe));
    kernels::binary(dev_, BinaryOp::kMul, g.view(0, R * Fe), u.view(0, R * Fe), gu.view(0, R * Fe));
  });
  op("moe expert gemm", [&] { kernels::launch_grouped(dev_, fmt::format("moe down grouped gemm {} experts", E), std::move(down)); });
  for (Buffer* b : {&g, &u, &gu}) dev_.free(*b);
}

void Qwen3Model::moe_expert_parallel(Layer& L, const Buffer& h, const Buffer& y, int64_t T,
                                     const std::vector<int32_t>& choice, const Buffer& w) {
  const int64_t H = cfg_.hidden_size, K = cfg_.num_experts_per_tok, E = cfg_.num_experts;
  const int ep = opt_.ep_size, tp = opt_.tp_size, me = opt_.ep_rank;
  const DType at = opt_.act_dtype;
  const bool real = dev_.functional();
  // The tokens of rank r's share of its group: [chunk * (r % tp), ...), clipped to T.
  const int64_t chunk = (T + tp - 1) / tp;
  auto share = [&](int r) {
    const int64_t a = std::min(T, chunk * (r % tp));
    return std::pair<int64_t, int64_t>{a, std::min(T, a + chunk)};
  };
  auto owner = [&](int64_t e) { return static_cast<int>(e / experts_); };
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
    Buffer c1 = dev_.alloc(DType::kF32, ep, "ep_counts"), call = dev_.alloc(DType::kF32, int64_t{ep} * ep, "ep_count_matrix");
    if (real) dev_.upload(c1, std::vector<float>(send_counts.begin(), send_counts.end()));
    if (!log_collective("moe dispatch", "ep", ccl::Collective::kAllGather, static_cast<double>(call.bytes)))
      op("moe dispatch", [&] { opt_.ep_comm->all_gather(me, c1, call); });
    if (real) {
      const std::vector<float> m = dev_.download(call);
      for (int p = 0; p < ep; ++p) recv_counts[static_cast<size_t>(p)] = static_cast<int64_t>(m[static_cast<size_t>(p * ep + me)]);
    } else {
      for (int p = 0; p < ep; ++p)
        recv_counts[static_cast<size_t>(p)] = static_cast<int64_t>(pairs_of(p, balanced)[static_cast<size_t>(me)].size());
    }
    dev_.free(c1);
    dev_.free(call);
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
      send_ids.push_back(static_cast<float>(choice[static_cast<size_t>(i)] - int64_t{p} * experts_));
    }
  Buffer send = alloc_act(std::max<int64_t>(1, n_send) * H, "ep_send", at);
  Buffer ids_send = dev_.alloc(DType::kF32, std::max<int64_t>(1, n_send), "ep_send_ids");
  Buffer recv = alloc_act(std::max<int64_t>(1, n_recv) * H, "ep_recv", at);
  Buffer ids_recv = dev_.alloc(DType::kF32, std::max<int64_t>(1, n_recv), "ep_recv_ids");
  op("moe dispatch", [&] {
    if (n_send > 0) kernels::gather_rows(dev_, h, H, send_rows, send.view(0, n_send * H));
    if (real) {
      send_ids.resize(static_cast<size_t>(ids_send.numel), 0.0f);
      dev_.upload(ids_send, send_ids);
    } else {
      dev_.copy_to_device_timed(ids_send);
    }
    const double row_bytes = static_cast<double>(H * dtype_size_bytes(at) + 4);  // the row and its expert id
    if (!log_collective("moe dispatch", "ep", ccl::Collective::kAllToAllV, static_cast<double>(n_send) * row_bytes)) {
      opt_.ep_comm->all_to_all_v(me, send, recv, scaled(send_counts, H));
      opt_.ep_comm->all_to_all_v(me, ids_send, ids_recv, send_counts);
    }
  });
  // 3. This rank's experts on the rows it received, grouped by expert; results back in arrival order.
  std::vector<int64_t> expert_of(static_cast<size_t>(n_recv));
  if (real) {
    const std::vector<float> v = dev_.download(ids_recv);
    for (int64_t i = 0; i < n_recv; ++i) expert_of[static_cast<size_t>(i)] = static_cast<int64_t>(v[static_cast<size_t>(i)]);
  } else {
    int64_t i = 0;
    for (int p = 0; p < ep; ++p) {
      const auto theirs = pairs_of(p, balanced);  // (a named copy: the loop must not walk a temporary's element)
      for (int64_t pi : theirs[static_cast<size_t>(me)]) expert_of[static_cast<size_t>(i++)] = balanced(pi) - expert0_;
    }
  }
  std::vector<int64_t> counts(static_cast<size_t>(experts_));
  for (int64_t e : expert_of) ++counts[static_cast<size_t>(e)];
  std::vector<int64_t> start(static_cast<size_t>(experts_));
  for (int64_t e = 1; e < experts_; ++e) start[static_cast<size_t>(e)] = start[static_cast<size_t>(e - 1)] + counts[static_cast<size_t>(e - 1)];
  std::vector<int32_t> sorted(static_cast<size_t>(n_recv)), position(static_cast<size_t>(n_recv));
  {
    std::vector<int64_t> next(start);
    for (int64_t i = 0; i < n_recv; ++i) {
      const int64_t pos = next[static_cast<size_t>(expert_of[static_cast<size_t>(i)])]++;
      sorted[static_cast<size_t>(pos)] = static_cast<int32_t>(i);
      position[static_cast<size_t>(i)] = static_cast<int32_t>(pos);
    }
  }
  Buffer back = alloc_act(std::max<int64_t>(1, n_recv) * H, "ep_back", at);
  if (n_recv > 0) {
    Buffer xin = alloc_act(n_recv * H, "expert_in", opt_.matmul_dtype), out = alloc_act(n_recv * H, "expert_out", at);
    op("moe dispatch", [&] { kernels::gather_rows(dev_, recv, H, sorted, xin); });
    expert_ffn(L, xin, counts, out);
    op("moe combine", [&] { kernels::gather_rows(dev_, out, H, position, back.view(0, n_recv * H)); });
    dev_.free(xin);
    dev_.free(out);
  }
  // 4. Return: every row to the rank that sent it, in the order it was sent.
  Buffer ret = alloc_act(std::max<int64_t>(1, n_send) * H, "ep_return", at);
  if (!log_collective("moe combine", "ep", ccl::Collective::kAllToAllV, static_cast<double>(n_recv * H * dtype_size_bytes(at))))
    op("moe combine", [&] { opt_.ep_comm->all_to_all_v(me, back, ret, scaled(recv_counts, H)); });
  // 5. Combine this rank's tokens; the group gathers every rank's share.
  const auto [t0, t1] = share(me);
  std::vector<int32_t> slot(static_cast<size_t>((t1 - t0) * K));
  {
    int64_t pos = 0;
    for (int p = 0; p < ep; ++p)
      for (int64_t i : mine[static_cast<size_t>(p)]) slot[static_cast<size_t>(i - t0 * K)] = static_cast<int32_t>(pos++);
  }
  if (tp == 1) {
    op("moe combine", [&] { kernels::gather_combine(dev_, ret, H, slot, K, w, y); });
  } else {
    Buffer part = alloc_act(chunk * H, "ep_part", at), all = alloc_act(tp * chunk * H, "ep_group", at);
    if (real && t1 - t0 < chunk)  // rows past the end of the group's tokens: defined, never read
      dev_.upload(part.view((t1 - t0) * H, (chunk - (t1 - t0)) * H),
                  std::vector<float>(static_cast<size_t>((chunk - (t1 - t0)) * H), 0.0f));
    op("moe combine", [&] {
      if (t1 > t0)
        kernels::gather_combine(dev_, ret, H, slot, K, w.view(t0 * K, (t1 - t0) * K), part.view(0, (t1 - t0) * H));
    });
    if (!log_collective("moe combine", "tp", ccl::Collective::kAllGather, static_cast<double>(all.bytes)))
      op("moe combine", [&] { opt_.tp_comm->all_gather(opt_.tp_rank, part, all); });
    op("moe combine", [&] { kernels::copy(dev_, all.view(0, T * H), y); });
    dev_.free(part);
    dev_.free(all);
  }
  for (Buffer* b : {&send, &ids_send, &recv, &ids_recv, &back, &ret}) dev_.free(*b);
}

}  // namespace ppu
