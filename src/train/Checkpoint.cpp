#include "train/Checkpoint.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <utility>

#include "arch/Error.hpp"
#include "arch/QuantityJson.hpp"
#include "ccl/Communicator.hpp"
#include "models/AtomicFile.hpp"
#include "models/ModelConfigJson.hpp"
#include "models/Safetensors.hpp"
#include "models/SafetensorsWriter.hpp"

namespace ppu::train {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

constexpr const char* kConfigFile = "config.json";
constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kOptimizerFile = "optimizer.safetensors";
constexpr const char* kTrainerStateFile = "trainer_state.json";
constexpr const char* kTokenizerFile = "tokenizer.json";
constexpr const char* kTokenizerConfigFile = "tokenizer_config.json";
constexpr const char* kStateFormat = "openppu-trainer-state";
// The optimizer tensors of a weight, by suffix, in ParamState order (master, exp_avg, exp_avg_sq).
constexpr std::array<const char*, 3> kMomentSuffixes = {".master", ".exp_avg", ".exp_avg_sq"};

std::string hex64(uint64_t v) { return fmt::format("{:016x}", v); }

// `dir` as an absolute path without a trailing separator, so that siblings ("<dir>.tmp-<pid>") can be
// named. UserError for a path with no last component to name a sibling by.
fs::path checkpoint_path(const std::string& dir) {
  if (dir.empty()) throw UserError("checkpoint: the directory path is empty");
  std::error_code ec;
  fs::path p = fs::absolute(fs::path(dir), ec).lexically_normal();
  if (ec) throw UserError(fmt::format("checkpoint {}: cannot resolve the path ({})", dir, ec.message()));
  if (!p.has_filename()) p = p.parent_path();
  if (p.filename().empty() || p == p.root_path())
    throw UserError(fmt::format("checkpoint {}: give the checkpoint directory a name of its own", dir));
  return p;
}

fs::path sibling(const fs::path& p, const char* tag) {
  fs::path s = p;
  s += fmt::format(".{}-{}", tag, static_cast<long>(::getpid()));
  return s;
}

void remove_tree(const fs::path& p) {
  std::error_code ignored;
  fs::remove_all(p, ignored);
}

// The model's parameters, after checking that the device has numbers and that the model is split
// at most by tensor parallelism (each TP rank holds its part; the files hold whole tensors). `what`
// starts the messages.
std::vector<const nn::Parameter*> checkpoint_parameters(Qwen3Model& model, const std::string& what) {
  if (!model.device().functional())
    throw UserError(fmt::format("{}: model '{}' runs timing-only (no weight values to save or load)", what,
                                model.config().name));
  const nn::ParallelGroups& g = model.context().groups();
  if (g.degrees.ep > 1)
    throw UserError(fmt::format("{}: model '{}' is split over {} chips by expert parallelism (ep {}); checkpoints of "
                                "expert-parallel models are not supported yet",
                                what, model.config().name, g.world(), g.degrees.ep));
  std::vector<const nn::Parameter*> params = model.trainable_parameters();
  for (const nn::Parameter* p : params)
    if (p->split.parts != 1 && (p->split.parts != g.degrees.tp || !g.tp_comm))
      throw UserError(fmt::format("{}: parameter '{}' is part {} of {}, not split by this model's tensor parallelism "
                                  "(tp {})",
                                  what, p->name, p->split.part, p->split.parts, g.degrees.tp));
  return params;
}

// Checks that `trainer` holds one optimizer state per parameter of the model, in order.
void check_trainer_matches(Trainer& trainer, const std::vector<const nn::Parameter*>& params, const std::string& what,
                           const std::string& model) {
  const auto& st = trainer.state();
  bool ok = st.size() == params.size();
  for (size_t i = 0; ok && i < st.size(); ++i) ok = st[i].param == params[i];
  if (!ok)
    throw UserError(fmt::format("{}: the trainer was not built on model '{}' ({} optimizer states for {} parameters)",
                                what, model, st.size(), params.size()));
}

std::vector<std::byte> device_bytes(Device& dev, const Buffer& b) {
  std::vector<std::byte> out(static_cast<size_t>(b.bytes));
  dev.copy_to_host(out.data(), b);
  return out;
}

// The whole tensor of `p` (row-major, its checkpoint layout) as bytes, from this rank's part `local`
// (p's dtype or another of the same numel): a TP-split parameter's parts are all-gathered over the
// model's TP group (every TP rank calls this at the same time, parameter for parameter) and a
// column split (dim 1) laid back into rows.
std::vector<std::byte> whole_bytes(Qwen3Model& model, const nn::Parameter& p, const Buffer& local) {
  Device& dev = model.device();
  if (p.split.parts == 1) return device_bytes(dev, local);
  const nn::ParallelGroups& g = model.context().groups();
  const int parts = p.split.parts;
  DeviceBuffer all = dev.alloc_owned(local.dtype, local.numel * parts, p.name + ".gathered");
  g.tp_comm->all_gather(g.tp_rank, local, all);
  std::vector<std::byte> in = device_bytes(dev, all);
  if (p.split.dim == 0) return in;  // row blocks one after another: the whole tensor
  const int64_t rows = p.shape[0], cw = p.shape[1] / parts;
  const auto es = static_cast<size_t>(local.bytes / local.numel);
  std::vector<std::byte> out(in.size());
  for (int part = 0; part < parts; ++part)
    for (int64_t r = 0; r < rows; ++r)
      std::memcpy(out.data() + static_cast<size_t>((r * p.shape[1] + part * cw)) * es,
                  in.data() + static_cast<size_t>((part * rows + r) * cw) * es, static_cast<size_t>(cw) * es);
  return out;
}

// Puts a checked tensor (shape == the buffer's numel) into `dst`: the saved bits when the dtypes agree,
// else through fp32 rounded to the buffer's dtype.
void upload_tensor(Device& dev, const Buffer& dst, const SafetensorsTensor& t) {
  if (t.dtype == dst.dtype)
    dev.copy_to_device(dst, t.data);
  else
    dev.upload(dst, tensor_to_f32(t, t.shape));
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UserError(fmt::format("{}: cannot read ({})", path, std::strerror(errno)));
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw UserError(fmt::format("{}: cannot read ({})", path, std::strerror(errno)));
  return s;
}

void write_text(const fs::path& path, const std::string& text) {
  write_file_atomically(path.string(), [&](std::ostream& os) { os << text; });
}

// --- trainer_state.json

json finite_or_null(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

ojson state_json(const TrainerState& s) {
  const TrainConfig& c = s.config;
  ojson j;
  j["format"] = kStateFormat;
  j["format_version"] = s.format_version;
  j["model"] = s.model;
  j["step"] = s.step;
  j["seed"] = s.seed;
  j["train_config"] = {{"steps", c.steps},         {"batch", c.batch},
                       {"micro_batch", c.micro_batch}, {"seq_len", c.seq_len},
                       {"lr", c.lr},               {"min_lr", c.min_lr},
                       {"warmup_steps", c.warmup_steps}, {"weight_decay", c.weight_decay},
                       {"beta1", c.beta1},         {"beta2", c.beta2},
                       {"eps", c.eps},             {"clip", c.clip},
                       {"skip_nonfinite", c.skip_nonfinite}, {"zero", c.zero},
                       {"loss_scale_init", c.loss_scale_init},
                       {"loss_scale_growth_interval", c.loss_scale_growth_interval},
                       {"recompute", nn::recompute_name(c.recompute)}};
  if (s.loss_scaler)
    j["loss_scaler"] = {{"scale", s.loss_scaler->scale},
                        {"growth_tracker", s.loss_scaler->growth_tracker},
                        {"skipped_steps", s.loss_scaler->skipped_steps}};
  else
    j["loss_scaler"] = nullptr;
  if (s.data) {
    const DataPosition& d = *s.data;
    j["data"] = {{"epoch", d.state.epoch},
                 {"position", d.state.position},
                 {"batch", d.batch},
                 {"seed", d.seed},
                 {"seq_len", d.seq_len},
                 {"corpus_fingerprint", hex64(d.corpus_fingerprint)},
                 {"tokenizer_fingerprint", hex64(d.tokenizer_fingerprint)}};
  } else {
    j["data"] = nullptr;
  }
  ojson metrics = ojson::array();
  for (const StepResult& r : s.metrics)
    metrics.push_back({{"step", r.step},
                       {"loss", finite_or_null(r.loss)},
                       {"grad_norm", finite_or_null(r.grad_norm)},
                       {"lr", r.lr},
                       {"host_s", r.host_s},
                       {"sim_s", r.sim_s},
                       {"tokens", r.tokens},
                       {"skipped", r.skipped},
                       {"loss_scale", r.loss_scale}});
  j["metrics"] = std::move(metrics);
  return j;
}

// Typed field access with messages "<file>: field '<path>': ...".
class StateReader {
 public:
  explicit StateReader(std::string file) : file_(std::move(file)) {}

  const json& at(const json& obj, const std::string& prefix, const char* key) const {
    if (!obj.is_object() || !obj.contains(key))
      throw UserError(fmt::format("{}: missing field '{}{}'", file_, prefix, key));
    return obj.at(key);
  }
  int64_t integer(const json& obj, const std::string& prefix, const char* key) const {
    return get<int64_t>(obj, prefix, key, "an integer", [](const json& v) { return v.is_number_integer(); });
  }
  uint64_t unsigned_integer(const json& obj, const std::string& prefix, const char* key) const {
    return get<uint64_t>(obj, prefix, key, "a non-negative integer", [](const json& v) {
      return v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0);
    });
  }
  double number(const json& obj, const std::string& prefix, const char* key) const {
    return get<double>(obj, prefix, key, "a number", [](const json& v) { return v.is_number(); });
  }
  // null (what trainer_state.json holds for a non-finite value) reads as NaN.
  double number_or_nan(const json& obj, const std::string& prefix, const char* key) const {
    if (at(obj, prefix, key).is_null()) return std::numeric_limits<double>::quiet_NaN();
    return number(obj, prefix, key);
  }
  bool boolean(const json& obj, const std::string& prefix, const char* key) const {
    return get<bool>(obj, prefix, key, "true or false", [](const json& v) { return v.is_boolean(); });
  }
  std::string string(const json& obj, const std::string& prefix, const char* key) const {
    return get<std::string>(obj, prefix, key, "a string", [](const json& v) { return v.is_string(); });
  }
  uint64_t hex(const json& obj, const std::string& prefix, const char* key) const {
    const std::string s = string(obj, prefix, key);
    uint64_t v = 0;
    bool ok = !s.empty() && s.size() <= 16;
    for (char ch : s) {
      const int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
      ok = ok && d >= 0;
      v = v * 16 + static_cast<uint64_t>(d < 0 ? 0 : d);
    }
    if (!ok) throw bad(prefix, key, "a hexadecimal string of up to 16 digits", json(s));
    return v;
  }

 private:
  // The field as T if `ok` accepts it, else UserError saying it must be `want`.
  template <class T, class Ok>
  T get(const json& obj, const std::string& prefix, const char* key, const char* want, Ok ok) const {
    const json& v = at(obj, prefix, key);
    if (!ok(v)) throw bad(prefix, key, want, v);
    return v.get<T>();
  }
  UserError bad(const std::string& prefix, const char* key, const char* want, const json& got) const {
    return UserError(fmt::format("{}: field '{}{}' must be {}, got {}", file_, prefix, key, want, got.dump()));
  }
  std::string file_;
};

// A missing checkpoint directory, with what an interrupted save left beside it.
UserError missing_checkpoint(const std::string& dir) {
  std::string left;
  std::error_code ec;
  const fs::path p = checkpoint_path(dir);
  const std::string stem = p.filename().string();
  for (const auto& e : fs::directory_iterator(p.parent_path(), ec)) {
    const std::string n = e.path().filename().string();
    if (n.rfind(stem + ".tmp-", 0) == 0 || n.rfind(stem + ".old-", 0) == 0)
      left += fmt::format("{}{}", left.empty() ? "" : ", ", e.path().string());
  }
  return UserError(fmt::format(
      "{}: no checkpoint directory there{}", dir,
      left.empty() ? std::string()
                   : fmt::format(" (an interrupted save left {}: a '.old-' directory is the previous checkpoint, a "
                                 "'.tmp-' one the new one - complete if it has trainer_state.json; rename one to {})",
                                 left, dir)));
}

// Replaces `target` by the complete directory `tmp` (see the file comment).
void install_directory(const fs::path& tmp, const fs::path& target, bool target_exists) {
  const fs::path parent = target.parent_path();
  if (!target_exists) {
    if (std::rename(tmp.c_str(), target.c_str()) != 0)
      throw UserError(fmt::format("{}: cannot move the new checkpoint into place ({})", target.string(),
                                  std::strerror(errno)));
    sync_path(parent.string());
    return;
  }
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, target.c_str(), RENAME_EXCHANGE) == 0) {
    sync_path(parent.string());
    remove_tree(tmp);  // now the old checkpoint
    return;
  }
  if (errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP)
    throw UserError(fmt::format("{}: cannot swap in the new checkpoint ({})", target.string(), std::strerror(errno)));
  // No atomic exchange on this filesystem: two renames, the old checkpoint kept until the new is in place.
  const fs::path old = sibling(target, "old");
  remove_tree(old);
  if (std::rename(target.c_str(), old.c_str()) != 0)
    throw UserError(fmt::format("{}: cannot move the previous checkpoint aside to {} ({})", target.string(),
                                old.string(), std::strerror(errno)));
  if (std::rename(tmp.c_str(), target.c_str()) != 0) {
    const int err = errno;
    std::rename(old.c_str(), target.c_str());
    throw UserError(fmt::format("{}: cannot move the new checkpoint into place ({})", target.string(),
                                std::strerror(err)));
  }
  sync_path(parent.string());
  remove_tree(old);
}

}  // namespace

