#include "models/ModelConfig.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <optional>
#include <nlohmann/json.hpp>
#include <set>

#include "arch/Error.hpp"
#include "arch/Presets.hpp"
#include "arch/QuantityJson.hpp"

namespace ppu {

using json = nlohmann::json;

namespace {

// Keys each family reads (docs/models.md). The preset-only keys are accepted in every file.
const std::vector<std::string_view> kCommonKeys = {
    "model_type",  "hidden_size",         "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "vocab_size",  "max_position_embeddings", "tie_word_embeddings", "hidden_act",     "torch_dtype",
    "dtype"};
const std::vector<std::string_view> kRopeKeys = {"num_key_value_heads", "head_dim", "rope_theta", "rope_scaling",
                                                 "rms_norm_eps", "attention_bias"};
const std::vector<std::string_view> kQwen3Keys = {"use_sliding_window"};
const std::vector<std::string_view> kMoeKeys = {"num_experts",           "num_experts_per_tok", "moe_intermediate_size",
                                                "norm_topk_prob",        "decoder_sparse_step", "mlp_only_layers",
                                                "num_shared_experts",    "shared_expert_intermediate_size",
                                                "router_aux_loss_coef"};
const std::vector<std::string_view> kLlamaKeys = {"mlp_bias"};
const std::vector<std::string_view> kGptKeys = {"layer_norm_eps"};
const std::vector<std::string_view> kPresetKeys = {"source", "assumed", "notes"};

std::vector<std::string_view> family_keys(ModelFamily f) {
  std::vector<std::string_view> keys = kCommonKeys;
  auto add = [&](const std::vector<std::string_view>& more) { keys.insert(keys.end(), more.begin(), more.end()); };
  switch (f) {
    case ModelFamily::kQwen3: add(kRopeKeys); add(kQwen3Keys); break;
    case ModelFamily::kQwen3Moe: add(kRopeKeys); add(kQwen3Keys); add(kMoeKeys); break;
    case ModelFamily::kLlama: add(kRopeKeys); add(kLlamaKeys); break;
    case ModelFamily::kGpt: add(kGptKeys); break;
    case ModelFamily::kCount: break;
  }
  add(kPresetKeys);
  return keys;
}

std::string join(const std::vector<std::string_view>& v) {
  std::string out;
  for (auto s : v) out += fmt::format("{}{}", out.empty() ? "" : ", ", s);
  return out;
}

template <size_t N>
std::string join(const std::array<std::string_view, N>& v) {
  return join(std::vector<std::string_view>(v.begin(), v.end()));
}

using NumberRange = ModelFieldRange;
constexpr double kMaxWidth = 1 << 20;        // hidden_size and friends: released models reach 25600
constexpr double kMaxMlpWidth = 1 << 24;     // intermediate sizes: released models reach about 100000
constexpr double kMaxHeads = 1 << 16;        // heads and experts: released models reach 512
const NumberRange* number_range(std::string_view key);

}  // namespace

// Checked as each field is read (Fields below).
const std::vector<ModelFieldRange>& model_field_ranges() {
  static const std::vector<ModelFieldRange> ranges = {
    {"hidden_size", 1, kMaxWidth, "model widths reach about 25600"},
    {"num_hidden_layers", 1, 10000, "released models have up to about 200 layers"},
    {"num_attention_heads", 1, kMaxHeads, "released models have up to about 200 heads"},
    {"num_key_value_heads", 1, kMaxHeads, "at most num_attention_heads"},
    {"head_dim", 1, kMaxWidth, "released models use 64 to 256"},
    {"intermediate_size", 0, kMaxMlpWidth, "MLP widths reach about 100000"},
    {"vocab_size", 1, 1 << 24, "vocabularies reach about 260000 tokens"},
    {"max_position_embeddings", 1, 1 << 30, "contexts reach about 10 million tokens"},
    {"num_experts", 1, kMaxHeads, "MoE models route over up to about 512 experts"},
    {"num_experts_per_tok", 1, kMaxHeads, "at most num_experts"},
    {"moe_intermediate_size", 1, kMaxMlpWidth, "an expert's MLP width"},
    {"num_shared_experts", 0, kMaxHeads, "0 (none) up to a few"},
    {"shared_expert_intermediate_size", 0, kMaxMlpWidth, "0 (none) or an MLP width"},
    {"rope_theta", 1, 1e12, "RoPE bases run from 10000 to about 1e9"},
    {"router_aux_loss_coef", 0, 1000, "0 turns the load-balancing loss off; released models use about 0.001"},
    {"rope_scaling.factor", 1e-6, 1e6, "context extensions stretch positions by up to about 64"},
    {"rope_scaling.low_freq_factor", 1e-6, 1e6, "Llama 3 uses 1"},
    {"rope_scaling.high_freq_factor", 1e-6, 1e6, "Llama 3 uses 4"},
    {"rope_scaling.original_max_position_embeddings", 1, 1 << 30, "a context length, as max_position_embeddings"},
  };
  return ranges;
}

namespace {

const NumberRange* number_range(std::string_view key) {
  for (const auto& r : model_field_ranges())
    if (r.key == key) return &r;
  return nullptr;
}

// Field readers over one parsed file; every message starts with the origin and names the field.
class Fields {
 public:
  Fields(const json& j, std::string_view origin) : j_(j), origin_(origin) {}

