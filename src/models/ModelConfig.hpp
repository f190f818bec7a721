// ModelConfig: the shape of a transformer language model, as the layers above need it (forward
// passes, KV caches, memory and FLOP estimates, cluster simulation). Loaded from a built-in preset
// (presets/models/<name>.json), a Hugging Face config.json, or a directory holding one.
//
//   ModelConfig m = load_model_config("qwen3-0.6b");           // built-in preset
//   ModelConfig c = load_model_config("path/to/Qwen3-8B");     // directory with config.json
//   ModelParamCounts p = param_counts(m);                       // p.total() == 596'049'920
//   double f = forward_flops_per_token(m, 4096);                // one token attending to 4096 keys
//
// Families (the config's "model_type"):
//
//   | family    | norm      | MLP               | positions | QK-norm | biases                     |
//   |-----------|-----------|-------------------|-----------|---------|----------------------------|
//   | qwen3     | RMSNorm   | SwiGLU            | RoPE      | yes     | attention_bias (false)     |
//   | qwen3_moe | RMSNorm   | SwiGLU experts    | RoPE      | yes     | attention_bias (false)     |
//   | llama     | RMSNorm   | SwiGLU            | RoPE      | no      | attention_bias, mlp_bias   |
//   | gpt       | LayerNorm | GELU, 2 matrices  | learned   | no      | everywhere (Megatron GPT)  |
//
// "gpt" is OpenPPU's name for the Megatron-LM GPT of Narayanan et al. (SC'21); it has no Hugging Face
// config of its own, so its presets use the same keys as the others (plus layer_norm_eps).
//
// The struct describes a model; it is not where a model lives. Each model's weight names and
// forward graph go in that model's own file (docs/architecture.md, "Design choices"), which reads
// the fields it needs here.
// Not here: tokenizers, chat templates, weights (models/Safetensors.hpp), sliding-window attention
// and dense layers interleaved with MoE layers (both rejected by the parser with a message).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "arch/DType.hpp"
#include "nn/ParallelGroups.hpp"

namespace ppu {

enum class ModelFamily : uint8_t { kQwen3, kQwen3Moe, kLlama, kGpt, kCount };
// The config.json "model_type" of each family.
inline constexpr std::array<std::string_view, static_cast<size_t>(ModelFamily::kCount)> kModelFamilyNames = {
    "qwen3", "qwen3_moe", "llama", "gpt"};
static_assert(kModelFamilyNames.size() == static_cast<size_t>(ModelFamily::kCount), "name every ModelFamily");

enum class NormType : uint8_t { kRmsNorm, kLayerNorm, kCount };
inline constexpr std::array<std::string_view, static_cast<size_t>(NormType::kCount)> kNormTypeNames = {"rmsnorm",
                                                                                                        "layernorm"};
static_assert(kNormTypeNames.size() == static_cast<size_t>(NormType::kCount), "name every NormType");

// kSwiGlu: down(silu(gate(x)) * up(x)), three matrices. kGelu: down(gelu(up(x))), two matrices.
enum class Activation : uint8_t { kSwiGlu, kGelu, kCount };
inline constexpr std::array<std::string_view, static_cast<size_t>(Activation::kCount)> kActivationNames = {"swiglu",
                                                                                                            "gelu"};
static_assert(kActivationNames.size() == static_cast<size_t>(Activation::kCount), "name every Activation");

// kRope: rotary embedding on Q and K. kLearned: a [max_positions, hidden] table added to the input.
enum class PositionEncoding : uint8_t { kRope, kLearned, kCount };
inline constexpr std::array<std::string_view, static_cast<size_t>(PositionEncoding::kCount)> kPositionEncodingNames =
    {"rope", "learned"};
static_assert(kPositionEncodingNames.size() == static_cast<size_t>(PositionEncoding::kCount),
              "name every PositionEncoding");

constexpr std::string_view family_name(ModelFamily f) { return kModelFamilyNames[static_cast<size_t>(f)]; }
constexpr std::string_view norm_type_name(NormType n) { return kNormTypeNames[static_cast<size_t>(n)]; }
constexpr std::string_view activation_name(Activation a) { return kActivationNames[static_cast<size_t>(a)]; }
constexpr std::string_view position_encoding_name(PositionEncoding p) {
  return kPositionEncodingNames[static_cast<size_t>(p)];
}

struct ModelConfig {
  // --- where it came from
  std::string name;     // preset name, or the checkpoint directory's / file's name
  std::string file;     // "<built-in>/models/<name>.json" or the path read
  std::string source;   // presets: where the numbers are published
  std::string assumed;  // presets: what is not published and why the value was chosen
  std::string notes;

