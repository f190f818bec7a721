#include "serve/Scheduler.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "arch/Error.hpp"

namespace ppu::serve {

Scheduler::Scheduler(const SchedulerConfig& cfg, KvBlocks& kv) : cfg_(cfg), kv_(kv) {
  if (cfg.max_num_seqs < 1)
    throw UserError(fmt::format("scheduler: max_num_seqs {}; valid: at least 1", cfg.max_num_seqs));
  if (cfg.max_batched_tokens < 1)
    throw UserError(fmt::format("scheduler: max_batched_tokens {}; valid: at least 1", cfg.max_batched_tokens));
  if (cfg.max_model_len < 0)
    throw UserError(fmt::format("scheduler: max_model_len {}; valid: 0 (no limit) or more", cfg.max_model_len));
}

std::optional<std::string> Scheduler::never_fits(const Request& r) const {
  const int64_t len = r.prompt_len + r.max_tokens;
  if (cfg_.max_model_len > 0 && len > cfg_.max_model_len)
    return fmt::format("request {}: {} prompt tokens + {} max_tokens = {} exceeds the model's context of {} tokens", r.id,
                       r.prompt_len, r.max_tokens, len, cfg_.max_model_len);
  // The last generated token is never written to the cache.
  const int64_t blocks = kv_.blocks_for(len - 1);
  if (blocks > kv_.num_blocks())
    return fmt::format("request {}: {} prompt tokens + {} max_tokens need {} KV blocks of {} positions; the whole cache "
                       "holds {} blocks ({} positions)",
                       r.id, r.prompt_len, r.max_tokens, blocks, kv_.block_size(), kv_.num_blocks(),
                       kv_.num_blocks() * kv_.block_size());
  if (!cfg_.chunked_prefill && r.prompt_len > cfg_.max_batched_tokens)
    return fmt::format("request {}: a prompt of {} tokens exceeds the step's token budget of {} and chunked prefill is off",
                       r.id, r.prompt_len, cfg_.max_batched_tokens);
  return std::nullopt;
}

void Scheduler::add(Request r) {
  if (r.prompt_len < 1) throw UserError(fmt::format("request {}: prompt of {} tokens; valid: at least 1", r.id, r.prompt_len));
  if (r.max_tokens < 1) throw UserError(fmt::format("request {}: max_tokens {}; valid: at least 1", r.id, r.max_tokens));
  if (!r.prompt.empty() && static_cast<int64_t>(r.prompt.size()) != r.prompt_len)
    throw UserError(fmt::format("request {}: {} prompt ids for a prompt_len of {}", r.id, r.prompt.size(), r.prompt_len));
  if (seqs_.count(r.id)) throw UserError(fmt::format("request {}: that id is already queued or running", r.id));
  if (auto why = never_fits(r)) throw UserError(*why);
  Seq s;
  s.tokens = r.prompt;
  s.v.prompt_len = r.prompt_len;
  const uint64_t id = r.id;
  s.req = std::move(r);
  s.req.prompt.clear();  // kept once, in tokens
  seqs_.emplace(id, std::move(s));
  waiting_.push_back(id);
}

void Scheduler::preempt(uint64_t id, StepPlan& plan) {
  Seq& s = seqs_.at(id);
  kv_.release(id);
  s.v.computed = 0;
  s.v.running = false;
  ++s.v.preemptions;
  ++preemptions_;
  running_.erase(std::find(running_.begin(), running_.end(), id));
  waiting_.push_front(id);
  plan.preempted.push_back(id);
}

StepPlan Scheduler::schedule() {
  StepPlan plan;
  int64_t budget = cfg_.max_batched_tokens;
  const bool reserve = cfg_.admission == Admission::kReserve;
  // Running requests, in admission order. A victim is always taken from the back, behind every
  // request already given its chunk this step.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    const uint64_t id = running_[i];
    Seq& s = seqs_.at(id);
    const int64_t need = s.num_tokens() - s.v.computed;
    const int64_t chunk = std::min(need, budget);
    if (!cfg_.chunked_prefill && chunk < need) {
      ++i;
      continue;
    }
    bool self_preempted = false;
    while (!kv_.grow(id, s.v.computed + chunk)) {
      const uint64_t victim = running_.back();
      preempt(victim, plan);
      if (victim == id) {
        self_preempted = true;
        break;
      }
    }
    if (self_preempted) break;  // it was the last one running; nothing behind it
    plan.items.push_back({id, s.v.computed, chunk, s.v.computed + chunk == s.num_tokens()});
    plan.tokens += chunk;
    budget -= chunk;
    ++i;
  }
  // Admissions, unless this step had to preempt (the cache is full: vLLM admits nothing then).
  while (plan.preempted.empty() && !waiting_.empty() && static_cast<int64_t>(running_.size()) < cfg_.max_num_seqs &&
         budget > 0) {
    const uint64_t id = waiting_.front();
    Seq& s = seqs_.at(id);
    const int64_t cached =
        static_cast<int64_t>(s.tokens.size()) == s.num_tokens() ? kv_.match_prefix(id, s.tokens) : 0;
    const int64_t need = s.num_tokens() - cached;
    const int64_t chunk = std::min(need, budget);
    const int64_t target = reserve ? s.v.prompt_len + s.req.max_tokens - 1 : cached + chunk;
    if ((!cfg_.chunked_prefill && chunk < need) || !kv_.grow(id, target)) {
      kv_.release(id);
      break;
    }
    waiting_.pop_front();
    running_.push_back(id);
    s.v.running = true;
    s.v.computed = cached;
    s.v.prefix_hit = cached;
    plan.items.push_back({id, cached, chunk, cached + chunk == s.num_tokens()});
    plan.tokens += chunk;
    budget -= chunk;
  }
  return plan;
}