DataPosition data_position(const BatchIterator& it, const TokenDataset& data) {
  return DataPosition{it.state(),
                      it.batch(),
                      it.seed(),
                      data.seq_len(),
                      data.shard().corpus_fingerprint,
                      data.shard().tokenizer_fingerprint};
}

void save_checkpoint(const std::string& dir, Qwen3Model& model, Trainer& trainer, const CheckpointExtra& extra) {
  const std::string what = fmt::format("saving checkpoint {}", dir);
  const std::vector<const nn::Parameter*> params = checkpoint_parameters(model, what);
  check_trainer_matches(trainer, params, what, model.config().name);
  // Every rank's part first (collectives: under TP and ZeRO-1 every rank is here at the same time);
  // then the first rank of the first TP and DP groups writes, the others are done.
  Device& dev = model.device();
  std::vector<std::vector<std::byte>> weight_bytes;
  std::vector<std::array<std::vector<std::byte>, 3>> opt_bytes(params.size());
  const std::vector<std::array<std::vector<float>, 3>> opt_values = trainer.optimizer_state();
  for (size_t i = 0; i < params.size(); ++i) {
    weight_bytes.push_back(whole_bytes(model, *params[i], params[i]->value));
    for (size_t k = 0; k < 3; ++k) {
      const std::vector<float>& v = opt_values[i][k];
      if (params[i]->split.parts == 1) {  // whole already: the fp32 values' bytes
        opt_bytes[i][k].resize(v.size() * sizeof(float));
        std::memcpy(opt_bytes[i][k].data(), v.data(), opt_bytes[i][k].size());
        continue;
      }
      DeviceBuffer b = dev.alloc_owned(DType::kF32, params[i]->value->numel, params[i]->name + kMomentSuffixes[k]);
      dev.upload(b, v);
      opt_bytes[i][k] = whole_bytes(model, *params[i], b);
    }
  }
  if (trainer.dp_rank() != 0 || model.context().groups().tp_rank != 0) return;
  const fs::path target = checkpoint_path(dir);

  std::error_code ec;
  const bool exists = fs::exists(fs::symlink_status(target, ec));
  if (exists) {
    if (!fs::is_directory(fs::symlink_status(target, ec)))
      throw UserError(fmt::format("{}: {} exists and is not a directory", what, dir));
    if (!fs::exists(target / kTrainerStateFile, ec) && !fs::is_empty(target, ec))
      throw UserError(fmt::format("{}: {} exists and is not a checkpoint (no {}); refusing to replace it - remove it "
                                  "or choose another directory",
                                  what, dir, kTrainerStateFile));
  } else {
    fs::create_directories(target.parent_path(), ec);
    if (ec)
      throw UserError(fmt::format("{}: cannot create the parent directory {} ({})", what,
                                  target.parent_path().string(), ec.message()));
  }

  const fs::path tmp = sibling(target, "tmp");
  remove_tree(tmp);  // left by an earlier process with this pid
  if (!fs::create_directory(tmp, ec) || ec)
    throw UserError(fmt::format("{}: cannot create the temporary directory {} ({})", what, tmp.string(),
                                ec ? ec.message() : "it exists"));
  try {
    write_model_config(model.config(), (tmp / kConfigFile).string());

    SafetensorsWriter weights;
    weights.set_metadata("format", "pt");  // transformers refuses weight files without it
    for (size_t i = 0; i < params.size(); ++i)
      weights.add(params[i]->name, params[i]->value->dtype, params[i]->shape, std::move(weight_bytes[i]));
    weights.write((tmp / kModelFile).string());

    if (!extra.tokenizer_path.empty()) {
      write_text(tmp / kTokenizerFile, read_bytes(extra.tokenizer_path));
      const fs::path tok_config = fs::path(extra.tokenizer_path).parent_path() / kTokenizerConfigFile;
      if (fs::exists(tok_config, ec)) write_text(tmp / kTokenizerConfigFile, read_bytes(tok_config.string()));
    }

    SafetensorsWriter opt;
    opt.set_metadata("format", "pt");
    opt.set_metadata("step", std::to_string(trainer.steps_done()));
    for (size_t i = 0; i < params.size(); ++i)
      for (size_t k = 0; k < kMomentSuffixes.size(); ++k)
        opt.add(params[i]->name + kMomentSuffixes[k], DType::kF32, params[i]->shape, std::move(opt_bytes[i][k]));
    opt.write((tmp / kOptimizerFile).string());

    TrainerState st;
    st.model = model.config().name;
    st.step = trainer.steps_done();
    st.seed = extra.seed;
    st.config = trainer.config();
    st.data = extra.data;
    st.metrics = extra.metrics;
    if (const auto& ls = trainer.loss_scaler())
      st.loss_scaler = TrainerState::Scaler{ls->scale(), ls->growth_tracker(), ls->skipped_steps()};
    write_text(tmp / kTrainerStateFile, state_json(st).dump(2) + "\n");  // last: marks a complete checkpoint
    sync_path(tmp.string());
    install_directory(tmp, target, exists);
  } catch (const UserError& e) {
    remove_tree(tmp);
    throw UserError(fmt::format("{}: {} (any previous checkpoint there is unchanged)", what, e.what()));
  } catch (...) {
    remove_tree(tmp);
    throw;
  }
}

