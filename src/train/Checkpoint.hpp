// Checkpoint: a training run saved to disk and resumed bit-exactly - the model's weights as a Hugging
// Face model directory (so `ppu run --model DIR` and transformers load it), and beside them what the
// optimizer and the run need to continue as if never stopped.
//
//   save_checkpoint("runs/a/step-300", model, trainer, {.tokenizer_path = tok, .seed = 1,
//                   .data = data_position(it, dataset), .metrics = history});
//   ...
//   TrainerState s = read_trainer_state("runs/a/step-300");        // its TrainConfig, step, data position
//   Qwen3Model model(dev, load_model_config("runs/a/step-300"), Qwen3Weights::random(0), opts);
//   Trainer trainer(model, s.config);
//   load_checkpoint("runs/a/step-300", model, trainer);             // weights, moments, step
//   BatchIterator it(dataset, s.data->batch, s.data->seed, s.data->state);
//
// The directory:
//
//   config.json             model_config_json(model.config()): Hugging Face keys (models/ModelConfigJson)
//   model.safetensors       every weight under its checkpoint name, in the dtype the device holds it
//                           (bf16 by default), exactly the device's bits; metadata {"format": "pt"}.
//                           Tied embeddings appear once, as model.embed_tokens.weight.
//   tokenizer.json          copied from CheckpointExtra::tokenizer_path (when given), with the
//   tokenizer_config.json   tokenizer_config.json beside it when there is one (chat template, specials)
//   optimizer.safetensors   per weight "<name>.master", "<name>.exp_avg", "<name>.exp_avg_sq": fp32,
//                           the weight's shape (AdamW's master copy and moments, train/Trainer)
//   trainer_state.json      {"format": "openppu-trainer-state", "format_version": 1, "model": name,
//                            "step": steps done, "seed": ..., "train_config": {every TrainConfig field},
//                            "data": {"epoch", "position", "batch", "seed", "seq_len",
//                                     "corpus_fingerprint", "tokenizer_fingerprint"} or null,
//                            "metrics": [{"step", "loss", "grad_norm", "lr", "host_s", "sim_s",
//                                         "tokens", "skipped", "loss_scale"}, ...],
//                            "loss_scaler": {"scale", "growth_tracker", "skipped_steps"} or null}
//                           (train_config's "zero", "loss_scale_init", "loss_scale_growth_interval",
//                           metrics' "loss_scale" and "loss_scaler" may be absent: earlier files)
//
// Atomic: everything is written into "<dir>.tmp-<pid>" (each file fsync'd), which then replaces <dir>
// in one step (renameat2 RENAME_EXCHANGE; where the filesystem lacks it, <dir> is first renamed to
// "<dir>.old-<pid>"), and the old directory is deleted afterwards. A crash, a full disk or an error at
// any point leaves the previous checkpoint whole: at worst (a crash between the two renames of the
// fallback) it sits under "<dir>.old-<pid>" beside a complete "<dir>.tmp-<pid>", and load_checkpoint's
// error for a missing <dir> points at them. An existing <dir> is replaced only if it is a checkpoint
// (holds trainer_state.json) or empty, so a mistyped path never deletes other files.
//
// Models split over chips: under tensor parallelism each weight's parts are all-gathered over the TP
// group and under ZeRO-1 the optimizer state's slices over the DP group, so the files hold the whole
// (single-chip) model whatever the layout: every rank calls save_checkpoint at the same time and the
// first rank (TP rank 0 of DP rank 0) writes; load_checkpoint gives each rank its part (any TP/DP
// layout can resume any checkpoint of the same model).
//
// Not here: expert-parallel models (refused), sharded weight
// files (one model.safetensors however large), keeping the last N checkpoints, RNG state (the trainer
// draws no random numbers; the data order is (seed, epoch, position)), and cleaning up temporary
// directories left by a process that crashed (delete "<dir>.tmp-*" by hand).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "models/Qwen3.hpp"
#include "train/Data.hpp"
#include "train/Trainer.hpp"

namespace ppu::train {

// trainer_state.json's format version; load refuses newer ones.
inline constexpr int kCheckpointFormatVersion = 1;

// Where the training data stood, with what identifies the data (to refuse resuming on other data).
struct DataPosition {
  BatchState state;                    // the next batch
  int64_t batch = 0;                   // sequences per batch of the iterator
  uint64_t seed = 0;                   // its shuffle seed
  int64_t seq_len = 0;                 // the dataset's
  uint64_t corpus_fingerprint = 0;     // TokenShard's
  uint64_t tokenizer_fingerprint = 0;  // TokenShard's
};
// The position of `it` over `data`.
DataPosition data_position(const BatchIterator& it, const TokenDataset& data);

// What a run knows beyond the model and the optimizer.
struct CheckpointExtra {
  std::string tokenizer_path;  // a tokenizer.json to copy into the checkpoint; empty: none
  uint64_t seed = 0;           // the run's seed
  std::optional<DataPosition> data;
  std::vector<StepResult> metrics;  // the steps so far, as the run reported them
};

// trainer_state.json.
struct TrainerState {
  int format_version = kCheckpointFormatVersion;
  std::string model;     // the model's name when saved
  int64_t step = 0;      // optimizer steps done
  uint64_t seed = 0;
  TrainConfig config;    // the run's (micro_batch as the Trainer resolved it)
  std::optional<DataPosition> data;
  std::vector<StepResult> metrics;  // loss and grad_norm NaN where the run had no finite value
  // The dynamic loss scaler's state (fp16 runs), absent without loss scaling.
  struct Scaler {
    double scale = 0;
    int64_t growth_tracker = 0, skipped_steps = 0;
  };
  std::optional<Scaler> loss_scaler;
};

// Saves `model` and `trainer` (see the file comment) to `dir`, replacing an earlier checkpoint there
// atomically. `trainer` must have been built on `model`. Throws UserError naming the path and the
// reason, leaving any previous checkpoint at `dir` intact and no temporary directory behind, if: the
// device is timing-only (no numbers); the model is expert-parallel; `dir` exists and
// is neither an empty directory nor a checkpoint; the tokenizer file cannot be read; any write fails
// (full disk, permissions). The device copies are recorded on its clock (a checkpoint costs its
// device-to-host transfers).
void save_checkpoint(const std::string& dir, Qwen3Model& model, Trainer& trainer, const CheckpointExtra& extra = {});

// Reads `dir`/trainer_state.json. UserError naming the file and the field for a missing file, invalid
// JSON, a missing or mistyped field, another format or a newer format version.
TrainerState read_trainer_state(const std::string& dir);

// Restores the weights of `model`, the optimizer state of `trainer` and its step count from `dir`;
// returns the trainer state (the caller restores its data iterator from `data`). The training config
// saved is not imposed (a run may resume with another schedule); compare it with trainer.config() if
// that matters. Everything is checked before anything is changed, so on error `model` and `trainer`
// are untouched. Throws UserError naming the file and what is wrong: `dir` missing (pointing at an
// interrupted save's directories if there are any) or missing one of config.json, model.safetensors,
// optimizer.safetensors, trainer_state.json; a checkpoint of another model (names the first differing
// config field and both values); missing or unexpected tensors; a tensor's shape; a trainer not built
// on `model`; as read_trainer_state.
TrainerState load_checkpoint(const std::string& dir, Qwen3Model& model, Trainer& trainer);

}  // namespace ppu::train