  UserError error(std::string_view key, const std::string& what) const {
    return UserError(fmt::format("{}: field '{}': {}", origin_, key, what));
  }
  // Throws "<origin>: field '<key>': <v> is out of range; valid: <min> to <max> (<why>)" unless the
  // number `v` lies in `key`'s range (model_field_ranges()); no check for a key without one.
  void check_range(std::string_view key, const json& v) const {
    const NumberRange* r = number_range(key);
    if (r == nullptr) return;
    const double x = v.get<double>();  // exact enough: the bounds are far from 2^53
    if (!(r->min <= x && x <= r->max))
      throw error(key, fmt::format("{} is out of range; valid: {} to {} ({})", v.dump(), r->min, r->max, r->why));
  }
  // Present and not null (released configs write null for "not used", e.g. "rope_scaling": null).
  bool has(std::string_view key) const {
    auto it = j_.find(key);
    return it != j_.end() && !it->is_null();
  }
  const json& at(std::string_view key) const { return *j_.find(key); }

  // A positive integer; `what` describes the field for the "missing" message.
  int64_t positive_int(std::string_view key, std::string_view what) const {
    if (!has(key)) throw UserError(fmt::format("{}: missing field '{}' ({}, a positive integer)", origin_, key, what));
    return positive_int_value(key);
  }
  int64_t positive_int_or(std::string_view key, int64_t fallback) const {
    return has(key) ? positive_int_value(key) : fallback;
  }
  int64_t non_negative_int_or(std::string_view key, int64_t fallback) const {
    if (!has(key)) return fallback;
    const json& v = at(key);
    if (!v.is_number_integer() || (!v.is_number_unsigned() && v.get<int64_t>() < 0))
      throw error(key, fmt::format("must be a non-negative integer, got {}", v.dump()));
    check_range(key, v);
    return v.get<int64_t>();
  }
  double positive_number_or(std::string_view key, double fallback) const {
    if (!has(key)) return fallback;
    const json& v = at(key);
    if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() <= 0.0)
      throw error(key, fmt::format("must be a positive number, got {}", v.dump()));
    check_range(key, v);
    return v.get<double>();
  }
  bool bool_or(std::string_view key, bool fallback) const {
    if (!has(key)) return fallback;
    if (!at(key).is_boolean()) throw error(key, fmt::format("must be true or false, got {}", at(key).dump()));
    return at(key).get<bool>();
  }
  std::string string_or(std::string_view key, std::string fallback) const {
    if (!has(key)) return fallback;
    if (!at(key).is_string() || at(key).get<std::string>().empty())
      throw error(key, fmt::format("must be a non-empty string, got {}", at(key).dump()));
    return at(key).get<std::string>();
  }