TrainerState read_trainer_state(const std::string& dir) {
  const std::string file = (fs::path(dir) / kTrainerStateFile).string();
  std::error_code ec;
  if (!fs::exists(file, ec)) throw UserError(fmt::format("{}: missing (not a checkpoint directory?)", file));
  // Syntax errors, numbers beyond a double and duplicate keys: "<file>: not valid JSON: ..." / "...: key ...".
  const json j = parse_json_text(read_bytes(file), file);
  const StateReader r(file);
  if (!j.is_object()) throw UserError(fmt::format("{}: must be a JSON object", file));
  const std::string format = r.string(j, "", "format");
  if (format != kStateFormat)
    throw UserError(fmt::format("{}: field 'format' is '{}'; an OpenPPU trainer state has '{}'", file, format,
                                kStateFormat));
  TrainerState s;
  s.format_version = static_cast<int>(r.integer(j, "", "format_version"));
  if (s.format_version < 1 || s.format_version > kCheckpointFormatVersion)
    throw UserError(fmt::format("{}: field 'format_version' is {}; this build reads 1 to {} (written by a newer "
                                "OpenPPU?)",
                                file, s.format_version, kCheckpointFormatVersion));
  s.model = r.string(j, "", "model");
  s.step = r.integer(j, "", "step");
  if (s.step < 0) throw UserError(fmt::format("{}: field 'step' is {}; must be >= 0", file, s.step));
  s.seed = r.unsigned_integer(j, "", "seed");

  const json& c = r.at(j, "", "train_config");
  const std::string tc = "train_config.";
  TrainConfig& t = s.config;
  t.steps = r.integer(c, tc, "steps");
  t.batch = r.integer(c, tc, "batch");
  t.micro_batch = r.integer(c, tc, "micro_batch");
  t.seq_len = r.integer(c, tc, "seq_len");
  t.lr = r.number(c, tc, "lr");
  t.min_lr = r.number(c, tc, "min_lr");
  t.warmup_steps = r.integer(c, tc, "warmup_steps");
  t.weight_decay = r.number(c, tc, "weight_decay");
  t.beta1 = r.number(c, tc, "beta1");
  t.beta2 = r.number(c, tc, "beta2");
  t.eps = r.number(c, tc, "eps");
  t.clip = r.number(c, tc, "clip");
  t.skip_nonfinite = r.boolean(c, tc, "skip_nonfinite");
  if (c.contains("zero")) t.zero = static_cast<int>(r.integer(c, tc, "zero"));
  if (c.contains("recompute"))
    t.recompute = nn::parse_recompute(r.string(c, tc, "recompute"), fmt::format("{}: field 'train_config.recompute'", file));
  if (c.contains("loss_scale_init")) t.loss_scale_init = r.number(c, tc, "loss_scale_init");
  if (c.contains("loss_scale_growth_interval"))
    t.loss_scale_growth_interval = r.integer(c, tc, "loss_scale_growth_interval");
  if (j.contains("loss_scaler") && !j.at("loss_scaler").is_null()) {
    const json& ls = j.at("loss_scaler");
    s.loss_scaler = TrainerState::Scaler{r.number(ls, "loss_scaler.", "scale"), r.integer(ls, "loss_scaler.", "growth_tracker"),
                                         r.integer(ls, "loss_scaler.", "skipped_steps")};
  }

  const json& d = r.at(j, "", "data");
  if (!d.is_null()) {
    const std::string dp = "data.";
    DataPosition p;
    p.state.epoch = r.integer(d, dp, "epoch");
    p.state.position = r.integer(d, dp, "position");
    p.batch = r.integer(d, dp, "batch");
    p.seed = r.unsigned_integer(d, dp, "seed");
    p.seq_len = r.integer(d, dp, "seq_len");
    p.corpus_fingerprint = r.hex(d, dp, "corpus_fingerprint");
    p.tokenizer_fingerprint = r.hex(d, dp, "tokenizer_fingerprint");
    s.data = p;
  }
  const json& m = r.at(j, "", "metrics");
  if (!m.is_array()) throw UserError(fmt::format("{}: field 'metrics' must be an array, got {}", file, m.type_name()));
  for (size_t i = 0; i < m.size(); ++i) {
    const std::string mp = fmt::format("metrics[{}].", i);
    StepResult x;
    x.step = r.integer(m[i], mp, "step");
    x.loss = r.number_or_nan(m[i], mp, "loss");
    x.grad_norm = r.number_or_nan(m[i], mp, "grad_norm");
    x.lr = r.number(m[i], mp, "lr");
    x.host_s = r.number(m[i], mp, "host_s");
    x.sim_s = r.number(m[i], mp, "sim_s");
    x.tokens = r.integer(m[i], mp, "tokens");
    x.skipped = r.boolean(m[i], mp, "skipped");
    if (m[i].contains("loss_scale")) x.loss_scale = r.number(m[i], mp, "loss_scale");
    s.metrics.push_back(x);
  }
  return s;
}

