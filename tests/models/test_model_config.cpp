// Tests of models/ModelConfig: every built-in model preset loads (strictly) and its parameter count
// agrees with the published figure; released-style config.json files parse to the same models; the
// derived quantities (KV bytes, FLOPs) match independent hand calculations and Megatron-LM's
// formula; and each kind of mistake in a config gets an error naming the file and the field.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "TestUtil.hpp"
#include "models/ModelConfig.hpp"

namespace ppu {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// Presets against published parameter counts

// Published figures, in billions. Sources: Qwen3 technical report and the Qwen3 model cards on
// Hugging Face ("Number of Parameters", "Non-Embedding", "Activated"); Llama 3 paper / Llama 3.1 and
// 3.3 model cards (8.03B, 70.6B, 405B); Megatron-LM SC'21 table 1 "Params (B)"
// (Narayanan et al., arXiv:2104.04473). active = 0: a dense model (active == total);
// non_embedding = 0: not published.
struct Published {
  const char* preset;
  double total_b, active_b, non_embedding_b;
};
const Published kPublished[] = {
    {"qwen3-0.6b", 0.6, 0, 0.44},     {"qwen3-1.7b", 1.7, 0, 1.4},        {"qwen3-4b", 4.0, 0, 3.6},
    {"qwen3-8b", 8.2, 0, 6.95},       {"qwen3-14b", 14.8, 0, 13.2},       {"qwen3-32b", 32.8, 0, 31.2},
    {"qwen3-30b-a3b", 30.5, 3.3, 29.9}, {"qwen3-235b-a22b", 235, 22, 234},
    {"llama3-8b", 8.03, 0, 0},        {"llama3-70b", 70.6, 0, 0},         {"llama3-405b", 405, 0, 0},
    {"gpt-1.7b", 1.7, 0, 0},          {"gpt-3.6b", 3.6, 0, 0},            {"gpt-7.5b", 7.5, 0, 0},
    {"gpt-18.4b", 18.4, 0, 0},        {"gpt-39.1b", 39.1, 0, 0},          {"gpt-76.1b", 76.1, 0, 0},
    {"gpt-145.6b", 145.6, 0, 0},      {"gpt-310.1b", 310.1, 0, 0},        {"gpt-529.6b", 529.6, 0, 0},
    {"gpt-1008b", 1008.0, 0, 0},
};

// 3%: the published figures are rounded to two or three significant digits (Qwen3-0.6B's "0.6B" is
// 0.596B; the SC'21 table's 1.7 is the paper's own formula giving 1.652B, printed to 0.1B, 2.8% off).
// Conventions: tied embeddings counted once; "active" includes embeddings and lm_head (which is how
// Qwen's 22B / 3.3B activated come out); "non-embedding" leaves out both embedding and lm_head.
constexpr double kParamTolerance = 0.03;

double rel_err(double ours, double published) { return (ours - published) / published; }

TEST(ModelPresets, ParameterCountsMatchPublishedFigures) {
  for (const auto& p : kPublished) {
    SCOPED_TRACE(p.preset);
    const ModelConfig m = load_model_config(p.preset);
    const ModelParamCounts c = param_counts(m);
    EXPECT_LE(std::fabs(rel_err(c.total() / 1e9, p.total_b)), kParamTolerance) << "total " << c.total();
    const double active_b = p.active_b > 0 ? p.active_b : p.total_b;
    EXPECT_LE(std::fabs(rel_err(c.active() / 1e9, active_b)), kParamTolerance) << "active " << c.active();
    if (p.non_embedding_b > 0) {
      EXPECT_LE(std::fabs(rel_err(c.non_embedding() / 1e9, p.non_embedding_b)), kParamTolerance)
          << "non-embedding " << c.non_embedding();
    }
    if (!m.is_moe()) {
      EXPECT_EQ(c.active(), c.total());
    }
  }
}

// Qwen3-0.6B by hand: embedding 151936 x 1024 (tied, once); per layer q 1024x2048, k and v
// 1024x1024 each, o 2048x1024, QK-norm 2 x 128, MLP 3 x 1024 x 3072, two RMSNorms 2 x 1024;
// final norm 1024.
TEST(ModelPresets, Qwen3SmallExactCount) {
  const ModelParamCounts c = param_counts(load_model_config("qwen3-0.6b"));
  const int64_t layer = 1024 * 2048 + 2 * 1024 * 1024 + 2048 * 1024 + 2 * 128 + 3 * 1024 * 3072 + 2 * 1024;
  EXPECT_EQ(c.embedding, 151936 * 1024);
  EXPECT_EQ(c.lm_head, 0);
  EXPECT_EQ(c.total(), 151936 * 1024 + 28 * layer + 1024);
  EXPECT_EQ(c.total(), 596'049'920);
}

// Qwen3-Max is an assumption; its notes state what the assumed shape gives, checked here.
TEST(ModelPresets, Qwen3MaxIsAboutOneTrillion) {
  const ModelConfig m = load_model_config("qwen3-max");
  EXPECT_FALSE(m.assumed.empty());
  EXPECT_NE(m.notes.find("ASSUMED"), std::string::npos);
  const ModelParamCounts c = param_counts(m);
  EXPECT_NEAR(c.total() / 1e12, 1.04, 0.005);
  EXPECT_NEAR(c.active() / 1e9, 49, 0.5);
  EXPECT_GT(c.total(), 1'000'000'000'000);  // "more than 1 trillion parameters"
}

TEST(ModelPresets, EveryPresetLoadsStrictlyWithProvenance) {
  const auto names = model_preset_names();
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  for (const char* n : {"qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b", "qwen3-14b", "qwen3-32b", "qwen3-30b-a3b",
                        "qwen3-235b-a22b", "qwen3-max", "tiny", "tiny-moe", "llama3-8b", "llama3-70b", "llama3-405b"})
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
  for (const auto& p : kPublished)
    EXPECT_NE(std::find(names.begin(), names.end(), p.preset), names.end()) << p.preset;
  for (const auto& n : names) {
    SCOPED_TRACE(n);
    const ModelConfig m = load_model_config(n);  // built-ins are parsed strictly
    EXPECT_EQ(m.name, n);
    EXPECT_EQ(m.file, "<built-in>/models/" + n + ".json");
    EXPECT_FALSE(m.source.empty() && m.assumed.empty());
    EXPECT_FALSE(m.notes.empty());
    EXPECT_EQ(m.num_heads % m.num_kv_heads, 0);
    if (m.is_moe()) {
      EXPECT_LE(m.num_experts_per_tok, m.num_experts);
    }
  }
}

TEST(ModelPresets, TinyModelsCoverTheQwen3Tokenizer) {
  // The Qwen3 tokenizer's ids run to 151,668 (</think>); the tiny models keep the padded 151,936 rows.
  for (const char* n : {"tiny", "tiny-moe"}) {
    const ModelConfig m = load_model_config(n);
    EXPECT_GT(m.vocab_size, 151668) << n;
    EXPECT_LT(param_counts(m).total(), 20'000'000) << n;
  }
  const ModelConfig t = load_model_config("tiny");
  EXPECT_EQ(t.family, ModelFamily::kQwen3);
  EXPECT_TRUE(t.tie_word_embeddings);
  const ModelConfig moe = load_model_config("tiny-moe");
  EXPECT_EQ(moe.family, ModelFamily::kQwen3Moe);
  EXPECT_EQ(moe.num_experts, 8);
  EXPECT_EQ(moe.num_experts_per_tok, 2);
  EXPECT_TRUE(moe.norm_topk_prob);
}

TEST(ModelPresets, FamilyStructure) {
  const ModelConfig q = load_model_config("qwen3-8b");
  EXPECT_EQ(q.norm, NormType::kRmsNorm);
  EXPECT_EQ(q.activation, Activation::kSwiGlu);
  EXPECT_EQ(q.positions, PositionEncoding::kRope);
  EXPECT_TRUE(q.qk_norm);
  EXPECT_FALSE(q.attention_bias);
  EXPECT_EQ(q.rope_theta, 1e6);
  EXPECT_EQ(q.norm_eps, 1e-6);
  EXPECT_EQ(q.dtype, DType::kBF16);
  const ModelConfig l = load_model_config("llama3-70b");
  EXPECT_FALSE(l.qk_norm);
  EXPECT_EQ(l.rope_theta, 500000.0);
  EXPECT_EQ(l.vocab_size, 128256);
  EXPECT_EQ(l.rope_scaling_type, "llama3");
  EXPECT_EQ(l.rope_scaling_factor, 8.0);
  EXPECT_EQ(l.rope_low_freq_factor, 1.0);
  EXPECT_EQ(l.rope_high_freq_factor, 4.0);
  EXPECT_EQ(l.rope_original_max_positions, 8192);
  const ModelConfig g = load_model_config("gpt-39.1b");
  EXPECT_EQ(g.norm, NormType::kLayerNorm);
  EXPECT_EQ(g.activation, Activation::kGelu);
  EXPECT_EQ(g.positions, PositionEncoding::kLearned);
  EXPECT_TRUE(g.attention_bias && g.mlp_bias && g.tie_word_embeddings);
  EXPECT_EQ(g.num_kv_heads, g.num_heads);
  EXPECT_EQ(g.intermediate_size, 4 * g.hidden_size);
  EXPECT_EQ(g.max_position_embeddings, 2048);
  EXPECT_EQ(g.dtype, DType::kF16);
}

// ---------------------------------------------------------------------------------------------
// Derived quantities

// Megatron-LM (SC'21) counts 96 B s l h^2 (1 + s/6h + V/16lh) FLOPs per iteration: forward (x1),
// backward (x2), recomputed forward (x1) of the layers, and forward + backward (x3) of the logit
// layer. Its forward part, 24 B s l h^2 (1 + s/6h) + 2 B s V h, is ours with context = s.
TEST(ModelDerived, ForwardFlopsMatchMegatronFormula) {
  for (const char* n : {"gpt-1.7b", "gpt-18.4b", "gpt-1008b"}) {
    SCOPED_TRACE(n);
    const ModelConfig m = load_model_config(n);
    const double l = m.num_layers, h = m.hidden_size, V = m.vocab_size, s = 2048;
    const double megatron_forward_per_token = 24 * l * h * h * (1 + s / (6 * h)) + 2 * V * h;
    EXPECT_NEAR(forward_flops_per_token(m, s) / megatron_forward_per_token, 1.0, 1e-12);
    // And the whole iteration, rebuilt from the forward parts: 4 x layers + 3 x logits.
    const double logits = 2 * V * h;
    const double iteration = 4 * (forward_flops_per_token(m, s) - logits) + 3 * logits;
    EXPECT_NEAR(iteration / (96 * l * h * h * (1 + s / (6 * h) + V / (16 * l * h))), 1.0, 1e-12);
  }
}

// For an MoE model the matmul term follows the active parameters: matmul_active = active minus the
// embedding lookup, norms and QK-norm weights (Qwen3 has no biases; its lm_head is untied).
TEST(ModelDerived, MoeFlopsFollowActiveParameters) {
  const ModelConfig m = load_model_config("qwen3-235b-a22b");
  const ModelParamCounts c = param_counts(m);
  EXPECT_EQ(c.matmul_active, c.active() - m.vocab_size * m.hidden_size - c.norms - m.num_layers * 2 * m.head_dim);
  const double attention = 4.0 * 94 * 64 * 128 * 1000;
  EXPECT_DOUBLE_EQ(forward_flops_per_token(m, 1000), 2.0 * c.matmul_active + attention);
  EXPECT_DOUBLE_EQ(forward_flops_per_token(m, 0), 2.0 * c.matmul_active);
  // Tied embeddings still cost the logits matmul.
  const ModelConfig t = load_model_config("qwen3-0.6b");
  EXPECT_EQ(param_counts(t).lm_head, 0);
  EXPECT_EQ(param_counts(t).matmul_active,
            28 * (1024 * 2048 + 2 * 1024 * 1024 + 2048 * 1024 + 3 * 1024 * 3072) + 151936 * 1024);
}

TEST(ModelDerived, KvCacheBytesPerToken) {
  // 2 (K, V) x layers x kv_heads x head_dim x bytes.
  EXPECT_EQ(kv_cache_bytes_per_token(load_model_config("qwen3-8b"), DType::kBF16), 2 * 36 * 8 * 128 * 2);  // 144 KiB
  EXPECT_EQ(kv_cache_bytes_per_token(load_model_config("llama3-70b"), DType::kBF16), 327'680);            // 320 KiB
  EXPECT_EQ(kv_cache_bytes_per_token(load_model_config("qwen3-235b-a22b"), DType::kF8E4M3), 2 * 94 * 4 * 128);
  // Without GQA every head is cached.
  EXPECT_EQ(kv_cache_bytes_per_token(load_model_config("gpt-1.7b"), DType::kF16), 2 * 24 * 2304 * 2);
}

TEST(ModelDerived, WeightBytes) {
  const ModelConfig m = load_model_config("qwen3-0.6b");
  EXPECT_EQ(weight_bytes(m), 2 * 596'049'920LL);
  EXPECT_EQ(weight_bytes(m, DType::kF32), 4 * 596'049'920LL);
  EXPECT_EQ(weight_bytes(m, DType::kF8E5M2), 596'049'920LL);
}

TEST(ModelDerived, BiasesAndLayerNormAreCounted) {
  // GPT per layer: 12 h^2 + 13 h (QKV and output biases 4h, MLP biases 5h, two LayerNorms 4h);
  // plus (V + s) h embeddings and a final LayerNorm 2h.
  const ModelConfig g = load_model_config("gpt-7.5b");
  const int64_t h = 4096, l = 36;
  EXPECT_EQ(param_counts(g).total(), l * (12 * h * h + 13 * h) + (51200 + 2048) * h + 2 * h);
}

// ---------------------------------------------------------------------------------------------
// Hugging Face config.json files

// As released for Qwen/Qwen3-0.6B (keys OpenPPU ignores included).
json qwen3_small_config() {
  return json::parse(R"({
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
    "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3072,
    "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
    "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
    "rope_scaling": null, "rope_theta": 1000000, "sliding_window": null, "tie_word_embeddings": true,
    "torch_dtype": "bfloat16", "transformers_version": "4.51.0", "use_cache": true,
    "use_sliding_window": false, "vocab_size": 151936})");
}

// As released for Qwen/Qwen3-30B-A3B.
json qwen3_moe_config() {
  return json::parse(R"({
    "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
    "bos_token_id": 151643, "decoder_sparse_step": 1, "eos_token_id": 151645, "head_dim": 128,
    "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 6144,
    "max_position_embeddings": 40960, "max_window_layers": 48, "mlp_only_layers": [], "model_type": "qwen3_moe",
    "moe_intermediate_size": 768, "norm_topk_prob": true, "num_attention_heads": 32, "num_experts": 128,
    "num_experts_per_tok": 8, "num_hidden_layers": 48, "num_key_value_heads": 4, "output_router_logits": false,
    "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001,
    "sliding_window": null, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0", "use_cache": true, "use_sliding_window": false, "vocab_size": 151936})");
}

// As released for meta-llama/Llama-3.1-8B (no head_dim: hidden / heads).
json llama_config() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096,
    "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": false,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0", "use_cache": true, "vocab_size": 128256})");
}