 private:
  int64_t positive_int_value(std::string_view key) const {
    const json& v = at(key);
    // An unsigned above INT64_MAX is positive (and out of range below); get<int64_t> would wrap it.
    if (!v.is_number_integer() || (v.is_number_unsigned() ? v.get<uint64_t>() == 0 : v.get<int64_t>() <= 0))
      throw error(key, fmt::format("must be a positive integer, got {}", v.dump()));
    check_range(key, v);
    return v.get<int64_t>();
  }

  const json& j_;
  std::string_view origin_;
};

std::optional<DType> dtype_from_torch_name(std::string_view s) {
  if (s == "float8_e4m3fn") return DType::kF8E4M3;
  if (s == "float8_e5m2") return DType::kF8E5M2;
  const auto t = dtype_from_name(s);  // bfloat16, float16, float32 and OpenPPU's own names
  // A checkpoint's weight dtype is a float type; int8 weights come with scales (W8A8 quantises a
  // float checkpoint at load time), which a bare torch_dtype cannot describe.
  if (t && dtype_is_int(*t)) return std::nullopt;
  return t;
}

bool is_path(std::string_view s) {
  return s.find('/') != std::string_view::npos || (s.size() > 5 && s.substr(s.size() - 5) == ".json");
}

}  // namespace