  // --- architecture
  ModelFamily family = ModelFamily::kQwen3;
  NormType norm = NormType::kRmsNorm;
  Activation activation = Activation::kSwiGlu;
  PositionEncoding positions = PositionEncoding::kRope;
  bool qk_norm = false;         // RMSNorm over each head of Q and K (weights [head_dim], shared by heads)
  bool attention_bias = false;  // biases on the Q, K, V and output projections
  bool mlp_bias = false;        // biases on the MLP projections (dense MLP only)
  bool tie_word_embeddings = false;  // lm_head shares the token embedding's [vocab, hidden] matrix

  // --- sizes
  int64_t hidden_size = 0;        // model width
  int64_t num_layers = 0;
  int64_t num_heads = 0;          // query heads
  int64_t num_kv_heads = 0;       // key/value heads (GQA); == num_heads without GQA
  int64_t head_dim = 0;           // heads x head_dim may differ from hidden_size (Qwen3-0.6B: 2048 vs 1024)
  int64_t intermediate_size = 0;  // dense MLP width (unused by MoE layers)
  int64_t vocab_size = 0;         // embedding rows (Qwen3 pads 151,669 token ids to 151,936)
  int64_t max_position_embeddings = 0;

  double rope_theta = 10000.0;
  std::string rope_scaling_type;  // config "rope_scaling" type ("llama3", "yarn", ...); empty: none
  double rope_scaling_factor = 1.0;
  double rope_low_freq_factor = 1.0;       // llama3 scaling
  double rope_high_freq_factor = 4.0;      // llama3 scaling
  int64_t rope_original_max_positions = 8192;  // llama3 scaling: "original_max_position_embeddings"
  double norm_eps = 1e-6;  // rms_norm_eps or layer_norm_eps

  // --- mixture of experts (num_experts == 0: dense). Every layer is MoE.
  int64_t num_experts = 0;
  int64_t num_experts_per_tok = 0;      // top-k
  int64_t moe_intermediate_size = 0;    // each routed expert's SwiGLU width
  bool norm_topk_prob = false;          // renormalise the top-k router probabilities to sum to 1
  // Training only: the load-balancing loss's weight in the loss (HF "router_aux_loss_coef"; 0.001 as
  // Qwen3-MoE's config.json and the HF class default). kernels/RouterBackward defines the loss.
  double router_aux_loss_coef = 0.001;
  int64_t num_shared_experts = 0;       // experts every token passes through (Qwen3: none)
  int64_t shared_expert_intermediate_size = 0;

  DType dtype = DType::kBF16;  // the checkpoint's weight dtype ("torch_dtype")