ModelConfig parse(const json& j, bool strict = false) { return parse_model_config(j.dump(), "cfg.json", strict); }

// Everything but provenance agrees.
void expect_same_model(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.family, b.family);
  EXPECT_EQ(a.norm, b.norm);
  EXPECT_EQ(a.activation, b.activation);
  EXPECT_EQ(a.positions, b.positions);
  EXPECT_EQ(a.qk_norm, b.qk_norm);
  EXPECT_EQ(a.attention_bias, b.attention_bias);
  EXPECT_EQ(a.mlp_bias, b.mlp_bias);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.num_layers, b.num_layers);
  EXPECT_EQ(a.num_heads, b.num_heads);
  EXPECT_EQ(a.num_kv_heads, b.num_kv_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.rope_scaling_type, b.rope_scaling_type);
  EXPECT_EQ(a.rope_scaling_factor, b.rope_scaling_factor);
  EXPECT_EQ(a.norm_eps, b.norm_eps);
  EXPECT_EQ(a.num_experts, b.num_experts);
  EXPECT_EQ(a.num_experts_per_tok, b.num_experts_per_tok);
  EXPECT_EQ(a.moe_intermediate_size, b.moe_intermediate_size);
  EXPECT_EQ(a.norm_topk_prob, b.norm_topk_prob);
  EXPECT_EQ(a.router_aux_loss_coef, b.router_aux_loss_coef);
  EXPECT_EQ(a.num_shared_experts, b.num_shared_experts);
  EXPECT_EQ(a.dtype, b.dtype);
  EXPECT_EQ(param_counts(a).total(), param_counts(b).total());
  EXPECT_EQ(param_counts(a).active(), param_counts(b).active());
}

