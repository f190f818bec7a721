// ModelConfigJson: a ModelConfig written back as a Hugging Face style config.json - the inverse of
// parse_model_config (models/ModelConfig.hpp) - and a field-by-field comparison of two configs, so a
// checkpoint can say which field makes it belong to another model.
//
//   write_model_config(model.config(), "ckpt/config.json");   // atomic
//   ModelConfig back = load_model_config("ckpt");             // every architecture field equal
//   if (auto d = compare_model_configs(back, other)) ...      // d->field == "intermediate_size"
//
// What is written: "model_type" (qwen3, qwen3_moe, llama; gpt for OpenPPU's Megatron GPT), every key
// parse_model_config reads for that family (sizes, heads, head_dim, rope_theta, rope_scaling or null,
// rms_norm_eps or layer_norm_eps, biases, tie_word_embeddings, hidden_act, torch_dtype, MoE keys), the
// preset's "source"/"assumed"/"notes" when set (provenance of the shape numbers; Hugging Face keeps
// unknown keys as attributes), and "architectures" (Qwen3ForCausalLM, Qwen3MoeForCausalLM,
// LlamaForCausalLM), which transformers and vLLM use to pick the model class. Keys appear in a fixed
// readable order, 2-space indented.
//
// Not here: token ids (bos/eos: the tokenizer's files carry them), generation_config.json, fields
// Hugging Face has that OpenPPU does not model (sliding windows, attention dropout, initializer
// range). GPT has no Hugging Face class: its config.json is readable by OpenPPU only.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "models/ModelConfig.hpp"

namespace ppu {

// The config.json text of `m` (ends with a newline). Guaranteed to parse back (parse_model_config,
// non-strict) into a config whose every architecture field (model_config_fields) equals m's. Throws
// UserError "model '<name>': field '<field>' ..." if m cannot be written so: a field the family fixes
// differs from what the reader derives (e.g. qk_norm false for model_type qwen3, a head_dim other than
// hidden / heads for gpt, MoE sizes on a dense family), or m is invalid for the reader (a size of 0).
std::string model_config_json(const ModelConfig& m);

// model_config_json(m) written to `path` atomically (models/AtomicFile). UserError as there, or naming
// the path on an I/O failure.
void write_model_config(const ModelConfig& m, const std::string& path);

// One architecture field as text: its config.json key where it has one ("num_hidden_layers",
// "rope_scaling.factor"), else the ModelConfig member ("qk_norm", "norm"); integers in decimal,
// doubles in the shortest form that reads back exactly, enums by their name tables.
struct ModelConfigField {
  std::string name;
  std::string value;
};
// Every field that shapes the model (all of ModelConfig but name, file, source, assumed, notes), in
// a fixed order: family and structure first, then sizes, positions, norms, experts, dtype.
std::vector<ModelConfigField> model_config_fields(const ModelConfig& m);

// The first field (in model_config_fields order) in which `a` and `b` differ, with both values; or
// nullopt when they describe the same architecture.
struct ModelConfigDifference {
  std::string field;
  std::string a, b;
};
std::optional<ModelConfigDifference> compare_model_configs(const ModelConfig& a, const ModelConfig& b);

}  // namespace ppu
