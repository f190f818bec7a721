#include "nn/ParallelGroups.hpp"

#include <fmt/format.h>

#include <numeric>

#include "arch/Error.hpp"
#include "ccl/Communicator.hpp"

namespace ppu::nn {

namespace {

// "1, 2, 4": the values t in 1 .. n with ok(t).
template <class F>
std::string values_text(int64_t n, F&& ok) {
  std::string v;
  for (int64_t t = 1; t <= n; ++t)
    if (ok(t)) v += (v.empty() ? "" : ", ") + std::to_string(t);
  return v;
}

}  // namespace

std::string divisors_text(int64_t n) {
  return values_text(n, [n](int64_t t) { return n % t == 0; });
}

void check_split(const SplitDims& m, const ParallelDegrees& d, int64_t seq_len) {
  for (auto [name, v] : {std::pair<const char*, int>{"TP", d.tp}, {"EP", d.ep}, {"CP", d.cp}, {"DP", d.dp}, {"PP", d.pp}})
    if (v < 1) throw UserError(fmt::format("model '{}': {} degree {}; every degree must be >= 1", m.model, name, v));
  const bool moe = m.experts > 0;
  // What TP splits: the heads, the key/value heads, and the MLP width (each expert's without EP).
  std::vector<std::pair<int64_t, const char*>> split = {{m.heads, "attention heads"}, {m.kv_heads, "key/value heads"}};
  if (!moe && m.ffn > 0) split.emplace_back(m.ffn, "MLP width");
  if (moe && d.ep == 1) split.emplace_back(m.expert_ffn, "expert MLP width");
  for (const auto& [n, what] : split)
    if (n % d.tp != 0) {
      const std::string valid = values_text(m.heads, [&](int64_t t) {
        for (const auto& [x, _] : split)
          if (x % t != 0) return false;
        return true;
      });
      throw UserError(fmt::format("model '{}': a TP degree of {} does not divide the {} {}; valid TP: {}", m.model, d.tp,
                                  n, what, valid));
    }
  if (d.ep > 1) {
    if (!moe)
      throw UserError(fmt::format("model '{}': an EP degree of {} needs an MoE model (routed experts); this one is "
                                  "dense; valid EP: 1",
                                  m.model, d.ep));
    const int64_t tpdp = int64_t{d.tp} * d.dp;
    const std::string valid = values_text(m.experts, [&](int64_t e) {
      return e == 1 || (m.experts % e == 0 && e % d.tp == 0 && (d.dp == 1 || tpdp % e == 0));
    });
    if (m.experts % d.ep != 0)
      throw UserError(fmt::format("model '{}': an EP degree of {} does not divide the {} experts; valid EP: {}", m.model,
                                  d.ep, m.experts, valid));
    if (d.ep % d.tp != 0)
      throw UserError(fmt::format("model '{}': an EP degree of {} is not a multiple of the TP degree {} (attention runs "
                                  "data-parallel in EP / TP groups of TP chips); valid EP: {}",
                                  m.model, d.ep, d.tp, valid));
    if (d.dp > 1 && tpdp % d.ep != 0)
      throw UserError(fmt::format("model '{}': an EP degree of {} does not divide TP x DP = {} (an EP group is made of "
                                  "whole TP groups of one pipeline stage); valid EP: {}",
                                  m.model, d.ep, tpdp, valid));
  }
  if (d.cp > 1 && seq_len > 0 && seq_len % (2 * d.cp) != 0)
    throw UserError(fmt::format("model '{}': a CP degree of {} needs the sequence length ({}) to be a multiple of 2 x CP "
                                "= {} (each chip takes one chunk from each end, to balance causal work)",
                                m.model, d.cp, seq_len, 2 * d.cp));
}

ParallelGroups ParallelGroups::for_rank(const ParallelDegrees& d, int rank) {
  ParallelGroups g;
  g.degrees = d;
  if (d.tp < 1 || d.ep < 1 || rank < 0 || rank >= g.world())
    throw UserError(fmt::format("parallel rank {} of a replica with TP {} and EP {}; valid ranks: 0 to {}", rank, d.tp,
                                d.ep, std::max(1, g.world()) - 1));
  g.rank = rank;
  g.tp_rank = rank % d.tp;
  g.ep_rank = d.ep > 1 ? rank : 0;
  return g;
}

void ParallelGroups::check_wiring(const std::string& model) const {
  const ParallelDegrees& d = degrees;
  if (d.tp < 1 || tp_rank < 0 || tp_rank >= d.tp)
    throw UserError(fmt::format("model '{}': tensor-parallel rank {} of {}; valid: size >= 1, rank 0 to size - 1", model,
                                tp_rank, d.tp));
  if (d.ep < 1 || ep_rank < 0 || ep_rank >= d.ep)
    throw UserError(fmt::format("model '{}': expert-parallel rank {} of {}; valid: size >= 1, rank 0 to size - 1", model,
                                ep_rank, d.ep));
  if (d.ep > 1 && d.ep % d.tp == 0 && ep_rank % d.tp != tp_rank)
    throw UserError(fmt::format("model '{}': EP rank {} is not in the TP group of TP rank {} (EP rank = data-parallel "
                                "group x TP degree + TP rank)",
                                model, ep_rank, tp_rank));
  if (capture) return;
  if (d.tp > 1 && (!tp_comm || tp_comm->size() != d.tp))
    throw UserError(fmt::format("model '{}': tensor parallelism over {} chips needs a communicator of {} ranks", model,
                                d.tp, d.tp));
  if (d.ep > 1 && (!ep_comm || ep_comm->size() != d.ep))
    throw UserError(fmt::format("model '{}': expert parallelism over {} chips needs a communicator of {} ranks", model,
                                d.ep, d.ep));
}

}  // namespace ppu::nn