TEST(ModelConfigParse, ReleasedConfigsMatchPresets) {
  {
    SCOPED_TRACE("qwen3");
    const ModelConfig m = parse(qwen3_small_config());
    expect_same_model(m, load_model_config("qwen3-0.6b"));
    EXPECT_EQ(m.intermediate_size, 3072);
    EXPECT_EQ(m.file, "cfg.json");
  }
  {
    SCOPED_TRACE("qwen3_moe");
    expect_same_model(parse(qwen3_moe_config()), load_model_config("qwen3-30b-a3b"));
  }
  {
    SCOPED_TRACE("llama");
    const ModelConfig m = parse(llama_config());
    EXPECT_EQ(m.head_dim, 128);  // hidden / heads
    expect_same_model(m, load_model_config("llama3-8b"));
  }
}

TEST(ModelConfigParse, DefaultsWhereReleasedConfigsMayOmitKeys) {
  json j = llama_config();
  for (const char* k : {"num_key_value_heads", "rope_theta", "rms_norm_eps", "tie_word_embeddings",
                        "max_position_embeddings", "torch_dtype", "hidden_act", "attention_bias", "mlp_bias",
                        "rope_scaling"})
    j.erase(k);
  const ModelConfig m = parse(j);
  EXPECT_EQ(m.num_kv_heads, m.num_heads);  // no GQA
  EXPECT_EQ(m.rope_theta, 10000.0);
  EXPECT_EQ(m.norm_eps, 1e-6);
  EXPECT_FALSE(m.tie_word_embeddings);
  EXPECT_EQ(m.max_position_embeddings, 2048);
  EXPECT_EQ(m.dtype, DType::kBF16);
  EXPECT_TRUE(m.rope_scaling_type.empty());
  json moe = qwen3_moe_config();
  moe.erase("norm_topk_prob");
  moe.erase("intermediate_size");  // unused when every layer is MoE
  EXPECT_FALSE(parse(moe).norm_topk_prob);
  EXPECT_EQ(parse(moe).intermediate_size, 0);
  // The load-balancing loss's weight: as given, else Qwen3-MoE's 0.001; 0 turns it off; negative refused.
  moe["router_aux_loss_coef"] = 0.02;
  EXPECT_EQ(parse(moe).router_aux_loss_coef, 0.02);
  moe["router_aux_loss_coef"] = 0;
  EXPECT_EQ(parse(moe).router_aux_loss_coef, 0.0);
  moe.erase("router_aux_loss_coef");
  EXPECT_EQ(parse(moe).router_aux_loss_coef, 0.001);
  moe["router_aux_loss_coef"] = -1;
  test::expect_error([&] { parse(moe); }, {"field 'router_aux_loss_coef'", "must be a non-negative number", "-1"});
}

