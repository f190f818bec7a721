#include "models/Session.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <limits>
#include <mutex>
#include <thread>

#include "arch/Error.hpp"

namespace ppu {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

}  // namespace

int32_t timing_only_token(const ModelConfig& cfg) { return static_cast<int32_t>(1000 % cfg.vocab_size); }

Session::Session(Device& dev, ModelConfig cfg, const Qwen3Weights& weights, const Qwen3Options& model_options,
                 const SamplerOptions& sampling)
    : max_batch_(model_options.max_batch), model_(dev, std::move(cfg), weights, model_options), sampler_(sampling) {}

GenerateResult Session::generate(const std::vector<int32_t>& prompt, const GenerateOptions& opt) {
  return generate_batch({prompt}, opt);
}

GenerateResult Session::generate_batch(const std::vector<std::vector<int32_t>>& prompts, const GenerateOptions& opt) {
  const auto B = static_cast<int64_t>(prompts.size());
  if (B == 0 || B > max_batch_)
    throw UserError(fmt::format("generate: {} prompts; this model was built for 1 to {} sequences "
                                "(Qwen3Options::max_batch)",
                                B, max_batch_));
  if (opt.max_new_tokens < 0)
    throw UserError(fmt::format("generate: max_new_tokens {} must be 0 or more", opt.max_new_tokens));
  if (opt.max_prefill_tokens < 1)
    throw UserError(fmt::format("generate: max_prefill_tokens {} must be at least 1", opt.max_prefill_tokens));
  auto prompt_len = [&](int64_t b) { return static_cast<int64_t>(prompts[static_cast<size_t>(b)].size()); };
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = prompt_len(b), past = model_.past_len(static_cast<size_t>(b));
    const int64_t cap = model_.slot_capacity(static_cast<size_t>(b));
    const std::string name = B == 1 ? "the prompt" : fmt::format("prompt {}", b);
    const std::string cached = past > 0 ? fmt::format(" after {} already cached", past) : std::string();
    if (n == 0) throw UserError(fmt::format("generate: {} is empty; give at least one token", name));
    if (past + n > cap)
      throw UserError(
          fmt::format("generate: {} has {} tokens{}; the context holds {} positions", name, n, cached, cap));
    // The last generated token is never fed, so max_new_tokens tokens take max_new_tokens - 1 positions.
    const int64_t need = past + n + std::max<int64_t>(0, opt.max_new_tokens - 1);
    if (need > cap)
      throw UserError(fmt::format("generate: {} ({} tokens{}) and max_new_tokens {} need {} positions; the context "
                                  "holds {} (generate fewer tokens or build the model with a longer context)",
                                  name, n, cached, opt.max_new_tokens, need, cap));
  }
  const bool functional = model_.device().functional();
  const int32_t placeholder = timing_only_token(model_.config());
  // next[b]: sequence b's newest token, not yet recorded (or, once it has stopped, its last one).
  std::vector<int32_t> next(static_cast<size_t>(B));
  auto take = [&](const ForwardResult& r, int64_t b, int64_t row) {
    next[static_cast<size_t>(b)] = functional ? r.tokens.at(static_cast<size_t>(row)) : placeholder;
  };
  GenerateResult out;
  out.tokens.resize(static_cast<size_t>(B));

  const auto prefill0 = Clock::now();
  for (int64_t b0 = 0; b0 < B;) {
    int64_t b1 = b0 + 1, tokens = prompt_len(b0);
    while (b1 < B && tokens + prompt_len(b1) <= opt.max_prefill_tokens) tokens += prompt_len(b1++);
    const std::vector<std::vector<int32_t>> part(prompts.begin() + b0, prompts.begin() + b1);
    const ForwardResult r = model_.forward_sampled(part, sampler_, b0);
    out.prefill_time_s += r.sim_time_s;
    ++out.prefill_passes;
    for (int64_t b = b0; b < b1; ++b) take(r, b, b - b0);
    b0 = b1;
  }
  out.host_prefill_s = seconds_since(prefill0);

  const auto decode0 = Clock::now();
  std::vector<bool> stopped(static_cast<size_t>(B), false);
  for (int64_t i = 0; i < opt.max_new_tokens; ++i) {
    bool running = false;
    for (int64_t b = 0; b < B; ++b) {
      const auto s = static_cast<size_t>(b);
      if (stopped[s]) continue;
      out.tokens[s].push_back(next[s]);
      if (opt.on_token) opt.on_token(s, next[s]);
      stopped[s] = std::find(opt.stop_ids.begin(), opt.stop_ids.end(), next[s]) != opt.stop_ids.end();
      running = running || !stopped[s];
    }
    if (!running || i + 1 == opt.max_new_tokens) break;
    std::vector<std::vector<int32_t>> feed;
    for (const int32_t t : next) feed.push_back({t});
    ForwardResult r;
    {
      GraphScope graph(model_.device(), opt.graph_decode);
      r = model_.forward_sampled(feed, sampler_);
    }
    out.decode_time_s += r.sim_time_s;
    ++out.decode_steps;
    for (int64_t b = 0; b < B; ++b)
      if (!stopped[static_cast<size_t>(b)]) take(r, b, b);
  }
  out.host_decode_s = seconds_since(decode0);
  return out;
}

ParallelGeneration generate_parallel(int world, const SessionFactory& make_session, const std::vector<int32_t>& prompt,
                                     const GenerateOptions& opt) {
  if (world < 1) throw UserError(fmt::format("generate_parallel: {} ranks; give at least 1", world));
  // Each rank's exception and when it failed (0 first), so that the cause is reported rather than
  // the rendezvous timeouts it leaves behind on the other ranks.
  std::vector<std::exception_ptr> errors(static_cast<size_t>(world));
  std::vector<int> failed_as(static_cast<size_t>(world), std::numeric_limits<int>::max());
  std::mutex mu;
  int failures = 0;
  auto record_failure = [&](int rank) {
    const std::lock_guard<std::mutex> lock(mu);
    errors[static_cast<size_t>(rank)] = std::current_exception();
    failed_as[static_cast<size_t>(rank)] = failures++;
  };
  auto build = [&](int rank) {
    std::unique_ptr<Session> s = make_session(rank);
    PPU_CHECK(s != nullptr, fmt::format("SessionFactory returned no session for rank {}", rank));
    return s;
  };
  GenerateOptions silent = opt;
  silent.on_token = nullptr;
  ParallelGeneration out;
  {
    std::vector<std::thread> threads;
    struct JoinAll {  // joins the rank threads however this block is left
      std::vector<std::thread>& t;
      ~JoinAll() {
        for (auto& x : t) x.join();
      }
    } join_all{threads};
    for (int r = 1; r < world; ++r)
      threads.emplace_back([&, r] {
        try {
          build(r)->generate(prompt, silent);
        } catch (...) {
          record_failure(r);
        }
      });
    try {
      out.session = build(0);
      out.result = out.session->generate(prompt, opt);
    } catch (...) {
      record_failure(0);
    }
  }
  const auto first = std::min_element(failed_as.begin(), failed_as.end());
  if (*first == std::numeric_limits<int>::max()) return out;
  const auto rank = static_cast<int>(first - failed_as.begin());
  if (rank == 0) std::rethrow_exception(errors[0]);
  const std::string failed = fmt::format("a parallel rank failed (rank {} of {})", rank, world);
  try {
    std::rethrow_exception(errors[static_cast<size_t>(rank)]);
  } catch (const std::exception& e) {
    throw UserError(fmt::format("{}: {}", failed, e.what()));
  } catch (...) {
    throw UserError(failed + ": an exception that is not a std::exception");
  }
}

}  // namespace ppu
