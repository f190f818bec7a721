// Tests of train/Checkpoint: a run saved and loaded into a fresh model and trainer continues with
// bit-identical losses, weights and optimizer state; the saved directory is a Hugging Face model
// directory that Qwen3Model loads on its own (same logits, bit for bit) - dense with tied
// embeddings, and MoE with an untied head; a checkpoint of another model is refused naming the
// field; damaged checkpoints are refused before anything changes; a save that fails halfway (a full
// disk, simulated with RLIMIT_FSIZE) leaves the previous checkpoint whole and no temporary behind;
// a directory that is not a checkpoint is never replaced.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "FileSizeLimit.hpp"
#include "TestUtil.hpp"
#include "TrainTestUtil.hpp"
#include "models/Safetensors.hpp"
#include "models/SafetensorsWriter.hpp"
#include "train/Checkpoint.hpp"

namespace ppu::train {
namespace {

namespace fs = std::filesystem;

ModelConfig small(const char* preset = "tiny") { return test::small_model(preset); }

Qwen3Options options() {
  Qwen3Options o;
  o.max_context = 16;
  return o;
}

TrainConfig train_config() {
  TrainConfig c;
  c.steps = 8;
  c.batch = 4;
  c.micro_batch = 2;
  c.seq_len = 16;
  c.lr = 3e-3;
  c.min_lr = 3e-4;
  c.warmup_steps = 2;
  return c;
}

// A model (random weights from `seed`) and its trainer, on a device of their own.
struct Training {
  explicit Training(uint64_t seed, const ModelConfig& cfg = small(), ExecMode mode = ExecMode::kFunctional)
      : dev(load_chip("zhenwu-810e"), mode), model(dev, cfg, Qwen3Weights::random(seed), options()),
        trainer(model, train_config()) {}
  Device dev;
  Qwen3Model model;
  Trainer trainer;
};

using test::batch_tokens;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Every file of a directory by name -> its bytes.
std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out[e.path().filename().string()] = read_file(e.path().string());
  return out;
}

// Siblings of `dir` left by a save ("<dir>.tmp-*", "<dir>.old-*").
std::vector<std::string> leftovers(const std::string& dir) {
  std::vector<std::string> out;
  const std::string stem = fs::path(dir).filename().string();
  for (const auto& e : fs::directory_iterator(fs::path(dir).parent_path())) {
    const std::string n = e.path().filename().string();
    if (n.rfind(stem + ".", 0) == 0) out.push_back(n);
  }
  return out;
}

std::string scratch(const std::string& name) {
  const std::string root = test::temp_path("ckpt");
  fs::create_directories(root);
  const std::string d = root + "/" + name;
  fs::remove_all(d);
  return d;
}

// Every parameter's device bits, and every optimizer buffer's.
std::vector<std::vector<float>> all_state(Qwen3Model& m, Trainer& t) {
  std::vector<std::vector<float>> out;
  for (const nn::Parameter* p : m.trainable_parameters()) out.push_back(m.device().download(p->value));
  for (const Trainer::ParamState& s : t.state())
    for (const DeviceBuffer* b : {&s.master, &s.exp_avg, &s.exp_avg_sq}) out.push_back(m.device().download(*b));
  return out;
}

void expect_bits_equal(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i].size(), b[i].size()) << "buffer " << i;
    size_t differing = 0;
    for (size_t k = 0; k < a[i].size(); ++k) differing += f32_bits(a[i][k]) != f32_bits(b[i][k]);
    EXPECT_EQ(differing, 0u) << "buffer " << i;
  }
}

// A stand-in tokenizer pair (the checkpoint copies the bytes; nothing parses them here).
std::string fake_tokenizer() {
  const std::string dir = scratch("tokenizer");
  fs::create_directories(dir);
  test::write_file(dir + "/tokenizer.json", R"({"version": "1.0", "model": {"type": "BPE"}})");
  test::write_file(dir + "/tokenizer_config.json", R"({"eos_token": "<|im_end|>"})");
  return dir + "/tokenizer.json";
}