TEST(ModelConfigParse, NewerDtypeKeyAndFp8) {
  json j = qwen3_small_config();
  j.erase("torch_dtype");
  j["dtype"] = "float8_e4m3fn";
  EXPECT_EQ(parse(j).dtype, DType::kF8E4M3);
  j["dtype"] = "float32";
  EXPECT_EQ(parse(j).dtype, DType::kF32);
}

TEST(ModelConfigParse, BiasesChangeTheCount) {
  json j = llama_config();
  const int64_t base = param_counts(parse(j)).total();
  j["attention_bias"] = true;
  j["mlp_bias"] = true;
  // q 4096 + k, v 1024 each + o 4096, and gate/up 14336 each + down 4096, per layer.
  EXPECT_EQ(param_counts(parse(j)).total() - base, 32 * (4096 + 2 * 1024 + 4096 + 2 * 14336 + 4096));
}

TEST(ModelConfigParse, SharedExperts) {
  json j = qwen3_moe_config();
  j["shared_expert_intermediate_size"] = 512;
  const ModelConfig m = parse(j);
  EXPECT_EQ(m.num_shared_experts, 1);
  const int64_t without = param_counts(parse(qwen3_moe_config())).active();
  EXPECT_EQ(param_counts(m).active() - without, 48 * 3 * 2048 * 512);
}

