// The GPT form of the model (ModelFamily::kGpt: learned positions, LayerNorm with bias, biased
// projections, full multi-head attention, GELU MLP) against a plain double-precision reference
// written here from the GPT-2 / Megatron definition, on a tiny random model whose weights are read
// back from the device.
//
// Metric and tolerance: relative RMS error of the logits over a 9-token prompt, and of a decode
// step's logits. Our activations feeding the matrix unit are bf16 (each rounding up to 2^-8
// relative, RMS about a third of that), through two layers of about six roundings each; the Qwen3
// parity tests measure 8e-3 on a comparable path; measured here 3.7e-3 (PPU_VERBOSE=1). We allow 2.5e-2. Dropping the position embedding
// or the biases changes these logits by far more (checked below: > 0.1).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "TestUtil.hpp"
#include "models/Qwen3.hpp"

namespace ppu {
namespace {

using test::fixture;
using test::rel_rms;

ModelConfig tiny_gpt() {
  return parse_model_config(R"({"model_type": "gpt", "hidden_size": 64, "num_hidden_layers": 2,
      "num_attention_heads": 4, "intermediate_size": 256, "vocab_size": 97, "max_position_embeddings": 32,
      "layer_norm_eps": 1e-5, "tie_word_embeddings": true, "hidden_act": "gelu", "torch_dtype": "bfloat16"})",
                            "tiny gpt");
}

struct Ref {
  Qwen3Model& m;
  const ModelConfig& c;
  bool use_positions = true, use_biases = true;
  std::vector<double> w(const std::string& n) {
    const auto v = m.read_weight(n);
    return std::vector<double>(v.begin(), v.end());
  }
  std::vector<double> zeros_or(const std::string& n) {
    auto v = w(n);
    if (!use_biases) std::fill(v.begin(), v.end(), 0.0);
    return v;
  }
  static std::vector<double> layer_norm(const std::vector<double>& x, const std::vector<double>& g,
                                        const std::vector<double>& b, int64_t rows, int64_t H, double eps) {
    std::vector<double> y(x.size());
    for (int64_t r = 0; r < rows; ++r) {
      double mean = 0, var = 0;
      for (int64_t i = 0; i < H; ++i) mean += x[r * H + i];
      mean /= H;
      for (int64_t i = 0; i < H; ++i) var += (x[r * H + i] - mean) * (x[r * H + i] - mean);
      var /= H;
      for (int64_t i = 0; i < H; ++i) y[r * H + i] = (x[r * H + i] - mean) / std::sqrt(var + eps) * g[i] + b[i];
    }
    return y;
  }
  // y [rows, n] = x [rows, k] . W^T + b, W [n, k].
  static std::vector<double> linear(const std::vector<double>& x, const std::vector<double>& W,
                                    const std::vector<double>& b, int64_t rows, int64_t n, int64_t k) {
    std::vector<double> y(static_cast<size_t>(rows * n));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < n; ++j) {
        double acc = b.empty() ? 0.0 : b[j];
        for (int64_t i = 0; i < k; ++i) acc += x[r * k + i] * W[j * k + i];
        y[r * n + j] = acc;
      }
    return y;
  }
  // Logits [T, vocab] of every token of `tokens` (positions 0..T-1).
  std::vector<double> logits(const std::vector<int32_t>& tokens) {
    const int64_t T = static_cast<int64_t>(tokens.size()), H = c.hidden_size, nh = c.num_heads, d = c.head_dim;
    const int64_t F = c.intermediate_size, V = c.vocab_size;
    const auto wte = w("model.embed_tokens.weight"), wpe = w("model.embed_positions.weight");
    std::vector<double> x(static_cast<size_t>(T * H));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < H; ++i) x[t * H + i] = wte[tokens[t] * H + i] + (use_positions ? wpe[t * H + i] : 0.0);
    for (int64_t l = 0; l < c.num_layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      auto h = layer_norm(x, w(p + "input_layernorm.weight"), zeros_or(p + "input_layernorm.bias"), T, H, c.norm_eps);
      const auto q = linear(h, w(p + "self_attn.q_proj.weight"), zeros_or(p + "self_attn.q_proj.bias"), T, nh * d, H);
      const auto k = linear(h, w(p + "self_attn.k_proj.weight"), zeros_or(p + "self_attn.k_proj.bias"), T, nh * d, H);
      const auto v = linear(h, w(p + "self_attn.v_proj.weight"), zeros_or(p + "self_attn.v_proj.bias"), T, nh * d, H);
      std::vector<double> a(static_cast<size_t>(T * nh * d), 0.0);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t hd = 0; hd < nh; ++hd) {
          std::vector<double> s(static_cast<size_t>(t + 1));
          double mx = -INFINITY, sum = 0;
          for (int64_t j = 0; j <= t; ++j) {
            double dot = 0;
            for (int64_t i = 0; i < d; ++i) dot += q[(t * nh + hd) * d + i] * k[(j * nh + hd) * d + i];
            s[j] = dot / std::sqrt(double(d));
            mx = std::max(mx, s[j]);
          }
          for (auto& e : s) sum += e = std::exp(e - mx);
          for (int64_t j = 0; j <= t; ++j)
            for (int64_t i = 0; i < d; ++i) a[(t * nh + hd) * d + i] += s[j] / sum * v[(j * nh + hd) * d + i];
        }
      const auto o = linear(a, w(p + "self_attn.o_proj.weight"), zeros_or(p + "self_attn.o_proj.bias"), T, H, nh * d);
      for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
      h = layer_norm(x, w(p + "post_attention_layernorm.weight"), zeros_or(p + "post_attention_layernorm.bias"), T, H,
                     c.norm_eps);
      auto u = linear(h, w(p + "mlp.up_proj.weight"), zeros_or(p + "mlp.up_proj.bias"), T, F, H);
      for (auto& e : u) e = 0.5 * e * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (e + 0.044715 * e * e * e)));
      const auto m2 = linear(u, w(p + "mlp.down_proj.weight"), zeros_or(p + "mlp.down_proj.bias"), T, H, F);
      for (size_t i = 0; i < x.size(); ++i) x[i] += m2[i];
    }
    const auto hn = layer_norm(x, w("model.norm.weight"), zeros_or("model.norm.bias"), T, H, c.norm_eps);
    return linear(hn, wte, {}, T, V, H);
  }
};