TEST(Checkpoint, ResumedRunIsBitIdenticalAndTheDirectoryLoadsAsAModel) {
  const std::string dir = scratch("run");
  const std::string tok = fake_tokenizer();
  Training ra(11);
  Device& dev = ra.dev;
  Qwen3Model& a = ra.model;
  Trainer& ta = ra.trainer;
  CheckpointExtra extra;
  extra.tokenizer_path = tok;
  extra.seed = 11;
  extra.data = DataPosition{{1, 5}, 4, 7, 16, 0xfedcba9876543210ull, 42};
  for (int s = 0; s < 3; ++s) extra.metrics.push_back(ta.step(batch_tokens(4, 16, s % 2)));
  save_checkpoint(dir, a, ta, extra);

  // The directory: Hugging Face files beside the optimizer and trainer state; nothing left beside it.
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                        "optimizer.safetensors", "trainer_state.json"})
    EXPECT_TRUE(fs::exists(fs::path(dir) / f)) << f;
  EXPECT_EQ(read_file(dir + "/tokenizer.json"), read_file(tok));
  EXPECT_TRUE(leftovers(dir).empty()) << leftovers(dir).front();
  {
    SafetensorsFile w(dir + "/model.safetensors");
    EXPECT_EQ(w.metadata().at("format"), "pt");
    EXPECT_EQ(w.tensors().size(), a.trainable_parameters().size());
    EXPECT_NE(w.find("model.embed_tokens.weight"), nullptr);
    EXPECT_EQ(w.find("lm_head.weight"), nullptr) << "tied embeddings are written once";
    for (const auto& t : w.tensors()) EXPECT_EQ(t.dtype, DType::kBF16) << t.name;
    SafetensorsFile o(dir + "/optimizer.safetensors");
    EXPECT_EQ(o.tensors().size(), 3 * w.tensors().size());
    EXPECT_EQ(o.at("model.norm.weight.exp_avg_sq").dtype, DType::kF32);
  }

  // `ppu run --model DIR`: the directory alone makes the same model.
  {
    Qwen3Model c(dev, load_model_config(dir), Qwen3Weights::from_checkpoint(dir));
    const std::vector<int32_t> prompt = {3, 141, 59, 265, 358, 97};
    const std::vector<float> want = a.forward(prompt, true).logits;
    const std::vector<float> got = c.forward(prompt, true).logits;
    a.reset();
    expect_bits_equal({got}, {want});
  }

  // Resume in a fresh model (other random weights) and trainer.
  const TrainerState saved = read_trainer_state(dir);
  EXPECT_EQ(saved.config.lr, train_config().lr);
  EXPECT_EQ(saved.config.micro_batch, 2);
  EXPECT_EQ(saved.config.warmup_steps, 2);
  Training rb(99);  // other random weights
  Qwen3Model& b = rb.model;
  Trainer& tb = rb.trainer;
  const TrainerState st = load_checkpoint(dir, b, tb);
  EXPECT_EQ(st.step, 3);
  EXPECT_EQ(tb.steps_done(), 3);
  EXPECT_EQ(st.seed, 11u);
  EXPECT_EQ(st.model, "tiny-512");
  ASSERT_TRUE(st.data.has_value());
  EXPECT_EQ(st.data->state.epoch, 1);
  EXPECT_EQ(st.data->state.position, 5);
  EXPECT_EQ(st.data->batch, 4);
  EXPECT_EQ(st.data->seed, 7u);
  EXPECT_EQ(st.data->corpus_fingerprint, 0xfedcba9876543210ull);
  EXPECT_EQ(st.data->tokenizer_fingerprint, 42u);
  ASSERT_EQ(st.metrics.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(st.metrics[i].step, extra.metrics[i].step);
    EXPECT_EQ(st.metrics[i].loss, extra.metrics[i].loss);
    EXPECT_EQ(st.metrics[i].sim_s, extra.metrics[i].sim_s);
  }
  expect_bits_equal(all_state(b, tb), all_state(a, ta));

  for (int s = 3; s < 5; ++s) {
    const StepResult ra = ta.step(batch_tokens(4, 16, s % 2));
    const StepResult rb = tb.step(batch_tokens(4, 16, s % 2));
    EXPECT_EQ(rb.step, ra.step);
    EXPECT_EQ(rb.loss, ra.loss) << "step " << ra.step;
    EXPECT_EQ(rb.grad_norm, ra.grad_norm) << "step " << ra.step;
    EXPECT_EQ(rb.lr, ra.lr) << "step " << ra.step;
  }
  expect_bits_equal(all_state(b, tb), all_state(a, ta));
}