std::vector<uint64_t> Scheduler::complete(const StepPlan& plan, const std::vector<int32_t>& sampled) {
  std::vector<uint64_t> finished;
  size_t next = 0;
  for (const StepItem& it : plan.items) {
    const auto f = seqs_.find(it.id);
    if (f == seqs_.end()) continue;  // aborted while the step ran
    Seq& s = f->second;
    s.v.computed = it.start + it.count;
    kv_.register_full_blocks(it.id, s.tokens, s.v.computed);
    if (!it.samples) continue;
    ++s.v.generated;
    if (!sampled.empty()) {
      PPU_CHECK(next < sampled.size(), "fewer sampled ids than sampling items");
      if (!s.tokens.empty()) s.tokens.push_back(sampled[next]);
      ++next;
    }
    if (s.v.generated >= s.req.max_tokens) {
      finished.push_back(it.id);
      remove(it.id);
    }
  }
  return finished;
}

void Scheduler::remove(uint64_t id) {
  kv_.release(id);
  const auto r = std::find(running_.begin(), running_.end(), id);
  if (r != running_.end()) running_.erase(r);
  const auto w = std::find(waiting_.begin(), waiting_.end(), id);
  if (w != waiting_.end()) waiting_.erase(w);
  seqs_.erase(id);
}

void Scheduler::abort(uint64_t id) {
  if (seqs_.count(id)) remove(id);
}

const SeqView* Scheduler::view(uint64_t id) const {
  const auto it = seqs_.find(id);
  return it == seqs_.end() ? nullptr : &it->second.v;
}

const std::vector<int32_t>* Scheduler::tokens(uint64_t id) const {
  const auto it = seqs_.find(id);
  return it == seqs_.end() ? nullptr : &it->second.tokens;
}

std::vector<int32_t> Scheduler::generated_ids(uint64_t id) const {
  const auto it = seqs_.find(id);
  if (it == seqs_.end() || it->second.tokens.empty()) return {};
  return {it->second.tokens.begin() + it->second.v.prompt_len, it->second.tokens.end()};
}

}  // namespace ppu::serve