TEST(ModelConfigLoad, FileAndDirectory) {
  const fs::path dir = fs::path(test::temp_path("Qwen3-0.6B"));
  fs::remove_all(dir);
  fs::create_directories(dir);
  test::write_file((dir / "config.json").string(), qwen3_small_config().dump(2));
  const ModelConfig a = load_model_config(dir.string());
  EXPECT_EQ(a.name, dir.filename().string());
  EXPECT_EQ(a.file, (dir / "config.json").string());
  expect_same_model(a, load_model_config("qwen3-0.6b"));
  const ModelConfig b = load_model_config((dir / "config.json").string());
  EXPECT_EQ(b.name, a.name);
  const ModelConfig c = load_model_config(dir.string() + "/");
  EXPECT_EQ(c.name, a.name);
  // Any other file name: named after the file.
  test::write_file((dir / "mine.json").string(), qwen3_small_config().dump());
  EXPECT_EQ(load_model_config((dir / "mine.json").string()).name, "mine");
}

// ---------------------------------------------------------------------------------------------
// Errors: one per kind of mistake, each naming the file and the field.

void expect_config_error(const json& j, std::initializer_list<std::string> parts, bool strict = false) {
  test::expect_error([&] { parse(j, strict); }, {"cfg.json: "});
  test::expect_error([&] { parse(j, strict); }, parts);
}

