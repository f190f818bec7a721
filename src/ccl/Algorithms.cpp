#include "ccl/Algorithms.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <map>
#include <set>

#include "arch/Error.hpp"

namespace ppu::ccl {

namespace {

using RegionFn = std::function<Region(int pos, int slice, int64_t offset_in_slice)>;

// Adds ops in issue order and enforces the pipeline depth per connection.
class Builder {
 public:
  Builder(int ranks, int depth, int channels) : ranks_(ranks), depth_(std::max(1, depth)), channels_(std::max(1, channels)) {}
  // Ops added from now on belong to the channel of chunk j.
  void chunk(int64_t j) { channel_ = static_cast<int>(j % channels_); }

  int32_t copy(Region src, std::vector<Region> dsts, int64_t count, std::vector<int32_t> deps, bool via_switch = false) {
    Op o;
    o.type = OpType::kCopy;
    o.count = count;
    o.srcs = {src};
    o.dsts = std::move(dsts);
    o.deps = std::move(deps);
    o.via_switch = via_switch;
    return add(std::move(o));
  }
  int32_t reduce(std::vector<Region> srcs, Region dst, int64_t count, std::vector<int32_t> deps, bool via_switch = false) {
    return reduce(std::move(srcs), std::vector<Region>{dst}, count, std::move(deps), via_switch);
  }
  int32_t reduce(std::vector<Region> srcs, std::vector<Region> dsts, int64_t count, std::vector<int32_t> deps,
                 bool via_switch) {
    Op o;
    o.type = OpType::kReduce;
    o.count = count;
    o.srcs = std::move(srcs);
    o.dsts = std::move(dsts);
    o.deps = std::move(deps);
    o.via_switch = via_switch;
    return add(std::move(o));
  }
  // A zero-byte op on `rank` after `deps`: joins phases without copying long dependency lists.
  int32_t barrier(int rank, std::vector<int32_t> deps) {
    return copy(Region{rank, BufferRole::kRecv, 0}, {Region{rank, BufferRole::kRecv, 0}}, 0, std::move(deps));
  }
  Schedule take() {
    s_.connections = static_cast<int64_t>(conn_.size());
    s_.pipeline_depth = depth_;
    return std::move(s_);
  }
  Schedule& schedule() { return s_; }