ModelConfig parse_model_config(std::string_view text, std::string_view origin, bool strict) {
  const json j = parse_json_text(text, origin);
  if (!j.is_object()) throw UserError(fmt::format("{}: a model config must be a JSON object", origin));
  const Fields f(j, origin);
  ModelConfig m;
  m.file = std::string(origin);

  // --- family
  if (!f.has("model_type"))
    throw UserError(fmt::format("{}: missing field 'model_type' (one of: {})", origin, join(kModelFamilyNames)));
  if (!f.at("model_type").is_string())
    throw f.error("model_type", fmt::format("must be a string (one of: {}), got {}", join(kModelFamilyNames),
                                            f.at("model_type").dump()));
  const std::string type = f.at("model_type").get<std::string>();
  const auto fam = std::find(kModelFamilyNames.begin(), kModelFamilyNames.end(), type);
  if (fam == kModelFamilyNames.end())
    throw UserError(fmt::format("{}: unknown model_type '{}'; supported: {}", origin, type, join(kModelFamilyNames)));
  m.family = static_cast<ModelFamily>(fam - kModelFamilyNames.begin());
  const bool moe = m.family == ModelFamily::kQwen3Moe;
  const bool gpt = m.family == ModelFamily::kGpt;

  if (strict) {
    const auto keys = family_keys(m.family);
    for (auto it = j.begin(); it != j.end(); ++it)
      if (std::find(keys.begin(), keys.end(), it.key()) == keys.end())
        throw UserError(fmt::format("{}: unknown field '{}' for model_type '{}'; valid fields: {}", origin, it.key(),
                                    type, join(keys)));
  }
  m.source = f.string_or("source", "");
  m.assumed = f.string_or("assumed", "");
  m.notes = f.string_or("notes", "");
  if (strict && m.source.empty() && m.assumed.empty())
    throw UserError(fmt::format(
        "{}: a preset needs \"source\" (where its numbers are published) or \"assumed\" (why they were chosen)",
        origin));

  // --- sizes
  m.hidden_size = f.positive_int("hidden_size", "model width");
  m.num_layers = f.positive_int("num_hidden_layers", "number of transformer layers");
  m.num_heads = f.positive_int("num_attention_heads", "number of query heads");
  m.vocab_size = f.positive_int("vocab_size", "embedding rows");
  m.intermediate_size = moe ? f.non_negative_int_or("intermediate_size", 0)
                            : f.positive_int("intermediate_size", "MLP width");
  // Defaults of the Hugging Face config classes where a released config may omit a key.
  const int64_t default_max_positions = m.family == ModelFamily::kLlama ? 2048 : gpt ? 2048 : 32768;
  m.max_position_embeddings = f.positive_int_or("max_position_embeddings", default_max_positions);

  if (gpt) {
    m.num_kv_heads = m.num_heads;
  } else {
    m.num_kv_heads = f.positive_int_or("num_key_value_heads", m.num_heads);
  }
  if (!gpt && f.has("head_dim")) {
    m.head_dim = f.positive_int_or("head_dim", 0);
  } else {
    if (m.hidden_size % m.num_heads != 0)
      throw f.error("num_attention_heads",
                    fmt::format("{} heads do not divide hidden_size {}{}", m.num_heads, m.hidden_size,
                                gpt ? "" : " (give head_dim explicitly if heads x head_dim differs from hidden_size)"));
    m.head_dim = m.hidden_size / m.num_heads;
  }
  if (m.num_heads % m.num_kv_heads != 0)
    throw f.error("num_key_value_heads", fmt::format("{} key/value heads do not divide num_attention_heads {}",
                                                     m.num_kv_heads, m.num_heads));

  // --- structure fixed by the family, flags from the config
  m.norm = gpt ? NormType::kLayerNorm : NormType::kRmsNorm;
  m.activation = gpt ? Activation::kGelu : Activation::kSwiGlu;
  m.positions = gpt ? PositionEncoding::kLearned : PositionEncoding::kRope;
  m.qk_norm = m.family == ModelFamily::kQwen3 || moe;
  m.attention_bias = gpt ? true : f.bool_or("attention_bias", false);
  m.mlp_bias = gpt ? true : m.family == ModelFamily::kLlama ? f.bool_or("mlp_bias", false) : false;
  m.tie_word_embeddings = f.bool_or("tie_word_embeddings", gpt);  // Megatron ties; HF classes default false
  const std::string act = f.string_or("hidden_act", gpt ? "gelu" : "silu");
  const std::string want_act = gpt ? "gelu" : "silu";
  if (act != want_act)
    throw f.error("hidden_act", fmt::format("'{}' is not supported for model_type '{}'; it uses '{}' ({})", act, type,
                                            want_act, gpt ? "GELU MLP" : "SwiGLU MLP"));
  if (f.bool_or("use_sliding_window", false))
    throw f.error("use_sliding_window", "sliding-window attention is not supported; set it to false");

  // --- positions and norms
  if (!gpt) {
    m.rope_theta = f.positive_number_or("rope_theta", 10000.0);
    if (f.has("rope_scaling")) {
      const json& rs = f.at("rope_scaling");
      if (!rs.is_object()) throw f.error("rope_scaling", fmt::format("must be null or an object, got {}", rs.dump()));
      const char* type_key = rs.contains("rope_type") ? "rope_type" : "type";
      if (!rs.contains(type_key) || !rs.at(type_key).is_string())
        throw f.error("rope_scaling", fmt::format("needs \"rope_type\" (a string), got {}", rs.dump()));
      m.rope_scaling_type = rs.at(type_key).get<std::string>();
      if (rs.contains("factor")) {
        if (!rs.at("factor").is_number() || rs.at("factor").get<double>() <= 0.0)
          throw f.error("rope_scaling", fmt::format("\"factor\" must be a positive number, got {}", rs.dump()));
        f.check_range("rope_scaling.factor", rs.at("factor"));
        m.rope_scaling_factor = rs.at("factor").get<double>();
      }
      auto positive = [&](const char* key, double& out) {
        if (!rs.contains(key)) return;
        if (!rs.at(key).is_number() || rs.at(key).get<double>() <= 0.0)
          throw f.error("rope_scaling", fmt::format("\"{}\" must be a positive number, got {}", key, rs.dump()));
        f.check_range(fmt::format("rope_scaling.{}", key), rs.at(key));
        out = rs.at(key).get<double>();
      };
      positive("low_freq_factor", m.rope_low_freq_factor);
      positive("high_freq_factor", m.rope_high_freq_factor);
      double orig = static_cast<double>(m.rope_original_max_positions);
      positive("original_max_position_embeddings", orig);
      m.rope_original_max_positions = static_cast<int64_t>(orig);
      if (m.rope_scaling_type == "llama3" && !(m.rope_high_freq_factor > m.rope_low_freq_factor))
        throw f.error("rope_scaling", fmt::format("high_freq_factor {} must exceed low_freq_factor {}",
                                                  m.rope_high_freq_factor, m.rope_low_freq_factor));
    }
  }
  const char* eps_key = gpt ? "layer_norm_eps" : "rms_norm_eps";
  m.norm_eps = f.positive_number_or(eps_key, gpt ? 1e-5 : 1e-6);
  if (m.norm_eps >= 1.0) throw f.error(eps_key, fmt::format("{} is not a small epsilon (must be below 1)", m.norm_eps));

  // --- mixture of experts
  if (moe) {
    m.num_experts = f.positive_int("num_experts", "routed experts per layer");
    m.num_experts_per_tok = f.positive_int("num_experts_per_tok", "experts each token is routed to");
    m.moe_intermediate_size = f.positive_int("moe_intermediate_size", "each expert's MLP width");
    m.norm_topk_prob = f.bool_or("norm_topk_prob", false);  // the HF class default; Qwen3 releases set true
    if (m.num_experts_per_tok > m.num_experts)
      throw f.error("num_experts_per_tok",
                    fmt::format("top-k {} exceeds num_experts {}", m.num_experts_per_tok, m.num_experts));
    if (f.positive_int_or("decoder_sparse_step", 1) != 1)
      throw f.error("decoder_sparse_step", "only 1 (every layer is MoE) is supported");
    if (f.has("mlp_only_layers")) {
      const json& v = f.at("mlp_only_layers");
      if (!v.is_array()) throw f.error("mlp_only_layers", fmt::format("must be an array, got {}", v.dump()));
      if (!v.empty())
        throw f.error("mlp_only_layers",
                      fmt::format("dense layers inside an MoE model are not supported (got {}); use []", v.dump()));
    }
    if (f.has("router_aux_loss_coef")) {
      const json& v = f.at("router_aux_loss_coef");
      if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() < 0.0)
        throw f.error("router_aux_loss_coef",
                      fmt::format("must be a non-negative number (0 turns the load-balancing loss off), got {}", v.dump()));
      f.check_range("router_aux_loss_coef", v);
      m.router_aux_loss_coef = v.get<double>();
    }
    m.shared_expert_intermediate_size = f.non_negative_int_or("shared_expert_intermediate_size", 0);
    m.num_shared_experts = f.non_negative_int_or("num_shared_experts", m.shared_expert_intermediate_size > 0 ? 1 : 0);
    if ((m.num_shared_experts > 0) != (m.shared_expert_intermediate_size > 0))
      throw f.error("num_shared_experts",
                    "shared experts need both num_shared_experts and shared_expert_intermediate_size above 0");
  }

  // --- weight dtype ("dtype" in newer transformers releases, "torch_dtype" before)
  const char* dtype_key = f.has("torch_dtype") ? "torch_dtype" : "dtype";
  const std::string dt = f.string_or(dtype_key, "bfloat16");
  const auto dtype = dtype_from_torch_name(dt);
  if (!dtype)
    throw f.error(dtype_key, fmt::format("'{}' is not a supported weight dtype; supported: bfloat16, float16, "
                                         "float32, float8_e4m3fn, float8_e5m2",
                                         dt));
  m.dtype = *dtype;
  return m;
}