TEST(ModelConfigErrors, NotJsonOrNotObject) {
  test::expect_error([] { parse_model_config("{ nope", "cfg.json"); }, {"cfg.json: not valid JSON"});
  test::expect_error([] { parse_model_config("[1]", "cfg.json"); }, {"cfg.json: a model config must be a JSON object"});
}

TEST(ModelConfigErrors, ModelType) {
  json j = qwen3_small_config();
  j["model_type"] = "mistral";
  expect_config_error(j, {"unknown model_type 'mistral'; supported: qwen3, qwen3_moe, llama, gpt"});
  j["model_type"] = 3;
  expect_config_error(j, {"field 'model_type': must be a string (one of: qwen3, qwen3_moe, llama, gpt), got 3"});
  j.erase("model_type");
  expect_config_error(j, {"missing field 'model_type' (one of: qwen3, qwen3_moe, llama, gpt)"});
}

TEST(ModelConfigErrors, MissingRequiredFields) {
  const json gpt = json::parse(R"({
    "model_type": "gpt", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "intermediate_size": 256, "vocab_size": 1000})");
  const std::vector<std::pair<json, std::vector<const char*>>> cases = {
      {qwen3_small_config(),
       {"hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size"}},
      {qwen3_moe_config(),
       {"hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "num_experts",
        "num_experts_per_tok", "moe_intermediate_size"}},
      {llama_config(), {"hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size"}},
      {gpt, {"hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size"}},
  };
  for (const auto& [base, fields] : cases) {
    EXPECT_NO_THROW(parse(base));
    for (const char* f : fields) {
      SCOPED_TRACE(fmt::format("{} without {}", base.at("model_type").get<std::string>(), f));
      json j = base;
      j.erase(f);
      expect_config_error(j, {fmt::format("missing field '{}' (", f), "a positive integer)"});
    }
  }
}

