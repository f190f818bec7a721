// Tests of models/ModelConfigJson: every built-in model preset (Qwen3 dense and MoE, Llama 3 with its
// RoPE scaling, the Megatron GPTs) written as config.json and read back with parse_model_config /
// load_model_config reproduces every field; the file carries the keys Hugging Face expects; configs
// the keys cannot express are refused naming the field; compare_model_configs names the first
// differing field with both values.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "TestUtil.hpp"
#include "models/ModelConfigJson.hpp"

namespace ppu {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

void expect_same_fields(const ModelConfig& got, const ModelConfig& want) {
  const auto g = model_config_fields(got), w = model_config_fields(want);
  ASSERT_EQ(g.size(), w.size());
  for (size_t i = 0; i < g.size(); ++i) {
    EXPECT_EQ(g[i].name, w[i].name);
    EXPECT_EQ(g[i].value, w[i].value) << want.name << ": field " << w[i].name;
  }
  EXPECT_FALSE(compare_model_configs(got, want).has_value());
  EXPECT_EQ(got.source, want.source);
  EXPECT_EQ(got.assumed, want.assumed);
  EXPECT_EQ(got.notes, want.notes);
}

TEST(ModelConfigJson, EveryPresetRoundTripsFieldByField) {
  const std::vector<std::string> names = model_preset_names();
  ASSERT_GE(names.size(), 20u);
  const std::string root = test::temp_path("models");
  fs::remove_all(root);
  for (const std::string& name : names) {
    const ModelConfig m = load_model_config(name);
    const std::string text = model_config_json(m);
    expect_same_fields(parse_model_config(text, name + " (written)"), m);

    const fs::path dir = fs::path(root) / name;  // as a checkpoint directory
    fs::create_directories(dir);
    write_model_config(m, (dir / "config.json").string());
    const ModelConfig back = load_model_config(dir.string());
    EXPECT_EQ(back.name, name) << "named after its directory";
    expect_same_fields(back, m);
    EXPECT_EQ(model_config_json(back), text) << "writing what was read gives the same file";
  }
}

TEST(ModelConfigJson, CarriesTheKeysHuggingFaceExpects) {
  const json q = json::parse(model_config_json(load_model_config("qwen3-0.6b")));
  EXPECT_EQ(q["architectures"], json::array({"Qwen3ForCausalLM"}));
  EXPECT_EQ(q["model_type"], "qwen3");
  EXPECT_EQ(q["head_dim"], 128);
  EXPECT_EQ(q["num_key_value_heads"], 8);
  EXPECT_TRUE(q["rope_scaling"].is_null());
  EXPECT_EQ(q["rms_norm_eps"], 1e-6);
  EXPECT_EQ(q["tie_word_embeddings"], true);
  EXPECT_EQ(q["hidden_act"], "silu");
  EXPECT_EQ(q["torch_dtype"], "bfloat16");
  EXPECT_EQ(q["use_sliding_window"], false);

  const json moe = json::parse(model_config_json(load_model_config("qwen3-30b-a3b")));
  EXPECT_EQ(moe["architectures"], json::array({"Qwen3MoeForCausalLM"}));
  EXPECT_EQ(moe["num_experts"], 128);
  EXPECT_EQ(moe["num_experts_per_tok"], 8);
  EXPECT_EQ(moe["decoder_sparse_step"], 1);
  EXPECT_EQ(moe["mlp_only_layers"], json::array());

  const json llama = json::parse(model_config_json(load_model_config("llama3-8b")));
  EXPECT_EQ(llama["architectures"], json::array({"LlamaForCausalLM"}));
  EXPECT_EQ(llama["rope_scaling"], (json{{"rope_type", "llama3"},
                                         {"factor", 8.0},
                                         {"low_freq_factor", 1.0},
                                         {"high_freq_factor", 4.0},
                                         {"original_max_position_embeddings", 8192}}));
  EXPECT_EQ(llama["mlp_bias"], false);

  const json gpt = json::parse(model_config_json(load_model_config("gpt-1.7b")));
  EXPECT_FALSE(gpt.contains("architectures")) << "no Hugging Face class for OpenPPU's GPT";
  EXPECT_EQ(gpt["model_type"], "gpt");
  EXPECT_EQ(gpt["layer_norm_eps"], 1e-5);
  EXPECT_EQ(gpt["torch_dtype"], "float16");
}

TEST(ModelConfigJson, ConfigsTheKeysCannotExpressAreRefusedNamingTheField) {
  auto edited = [](const char* preset, auto edit) {
    ModelConfig m = load_model_config(preset);
    edit(m);
    return [m] { model_config_json(m); };
  };
  test::expect_error(edited("tiny", [](ModelConfig& m) { m.qk_norm = false; }),
                     {"model 'tiny'", "field 'qk_norm'", "false", "model_type 'qwen3'", "true"});
  test::expect_error(edited("tiny", [](ModelConfig& m) { m.num_experts = 4; }), {"field 'num_experts'", "4"});
  test::expect_error(edited("tiny", [](ModelConfig& m) { m.mlp_bias = true; }), {"field 'mlp_bias'"});
  test::expect_error(edited("gpt-1.7b", [](ModelConfig& m) { m.num_kv_heads = 8; }), {"field 'num_key_value_heads'"});
  test::expect_error(edited("gpt-1.7b", [](ModelConfig& m) { m.rope_theta = 5e5; }), {"field 'rope_theta'", "500000"});
  test::expect_error(edited("tiny", [](ModelConfig& m) { m.hidden_size = 0; }), {"'hidden_size'", "positive integer"});
  test::expect_error(edited("tiny", [](ModelConfig& m) { m.rope_scaling_factor = 2; }),
                     {"field 'rope_scaling.factor'"});
}

TEST(ModelConfigJson, CompareNamesTheFirstDifferingFieldWithBothValues) {
  const ModelConfig a = load_model_config("tiny");
  ModelConfig b = a;
  b.name = "renamed";  // provenance is not architecture
  b.source = "elsewhere";
  EXPECT_FALSE(compare_model_configs(a, b).has_value());
  b.intermediate_size = 96;
  b.vocab_size = 512;
  const auto d = compare_model_configs(a, b);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->field, "intermediate_size");
  EXPECT_EQ(d->a, "128");
  EXPECT_EQ(d->b, "96");
}

}  // namespace
}  // namespace ppu