TEST(Checkpoint, MoeModelWithUntiedHeadRoundTrips) {
  const std::string dir = scratch("moe");
  Training ra(5, small("tiny-moe"));  // an MoE model cannot train yet; its weights and zero moments still save
  Qwen3Model& a = ra.model;
  save_checkpoint(dir, a, ra.trainer);
  EXPECT_FALSE(fs::exists(dir + "/tokenizer.json"));
  SafetensorsFile w(dir + "/model.safetensors");
  EXPECT_NE(w.find("lm_head.weight"), nullptr);
  EXPECT_NE(w.find("model.layers.1.mlp.experts.7.down_proj.weight"), nullptr);

  Qwen3Model c(ra.dev, load_model_config(dir), Qwen3Weights::from_checkpoint(dir));
  for (const nn::Parameter* p : a.trainable_parameters())
    expect_bits_equal({c.read_weight(p->name)}, {a.read_weight(p->name)});
  Training rb(6, small("tiny-moe"));
  load_checkpoint(dir, rb.model, rb.trainer);
  expect_bits_equal(all_state(rb.model, rb.trainer), all_state(a, ra.trainer));
}

TEST(Checkpoint, AnotherModelsCheckpointIsRefusedNamingTheField) {
  const std::string dir = scratch("other");
  Training ra(1);
  save_checkpoint(dir, ra.model, ra.trainer);

  ModelConfig wider = small();
  wider.intermediate_size = 96;
  Training rb(2, wider);
  Qwen3Model& b = rb.model;
  Trainer& tb = rb.trainer;
  const auto before = all_state(b, tb);
  test::expect_error([&] { load_checkpoint(dir, b, tb); },
                     {dir + "/config.json", "another model", "field 'intermediate_size'", "128 in the checkpoint",
                      "96 in model 'tiny-512'"});
  expect_bits_equal(all_state(b, tb), before);
  EXPECT_EQ(tb.steps_done(), 0);

  // A trainer of another model, and a timing-only model, cannot be saved.
  test::expect_error([&] { save_checkpoint(scratch("x"), ra.model, tb); },
                     {"trainer was not built on model 'tiny-512'"});
  Training timing(1, small(), ExecMode::kTimingOnly);
  test::expect_error([&] { save_checkpoint(scratch("y"), timing.model, timing.trainer); }, {"timing-only"});
}

