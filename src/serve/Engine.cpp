#include "serve/Engine.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "arch/Error.hpp"

namespace ppu::serve {

namespace {

constexpr int64_t kBlock = 16;  // block accounting granularity of contiguous slots (positions)

// The shortest slot: every request must fit whichever slot it gets.
int64_t min_slot_capacity(const Qwen3Model& m) {
  int64_t cap = m.max_context();
  for (int64_t s = 0; s < m.max_batch(); ++s) cap = std::min(cap, m.slot_capacity(static_cast<size_t>(s)));
  return cap;
}

SchedulerConfig scheduler_config(const Qwen3Model& m, const EngineConfig& cfg) {
  SchedulerConfig sc;
  sc.max_num_seqs = m.max_batch();
  sc.max_batched_tokens = cfg.max_batched_tokens;
  sc.chunked_prefill = cfg.chunked_prefill;
  // Paged: blocks as tokens are computed, preemption by recompute (vLLM). Slots: a slot holds a
  // request's whole sequence.
  sc.admission = m.paged() ? Admission::kOnDemand : Admission::kReserve;
  // The last generated token is never written to the cache.
  sc.max_model_len = (m.paged() ? m.max_context() : min_slot_capacity(m)) + 1;
  return sc;
}

KvBlocks kv_blocks_of(const Qwen3Model& m, const EngineConfig& cfg) {
  if (m.paged()) return KvBlocks(m.kv_blocks(), m.kv_block_size(), cfg.prefix_caching);
  // The slots, counted in blocks; sharing would need block tables.
  return KvBlocks(m.max_batch() * ((min_slot_capacity(m) + kBlock - 1) / kBlock), kBlock, false);
}

}  // namespace

Engine::Engine(Qwen3Model& model, const EngineConfig& cfg)
    : model_(model),
      kv_(kv_blocks_of(model, cfg)),
      sched_(scheduler_config(model, cfg), kv_) {
  if (!model.device().functional())
    throw UserError("serving engine: the model's device is timing-only; the engine computes tokens (use ServeSim, "
                    "`ppu simulate serve`, for timing-only serving)");
  const Qwen3Options& mo = model.options();
  if (mo.tp_size > 1 || mo.ep_size > 1)
    throw UserError(fmt::format("serving engine: the model is one shard of a split (tp_size {}, ep_size {}); the engine "
                                "drives one model from one thread, and every shard's forward must run at once - serve "
                                "an unsplit model",
                                mo.tp_size, mo.ep_size));
  if (!model.paged())
    for (int64_t s = 0; s < model.max_batch(); ++s) free_slots_.insert(s);
}

void Engine::add(EngineRequest r) {
  const int64_t vocab = model_.config().vocab_size;
  const std::string who = fmt::format("request {}", r.id);
  if (r.prompt.empty()) throw UserError(fmt::format("{}: empty prompt", who));
  for (size_t i = 0; i < r.prompt.size(); ++i)
    if (r.prompt[i] < 0 || r.prompt[i] >= vocab)
      throw UserError(fmt::format("{}: prompt token {} is id {}; the model's vocabulary is 0 .. {}", who, i, r.prompt[i],
                                  vocab - 1));
  const SamplingParams& p = r.sampling;
  for (const auto& [name, v] : {std::pair{"presence_penalty", p.presence_penalty}, {"frequency_penalty", p.frequency_penalty}})
    if (!(v >= -2.0 && v <= 2.0))
      throw UserError(fmt::format("{}: {} {}; valid: -2 .. 2", who, name, v));
  auto sampler = std::make_unique<Sampler>(SamplerOptions{p.temperature, p.top_k, p.top_p, p.seed});
  if (live_.count(r.id)) throw UserError(fmt::format("{}: that id is already queued or running", who));
  sched_.add({r.id, static_cast<int64_t>(r.prompt.size()), p.max_tokens, r.prompt});
  Live l;
  l.params = p;
  l.sampler = std::move(sampler);
  live_.emplace(r.id, std::move(l));
}

void Engine::release(uint64_t id) {
  const auto it = live_.find(id);
  if (it == live_.end()) return;
  if (it->second.slot >= 0) {
    model_.reset_slot(static_cast<size_t>(it->second.slot));
    free_slots_.insert(it->second.slot);
  }
  live_.erase(it);
}

void Engine::cancel(uint64_t id) {
  sched_.abort(id);
  release(id);
}

ForwardResult Engine::forward(const StepPlan& plan) {
  std::vector<std::vector<int32_t>> seqs;
  for (const StepItem& it : plan.items) {
    const std::vector<int32_t>& toks = *sched_.tokens(it.id);
    seqs.emplace_back(toks.begin() + it.start, toks.begin() + it.start + it.count);
  }
  if (model_.paged()) {
    // The scheduler has grown each table to cover its chunk; positions before it.start are cached
    // (computed by an earlier step, or a shared prefix block).
    std::vector<std::vector<int32_t>> tables;
    std::vector<int64_t> past;
    for (const StepItem& it : plan.items) {
      tables.push_back(kv_.table(it.id));
      past.push_back(it.start);
    }
    return model_.forward_paged(seqs, tables, past);
  }
  PPU_CHECK(plan.preempted.empty(), "reserve admission preempted a request");
  std::vector<int64_t> slots;
  for (const StepItem& it : plan.items) {
    Live& l = live_.at(it.id);
    if (l.slot < 0) {
      PPU_CHECK(!free_slots_.empty(), "more running requests than slots");
      l.slot = *free_slots_.begin();
      free_slots_.erase(free_slots_.begin());
    }
    PPU_CHECK(model_.past_len(static_cast<size_t>(l.slot)) == it.start, "a slot's cache is not where its request stands");
    slots.push_back(l.slot);
  }
  return model_.forward_slots(seqs, slots);
}

EngineStep Engine::step() {
  EngineStep out;
  const StepPlan plan = sched_.schedule();
  if (plan.empty()) return out;
  const ForwardResult fr = forward(plan);
  out.sim_time_s = fr.sim_time_s;
  out.requests = static_cast<int64_t>(plan.items.size());
  out.tokens = plan.tokens;
  const auto vocab = static_cast<size_t>(model_.config().vocab_size);
  std::vector<int32_t> sampled;
  std::vector<float> row(vocab);
  for (size_t i = 0; i < plan.items.size(); ++i) {
    const StepItem& it = plan.items[i];
    if (!it.samples) continue;
    Live& l = live_.at(it.id);
    std::copy(fr.logits.begin() + static_cast<std::ptrdiff_t>(i * vocab),
              fr.logits.begin() + static_cast<std::ptrdiff_t>((i + 1) * vocab), row.begin());
    if (l.params.presence_penalty != 0 || l.params.frequency_penalty != 0)
      for (const auto& [tok, n] : l.counts)
        row[static_cast<size_t>(tok)] -= static_cast<float>(l.params.presence_penalty + l.params.frequency_penalty * static_cast<double>(n));
    const int32_t tok = l.sampler->sample(row);
    ++l.counts[tok];
    sampled.push_back(tok);
    out.events.push_back({it.id, tok, ""});
  }
  const std::vector<uint64_t> done = sched_.complete(plan, sampled);
  for (TokenEvent& e : out.events) {
    const Live& l = live_.at(e.id);
    if (std::find(done.begin(), done.end(), e.id) != done.end()) {
      e.finish_reason = std::find(l.params.stop_ids.begin(), l.params.stop_ids.end(), e.token) != l.params.stop_ids.end()
                            ? "stop"
                            : "length";
    } else if (std::find(l.params.stop_ids.begin(), l.params.stop_ids.end(), e.token) != l.params.stop_ids.end()) {
      e.finish_reason = "stop";
      sched_.abort(e.id);
    }
  }
  for (const TokenEvent& e : out.events)
    if (!e.finish_reason.empty()) release(e.id);
  return out;
}

}  // namespace ppu::serve