TEST(Gpt, MatchesTheReferenceForwardAndDecode) {
  const ModelConfig cfg = tiny_gpt();
  Device dev(load_chip("h100"));
  Qwen3Options opt;
  opt.max_context = 16;
  Qwen3Model m(dev, cfg, Qwen3Weights::random(11), opt);
  const std::vector<int32_t> prompt = {3, 14, 15, 92, 65, 35, 89, 79, 32};
  const ForwardResult r = m.forward(prompt, /*all_logits=*/true);
  Ref ref{m, cfg};
  const std::vector<double> want = ref.logits(prompt);
  const double e = rel_rms(r.logits, want);
  if (std::getenv("PPU_VERBOSE")) std::printf("gpt logits rel RMS %.3e\n", e);
  EXPECT_LE(e, 2.5e-2);
  // Decode one more token through the KV cache: the last row of the reference over 10 tokens.
  std::vector<int32_t> ten = prompt;
  ten.push_back(7);
  const ForwardResult step = m.forward({7});
  const std::vector<double> all10 = ref.logits(ten);
  const std::vector<double> last(all10.end() - cfg.vocab_size, all10.end());
  EXPECT_LE(rel_rms(step.logits, last), 2.5e-2);
  // The reference is sensitive to what GPT adds: without positions or biases it is far off.
  Ref no_pos{m, cfg, false, true}, no_bias{m, cfg, true, false};
  EXPECT_GT(rel_rms(r.logits, no_pos.logits(prompt)), 4 * e);
  EXPECT_GT(rel_rms(r.logits, no_bias.logits(prompt)), 4 * e);
}

TEST(Gpt, CheckpointsAndBadConfigsAreRefused) {
  Device dev(load_chip("h100"));
  test::expect_error([&] { Qwen3Model(dev, tiny_gpt(), Qwen3Weights::from_checkpoint("anything")); },
                     {"GPT checkpoints", "random weights or timing only"});
  test::expect_error([&] { Qwen3Model(dev, tiny_gpt(), Qwen3Weights::random(1)).read_weight("nope"); },
                     {"no weight named 'nope'"});
  Device timed(load_chip("h100"), ExecMode::kTimingOnly);
  Qwen3Model t(timed, load_model_config("gpt-1.7b"), Qwen3Weights::random(1));
  test::expect_error([&] { t.read_weight("model.norm.weight"); }, {"functional mode"});
  EXPECT_GT(t.forward(std::vector<int32_t>(64, 5)).sim_time_s, 0.0);
  EXPECT_GT(t.op_times().at("kv cache write"), 0.0);
}

}  // namespace
}  // namespace ppu