TEST(ModelConfigErrors, NonPositiveOrNonIntegerSizes) {
  for (const char* f : {"hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                        "intermediate_size", "vocab_size", "max_position_embeddings"}) {
    for (const json& bad : {json(0), json(-8), json(64.5), json("64"), json(true)}) {
      SCOPED_TRACE(fmt::format("{} = {}", f, bad.dump()));
      json j = qwen3_small_config();
      j[f] = bad;
      expect_config_error(j, {fmt::format("field '{}': must be a positive integer, got {}", f, bad.dump())});
    }
  }
  for (const char* f : {"num_experts", "num_experts_per_tok", "moe_intermediate_size"}) {
    json j = qwen3_moe_config();
    j[f] = 0;
    expect_config_error(j, {fmt::format("field '{}': must be a positive integer, got 0", f)});
  }
}

TEST(ModelConfigErrors, HeadsDoNotDivide) {
  json j = llama_config();  // no head_dim, so it is hidden / heads
  j["num_attention_heads"] = 30;
  j["num_key_value_heads"] = 10;
  expect_config_error(j, {"field 'num_attention_heads': 30 heads do not divide hidden_size 4096",
                          "give head_dim explicitly"});
  j["head_dim"] = 128;  // with head_dim given, heads x head_dim may differ from hidden
  EXPECT_NO_THROW(parse(j));
  j["num_key_value_heads"] = 7;
  expect_config_error(j, {"field 'num_key_value_heads': 7 key/value heads do not divide num_attention_heads 30"});
}

TEST(ModelConfigErrors, TopKAboveExperts) {
  json j = qwen3_moe_config();
  j["num_experts_per_tok"] = 129;
  expect_config_error(j, {"field 'num_experts_per_tok': top-k 129 exceeds num_experts 128"});
}

TEST(ModelConfigErrors, BadNumbersAndFlags) {
  json j = qwen3_small_config();
  j["rope_theta"] = 0;
  expect_config_error(j, {"field 'rope_theta': must be a positive number, got 0"});
  j = qwen3_small_config();
  j["rms_norm_eps"] = -1e-6;
  expect_config_error(j, {"field 'rms_norm_eps': must be a positive number"});
  j["rms_norm_eps"] = 1.5;
  expect_config_error(j, {"field 'rms_norm_eps': 1.5 is not a small epsilon"});
  j = qwen3_small_config();
  j["tie_word_embeddings"] = "yes";
  expect_config_error(j, {"field 'tie_word_embeddings': must be true or false, got \"yes\""});
  j = qwen3_small_config();
  j["rope_scaling"] = 2;
  expect_config_error(j, {"field 'rope_scaling': must be null or an object, got 2"});
  j["rope_scaling"] = {{"factor", 4.0}};
  expect_config_error(j, {"field 'rope_scaling': needs \"rope_type\""});
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", -1}};
  expect_config_error(j, {"field 'rope_scaling': \"factor\" must be a positive number"});
}

TEST(ModelConfigErrors, UnsupportedFeatures) {
  json j = qwen3_small_config();
  j["hidden_act"] = "gelu";
  expect_config_error(j, {"field 'hidden_act': 'gelu' is not supported for model_type 'qwen3'; it uses 'silu'"});
  j = qwen3_small_config();
  j["use_sliding_window"] = true;
  expect_config_error(j, {"field 'use_sliding_window': sliding-window attention is not supported"});
  j = qwen3_moe_config();
  j["decoder_sparse_step"] = 2;
  expect_config_error(j, {"field 'decoder_sparse_step': only 1 (every layer is MoE) is supported"});
  j = qwen3_moe_config();
  j["mlp_only_layers"] = {0, 47};
  expect_config_error(j, {"field 'mlp_only_layers': dense layers inside an MoE model are not supported (got [0,47])"});
  j = qwen3_moe_config();
  j["num_shared_experts"] = 2;
  expect_config_error(j, {"field 'num_shared_experts': shared experts need both"});
}

TEST(ModelConfigErrors, UnknownDType) {
  json j = qwen3_small_config();
  j["torch_dtype"] = "int8";
  expect_config_error(j, {"field 'torch_dtype': 'int8' is not a supported weight dtype; supported: bfloat16"});
}

TEST(ModelConfigErrors, StrictPresetFormat) {
  json j = qwen3_small_config();
  EXPECT_NO_THROW(parse(j));  // lenient: released keys ignored
  expect_config_error(j, {"unknown field 'architectures' for model_type 'qwen3'; valid fields: model_type,"}, true);
  json p = json::parse(R"({"model_type": "qwen3", "hidden_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 1000})");
  expect_config_error(p, {"a preset needs \"source\"", "or \"assumed\""}, true);
  p["source"] = "test";
  EXPECT_NO_THROW(parse(p, true));
  p["num_key_value_head"] = 2;  // misspelt: would silently fall back to the default without strictness
  expect_config_error(p, {"unknown field 'num_key_value_head'"}, true);
  p.erase("num_key_value_head");
  p["num_experts"] = 8;  // an MoE key in a dense family
  expect_config_error(p, {"unknown field 'num_experts' for model_type 'qwen3'"}, true);
  p.erase("num_experts");
  p["source"] = "";
  expect_config_error(p, {"field 'source': must be a non-empty string"}, true);
}

TEST(ModelConfigErrors, UnknownPresetListsKnownOnes) {
  test::expect_error([] { load_model_config("qwen9"); },
                     {"unknown model 'qwen9'; known models: gpt-1.7b,", "qwen3-0.6b", "tiny-moe",
                      "(or give a path to a config.json or its directory)"});
}

TEST(ModelConfigErrors, PathsThatDoNotHoldAConfig) {
  const fs::path dir = fs::path(test::temp_path("empty"));
  fs::remove_all(dir);
  fs::create_directories(dir);
  test::expect_error([&] { load_model_config(dir.string()); }, {dir.string(), "directory has no config.json"});
  const std::string missing = (dir / "config.json").string();
  test::expect_error([&] { load_model_config(missing); }, {missing, "cannot open file"});
  test::write_file(missing, "{\"model_type\": \"qwen3\"}");
  test::expect_error([&] { load_model_config(dir.string()); }, {missing, "missing field 'hidden_size'"});
}

}  // namespace
}  // namespace ppu