std::vector<std::string> model_preset_names() { return builtin_preset_names("models"); }

ModelConfig load_model_config(std::string_view name_or_path) {
  namespace fs = std::filesystem;
  if (is_path(name_or_path)) {
    fs::path p{std::string(name_or_path)};
    std::error_code ec;
    if (fs::is_directory(p, ec)) {
      if (!fs::exists(p / "config.json", ec))
        throw UserError(fmt::format("{}: directory has no config.json", name_or_path));
      p /= "config.json";
    }
    ModelConfig m =
        parse_model_config(read_input_file(p.string(), "model config", kPresetFileMaxBytes), p.string());
    // Name it after the checkpoint directory ("Qwen3-8B/config.json" -> "Qwen3-8B").
    const fs::path named = p.filename() == "config.json" ? p.parent_path() : p.stem();
    m.name = named.filename().string();
    if (m.name.empty() || m.name == ".") m.name = p.string();
    return m;
  }
  // A preset's own name, or one that matches it ignoring case ("Qwen3-8B") unless a directory of that
  // name is here: that is more likely a downloaded checkpoint, so the error below says how to load it.
  std::error_code ec;
  const bool is_dir = fs::is_directory(std::string(name_or_path), ec);
  std::optional<BuiltinPreset> preset;
  if (auto exact = builtin_preset("models", name_or_path)) preset = BuiltinPreset{std::string(name_or_path), *exact};
  else if (!is_dir) preset = find_builtin_preset("models", name_or_path);
  if (preset) {
    ModelConfig m = parse_model_config(preset->text, fmt::format("<built-in>/models/{}.json", preset->name), true);
    m.name = preset->name;
    return m;
  }
  const std::string hint =
      is_dir ? fmt::format("; a directory '{0}' exists here: write ./{0} to load its config.json", name_or_path) : "";
  throw unknown_preset_error("models", "model", name_or_path,
                             fmt::format("(or give a path to a config.json or its directory){}", hint));
}

