#include "models/ModelConfigJson.hpp"

#include <fmt/format.h>

#include <array>
#include <nlohmann/json.hpp>

#include "arch/Error.hpp"
#include "models/AtomicFile.hpp"

namespace ppu {

namespace {

using ojson = nlohmann::ordered_json;

// torch_dtype spelling of each DType (what parse_model_config reads back).
constexpr std::array<std::string_view, static_cast<size_t>(DType::kCount)> kTorchDTypeNames = {
    "float32", "bfloat16", "float16", "float8_e4m3fn", "float8_e5m2", "int8", "int32"};
static_assert(kTorchDTypeNames.size() == static_cast<size_t>(DType::kCount), "a torch name for every DType");

// The transformers class of each family; GPT (OpenPPU's Megatron GPT) has none.
constexpr std::array<std::string_view, static_cast<size_t>(ModelFamily::kCount)> kArchitectureNames = {
    "Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "LlamaForCausalLM", ""};
static_assert(kArchitectureNames.size() == static_cast<size_t>(ModelFamily::kCount), "one entry per ModelFamily");

std::string text(bool b) { return b ? "true" : "false"; }
std::string text(int64_t v) { return fmt::format("{}", v); }
std::string text(double v) { return fmt::format("{}", v); }  // shortest form that reads back exactly

}  // namespace

std::vector<ModelConfigField> model_config_fields(const ModelConfig& m) {
  const char* eps = m.norm == NormType::kLayerNorm ? "layer_norm_eps" : "rms_norm_eps";
  return {
      {"model_type", std::string(family_name(m.family))},
      {"norm", std::string(norm_type_name(m.norm))},
      {"activation", std::string(activation_name(m.activation))},
      {"positions", std::string(position_encoding_name(m.positions))},
      {"qk_norm", text(m.qk_norm)},
      {"attention_bias", text(m.attention_bias)},
      {"mlp_bias", text(m.mlp_bias)},
      {"tie_word_embeddings", text(m.tie_word_embeddings)},
      {"hidden_size", text(m.hidden_size)},
      {"num_hidden_layers", text(m.num_layers)},
      {"num_attention_heads", text(m.num_heads)},
      {"num_key_value_heads", text(m.num_kv_heads)},
      {"head_dim", text(m.head_dim)},
      {"intermediate_size", text(m.intermediate_size)},
      {"vocab_size", text(m.vocab_size)},
      {"max_position_embeddings", text(m.max_position_embeddings)},
      {"rope_theta", text(m.rope_theta)},
      {"rope_scaling.rope_type", m.rope_scaling_type},
      {"rope_scaling.factor", text(m.rope_scaling_factor)},
      {"rope_scaling.low_freq_factor", text(m.rope_low_freq_factor)},
      {"rope_scaling.high_freq_factor", text(m.rope_high_freq_factor)},
      {"rope_scaling.original_max_position_embeddings", text(m.rope_original_max_positions)},
      {eps, text(m.norm_eps)},
      {"num_experts", text(m.num_experts)},
      {"num_experts_per_tok", text(m.num_experts_per_tok)},
      {"moe_intermediate_size", text(m.moe_intermediate_size)},
      {"norm_topk_prob", text(m.norm_topk_prob)},
      {"num_shared_experts", text(m.num_shared_experts)},
      {"shared_expert_intermediate_size", text(m.shared_expert_intermediate_size)},
      {"torch_dtype", std::string(dtype_name(m.dtype))},
  };
}

std::optional<ModelConfigDifference> compare_model_configs(const ModelConfig& a, const ModelConfig& b) {
  const auto fa = model_config_fields(a), fb = model_config_fields(b);
  for (size_t i = 0; i < fa.size(); ++i)
    if (fa[i].value != fb[i].value) return ModelConfigDifference{fa[i].name, fa[i].value, fb[i].value};
  return std::nullopt;
}

std::string model_config_json(const ModelConfig& m) {
  PPU_CHECK(m.family != ModelFamily::kCount && m.dtype != DType::kCount, "model config with a kCount enum");
  const bool gpt = m.family == ModelFamily::kGpt;
  const bool moe = m.family == ModelFamily::kQwen3Moe;
  const bool qwen = m.family == ModelFamily::kQwen3 || moe;
  const ModelConfig defaults;

  ojson j;
  if (!gpt) j["architectures"] = ojson::array({kArchitectureNames[static_cast<size_t>(m.family)]});
  j["model_type"] = family_name(m.family);
  j["hidden_size"] = m.hidden_size;
  j["num_hidden_layers"] = m.num_layers;
  j["num_attention_heads"] = m.num_heads;
  if (!gpt) {
    j["num_key_value_heads"] = m.num_kv_heads;
    j["head_dim"] = m.head_dim;
  }
  j["intermediate_size"] = m.intermediate_size;
  if (moe) {
    j["num_experts"] = m.num_experts;
    j["num_experts_per_tok"] = m.num_experts_per_tok;
    j["moe_intermediate_size"] = m.moe_intermediate_size;
    j["norm_topk_prob"] = m.norm_topk_prob;
    j["router_aux_loss_coef"] = m.router_aux_loss_coef;
    j["decoder_sparse_step"] = 1;              // every layer is MoE (the only layout OpenPPU models)
    j["mlp_only_layers"] = ojson::array();
    if (m.num_shared_experts > 0 || m.shared_expert_intermediate_size > 0) {
      j["num_shared_experts"] = m.num_shared_experts;
      j["shared_expert_intermediate_size"] = m.shared_expert_intermediate_size;
    }
  }
  j["vocab_size"] = m.vocab_size;
  j["max_position_embeddings"] = m.max_position_embeddings;
  if (gpt) {
    j["layer_norm_eps"] = m.norm_eps;
  } else {
    j["rope_theta"] = m.rope_theta;
    if (m.rope_scaling_type.empty()) {
      j["rope_scaling"] = nullptr;
    } else {
      // llama3 scaling reads all four numbers; other types get the ones that differ from the defaults.
      const bool llama3 = m.rope_scaling_type == "llama3";
      ojson rs;
      rs["rope_type"] = m.rope_scaling_type;
      rs["factor"] = m.rope_scaling_factor;
      if (llama3 || m.rope_low_freq_factor != defaults.rope_low_freq_factor)
        rs["low_freq_factor"] = m.rope_low_freq_factor;
      if (llama3 || m.rope_high_freq_factor != defaults.rope_high_freq_factor)
        rs["high_freq_factor"] = m.rope_high_freq_factor;
      if (llama3 || m.rope_original_max_positions != defaults.rope_original_max_positions)
        rs["original_max_position_embeddings"] = m.rope_original_max_positions;
      j["rope_scaling"] = rs;
    }
    j["rms_norm_eps"] = m.norm_eps;
    j["attention_bias"] = m.attention_bias;
    if (m.family == ModelFamily::kLlama) j["mlp_bias"] = m.mlp_bias;
    if (qwen) j["use_sliding_window"] = false;
  }
  j["tie_word_embeddings"] = m.tie_word_embeddings;
  j["hidden_act"] = gpt ? "gelu" : "silu";
  j["torch_dtype"] = kTorchDTypeNames[static_cast<size_t>(m.dtype)];
  if (!m.source.empty()) j["source"] = m.source;
  if (!m.assumed.empty()) j["assumed"] = m.assumed;
  if (!m.notes.empty()) j["notes"] = m.notes;
  std::string out = j.dump(2) + "\n";

  // What the reader makes of it must be m: anything the family fixes, or the keys cannot say, is
  // refused here rather than silently changed in the file.
  const ModelConfig back = parse_model_config(out, fmt::format("model '{}' (config.json being written)", m.name));
  if (const auto d = compare_model_configs(m, back))
    throw UserError(fmt::format(
        "model '{}': field '{}' is {} but a config.json of model_type '{}' can only say {} (the family fixes it, or "
        "the config keys cannot express it); cannot write this config",
        m.name, d->field, d->a.empty() ? "(none)" : d->a, family_name(m.family), d->b.empty() ? "(none)" : d->b));
  return out;
}

void write_model_config(const ModelConfig& m, const std::string& path) {
  const std::string text = model_config_json(m);
  write_file_atomically(path, [&](std::ostream& os) { os << text; });
}

}  // namespace ppu
