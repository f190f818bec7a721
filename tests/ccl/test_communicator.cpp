// The communicator as a user sees it: per-rank calls from one host thread per rank, clear errors for
// every kind of bad input (never a hang), streams and records, the selector, traces, and timing
// properties (not exact simulated times).
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <thread>

#include "CclTestUtil.hpp"
#include "TestUtil.hpp"
#include "report/TraceWriter.hpp"

namespace ppu::ccl {
namespace {

using ppu::test::expect_error;
using test::Rig;

std::vector<Buffer> alloc_all(Rig& rig, DType t, int64_t n, const char* name = "x") {
  std::vector<Buffer> out;
  for (int r = 0; r < rig.size(); ++r) out.push_back(rig.dev(r).alloc(t, n, name));
  return out;
}

TEST(Communicator, OneHostThreadPerRank) {
  Rig rig("zhenwu-8", 8);
  auto bufs = alloc_all(rig, DType::kF32, 1000);
  for (int r = 0; r < 8; ++r) rig.dev(r).upload(bufs[static_cast<size_t>(r)], std::vector<float>(1000, static_cast<float>(r + 1)));
  std::vector<std::thread> threads;
  std::vector<CollectiveResult> results(8);
  for (int r = 0; r < 8; ++r)
    threads.emplace_back([&, r] { results[static_cast<size_t>(r)] = rig.comm->all_reduce(r, bufs[static_cast<size_t>(r)], bufs[static_cast<size_t>(r)]); });
  for (auto& t : threads) t.join();
  for (int r = 0; r < 8; ++r) {
    EXPECT_EQ(rig.dev(r).download(bufs[static_cast<size_t>(r)]), std::vector<float>(1000, 36.0f));
    EXPECT_EQ(results[static_cast<size_t>(r)].time_s, results[0].time_s);
  }
}

TEST(Communicator, RankThatNeverJoinsTimesOutNamingIt) {
  Rig rig("zhenwu-8", 4, {}, ExecMode::kFunctional, 256, 0.2);
  auto bufs = alloc_all(rig, DType::kF32, 16);
  std::vector<std::string> errors(3);
  std::vector<std::thread> threads;
  for (int r = 0; r < 3; ++r)  // rank 3 never calls
    threads.emplace_back([&, r] {
      try {
        rig.comm->all_reduce(r, bufs[static_cast<size_t>(r)], bufs[static_cast<size_t>(r)]);
      } catch (const UserError& e) {
        errors[static_cast<size_t>(r)] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (const auto& e : errors) {
    EXPECT_NE(e.find("rank(s) 3 of 4 did not join within 0.2 s"), std::string::npos) << e;
    EXPECT_NE(e.find("joined: 0, 1, 2"), std::string::npos) << e;
  }
  // The communicator is usable afterwards.
  std::vector<std::thread> again;
  for (int r = 0; r < 4; ++r)
    again.emplace_back([&, r] { rig.comm->all_reduce(r, bufs[static_cast<size_t>(r)], bufs[static_cast<size_t>(r)]); });
  for (auto& t : again) t.join();
}

TEST(Communicator, RanksCallingDifferentCollectivesFail) {
  Rig rig("zhenwu-8", 2, {}, ExecMode::kFunctional, 256, 1.0);
  auto bufs = alloc_all(rig, DType::kF32, 16);
  std::string err0, err1;
  std::thread t0([&] {
    try {
      rig.comm->all_reduce(0, bufs[0], bufs[0]);
    } catch (const UserError& e) {
      err0 = e.what();
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  try {
    rig.comm->broadcast(1, bufs[1], bufs[1]);
  } catch (const UserError& e) {
    err1 = e.what();
  }
  t0.join();
  EXPECT_NE(err1.find("rank 1 called broadcast while other ranks are in allreduce"), std::string::npos) << err1;
  EXPECT_NE(err0.find("did not join"), std::string::npos) << err0;
}

TEST(Communicator, MismatchedBuffersAreClearErrors) {
  Rig rig("zhenwu-8", 3);
  auto a = alloc_all(rig, DType::kF32, 64);
  auto b = a;
  b[2] = rig.dev(2).alloc(DType::kF32, 60, "short");
  expect_error([&] { rig.comm->all_reduce(a, b); }, {"allreduce", "rank 2's recv buffer 'short' has 60 elements", "expected 64"});
  auto c = a;
  c[1] = rig.dev(1).alloc(DType::kBF16, 64, "half");
  expect_error([&] { rig.comm->all_reduce(c, c); }, {"rank 1's send buffer 'half' is bf16", "rank 0's send buffer is fp32"});
  expect_error([&] { rig.comm->all_reduce({a[0], a[1]}, {a[0], a[1]}); }, {"2 send and 2 recv buffers given for 3 ranks"});
  expect_error([&] { rig.comm->reduce_scatter(a, a); }, {"reducescatter", "expected 192 (3 ranks x 64)"});
  expect_error([&] { rig.comm->all_to_all(a, a); }, {"not a multiple of the 3 ranks"});
  auto d = alloc_all(rig, DType::kF32, 63);
  expect_error([&] { rig.comm->all_to_all(d, d); }, {"all-to-all cannot run in place"});
  CollectiveOptions o;
  o.root = 7;
  expect_error([&] { rig.comm->broadcast(a, a, o); }, {"root 7 is not a rank", "0..2"});
  o = {};
  o.algorithm = Algorithm::kNvls;
  expect_error([&] { rig.comm->all_reduce(a, a, o); }, {"algorithm 'nvls' does not apply", "zhenwu-8", "valid here: ring"});
  o.algorithm = Algorithm::kPairwise;
  expect_error([&] { rig.comm->all_reduce(a, a, o); }, {"allreduce has no 'pairwise' algorithm"});
  o.algorithm = Algorithm::kHierarchical;
  expect_error([&] { rig.comm->all_reduce(a, a, o); }, {"'hierarchical' needs ranks in at least two groups"});
  expect_error([&] { rig.comm->all_reduce({a[0], a[1], Buffer{}}, a); }, {"rank 2 passed no send buffer"});
  expect_error([&] { rig.comm->send_recv({{0, 1, a[0], a[1]}, {0, 2, a[0], a[2]}}); }, {"rank 0 sends twice"});
  // A100's NVSwitch neither reduces nor multicasts: no NVLS, for all-gather and broadcast either;
  // H100's does both.
  Rig a100("a100-dgx", 4, {}, ExecMode::kTimingOnly);
  auto x = alloc_all(a100, DType::kF32, 64), y = alloc_all(a100, DType::kF32, 256);
  o = {};
  o.algorithm = Algorithm::kNvls;
  expect_error([&] { a100.comm->all_gather(x, y, o); }, {"'nvls' needs a switch that reduces and multicasts", "a100-dgx"});
  expect_error([&] { a100.comm->broadcast(x, x, o); }, {"'nvls'", "a100-dgx"});
  Rig h100("h100-dgx", 4, {}, ExecMode::kTimingOnly);
  auto hx = alloc_all(h100, DType::kF32, 64), hy = alloc_all(h100, DType::kF32, 256);
  EXPECT_EQ(h100.comm->all_gather(hx, hy, o).algorithm, Algorithm::kNvls);
}

TEST(Communicator, GroupLargerThanNodeOrWrongChip) {
  const NodeSpec node = load_node("zhenwu-8");
  std::vector<std::unique_ptr<Device>> devs;
  std::vector<Device*> ptrs;
  for (int r = 0; r < 9; ++r) {
    devs.push_back(std::make_unique<Device>(node.chip, ExecMode::kTimingOnly));
    ptrs.push_back(devs.back().get());
  }
  expect_error([&] { Communicator c(node, ptrs); }, {"9 ranks do not fit node 'zhenwu-8', which has 8 chips"});
  Device h100(load_chip("h100"), ExecMode::kTimingOnly);
  expect_error([&] { Communicator c(node, {ptrs[0], &h100}); }, {"rank 1's device is a 'h100'", "'zhenwu-810e' chips"});
  CommOptions o;
  o.chips = {0, 0};
  expect_error([&] { Communicator c(node, {ptrs[0], ptrs[1]}, o); }, {"chip 0 is given to two ranks"});
  o.chips = {0, 8};
  expect_error([&] { Communicator c(node, {ptrs[0], ptrs[1]}, o); }, {"rank 1 placed on chip 8", "chips 0..7"});
  expect_error([&] { Communicator c(node, {}); }, {"no devices"});
}

TEST(Communicator, StartsWhenEveryStreamIsReadyAndAdvancesEach) {
  Rig rig("zhenwu-8", 4, {}, ExecMode::kTimingOnly, 1 << 20);
  auto bufs = alloc_all(rig, DType::kF32, 1 << 20);
  rig.dev(2).copy_to_device_timed(bufs[2]);  // rank 2 is busy first
  const double busy = rig.dev(2).default_stream().ready_s;
  const CollectiveResult r = rig.comm->all_reduce(bufs, bufs);
  EXPECT_DOUBLE_EQ(r.start_s, busy);
  for (int k = 0; k < 4; ++k) {
    EXPECT_GT(rig.dev(k).default_stream().ready_s, busy);
    const OpRecord& rec = rig.dev(k).records().back();
    EXPECT_EQ(rec.kind, OpKind::kCollective);
    EXPECT_DOUBLE_EQ(rec.start_s, busy);
    EXPECT_NE(rec.name.find("allreduce"), std::string::npos);
  }
  // Another stream of the same device is not held up.
  Stream& side = rig.dev(0).create_stream("side");
  EXPECT_EQ(side.ready_s, 0);
}

TEST(Communicator, TimeGrowsWithSizeAndStaysUnderTheLinks) {
  Rig rig("h100-dgx", 8, {}, ExecMode::kTimingOnly, 4 << 20);
  double prev = 0;
  for (int64_t mb : {1, 8, 64, 512}) {
    auto b = alloc_all(rig, DType::kF32, mb << 18);
    const CollectiveResult r = rig.comm->all_reduce(b, b);
    EXPECT_GT(r.time_s, prev);
    prev = r.time_s;
    // In-switch reduction: algbw can reach the switch's reduction rate, never more.
    EXPECT_LE(r.algbw_bytes_per_s, rig.node.switch_reduction_bandwidth.value * 1.001);
    for (int k = 0; k < 8; ++k) rig.dev(k).free(b[static_cast<size_t>(k)]);
  }
}

TEST(Communicator, SelectorUsesNodeFeaturesAndCanBeOverridden) {
  Rig h100("h100-dgx", 8, {}, ExecMode::kTimingOnly, 4 << 20);
  auto s = h100.comm->select(Collective::kAllReduce, int64_t{1} << 28, DType::kF32);
  EXPECT_EQ(s.algorithm, Algorithm::kNvls);
  EXPECT_NE(s.reason.find("ring/simple"), std::string::npos) << s.reason;
  Rig a100("a100-dgx", 8, {}, ExecMode::kTimingOnly, 4 << 20);
  EXPECT_EQ(a100.comm->select(Collective::kAllReduce, int64_t{1} << 28, DType::kF32).algorithm, Algorithm::kRing);
  CollectiveOptions o;
  o.algorithm = Algorithm::kTree;
  auto b = alloc_all(a100, DType::kF32, 1 << 20);
  const CollectiveResult r = a100.comm->all_reduce(b, b, o);
  EXPECT_EQ(r.algorithm, Algorithm::kTree);
  EXPECT_EQ(r.reason, "fastest simulated on a100-dgx: " + r.reason.substr(r.reason.find(": ") + 2));
  Rig mesh("zhenwu-8", 8, {}, ExecMode::kTimingOnly, 1 << 20);
  const auto m = mesh.comm->select(Collective::kAllReduce, int64_t{1} << 26, DType::kBF16);
  EXPECT_NE(m.reason.find("direct"), std::string::npos);  // meshes consider direct
}

TEST(Communicator, TraceHasChipLanesAndLinkLanes) {
  Rig rig("zhenwu-8", 3, {}, ExecMode::kTimingOnly, 1 << 20);
  rig.comm->set_trace(true);
  auto b = alloc_all(rig, DType::kF32, 1 << 16);
  rig.comm->all_reduce(b, b);
  TraceWriter w;
  rig.comm->write_trace(w);
  const std::string j = w.to_json().dump();
  EXPECT_NE(j.find("rank 2 chip 2"), std::string::npos);
  EXPECT_NE(j.find("collectives (chip-to-chip links)"), std::string::npos);
  EXPECT_NE(j.find("c0->c1"), std::string::npos);
  EXPECT_NE(j.find("links (one lane per direction"), std::string::npos);
}

// An all-to-all moves many transfers over each link at once; its trace still has one lane per link
// direction (a lane per link that carried anything, never more than the node has), no two slices of a
// lane overlap, and slices are named by collective and ranks.
TEST(Communicator, AllToAllTraceHasOneLanePerLinkDirection) {
  for (const char* node : {"h100-dgx", "zhenwu-8"}) {
    Rig rig(node, 8, {}, ExecMode::kTimingOnly, 1 << 20);
    rig.comm->set_trace(true);
    auto s = alloc_all(rig, DType::kF32, 8 << 18, "send"), r = alloc_all(rig, DType::kF32, 8 << 18, "recv");
    for (int i = 0; i < 2; ++i) rig.comm->all_to_all(s, r);  // two calls: lanes are reused
    TraceWriter w;
    rig.comm->write_trace(w);
    int link_directions = 0;
    for (const auto& res : rig.comm->fabric().resources()) link_directions += res.name.rfind("hbm ", 0) != 0;
    std::map<int, std::string> lane_names;
    std::map<int, std::vector<std::pair<double, double>>> lanes;
    std::set<std::string> names;
    const nlohmann::json trace = w.to_json();
    for (const auto& e : trace.at("traceEvents")) {
      if (e.value("pid", 0) != 5) continue;
      if (e.value("name", "") == "thread_name") lane_names[e.at("tid").get<int>()] = e.at("args").at("name");
      if (e.value("ph", "") != "X") continue;
      lanes[e.at("tid").get<int>()].push_back({e.at("ts").get<double>(), e.at("ts").get<double>() + e.at("dur").get<double>()});
      names.insert(e.at("name").get<std::string>());
    }
    EXPECT_GT(lanes.size(), 0u) << node;
    EXPECT_LE(lanes.size(), static_cast<size_t>(link_directions)) << node;
    EXPECT_EQ(lane_names.size(), lanes.size()) << node;
    std::set<std::string> distinct;
    for (const auto& [tid, name] : lane_names) {
      distinct.insert(name);
      EXPECT_EQ(name.find("hbm"), std::string::npos) << name;  // links only
    }
    EXPECT_EQ(distinct.size(), lane_names.size()) << node;  // no "c0->sw #2"
    for (auto& [tid, spans] : lanes) {
      std::sort(spans.begin(), spans.end());
      for (size_t i = 1; i < spans.size(); ++i)
        EXPECT_LE(spans[i - 1].second, spans[i].first + 1e-9) << node << " lane " << lane_names[tid];
    }
    if (std::string(node) == "zhenwu-8") {
      EXPECT_EQ(lanes.size(), 56u);  // every ordered pair's link carries its pair's block
      EXPECT_TRUE(names.count("alltoall 3->5")) << *names.begin();
    } else {
      EXPECT_EQ(lanes.size(), 16u);  // each chip's port up and down
      EXPECT_TRUE(names.count("alltoall 3->0-2,4-7") || names.count("alltoall 3->5")) << *names.begin();
    }
  }
}

TEST(Communicator, DeterministicTimes) {
  double t[2];
  for (int i = 0; i < 2; ++i) {
    Rig rig("zhenwu-16", 16, {}, ExecMode::kTimingOnly, 1 << 20);
    auto b = alloc_all(rig, DType::kBF16, 3 << 20);
    t[i] = rig.comm->all_reduce(b, b).time_s;
  }
  EXPECT_EQ(t[0], t[1]);
}

}  // namespace
}  // namespace ppu::ccl

namespace ppu::ccl {
namespace {

// A collective occupies the links, not the compute engine: a kernel on another stream runs at the
// same time (as NCCL kernels on a communication stream overlap compute), while work on the same
// stream waits for it.
TEST(Communicator, CollectivesOverlapKernelsOnOtherStreams) {
  Rig rig("zhenwu-8", 2, {}, ExecMode::kTimingOnly, 1 << 20);
  auto bufs = alloc_all(rig, DType::kF32, int64_t{1} << 24);
  Kernel k;  // matrix work long enough to span the all-reduce
  k.name = "compute";
  k.grid = 4 * rig.dev(0).chip().num_cores();
  k.build = [](int64_t, TileProgram& p) {
    const auto a = p.alloc(DType::kBF16, 128, 64, "a");
    const auto b = p.alloc(DType::kBF16, 64, 128, "b");
    const auto c = p.alloc(DType::kF32, 128, 128, "c");
    for (int i = 0; i < 2000; ++i) p.mma(c, a, b, 128, 128, 64);
  };
  std::vector<Stream*> comm_streams;
  for (int r = 0; r < 2; ++r) {
    rig.dev(r).launch(k);  // default stream
    comm_streams.push_back(&rig.dev(r).create_stream("comm"));
  }
  const CollectiveResult res = rig.comm->all_reduce(bufs, bufs, {}, comm_streams);
  const auto& recs = rig.dev(0).records();
  const OpRecord* kern = nullptr;
  const OpRecord* coll = nullptr;
  for (const auto& r : recs) {
    if (r.kind == OpKind::kKernel) kern = &r;
    if (r.kind == OpKind::kCollective) coll = &r;
  }
  ASSERT_TRUE(kern && coll);
  EXPECT_LT(coll->start_s, kern->end_s) << "the all-reduce starts while the kernel runs";
  EXPECT_GT(kern->end_s - kern->start_s, res.time_s) << "the kernel is long enough for the check to mean something";
  // On the kernel's own stream, the collective waits for it.
  auto same = alloc_all(rig, DType::kF32, int64_t{1} << 20, "y");
  for (int r = 0; r < 2; ++r) rig.dev(r).launch(k);
  rig.comm->all_reduce(same, same);
  const OpRecord& last = rig.dev(0).records().back();
  ASSERT_EQ(last.kind, OpKind::kCollective);
  EXPECT_GE(last.start_s, rig.dev(0).records()[rig.dev(0).records().size() - 2].end_s);
}

}  // namespace
}  // namespace ppu::ccl

namespace ppu::ccl {
namespace {

// Inside captured graphs (every rank's device in one, past its first kernel) a collective's kernel is
// a graph node: its time shrinks by the chip's launch_latency - graph_node_latency, and only then.
TEST(Communicator, InsideCapturedGraphsACollectiveLaunchesAsAGraphNode) {
  Kernel k;
  k.name = "tiny";
  k.grid = 1;
  k.build = [](int64_t, TileProgram& p) {
    const auto a = p.alloc(DType::kBF16, 16, 16, "a");
    const auto c = p.alloc(DType::kF32, 16, 16, "c");
    p.mma(c, a, a, 16, 16, 16);
  };
  auto time_with = [&](int graphs) {
    Rig rig("h100-dgx", 2, {}, ExecMode::kTimingOnly, 1 << 20);
    auto bufs = alloc_all(rig, DType::kBF16, 4096);
    for (int r = 0; r < graphs; ++r) rig.dev(r).begin_graph();
    for (int r = 0; r < 2; ++r) rig.dev(r).launch(k);
    return rig.comm->all_reduce(bufs, bufs).time_s;
  };
  const ChipSpec chip = load_node("h100-dgx").chip;
  const double saving = chip.launch_latency.value - chip.graph_node_latency_value();
  const double plain = time_with(0);
  ASSERT_GT(plain, saving);
  EXPECT_NEAR(time_with(2), plain - saving, 1e-15);
  EXPECT_EQ(time_with(1), plain) << "one rank outside a graph launches the collective on its own";
}

// Issue 17, part 5: a collective whose simulation would keep the host busy for minutes (64 KiB chunks
// on 64 channels, 16 deep, over 1 GiB: about 3e9 flow updates) is refused before it is timed, naming
// the node fields and the limit; the same node simulates a small message as usual.
TEST(Communicator, ASimulationTooLargeToTimeIsRefusedBeforeItRuns) {
  NodeSpec node = load_node("zhenwu-8");
  node.name = "slow-8";
  node.chunk_size.value = 64 << 10;
  node.channels.value = 64;
  node.pipeline_depth.value = 16;
  std::vector<std::unique_ptr<Device>> devs;
  std::vector<Device*> ptrs;
  for (int r = 0; r < 8; ++r) {
    devs.push_back(std::make_unique<Device>(node.chip, ExecMode::kTimingOnly, 1));
    ptrs.push_back(devs.back().get());
  }
  Communicator comm(node, ptrs, CommOptions{});
  std::vector<Buffer> big, small;
  for (Device* d : ptrs) {
    big.push_back(d->alloc(DType::kF32, int64_t{1} << 28, "big"));  // 1 GiB
    small.push_back(d->alloc(DType::kF32, int64_t{1} << 18, "small"));  // 1 MiB
  }
  // The selector checks every candidate (at the size it would simulate, scaled to the message) first.
  EXPECT_EQ(ppu::test::error_message([&] { comm.all_reduce(big, big); }),
            "allreduce of 1.074 GB on node 'slow-8' (ring): simulating it means 344064 transfers with up to 8192 in "
            "flight (2.82e+09 flow updates), beyond the limit of 1e+09 (about 10 s of host time); raise the node's "
            "chunk_size (65.54 KB), lower its channels (64) or pipeline_depth (16), or use a smaller message");
  // An algorithm given by name skips the selector; the schedule itself is checked before it is timed.
  CollectiveOptions direct;
  direct.algorithm = Algorithm::kDirect;
  direct.protocol = Protocol::kSimple;
  EXPECT_EQ(ppu::test::error_message([&] { comm.all_reduce(big, big, direct); }),
            "allreduce of 1.074 GB on node 'slow-8' (direct): simulating it means 245760 transfers with up to 14336 "
            "in flight (3.52e+09 flow updates), beyond the limit of 1e+09 (about 10 s of host time); raise the "
            "node's chunk_size (65.54 KB), lower its channels (64) or pipeline_depth (16), or use a smaller message");
  EXPECT_GT(comm.all_reduce(small, small).time_s, 0.0);
}

}  // namespace
}  // namespace ppu::ccl