TEST(Checkpoint, DamagedCheckpointsAreRefusedBeforeAnythingChanges) {
  const std::string dir = scratch("damaged");
  Training ra(1);
  ra.trainer.step(batch_tokens(4, 16, 0));
  save_checkpoint(dir, ra.model, ra.trainer);
  Training rb(2);
  Qwen3Model& b = rb.model;
  Trainer& tb = rb.trainer;
  const auto before = all_state(b, tb);

  test::expect_error([&] { load_checkpoint(dir + "-nowhere", b, tb); }, {dir + "-nowhere", "no checkpoint directory"});
  // What a crash between the two renames of a save (no RENAME_EXCHANGE) would leave: pointed at.
  fs::create_directories(dir + "-gone.old-123");
  test::expect_error([&] { load_checkpoint(dir + "-gone", b, tb); },
                     {dir + "-gone: no checkpoint directory", "interrupted save left", dir + "-gone.old-123"});

  // One weight with another shape: named with its file, nothing loaded.
  {
    const SafetensorsFile orig(dir + "/model.safetensors");
    SafetensorsWriter w;
    for (const auto& t : orig.tensors()) {
      TensorShape shape = t.name == "model.norm.weight" ? TensorShape{1, 64} : t.shape;
      w.add(t.name, t.dtype, shape, std::vector<std::byte>(t.data, t.data + t.size_bytes));
    }
    w.write(dir + "/model.safetensors");
  }
  test::expect_error([&] { load_checkpoint(dir, b, tb); },
                     {"model.safetensors", "tensor 'model.norm.weight'", "shape [1, 64]", "expected [64]"});
  expect_bits_equal(all_state(b, tb), before);

  // Missing optimizer state.
  fs::remove(dir + "/optimizer.safetensors");
  test::expect_error([&] { load_checkpoint(dir, b, tb); }, {"missing optimizer.safetensors"});

  // trainer_state.json: a newer format, a missing field.
  nlohmann::json j = nlohmann::json::parse(read_file(dir + "/trainer_state.json"));
  j["format_version"] = 2;
  test::write_file(dir + "/trainer_state.json", j.dump());
  test::expect_error([&] { read_trainer_state(dir); }, {"trainer_state.json", "'format_version' is 2", "newer"});
  j["format_version"] = 1;
  j["train_config"].erase("lr");
  test::write_file(dir + "/trainer_state.json", j.dump());
  test::expect_error([&] { read_trainer_state(dir); }, {"trainer_state.json", "missing field 'train_config.lr'"});
  j["train_config"]["lr"] = 3e-3;
  j["step"] = "3";
  test::write_file(dir + "/trainer_state.json", j.dump());
  test::expect_error([&] { read_trainer_state(dir); }, {"field 'step' must be an integer, got \"3\""});
  // A number beyond a double (used to abort with an uncaught json out_of_range), and a duplicate key.
  j["step"] = 3;
  std::string text = j.dump();
  test::write_file(dir + "/trainer_state.json", text.replace(text.find("\"step\":3"), 8, "\"step\":1e999999"));
  test::expect_error([&] { read_trainer_state(dir); }, {"trainer_state.json", "not valid JSON", "beyond the range of a double"});
  text = j.dump();
  test::write_file(dir + "/trainer_state.json", "{\"step\":1," + text.substr(1));
  test::expect_error([&] { read_trainer_state(dir); }, {"trainer_state.json", "key 'step' appears twice"});
  expect_bits_equal(all_state(b, tb), before);
}

TEST(Checkpoint, FailedSaveLeavesThePreviousCheckpointWhole) {
  const std::string dir = scratch("atomic");
  Training ra(1);
  Qwen3Model& a = ra.model;
  Trainer& ta = ra.trainer;
  ta.step(batch_tokens(4, 16, 0));
  save_checkpoint(dir, a, ta);
  const auto before = snapshot(dir);
  ASSERT_GT(before.at("model.safetensors").size(), 65536u);
  ASSERT_LT(before.at("config.json").size(), 16384u);

  ta.step(batch_tokens(4, 16, 1));
  {
    // A full disk: config.json fits, model.safetensors does not.
    test::FileSizeLimit full(16384);
    test::expect_error([&] { save_checkpoint(dir, a, ta); },
                       {"saving checkpoint " + dir, "model.safetensors", "File too large", "unchanged"});
  }
  EXPECT_EQ(snapshot(dir), before);
  EXPECT_TRUE(leftovers(dir).empty()) << leftovers(dir).front();
  Training rb(2);
  EXPECT_EQ(load_checkpoint(dir, rb.model, rb.trainer).step, 1);

  // With room, the save replaces the old checkpoint whole.
  save_checkpoint(dir, a, ta);
  EXPECT_EQ(read_trainer_state(dir).step, 2);
  EXPECT_NE(snapshot(dir).at("model.safetensors"), before.at("model.safetensors"));
  EXPECT_TRUE(leftovers(dir).empty()) << leftovers(dir).front();

  // A directory that is not a checkpoint is never replaced; a file in the way is not either.
  const std::string other = scratch("not-a-checkpoint");
  fs::create_directories(other);
  test::write_file(other + "/notes.txt", "mine");
  test::expect_error([&] { save_checkpoint(other, a, ta); }, {other, "is not a checkpoint", "trainer_state.json"});
  EXPECT_EQ(read_file(other + "/notes.txt"), "mine");
  const std::string file = scratch("a-file");
  test::write_file(file, "x");
  test::expect_error([&] { save_checkpoint(file, a, ta); }, {file, "not a directory"});
  EXPECT_TRUE(leftovers(other).empty());
}

}  // namespace
}  // namespace ppu::train