TrainerState load_checkpoint(const std::string& dir, Qwen3Model& model, Trainer& trainer) {
  const std::string what = fmt::format("loading checkpoint {}", dir);
  std::error_code ec;
  const fs::path d(dir);
  if (!fs::is_directory(d, ec)) throw missing_checkpoint(dir);
  for (const char* f : {kConfigFile, kModelFile, kOptimizerFile, kTrainerStateFile})
    if (!fs::exists(d / f, ec))
      throw UserError(fmt::format("{}: missing {} (a checkpoint holds {}, {}, {} and {}; a weights-only model "
                                  "directory cannot resume training)",
                                  dir, f, kConfigFile, kModelFile, kOptimizerFile, kTrainerStateFile));

  const std::string config_file = (d / kConfigFile).string();
  const ModelConfig saved = load_model_config(config_file);
  if (const auto diff = compare_model_configs(saved, model.config()))
    throw UserError(fmt::format("{}: a checkpoint of another model: field '{}' is {} in the checkpoint but {} in "
                                "model '{}'",
                                config_file, diff->field, diff->a, diff->b, model.config().name));
  TrainerState st = read_trainer_state(dir);
  const std::vector<const nn::Parameter*> params = checkpoint_parameters(model, what);
  check_trainer_matches(trainer, params, what, model.config().name);

  // Check every name and shape before changing anything.
  const CheckpointSet weights((d / kModelFile).string());
  const CheckpointSet opt((d / kOptimizerFile).string());
  std::vector<std::string> weight_names, opt_names;
  for (const nn::Parameter* p : params) {
    weight_names.push_back(p->name);
    for (const char* suffix : kMomentSuffixes) opt_names.push_back(p->name + suffix);
  }
  weights.require_names(weight_names);
  opt.require_names(opt_names);
  for (const nn::Parameter* p : params) {
    check_shape(weights.at(p->name), p->shape);
    for (const char* suffix : kMomentSuffixes) check_shape(opt.at(p->name + suffix), p->shape);
  }

  // This rank's part of each tensor (a TP shard: Parameter::shard_of the whole; through fp32, exact
  // for the 16-bit weights and fp32 state saved).
  Device& dev = model.device();
  auto part = [](const nn::Parameter& p, const SafetensorsTensor& t) {
    std::vector<float> whole = tensor_to_f32(t, t.shape);
    return p.split.parts == 1 ? whole : p.shard_of(whole);
  };
  for (const nn::Parameter* p : params) {
    if (p->split.parts == 1)
      upload_tensor(dev, p->value, weights.at(p->name));
    else
      dev.upload(p->value, part(*p, weights.at(p->name)));
  }
  std::vector<std::array<std::vector<float>, 3>> opt_values(params.size());
  for (size_t i = 0; i < params.size(); ++i)
    for (size_t k = 0; k < kMomentSuffixes.size(); ++k)
      opt_values[i][k] = part(*params[i], opt.at(params[i]->name + kMomentSuffixes[k]));
  trainer.set_optimizer_state(opt_values);
  if (auto& ls = trainer.loss_scaler(); ls && st.loss_scaler)
    ls->restore(st.loss_scaler->scale, st.loss_scaler->growth_tracker, st.loss_scaler->skipped_steps);
  trainer.set_steps_done(st.step);
  return st;
}

}  // namespace ppu::train