 private:
  int32_t add(Op o) {
    std::set<int64_t> conns;
    auto key = [&](int64_t src, int64_t dst) { return (int64_t{channel_} * (ranks_ + 1) + src) * (ranks_ + 1) + dst; };
    if (o.via_switch) {
      for (const Region& r : o.srcs) conns.insert(key(r.rank, ranks_));
    } else if (o.type == OpType::kCopy) {
      for (const Region& d : o.dsts)
        if (d.rank != o.srcs[0].rank) conns.insert(key(o.srcs[0].rank, d.rank));
    } else {
      for (const Region& r : o.srcs)
        if (r.rank != o.dsts[0].rank) conns.insert(key(r.rank, o.dsts[0].rank));
    }
    const int32_t id = static_cast<int32_t>(s_.ops.size());
    for (int64_t c : conns) {
      auto& q = conn_[c];
      if (static_cast<int>(q.size()) >= depth_) o.deps.push_back(q[q.size() - static_cast<size_t>(depth_)]);
      q.push_back(id);
    }
    std::sort(o.deps.begin(), o.deps.end());
    o.deps.erase(std::unique(o.deps.begin(), o.deps.end()), o.deps.end());
    o.deps.erase(std::remove(o.deps.begin(), o.deps.end(), -1), o.deps.end());
    s_.ops.push_back(std::move(o));
    return id;
  }
  int ranks_, depth_, channels_;
  int channel_ = 0;
  std::map<int64_t, std::vector<int32_t>> conn_;
  Schedule s_;
};

struct Span {
  int64_t off = 0, len = 0;
};

// Splits `total` into `parts` near-equal spans (the first ones one longer).
std::vector<Span> split(int64_t total, int parts, int64_t base = 0) {
  std::vector<Span> out;
  const int64_t q = total / parts, r = total % parts;
  int64_t off = base;
  for (int i = 0; i < parts; ++i) {
    const int64_t len = q + (i < r ? 1 : 0);
    out.push_back({off, len});
    off += len;
  }
  return out;
}

int64_t num_chunks(int64_t len, int64_t chunk) { return std::max<int64_t>(1, (len + chunk - 1) / chunk); }
// Chunk j of k of a span of `len` (possibly empty).
Span chunk_of(int64_t len, int64_t k, int64_t j) {
  const int64_t piece = (len + k - 1) / k;
  const int64_t lo = std::min(len, j * piece), hi = std::min(len, (j + 1) * piece);
  return {lo, hi - lo};
}

std::vector<int32_t> cat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Ring over positions 0..m-1 (ranks[p]) on slices[q]. Reduce-scatter: position p ends with slice
// (p + 1) % m fully reduced in work(p, that slice); all-gather: position p starts with slice (p + 1) % m
// (read from `in` at the first step) and every position ends with every slice in `work`.
// entry[p]: ops that must finish before position p takes part. Returns, per position, the ops that
// wrote there.
std::vector<std::vector<int32_t>> ring(Builder& b, const std::vector<int>& ranks, const std::vector<Span>& slices,
                                       bool do_rs, bool do_ag, const RegionFn& in, const RegionFn& work,
                                       const std::vector<int32_t>& entry, int64_t chunk) {
  const int m = static_cast<int>(ranks.size());
  std::vector<std::vector<int32_t>> wrote(static_cast<size_t>(m));
  if (m == 1) return wrote;
  int64_t maxlen = 0;
  for (const Span& s : slices) maxlen = std::max(maxlen, s.len);
  const int64_t k = num_chunks(maxlen, chunk);
  auto dep_entry = [&](int p) { return entry.empty() ? -1 : entry[static_cast<size_t>(p)]; };
  for (int64_t j = 0; j < k && (b.chunk(j), true); ++j) {
    // last[p][q]: the op that last wrote chunk j of slice q at position p (-1: none yet).
    std::vector<std::vector<int32_t>> last(static_cast<size_t>(m), std::vector<int32_t>(static_cast<size_t>(m), -1));
    auto step = [&](int s, bool rs) {
      for (int i = 0; i < m; ++i) {
        const int to = (i + 1) % m;
        const int q = rs ? ((i - s) % m + m) % m : ((i + 1 - s) % m + m) % m;
        const Span c = chunk_of(slices[static_cast<size_t>(q)].len, k, j);
        if (c.len == 0) continue;
        const int32_t prev = last[static_cast<size_t>(i)][static_cast<size_t>(q)];
        const bool first_read = rs ? s == 0 : (s == 0 && !do_rs);
        const Region src = first_read ? in(i, q, c.off) : work(i, q, c.off);
        std::vector<int32_t> deps = {prev, dep_entry(i), dep_entry(to)};
        int32_t id;
        if (rs) id = b.reduce({src, in(to, q, c.off)}, work(to, q, c.off), c.len, std::move(deps));
        else id = b.copy(src, {work(to, q, c.off)}, c.len, std::move(deps));
        last[static_cast<size_t>(to)][static_cast<size_t>(q)] = id;
        wrote[static_cast<size_t>(to)].push_back(id);
      }
    };
    if (do_rs)
      for (int s = 0; s < m - 1; ++s) step(s, true);
    if (do_ag)
      for (int s = 0; s < m - 1; ++s) step(s, false);
  }
  return wrote;
}

// Binary trees over positions 0..m-1.
struct Tree {
  int root = 0;
  std::vector<int> parent;
  std::vector<std::vector<int>> children;
};

Tree inorder_tree(int m) {
  Tree t;
  t.parent.assign(static_cast<size_t>(m), -1);
  t.children.assign(static_cast<size_t>(m), {});
  std::function<int(int, int)> build = [&](int lo, int hi) -> int {
    if (lo > hi) return -1;
    const int mid = (lo + hi) / 2;
    for (int c : {build(lo, mid - 1), build(mid + 1, hi)})
      if (c >= 0) {
        t.parent[static_cast<size_t>(c)] = mid;
        t.children[static_cast<size_t>(mid)].push_back(c);
      }
    return mid;
  };
  t.root = build(0, m - 1);
  return t;
}

// The tree with every position p renamed to f(p).
Tree renamed(const Tree& t, const std::function<int(int)>& f) {
  const int m = static_cast<int>(t.parent.size());
  Tree u;
  u.parent.assign(static_cast<size_t>(m), -1);
  u.children.assign(static_cast<size_t>(m), {});
  u.root = f(t.root);
  for (int p = 0; p < m; ++p) {
    if (t.parent[static_cast<size_t>(p)] >= 0) u.parent[static_cast<size_t>(f(p))] = f(t.parent[static_cast<size_t>(p)]);
    for (int c : t.children[static_cast<size_t>(p)]) u.children[static_cast<size_t>(f(p))].push_back(f(c));
  }
  return u;
}

// A binary heap rooted at `root` (for reduce and broadcast).
Tree heap_tree(int m, int root) {
  Tree t;
  t.parent.assign(static_cast<size_t>(m), -1);
  t.children.assign(static_cast<size_t>(m), {});
  t.root = root;
  for (int v = 1; v < m; ++v) {
    const int p = (v - 1) / 2;
    t.parent[static_cast<size_t>((v + root) % m)] = (p + root) % m;
    t.children[static_cast<size_t>((p + root) % m)].push_back((v + root) % m);
  }
  return t;
}

std::vector<int> post_order(const Tree& t) {
  std::vector<int> out;
  std::function<void(int)> walk = [&](int v) {
    for (int c : t.children[static_cast<size_t>(v)]) walk(c);
    out.push_back(v);
  };
  walk(t.root);
  return out;
}

Region R(int rank, BufferRole buf, int64_t off) { return Region{rank, buf, off}; }

// ---------------------------------------------------------------- all-reduce

void allreduce_ring(Builder& b, const ScheduleSpec& sp) {
  std::vector<int> ranks(static_cast<size_t>(sp.ranks));
  for (int i = 0; i < sp.ranks; ++i) ranks[static_cast<size_t>(i)] = i;
  const auto slices = split(sp.count, sp.ranks);
  auto in = [&](int p, int q, int64_t o) { return R(p, BufferRole::kSend, slices[static_cast<size_t>(q)].off + o); };
  auto work = [&](int p, int q, int64_t o) { return R(p, BufferRole::kRecv, slices[static_cast<size_t>(q)].off + o); };
  ring(b, ranks, slices, true, true, in, work, {}, sp.chunk_elems);
}

void allreduce_tree(Builder& b, const ScheduleSpec& sp) {
  const int m = sp.ranks;
  const Tree a = inorder_tree(m);
  const Tree t2 = renamed(a, [&](int p) { return m % 2 == 0 ? m - 1 - p : (p + 1) % m; });
  const auto halves = split(sp.count, 2);
  const Tree* trees[2] = {&a, &t2};
  const int64_t k = num_chunks(halves[0].len, sp.chunk_elems);
  std::vector<std::vector<int32_t>> final_op(2, std::vector<int32_t>(static_cast<size_t>(m), -1));
  for (int64_t j = 0; j < k && (b.chunk(j), true); ++j)
    for (int h = 0; h < 2; ++h) {
      const Tree& t = *trees[h];
      const Span c = chunk_of(halves[static_cast<size_t>(h)].len, k, j);
      if (c.len == 0) continue;
      const int64_t off = halves[static_cast<size_t>(h)].off + c.off;
      std::vector<int32_t> up(static_cast<size_t>(m), -1);
      auto val = [&](int v) {
        return t.children[static_cast<size_t>(v)].empty() ? R(v, BufferRole::kSend, off) : R(v, BufferRole::kRecv, off);
      };
      for (int v : post_order(t)) {
        const auto& ch = t.children[static_cast<size_t>(v)];
        if (ch.empty()) continue;
        std::vector<Region> srcs = {R(v, BufferRole::kSend, off)};
        std::vector<int32_t> deps;
        for (int c2 : ch) {
          srcs.push_back(val(c2));
          deps.push_back(up[static_cast<size_t>(c2)]);
        }
        up[static_cast<size_t>(v)] = b.reduce(std::move(srcs), R(v, BufferRole::kRecv, off), c.len, std::move(deps));
      }
      std::vector<int32_t> fin(static_cast<size_t>(m), -1);
      // The root's reduction is final; a lone root (one rank) copies its input.
      if (t.children[static_cast<size_t>(t.root)].empty() && !sp.in_place[static_cast<size_t>(t.root)])
        up[static_cast<size_t>(t.root)] =
            b.copy(R(t.root, BufferRole::kSend, off), {R(t.root, BufferRole::kRecv, off)}, c.len, {});
      fin[static_cast<size_t>(t.root)] = up[static_cast<size_t>(t.root)];
      std::vector<int> order = post_order(t);
      std::reverse(order.begin(), order.end());  // parents before children
      for (int v : order)
        for (int c2 : t.children[static_cast<size_t>(v)])
          fin[static_cast<size_t>(c2)] = b.copy(R(v, BufferRole::kRecv, off), {R(c2, BufferRole::kRecv, off)}, c.len,
                                                {fin[static_cast<size_t>(v)], up[static_cast<size_t>(c2)]});
    }
}

void allreduce_direct(Builder& b, const ScheduleSpec& sp, bool via_switch) {
  const int m = sp.ranks;
  const auto slices = split(sp.count, m);
  // Chunks of the whole buffer, each split into one shard per rank (so every chunk keeps every link busy).
  const int64_t k = num_chunks(sp.count, sp.chunk_elems * m);
  for (int64_t j = 0; j < k && (b.chunk(j), true); ++j)
    for (int qq = 0; qq < m; ++qq) {
      // Rotate the shard order by chunk, so that the chunks in flight on different channels belong
      // to different ranks (every rank works on its shard at once, as NVLS and direct do).
      const int q = static_cast<int>((qq + j) % m);
      b.chunk(j * m + qq);  // and spread one chunk's shards over the channels
      const Span c = chunk_of(slices[static_cast<size_t>(q)].len, k, j);
      if (c.len == 0) continue;
      const int64_t off = slices[static_cast<size_t>(q)].off + c.off;
      std::vector<Region> srcs;
      for (int i = 0; i < m; ++i) srcs.push_back(R(i, BufferRole::kSend, off));
      if (m == 1) {
        if (!sp.in_place[0]) b.copy(srcs[0], {R(0, BufferRole::kRecv, off)}, c.len, {});
        continue;
      }
      if (via_switch) {  // reduce in the switch and multicast the result to every rank, one op
        std::vector<Region> all = {R(q, BufferRole::kRecv, off)};
        for (int i = 0; i < m; ++i)
          if (i != q) all.push_back(R(i, BufferRole::kRecv, off));
        b.reduce(std::move(srcs), all, c.len, {}, true);
        continue;
      }
      const int32_t red = b.reduce(std::move(srcs), R(q, BufferRole::kRecv, off), c.len, {});
      std::vector<Region> dsts;
      for (int i = 0; i < m; ++i)
        if (i != q) dsts.push_back(R(i, BufferRole::kRecv, off));
      b.copy(R(q, BufferRole::kRecv, off), std::move(dsts), c.len, {red});
    }
}

void allreduce_halving_doubling(Builder& b, const ScheduleSpec& sp) {
  const int m = sp.ranks;
  int p = 1;
  while (p * 2 <= m) p *= 2;
  const int extra = m - p;
  // Positions 2i < 2*extra fold into 2i+1; the others take part as virtual rank v.
  std::vector<int> real(static_cast<size_t>(p));
  for (int v = 0; v < p; ++v) real[static_cast<size_t>(v)] = v < extra ? 2 * v + 1 : v + extra;
  std::vector<std::vector<int32_t>> prev(static_cast<size_t>(m));
  // A step's ops at a rank become one barrier op, so the next step depends on one op, not on all.
  auto fence = [&](int r, std::vector<int32_t> ids) -> std::vector<int32_t> {
    if (ids.size() <= 1) return ids;
    return {b.barrier(r, std::move(ids))};
  };
  auto chunked = [&](Span s, const std::function<int32_t(int64_t off, int64_t len)>& f) {
    std::vector<int32_t> ids;
    const int64_t k = num_chunks(s.len, sp.chunk_elems);
    for (int64_t j = 0; j < k && (b.chunk(j), true); ++j) {
      const Span c = chunk_of(s.len, k, j);
      if (c.len > 0) ids.push_back(f(s.off + c.off, c.len));
    }
    return ids;
  };
  // Everyone starts from its recv buffer holding its input.
  for (int r = 0; r < m; ++r)
    if (!sp.in_place[static_cast<size_t>(r)])
      prev[static_cast<size_t>(r)] = fence(r, chunked({0, sp.count}, [&](int64_t off, int64_t len) {
        return b.copy(R(r, BufferRole::kSend, off), {R(r, BufferRole::kRecv, off)}, len, {});
      }));
  for (int i = 0; i < extra; ++i) {
    const int from = 2 * i, to = 2 * i + 1;
    prev[static_cast<size_t>(to)] = fence(to, chunked({0, sp.count}, [&](int64_t off, int64_t len) {
      return b.reduce({R(from, BufferRole::kRecv, off), R(to, BufferRole::kRecv, off)}, R(to, BufferRole::kRecv, off),
                      len, cat(prev[static_cast<size_t>(from)], prev[static_cast<size_t>(to)]));
    }));
  }
  std::vector<Span> range(static_cast<size_t>(p), Span{0, sp.count});
  std::vector<std::vector<Span>> history;
  for (int mask = p / 2; mask >= 1; mask /= 2) {
    history.push_back(range);
    std::vector<std::vector<int32_t>> now(static_cast<size_t>(m));
    for (int v = 0; v < p; ++v) {
      const int u = v ^ mask;
      const Span cur = range[static_cast<size_t>(v)];
      const Span lo{cur.off, cur.len / 2}, hi{cur.off + cur.len / 2, cur.len - cur.len / 2};
      const Span keep = (v & mask) ? hi : lo;
      const int me = real[static_cast<size_t>(v)], peer = real[static_cast<size_t>(u)];
      const auto deps = cat(prev[static_cast<size_t>(me)], prev[static_cast<size_t>(peer)]);
      now[static_cast<size_t>(me)] = chunked(keep, [&](int64_t off, int64_t len) {
        return b.reduce({R(peer, BufferRole::kRecv, off), R(me, BufferRole::kRecv, off)}, R(me, BufferRole::kRecv, off),
                        len, deps);
      });
      range[static_cast<size_t>(v)] = keep;
    }
    for (int v = 0; v < p; ++v) {
      // The peer's read of my half must finish before my next step overwrites anything it read.
      const int me = real[static_cast<size_t>(v)], peer = real[static_cast<size_t>(v ^ mask)];
      prev[static_cast<size_t>(me)] = fence(me, cat(now[static_cast<size_t>(me)], now[static_cast<size_t>(peer)]));
    }
  }
  for (int mask = 1; mask < p; mask *= 2) {
    const std::vector<Span> before = history.back();
    history.pop_back();
    std::vector<std::vector<int32_t>> now(static_cast<size_t>(m));
    for (int v = 0; v < p; ++v) {
      const int me = real[static_cast<size_t>(v)], peer = real[static_cast<size_t>(v ^ mask)];
      const auto deps = cat(prev[static_cast<size_t>(me)], prev[static_cast<size_t>(peer)]);
      now[static_cast<size_t>(peer)] = chunked(range[static_cast<size_t>(v)], [&](int64_t off, int64_t len) {
        return b.copy(R(me, BufferRole::kRecv, off), {R(peer, BufferRole::kRecv, off)}, len, deps);
      });
    }
    for (int v = 0; v < p; ++v) {
      const int me = real[static_cast<size_t>(v)], peer = real[static_cast<size_t>(v ^ mask)];
      prev[static_cast<size_t>(me)] = fence(me, cat(now[static_cast<size_t>(me)], now[static_cast<size_t>(peer)]));
    }
    range = before;
  }
  for (int i = 0; i < extra; ++i) {
    const int to = 2 * i, from = 2 * i + 1;
    chunked({0, sp.count}, [&](int64_t off, int64_t len) {
      return b.copy(R(from, BufferRole::kRecv, off), {R(to, BufferRole::kRecv, off)}, len, prev[static_cast<size_t>(from)]);
    });
  }
}

// Reduce-scatter within each group, all-reduce of each slice across groups, all-gather within groups.
void allreduce_hierarchical(Builder& b, const ScheduleSpec& sp) {
  std::map<int, std::vector<int>> by_group;
  for (int r = 0; r < sp.ranks; ++r) by_group[sp.groups[static_cast<size_t>(r)]].push_back(r);
  std::vector<std::vector<int>> groups;
  for (auto& [g, rs] : by_group) groups.push_back(rs);
  const int g = static_cast<int>(groups[0].size());
  const auto slices = split(sp.count, g);
  std::vector<int32_t> entry(static_cast<size_t>(sp.ranks), -1);
  auto barriers = [&](const std::vector<int>& ranks, const std::vector<std::vector<int32_t>>& wrote) {
    for (size_t p = 0; p < ranks.size(); ++p)
      if (!wrote[p].empty())
        entry[static_cast<size_t>(ranks[p])] = b.barrier(ranks[p], cat(wrote[p], {entry[static_cast<size_t>(ranks[p])]}));
  };
  auto entries = [&](const std::vector<int>& ranks) {
    std::vector<int32_t> e;
    for (int r : ranks) e.push_back(entry[static_cast<size_t>(r)]);
    return e;
  };
  for (const auto& grp : groups) {
    auto in = [&](int p, int q, int64_t o) { return R(grp[static_cast<size_t>(p)], BufferRole::kSend, slices[static_cast<size_t>(q)].off + o); };
    auto work = [&](int p, int q, int64_t o) { return R(grp[static_cast<size_t>(p)], BufferRole::kRecv, slices[static_cast<size_t>(q)].off + o); };
    if (g == 1) {
      if (!sp.in_place[static_cast<size_t>(grp[0])])
        entry[static_cast<size_t>(grp[0])] = b.copy(in(0, 0, 0), {work(0, 0, 0)}, sp.count, {});
      continue;
    }
    barriers(grp, ring(b, grp, slices, true, false, in, work, entries(grp), sp.chunk_elems));
  }
  for (int l = 0; l < g; ++l) {
    std::vector<int> across;
    for (const auto& grp : groups) across.push_back(grp[static_cast<size_t>(l)]);
    const Span s = slices[static_cast<size_t>((l + 1) % g)];
    const auto sub = split(s.len, static_cast<int>(across.size()), s.off);
    auto w = [&](int p, int q, int64_t o) { return R(across[static_cast<size_t>(p)], BufferRole::kRecv, sub[static_cast<size_t>(q)].off + o); };
    barriers(across, ring(b, across, sub, true, true, w, w, entries(across), sp.chunk_elems));
  }
  for (const auto& grp : groups) {
    auto work = [&](int p, int q, int64_t o) { return R(grp[static_cast<size_t>(p)], BufferRole::kRecv, slices[static_cast<size_t>(q)].off + o); };
    ring(b, grp, slices, false, true, work, work, entries(grp), sp.chunk_elems);
  }
}

// ---------------------------------------------------------------- reduce-scatter, all-gather

void reduce_scatter(Builder& b, const ScheduleSpec& sp) {
  const int m = sp.ranks;
  const int64_t c = sp.count;
  // Ring slice q is the block of the rank at position q - 1: position p ends with its own block.
  auto block = [&](int q) { return (q - 1 + m) % m; };
  if (sp.algorithm == Algorithm::kRing && m > 1) {
    std::vector<int> ranks(static_cast<size_t>(m));
    for (int i = 0; i < m; ++i) ranks[static_cast<size_t>(i)] = i;
    std::vector<Span> slices(static_cast<size_t>(m), Span{0, c});
    auto in = [&](int p, int q, int64_t o) { return R(p, BufferRole::kSend, block(q) * c + o); };
    auto work = [&](int p, int q, int64_t o) {
      return block(q) == p ? R(p, BufferRole::kRecv, o) : R(p, BufferRole::kScratch, block(q) * c + o);
    };
    b.schedule().scratch_elems = m * c;
    ring(b, ranks, slices, true, false, in, work, {}, sp.chunk_elems);
    return;
  }
  const int64_t k = num_chunks(c, sp.chunk_elems);
  for (int64_t j = 0; j < k && (b.chunk(j), true); ++j)
    for (int q = 0; q < m; ++q) {
      const Span ch = chunk_of(c, k, j);
      std::vector<Region> srcs;
      for (int i = 0; i < m; ++i) srcs.push_back(R(i, BufferRole::kSend, q * c + ch.off));
      if (m == 1) {
        if (!sp.in_place[0]) b.copy(srcs[0], {R(0, BufferRole::kRecv, ch.off)}, ch.len, {});
        continue;
      }
      b.reduce(std::move(srcs), R(q, BufferRole::kRecv, ch.off), ch.len, {}, sp.algorithm == Algorithm::kNvls);
    }
}

void all_gather(Builder& b, const ScheduleSpec& sp) {
  const int m = sp.ranks;
  const int64_t c = sp.count;
  const int64_t k = num_chunks(c, sp.chunk_elems);
  // Own block first (local copy unless in place).
  std::vector<std::vector<int32_t>> own(static_cast<size_t>(m));
  for (int r = 0; r < m; ++r)
    if (!sp.in_place[static_cast<size_t>(r)])
      for (int64_t j = 0; j < k && (b.chunk(j), true); ++j) {
        const Span ch = chunk_of(c, k, j);
        own[static_cast<size_t>(r)].push_back(
            b.copy(R(r, BufferRole::kSend, ch.off), {R(r, BufferRole::kRecv, r * c + ch.off)}, ch.len, {}));
      }
  if (m == 1) return;
  if (sp.algorithm == Algorithm::kRing) {
    std::vector<int> ranks(static_cast<size_t>(m));
    for (int i = 0; i < m; ++i) ranks[static_cast<size_t>(i)] = i;
    std::vector<Span> slices(static_cast<size_t>(m), Span{0, c});
    auto block = [&](int q) { return (q - 1 + m) % m; };
    auto in = [&](int p, int, int64_t o) { return R(p, BufferRole::kSend, o); };
    auto work = [&](int p, int q, int64_t o) { return R(p, BufferRole::kRecv, block(q) * c + o); };
    // Receiving into a rank's recv buffer must wait for nothing: the own-block copies touch only the
    // rank's own block, which the ring never writes there.
    ring(b, ranks, slices, false, true, in, work, {}, sp.chunk_elems);
    return;
  }
  for (int64_t j = 0; j < k && (b.chunk(j), true); ++j)
    for (int r = 0; r < m; ++r) {
      const Span ch = chunk_of(c, k, j);
      std::vector<Region> dsts;
      for (int i = 0; i < m; ++i)
        if (i != r) dsts.push_back(R(i, BufferRole::kRecv, r * c + ch.off));
      b.copy(R(r, BufferRole::kSend, ch.off), std::move(dsts), ch.len, {}, sp.algorithm == Algorithm::kNvls);
    }
}

// ---------------------------------------------------------------- broadcast, reduce

void broadcast(Builder& b, const ScheduleSpec& sp) {
  const int m = sp.ranks, root = sp.root;
  const int64_t k = num_chunks(sp.count, sp.chunk_elems);
  const Tree t = heap_tree(m, root);
  for (int64_t j = 0; j < k && (b.chunk(j), true); ++j) {
    const Span ch = chunk_of(sp.count, k, j);
    if (!sp.in_place[static_cast<size_t>(root)])
      b.copy(R(root, BufferRole::kSend, ch.off), {R(root, BufferRole::kRecv, ch.off)}, ch.len, {});
    if (m == 1) continue;
    if (sp.algorithm == Algorithm::kDirect || sp.algorithm == Algorithm::kNvls) {
      std::vector<Region> dsts;
      for (int i = 0; i < m; ++i)
        if (i != root) dsts.push_back(R(i, BufferRole::kRecv, ch.off));
      b.copy(R(root, BufferRole::kSend, ch.off), std::move(dsts), ch.len, {}, sp.algorithm == Algorithm::kNvls);
    } else if (sp.algorithm == Algorithm::kRing) {
      int32_t prev = -1;
      for (int s = 1; s < m; ++s) {
        const int from = (root + s - 1) % m, to = (root + s) % m;
        const Region src = from == root ? R(root, BufferRole::kSend, ch.off) : R(from, BufferRole::kRecv, ch.off);
        prev = b.copy(src, {R(to, BufferRole::kRecv, ch.off)}, ch.len, {prev});
      }
    } else {  // tree
      std::vector<int32_t> fin(static_cast<size_t>(m), -1);
      std::vector<int> order = post_order(t);
      std::reverse(order.begin(), order.end());
      for (int v : order)
        for (int c2 : t.children[static_cast<size_t>(v)]) {
          const Region src = v == root ? R(root, BufferRole::kSend, ch.off) : R(v, BufferRole::kRecv, ch.off);
          fin[static_cast<size_t>(c2)] = b.copy(src, {R(c2, BufferRole::kRecv, ch.off)}, ch.len, {fin[static_cast<size_t>(v)]});
        }
    }
  }
}

void reduce(Builder& b, const ScheduleSpec& sp) {
  const int m = sp.ranks, root = sp.root;
  const int64_t k = num_chunks(sp.count, sp.chunk_elems);
  // Partial sums live in the root's recv buffer and in the other ranks' scratch.
  auto work = [&](int r, int64_t off) { return r == root ? R(r, BufferRole::kRecv, off) : R(r, BufferRole::kScratch, off); };
  if (m > 1 && sp.algorithm != Algorithm::kDirect) b.schedule().scratch_elems = sp.count;
  const Tree t = heap_tree(m, root);
  for (int64_t j = 0; j < k && (b.chunk(j), true); ++j) {
    const Span ch = chunk_of(sp.count, k, j);
    if (m == 1) {
      if (!sp.in_place[0]) b.copy(R(0, BufferRole::kSend, ch.off), {R(0, BufferRole::kRecv, ch.off)}, ch.len, {});
      continue;
    }
    if (sp.algorithm == Algorithm::kDirect) {
      std::vector<Region> srcs;
      for (int i = 0; i < m; ++i) srcs.push_back(R(i, BufferRole::kSend, ch.off));
      b.reduce(std::move(srcs), R(root, BufferRole::kRecv, ch.off), ch.len, {});
    } else if (sp.algorithm == Algorithm::kRing) {  // a chain ending at the root
      int32_t prev = -1;
      Region val = R((root + 1) % m, BufferRole::kSend, ch.off);
      for (int s = 2; s <= m; ++s) {
        const int to = (root + s) % m;
        prev = b.reduce({val, R(to, BufferRole::kSend, ch.off)}, work(to, ch.off), ch.len, {prev});
        val = work(to, ch.off);
      }
    } else {  // tree
      std::vector<int32_t> up(static_cast<size_t>(m), -1);
      for (int v : post_order(t)) {
        const auto& chn = t.children[static_cast<size_t>(v)];
        if (chn.empty()) continue;
        std::vector<Region> srcs = {R(v, BufferRole::kSend, ch.off)};
        std::vector<int32_t> deps;
        for (int c2 : chn) {
          srcs.push_back(t.children[static_cast<size_t>(c2)].empty() ? R(c2, BufferRole::kSend, ch.off) : work(c2, ch.off));
          deps.push_back(up[static_cast<size_t>(c2)]);
        }
        up[static_cast<size_t>(v)] = b.reduce(std::move(srcs), work(v, ch.off), ch.len, std::move(deps));
      }
    }
  }
}

// ---------------------------------------------------------------- all-to-all, send/recv

void all_to_all(Builder& b, const ScheduleSpec& sp) {
  const int m = sp.ranks;
  std::vector<std::vector<int64_t>> cnt = sp.counts;
  if (sp.collective == Collective::kAllToAll) cnt.assign(static_cast<size_t>(m), std::vector<int64_t>(static_cast<size_t>(m), sp.count));
  // Displacements: rank r sends block p at sdispl[r][p]; rank p receives block r at rdispl[p][r].
  std::vector<std::vector<int64_t>> sd(static_cast<size_t>(m), std::vector<int64_t>(static_cast<size_t>(m), 0)), rd = sd;
  for (int r = 0; r < m; ++r)
    for (int p = 1; p < m; ++p) {
      sd[static_cast<size_t>(r)][static_cast<size_t>(p)] = sd[static_cast<size_t>(r)][static_cast<size_t>(p - 1)] + cnt[static_cast<size_t>(r)][static_cast<size_t>(p - 1)];
      rd[static_cast<size_t>(r)][static_cast<size_t>(p)] = rd[static_cast<size_t>(r)][static_cast<size_t>(p - 1)] + cnt[static_cast<size_t>(p - 1)][static_cast<size_t>(r)];
    }
  std::vector<std::vector<int32_t>> prev(static_cast<size_t>(m));
  for (int s = 0; s < m; ++s) {
    std::vector<std::vector<int32_t>> now(static_cast<size_t>(m));
    for (int r = 0; r < m; ++r) {
      const int p = (r + s) % m;
      const int64_t n = cnt[static_cast<size_t>(r)][static_cast<size_t>(p)];
      const int64_t k = num_chunks(n, sp.chunk_elems);
      std::vector<int32_t> deps;
      if (sp.algorithm == Algorithm::kPairwise) deps = cat(prev[static_cast<size_t>(r)], prev[static_cast<size_t>(p)]);
      for (int64_t j = 0; j < k && n > 0 && (b.chunk(j), true); ++j) {
        const Span ch = chunk_of(n, k, j);
        if (ch.len == 0) continue;
        const int32_t id = b.copy(R(r, BufferRole::kSend, sd[static_cast<size_t>(r)][static_cast<size_t>(p)] + ch.off),
                                  {R(p, BufferRole::kRecv, rd[static_cast<size_t>(p)][static_cast<size_t>(r)] + ch.off)}, ch.len, deps);
        now[static_cast<size_t>(r)].push_back(id);
        now[static_cast<size_t>(p)].push_back(id);
      }
    }
    if (sp.algorithm == Algorithm::kPairwise)
      for (int r = 0; r < m; ++r)
        if (!now[static_cast<size_t>(r)].empty()) prev[static_cast<size_t>(r)] = {b.barrier(r, now[static_cast<size_t>(r)])};
  }
}

void send_recv(Builder& b, const ScheduleSpec& sp) {
  for (const SendRecvPair& pr : sp.pairs) {
    const int64_t k = num_chunks(pr.count, sp.chunk_elems);
    for (int64_t j = 0; j < k && (b.chunk(j), true); ++j) {
      const Span ch = chunk_of(pr.count, k, j);
      if (ch.len > 0) b.copy(R(pr.src, BufferRole::kSend, ch.off), {R(pr.dst, BufferRole::kRecv, ch.off)}, ch.len, {});
    }
  }
}

}  // namespace

Schedule build_schedule(const ScheduleSpec& spec) {
  ScheduleSpec sp = spec;
  if (sp.in_place.empty()) sp.in_place.assign(static_cast<size_t>(sp.ranks), false);
  sp.chunk_elems = std::max<int64_t>(1, sp.chunk_elems);
  Builder b(sp.ranks, sp.pipeline_depth, sp.channels);
  switch (sp.collective) {
    case Collective::kAllReduce:
      if (sp.count == 0) break;
      if (sp.ranks == 1) {
        allreduce_direct(b, sp, false);
        break;
      }
      switch (sp.algorithm) {
        case Algorithm::kRing: allreduce_ring(b, sp); break;
        case Algorithm::kTree: allreduce_tree(b, sp); break;
        case Algorithm::kDirect: allreduce_direct(b, sp, false); break;
        case Algorithm::kNvls: allreduce_direct(b, sp, true); break;
        case Algorithm::kHalvingDoubling: allreduce_halving_doubling(b, sp); break;
        case Algorithm::kHierarchical: allreduce_hierarchical(b, sp); break;
        default: PPU_CHECK(false, "all-reduce algorithm");
      }
      break;
    case Collective::kReduceScatter: if (sp.count > 0) reduce_scatter(b, sp); break;
    case Collective::kAllGather: if (sp.count > 0) all_gather(b, sp); break;
    case Collective::kBroadcast: if (sp.count > 0) broadcast(b, sp); break;
    case Collective::kReduce: if (sp.count > 0) reduce(b, sp); break;
    case Collective::kAllToAll:
    case Collective::kAllToAllV: all_to_all(b, sp); break;
    case Collective::kSendRecv: send_recv(b, sp); break;
    default: PPU_CHECK(false, "collective");
  }
  return b.take();
}

std::optional<std::string> unsupported(Collective c, Algorithm a, const Fabric& fabric, const std::vector<int>& groups) {
  using A = Algorithm;
  auto in = [&](std::initializer_list<A> l) { return std::find(l.begin(), l.end(), a) != l.end(); };
  bool ok = false;
  switch (c) {
    case Collective::kAllReduce: ok = in({A::kRing, A::kTree, A::kDirect, A::kHalvingDoubling, A::kNvls, A::kHierarchical}); break;
    case Collective::kReduceScatter: ok = in({A::kRing, A::kDirect, A::kNvls}); break;
    case Collective::kAllGather: ok = in({A::kRing, A::kDirect, A::kNvls}); break;
    case Collective::kBroadcast: ok = in({A::kRing, A::kTree, A::kDirect, A::kNvls}); break;
    case Collective::kReduce: ok = in({A::kRing, A::kTree, A::kDirect}); break;
    case Collective::kAllToAll:
    case Collective::kAllToAllV: ok = in({A::kDirect, A::kPairwise}); break;
    case Collective::kSendRecv: ok = in({A::kDirect}); break;
    default: break;
  }
  if (!ok) return fmt::format("{} has no '{}' algorithm", collective_name(c), algorithm_name(a));
  // NVLS is one switch feature (NVLink SHARP, NVSwitch generation 3: H100 onwards): the switch
  // both reduces and multicasts. A switch without it (A100's generation 2) does neither, so
  // all-gather and broadcast need it as much as the reductions.
  if (a == A::kNvls && (!fabric.has_switch() || !fabric.has_switch_reduction()))
    return fmt::format("'nvls' needs a switch that reduces and multicasts (NVLink SHARP; node '{}' has none)",
                       fabric.node().name);
  if (a == A::kHierarchical) {
    std::map<int, int> sizes;
    for (int g : groups) ++sizes[g];
    if (sizes.size() < 2) return fmt::format("'hierarchical' needs ranks in at least two groups (meshes or PCIe switches)");
    for (auto& [g, n] : sizes)
      if (n != sizes.begin()->second) return std::string("'hierarchical' needs the same number of ranks in every group");
    for (size_t r = 1; r < groups.size(); ++r)
      if (groups[r] < groups[r - 1]) return std::string("'hierarchical' needs ranks ordered by group");
  }
  return std::nullopt;
}

}  // namespace ppu::ccl