// ---------------------------------------------------------------------------------------------
// Derived quantities (formulas in ModelConfig.hpp)

nn::SplitDims split_dims(const ModelConfig& m) {
  nn::SplitDims d;
  d.model = m.name;
  d.heads = m.num_heads;
  d.kv_heads = m.num_kv_heads;
  d.ffn = m.is_moe() ? 0 : m.intermediate_size;
  d.experts = m.is_moe() ? m.num_experts : 0;
  d.expert_ffn = m.is_moe() ? m.moe_intermediate_size : 0;
  d.layers = m.num_layers;
  return d;
}

ModelParamCounts param_counts(const ModelConfig& m) {
  const int64_t h = m.hidden_size, q = m.q_width(), kv = m.kv_width(), L = m.num_layers;
  ModelParamCounts p;
  p.embedding = m.vocab_size * h + (m.positions == PositionEncoding::kLearned ? m.max_position_embeddings * h : 0);
  p.lm_head = m.tie_word_embeddings ? 0 : m.vocab_size * h;

  const int64_t attn_matmul = h * q + 2 * h * kv + q * h;
  int64_t attn = attn_matmul;
  if (m.attention_bias) attn += q + 2 * kv + h;
  if (m.qk_norm) attn += 2 * m.head_dim;

  const int64_t mats = m.activation == Activation::kSwiGlu ? 3 : 2;
  int64_t mlp = 0, mlp_active = 0, mlp_matmul_active = 0;
  if (m.is_moe()) {
    const int64_t router = h * m.num_experts;
    const int64_t expert = 3 * h * m.moe_intermediate_size;
    const int64_t shared = m.num_shared_experts * 3 * h * m.shared_expert_intermediate_size;
    mlp = router + m.num_experts * expert + shared;
    mlp_active = router + m.num_experts_per_tok * expert + shared;
    mlp_matmul_active = mlp_active;
  } else {
    const int64_t f = m.intermediate_size;
    mlp_matmul_active = mats * h * f;
    mlp = mlp_matmul_active + (m.mlp_bias ? (mats - 1) * f + h : 0);
    mlp_active = mlp;
  }
  const int64_t norm_params = m.norm == NormType::kLayerNorm ? 2 * h : h;

  p.attention = L * attn;
  p.mlp = L * mlp;
  p.mlp_active = L * mlp_active;
  p.norms = L * 2 * norm_params + norm_params;
  p.matmul_active = L * (attn_matmul + mlp_matmul_active) + m.vocab_size * h;
  return p;
}

int64_t weight_bytes(const ModelConfig& m, DType dtype) { return param_counts(m).total() * dtype_size_bytes(dtype); }
int64_t weight_bytes(const ModelConfig& m) { return weight_bytes(m, m.dtype); }

int64_t kv_cache_bytes_per_token(const ModelConfig& m, DType kv_dtype) {
  return 2 * m.num_layers * m.num_kv_heads * m.head_dim * dtype_size_bytes(kv_dtype);
}

double forward_flops_per_token(const ModelConfig& m, double context_tokens) {
  const double matmul = 2.0 * static_cast<double>(param_counts(m).matmul_active);
  const double attention = 4.0 * static_cast<double>(m.num_layers * m.num_heads * m.head_dim) * context_tokens;
  return matmul + attention;
}

}  // namespace ppu