  bool is_moe() const { return num_experts > 0; }
  int64_t q_width() const { return num_heads * head_dim; }      // Q projection output width
  int64_t kv_width() const { return num_kv_heads * head_dim; }  // K (and V) projection output width
};

// The valid range of one numeric config field, both ends inclusive (docs/models.md, "Valid ranges"):
// wide enough for any released model and far beyond, small enough that products of them (hidden x
// vocab, layers x hidden^2) stay far inside int64 and double. Keys inside rope_scaling are written
// "rope_scaling.<key>".
struct ModelFieldRange {
  std::string_view key;
  double min, max;
  std::string_view why;
};
const std::vector<ModelFieldRange>& model_field_ranges();

// Parses a model description (Hugging Face config.json keys, docs/models.md). `origin` names the text
// in messages. strict == false (config.json files): keys OpenPPU does not read are ignored, since
// released configs carry many (architectures, bos_token_id, transformers_version, ...). strict == true
// (the built-in presets): every key must be one the family reads or "source"/"assumed"/"notes", and
// "source" or "assumed" must be present, so that a misspelt key cannot silently fall back to a default.
// Throws UserError "<origin>: ..." naming the field on: not JSON / not an object; missing, unknown
// (message lists the supported ones) or mistyped model_type; a missing required size; a size that is
// not a positive integer; a number outside its model_field_ranges() entry; num_attention_heads not dividing hidden_size when head_dim is absent;
// num_key_value_heads not dividing num_attention_heads; top-k above the expert count; a
// non-positive rope_theta or eps; a hidden_act the family does not use; an unknown torch_dtype;
// sliding-window attention or dense layers mixed into an MoE model (not supported).
ModelConfig parse_model_config(std::string_view text, std::string_view origin, bool strict = false);

// `name_or_path` is read as a path if it contains '/' or ends in ".json" (like chip presets):
// a directory -> its config.json, a file -> parsed as config.json. Otherwise it names a built-in preset,
// compared ignoring case ("Qwen3-8B" -> qwen3-8b; not while a directory of that name is here, which the
// error then points to); unknown names throw UserError suggesting the nearest and listing the known ones.
ModelConfig load_model_config(std::string_view name_or_path);
std::vector<std::string> model_preset_names();  // sorted

// Parameter counts by part. Conventions: a tied lm_head is counted once (in `embedding`; lm_head = 0);
// "active" is what one token uses: every part but the MoE experts, of which top-k routed experts and
// all shared experts (so embeddings count as active, as Qwen's "22B activated" does).
//
// Per layer (h = hidden, q = heads x head_dim, kv = kv_heads x head_dim, f = intermediate_size,
// E = experts, k = top-k, fe = expert width, S = shared experts, fs = shared width):
//   attention = h q + 2 h kv + q h  [+ q + 2 kv + h if attention_bias]  [+ 2 head_dim if qk_norm]
//   dense MLP = 3 h f (SwiGLU) or 2 h f (GELU)  [+ 2 f + h or f + h if mlp_bias]
//   MoE       = h E (router) + E 3 h fe + S 3 h fs;  active: h E + k 3 h fe + S 3 h fs
//   norms     = 2 h (RMSNorm) or 4 h (LayerNorm: weight and bias)
// Whole model: layers x (attention + MLP + norms) + final norm (h or 2 h) + V h token embedding
//   [+ max_positions h for learned positions] [+ V h lm_head unless tied].
struct ModelParamCounts {
  int64_t embedding = 0;   // token embedding (+ learned position table)
  int64_t lm_head = 0;     // 0 when tied
  int64_t attention = 0;   // all layers
  int64_t mlp = 0;         // all layers: dense MLPs, or routers + every expert + shared experts
  int64_t mlp_active = 0;  // all layers: dense MLPs, or routers + top-k experts + shared experts
  int64_t norms = 0;       // all layer norms and the final norm
  // Weights of every matrix multiply one token passes through in a forward pass: attention
  // projections, router, dense MLP or its top-k + shared experts, and the lm_head (counted here even
  // when tied, since the logits are computed either way). Biases, norms and embedding lookups are not
  // matrix multiplies.
  int64_t matmul_active = 0;

  int64_t total() const { return embedding + lm_head + attention + mlp + norms; }
  int64_t active() const { return embedding + lm_head + attention + mlp_active + norms; }
  int64_t non_embedding() const { return attention + mlp + norms; }  // Qwen's "non-embedding" figure
};
ModelParamCounts param_counts(const ModelConfig& m);

// Bytes of all weights stored in `dtype` (total() x element size); the second form uses m.dtype.
int64_t weight_bytes(const ModelConfig& m, DType dtype);
int64_t weight_bytes(const ModelConfig& m);

// KV-cache bytes one token adds: 2 (K and V) x layers x kv_heads x head_dim x element size.
int64_t kv_cache_bytes_per_token(const ModelConfig& m, DType kv_dtype);

// Forward FLOPs of one token that attends to `context_tokens` keys (counting a multiply-add as 2):
//   2 x matmul_active + 4 x layers x heads x head_dim x context_tokens
// (the second term is Q K^T and P V: 2 FLOPs x head_dim per key, twice, per head and layer).
// context_tokens: the token's position + 1 when decoding; (s + 1) / 2 on average over a causal prefill
// of s tokens; s for the convention of Megatron-LM's and PaLM's utilisation figures (no causal
// saving), under which this equals the forward part of Megatron's 96 B s l h^2 (1 + s/6h + V/16lh)
// for a GPT preset exactly. Norms, softmax, activations, RoPE and the router's top-k are left out
// (O(h) per token, under 0.1% for the models here).
double forward_flops_per_token(const ModelConfig& m, double context_tokens);

// The model's shape as parallel degrees see it (heads, widths, experts), for nn::check_split.
nn::SplitDims split_dims(const ModelConfig& m);

}  // namespace ppu