namespace ppu {
namespace {

// Issue 17: every numeric field has a range (model_field_ranges(), docs/models.md).
TEST(ModelConfigErrors, SizesOutOfRange) {
  json j = qwen3_small_config();
  j["hidden_size"] = int64_t{1} << 40;
  EXPECT_EQ(test::error_message([&] { parse(j); }),
            "cfg.json: field 'hidden_size': 1099511627776 is out of range; valid: 1 to 1048576 (model widths reach "
            "about 25600)");
  j = qwen3_small_config();
  j["vocab_size"] = uint64_t{18446744073709551615u};
  EXPECT_EQ(test::error_message([&] { parse(j); }),
            "cfg.json: field 'vocab_size': 18446744073709551615 is out of range; valid: 1 to 16777216 (vocabularies "
            "reach about 260000 tokens)");
  j = qwen3_small_config();
  j["num_hidden_layers"] = 10001;
  EXPECT_EQ(test::error_message([&] { parse(j); }),
            "cfg.json: field 'num_hidden_layers': 10001 is out of range; valid: 1 to 10000 (released models have up to "
            "about 200 layers)");
  j = qwen3_small_config();
  j["rope_theta"] = 1e300;
  EXPECT_EQ(test::error_message([&] { parse(j); }),
            "cfg.json: field 'rope_theta': 1e+300 is out of range; valid: 1 to 1000000000000 (RoPE bases run from "
            "10000 to about 1e9)");
  j = llama_config();
  j["rope_scaling"]["original_max_position_embeddings"] = 1e300;
  EXPECT_EQ(test::error_message([&] { parse(j); }),
            "cfg.json: field 'rope_scaling.original_max_position_embeddings': 1e+300 is out of range; valid: 1 to "
            "1073741824 (a context length, as max_position_embeddings)");
  j = qwen3_moe_config();
  j["num_experts"] = 1 << 17;
  EXPECT_EQ(test::error_message([&] { parse(j); }),
            "cfg.json: field 'num_experts': 131072 is out of range; valid: 1 to 65536 (MoE models route over up to "
            "about 512 experts)");
}

// Issue 17, case 1: a number beyond a double in config.json aborted `run --model DIR`.
TEST(ModelConfigErrors, NumberBeyondADoubleAndDuplicateKeys) {
  EXPECT_EQ(test::error_message([] { parse_model_config(R"({"model_type": "qwen3", "hidden_size": 1e999999})", "cfg.json"); }),
            "cfg.json: not valid JSON: the number 1e999999 is beyond the range of a double (about 1.8e308)");
  EXPECT_EQ(test::error_message([] { parse_model_config(R"({"model_type": "qwen3", "model_type": "llama"})", "cfg.json"); }),
            "cfg.json: key 'model_type' appears twice in one object; give each key once (a JSON reader would silently "
            "keep only the last)");
}

// Issue 17, case 9: config.json is read only if it is a regular file.
TEST(ModelConfigErrors, ConfigThatIsNotARegularFile) {
  EXPECT_EQ(test::error_message([] { load_model_config("/dev/zero"); }),
            "/dev/zero: a model config must be a regular file, not a character device");
  const fs::path dir = fs::path(test::temp_path("model"));
  fs::create_directories(dir / "config.json");
  EXPECT_EQ(test::error_message([&] { load_model_config(dir.string()); }),
            (dir / "config.json").string() + ": a model config must be a regular file, not a directory");
}

}  // namespace
}  // namespace ppu

namespace ppu {
namespace {

// docs/models.md, "Valid ranges", lists every range the parser checks: "| `<key>` | <min> to <max> | <why> |".
TEST(ModelConfigErrors, RangesDocumentedInModelsMd) {
  std::ifstream in(test::fixture("../../docs/models.md"));
  ASSERT_TRUE(in.good());
  const std::string doc((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const auto& r : model_field_ranges()) {
    const std::string row = fmt::format("| `{}` | {} to {} | {} |", r.key, r.min, r.max, r.why);
    EXPECT_NE(doc.find(row), std::string::npos) << "docs/models.md lacks the row\n" << row;
  }
}

}  // namespace
}  // namespace ppu
