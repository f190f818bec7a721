// Tests of runtime/Device: memory accounting and out-of-memory events, timing-only capacity,
// argument errors, host-link copy times, stream/event ordering on the simulated clock, the record
// of operations, captured-graph launches, and the Perfetto trace. Times are checked against the documented formulas and
// orderings (copy = host_link_latency + bytes / host_link_bandwidth; one engine per direction and
// one for kernels), never against hard-coded numbers.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "TestUtil.hpp"
#include "kernels/Elementwise.hpp"
#include "arch/ChipSpec.hpp"
#include "report/TraceWriter.hpp"
#include "runtime/Device.hpp"

namespace ppu {
namespace {

using json = nlohmann::json;

const ChipSpec& h100() {
  static const ChipSpec c = load_chip("h100");
  return c;
}

constexpr int kTile = 256;

// y = s * x over flat tiles of kTile elements, computed in fp32 (x and y of any dtype, same numel).
Kernel scale_kernel(const Buffer& x, const Buffer& y, float s, const std::string& name = "scale") {
  const int64_t n = x.numel;
  Kernel k;
  k.name = name;
  k.grid = (n + kTile - 1) / kTile;
  k.args = {x.arg(), y.arg()};
  k.build = [n, s](int64_t b, TileProgram& p) {
    const int cols = static_cast<int>(std::min<int64_t>(kTile, n - b * kTile));
    const auto t = p.alloc(DType::kF32, 1, kTile, "t");
    p.load(t, TileRegion{0, b * kTile, kTile, 1, cols});
    p.unary(UnaryOp::kScale, t, t, 1, cols, s);
    p.store(TileRegion{1, b * kTile, kTile, 1, cols}, t);
  };
  return k;
}

double copy_time(const ChipSpec& c, double bytes) {
  return c.host_link_latency.value + bytes / c.host_link_bandwidth.value;
}

bool overlaps(const OpRecord& a, const OpRecord& b) { return a.start_s < b.end_s && b.start_s < a.end_s; }

// ---------------------------------------------------------------------------------------------
// Memory

TEST(DeviceMemory, AllocFreeAccounting) {
  Device dev(h100(), ExecMode::kFunctional, 2);
  EXPECT_EQ(dev.capacity_bytes(), static_cast<int64_t>(h100().hbm_bytes()));
  EXPECT_EQ(dev.bytes_in_use(), 0);
  Buffer a = dev.alloc(DType::kBF16, 1000, "a");
  Buffer b = dev.alloc(DType::kF32, 10, "b");
  Buffer c = dev.alloc(DType::kF8E5M2, 7, "c");
  EXPECT_EQ(a.bytes, 2000);
  EXPECT_EQ(b.bytes, 40);
  EXPECT_EQ(c.bytes, 7);
  EXPECT_EQ(a.numel, 1000);
  EXPECT_EQ(a.dtype, DType::kBF16);
  EXPECT_EQ(a.name, "a");
  EXPECT_TRUE(a.valid());
  EXPECT_NE(a.data, nullptr) << "functional buffers have host data";
  EXPECT_EQ(dev.bytes_in_use(), 2047);
  EXPECT_EQ(dev.peak_bytes_in_use(), 2047);
  // Simulated address ranges are disjoint.
  const std::vector<Buffer> all = {a, b, c};
  for (size_t i = 0; i < all.size(); ++i)
    for (size_t j = i + 1; j < all.size(); ++j)
      EXPECT_TRUE(all[i].addr + all[i].bytes <= all[j].addr || all[j].addr + all[j].bytes <= all[i].addr)
          << all[i].name << " and " << all[j].name << " overlap";
  // TensorArg mirrors the buffer.
  const TensorArg arg = a.arg();
  EXPECT_EQ(arg.dtype, a.dtype);
  EXPECT_EQ(arg.numel, a.numel);
  EXPECT_EQ(arg.data, a.data);
  EXPECT_EQ(arg.device_addr, a.addr);
  dev.free(a);
  EXPECT_FALSE(a.valid()) << "free resets the handle";
  EXPECT_EQ(dev.bytes_in_use(), 47);
  EXPECT_EQ(dev.peak_bytes_in_use(), 2047) << "peak is a high-water mark";
  Buffer a_copy = all[0];
  test::expect_error([&] { dev.free(a_copy); }, {"free", "'a'", "not a live allocation"});
  Buffer none;
  test::expect_error([&] { dev.free(none); }, {"not a live allocation"});
  dev.free(b);
  dev.free(c);
  EXPECT_EQ(dev.bytes_in_use(), 0);
}

TEST(DeviceMemory, DeviceBufferFreesOnScopeExitMoveAndReset) {
  Device dev(h100(), ExecMode::kFunctional, 1);
  {
    DeviceBuffer a = dev.alloc_owned(DType::kBF16, 1000, "a");
    EXPECT_TRUE(a.valid());
    EXPECT_EQ(a->bytes, 2000);
    EXPECT_EQ(dev.bytes_in_use(), 2000);
    const Buffer& handle = a;  // usable wherever a plain handle is taken
    EXPECT_EQ(handle.name, "a");
    DeviceBuffer b = std::move(a);  // ownership moves, nothing is freed or allocated
    EXPECT_FALSE(a.valid());        // NOLINT(bugprone-use-after-move): moved-from is empty by contract
    EXPECT_EQ(dev.bytes_in_use(), 2000);
    DeviceBuffer c = dev.alloc_owned(DType::kF32, 10, "c");
    EXPECT_EQ(dev.bytes_in_use(), 2040);
    c = std::move(b);  // c's own memory is freed, b's moves in
    EXPECT_EQ(dev.bytes_in_use(), 2000);
    EXPECT_EQ(c->name, "a");
    c.reset();
    EXPECT_EQ(dev.bytes_in_use(), 0);
    c.reset();  // resetting an empty buffer is a no-op
    DeviceBuffer d = dev.alloc_owned(DType::kF32, 4, "d");
    Buffer copy = d;
    dev.free(copy);  // freed through a copied handle: the owner's later free must not count twice
    EXPECT_EQ(dev.bytes_in_use(), 0);
  }
  EXPECT_EQ(dev.bytes_in_use(), 0);
  // An exception between allocations leaves the accounting exact: what was allocated before it is
  // freed as the stack unwinds.
  Device small(h100(), ExecMode::kTimingOnly);
  const int64_t cap = small.capacity_bytes();
  EXPECT_THROW(
      {
        DeviceBuffer x = small.alloc_owned(DType::kBF16, cap / 4, "x");
        DeviceBuffer y = small.alloc_owned(DType::kBF16, cap / 4, "y");
        DeviceBuffer z = small.alloc_owned(DType::kF32, cap / 4, "z");  // more than is left
      },
      DeviceOutOfMemory);
  EXPECT_EQ(small.bytes_in_use(), 0);
}

TEST(DeviceMemory, TryAllocReturnsNulloptPastCapacityAndChangesNothing) {
  Device dev(h100(), ExecMode::kTimingOnly);
  const int64_t cap = dev.capacity_bytes();
  ASSERT_EQ(cap % 4, 0);
  EXPECT_FALSE(dev.try_alloc(DType::kF32, cap / 4 + 1, "too_big").has_value());
  EXPECT_EQ(dev.bytes_in_use(), 0);
  EXPECT_EQ(dev.peak_bytes_in_use(), 0);
  auto whole = dev.try_alloc(DType::kBF16, cap / 2, "whole");  // exactly the capacity fits
  ASSERT_TRUE(whole.has_value());
  EXPECT_EQ(whole->data, nullptr) << "timing-only buffers have no host data";
  EXPECT_EQ(dev.bytes_in_use(), cap);
  EXPECT_FALSE(dev.try_alloc(DType::kF8E4M3, 1, "one_more").has_value());
  EXPECT_EQ(dev.bytes_in_use(), cap);
  dev.free(*whole);
  EXPECT_TRUE(dev.try_alloc(DType::kF8E4M3, 1, "one_more").has_value());
}

TEST(DeviceMemory, TimingOnlyDeviceAccountsCapacityWithoutHostMemory) {
  // The Zhenwu 810E has 96 GB: 90 GB must fit without touching host memory (a functional device
  // would need 90 GB of host RAM), and 10 GB more must not.
  const ChipSpec chip = load_chip("zhenwu-810e");
  Device dev(chip, ExecMode::kTimingOnly);
  ASSERT_EQ(dev.capacity_bytes(), int64_t{96'000'000'000});
  Buffer weights = dev.alloc(DType::kBF16, int64_t{45'000'000'000}, "weights");
  EXPECT_EQ(weights.bytes, int64_t{90'000'000'000});
  EXPECT_EQ(weights.data, nullptr);
  EXPECT_EQ(dev.bytes_in_use(), int64_t{90'000'000'000});
  try {
    (void)dev.alloc(DType::kF32, int64_t{2'500'000'000}, "kv_cache");
    ADD_FAILURE() << "10 GB more than 6 GB free must fail";
  } catch (const DeviceOutOfMemory& e) {
    EXPECT_EQ(e.requested_bytes, int64_t{10'000'000'000});
    EXPECT_EQ(e.in_use_bytes, int64_t{90'000'000'000});
    EXPECT_EQ(e.capacity_bytes, int64_t{96'000'000'000});
    const std::string msg = e.what();
    for (const char* part : {"zhenwu-810e", "'kv_cache'", "10 GB", "6 GB", "96 GB"})
      EXPECT_NE(msg.find(part), std::string::npos) << "message: " << msg << "\nmissing: " << part;
  }
  EXPECT_EQ(dev.bytes_in_use(), int64_t{90'000'000'000}) << "a failed alloc changes nothing";
  // Out of memory is an event inside the simulation, not a user error.
  EXPECT_THROW((void)dev.alloc(DType::kF32, int64_t{2'500'000'000}, "kv_cache"), SimEvent);
  dev.free(weights);
  Buffer kv = dev.alloc(DType::kF32, int64_t{2'500'000'000}, "kv_cache");
  EXPECT_EQ(dev.bytes_in_use(), int64_t{10'000'000'000});
  dev.free(kv);
}

TEST(DeviceMemory, NonPositiveNumelIsAUserError) {
  Device dev(h100(), ExecMode::kTimingOnly);
  test::expect_error([&] { (void)dev.alloc(DType::kF32, 0, "empty"); }, {"'empty'", "0 elements", "positive"});
  test::expect_error([&] { (void)dev.try_alloc(DType::kBF16, -5, "neg"); }, {"'neg'", "-5", "positive"});
  EXPECT_EQ(dev.bytes_in_use(), 0);
}

TEST(DeviceMemory, HugeElementCountsDoNotWrapAround) {
  // Regression test (bug found by this test, fixed in src/runtime/Device.cpp): try_alloc computed
  // numel * dtype_size_bytes(dtype) in int64_t before any check, so 2^62 fp32 elements wrapped to
  // 0 bytes and the "allocation" succeeded (and 2^62 + 1 bf16 elements made bytes_in_use negative).
  Device dev(h100(), ExecMode::kTimingOnly);
  EXPECT_FALSE(dev.try_alloc(DType::kF32, int64_t{1} << 62, "wraps_to_zero").has_value());
  EXPECT_FALSE(dev.try_alloc(DType::kBF16, (int64_t{1} << 62) + 1, "wraps_negative").has_value());
  EXPECT_EQ(dev.bytes_in_use(), 0);
  try {
    (void)dev.alloc(DType::kF32, int64_t{1} << 62, "huge");
    ADD_FAILURE() << "expected DeviceOutOfMemory";
  } catch (const DeviceOutOfMemory& e) {
    EXPECT_GT(e.requested_bytes, e.capacity_bytes);
    EXPECT_NE(std::string(e.what()).find("'huge'"), std::string::npos);
  }
  EXPECT_EQ(dev.bytes_in_use(), 0);
}

// ---------------------------------------------------------------------------------------------
// Copies

TEST(DeviceCopy, UploadSizeMismatch) {
  Device dev(h100(), ExecMode::kFunctional, 2);
  const Buffer b = dev.alloc(DType::kF32, 4, "buf");
  test::expect_error([&] { dev.upload(b, {1, 2, 3}); }, {"upload", "'buf'", "3 values", "4 elements"});
  test::expect_error([&] { dev.upload(b, {1, 2, 3, 4, 5}); }, {"'buf'", "5 values"});
  EXPECT_TRUE(dev.records().empty()) << "a rejected upload is not recorded";
}

TEST(DeviceCopy, UploadDownloadRoundTripRoundsToTheBufferDtype) {
  Device dev(h100(), ExecMode::kFunctional, 2);
  const auto values = test::random_values(1000, DType::kF32, 31, -100.0f, 100.0f);
  for (int ti = 0; ti < static_cast<int>(DType::kCount); ++ti) {
    const auto t = static_cast<DType>(ti);
    Buffer b = dev.alloc(t, 1000, "v");
    dev.upload(b, values);
    const auto back = dev.download(b);
    ASSERT_EQ(back.size(), values.size());
    for (size_t i = 0; i < values.size(); ++i)
      ASSERT_EQ(f32_bits(back[i]), f32_bits(round_to(t, values[i]))) << dtype_name(t) << " element " << i;
    dev.free(b);
  }
}

TEST(DeviceCopy, CopiesTakeLatencyPlusBytesOverBandwidth) {
  const ChipSpec& chip = h100();
  Device dev(chip, ExecMode::kFunctional, 2);
  const Buffer b = dev.alloc(DType::kF32, 1 << 20, "x");
  dev.upload(b, std::vector<float>(1 << 20, 1.0f));
  std::vector<float> host(1 << 20);
  dev.copy_to_host(host.data(), b);
  ASSERT_EQ(dev.records().size(), 2u);
  const OpRecord& up = dev.records()[0];
  const OpRecord& down = dev.records()[1];
  const double expect = copy_time(chip, 4.0 * (1 << 20));
  EXPECT_EQ(up.kind, OpKind::kCopyH2D);
  EXPECT_EQ(up.start_s, 0.0);
  EXPECT_NEAR(up.end_s - up.start_s, expect, 1e-12 * expect);
  EXPECT_EQ(up.bytes, 4.0 * (1 << 20));
  EXPECT_EQ(down.kind, OpKind::kCopyD2H);
  EXPECT_GE(down.start_s, up.end_s) << "same stream: in order";
  EXPECT_NEAR(down.end_s - down.start_s, expect, 1e-12 * expect);
  EXPECT_DOUBLE_EQ(dev.synchronize(), down.end_s);
  // Small copies are latency-dominated: a 4-byte copy costs at least host_link_latency.
  const Buffer one = dev.alloc(DType::kF32, 1, "one");
  dev.upload(one, {1.0f});
  EXPECT_GE(dev.records().back().end_s - dev.records().back().start_s, chip.host_link_latency.value);
}

TEST(DeviceCopy, TimingOnlyCopiesAreTimedAndDownloadsAreRejected) {
  const ChipSpec& chip = h100();
  Device dev(chip, ExecMode::kTimingOnly);
  const Buffer b = dev.alloc(DType::kBF16, 1 << 20, "w");
  dev.copy_to_device_timed(b);
  dev.upload(b, std::vector<float>(1 << 20, 0.0f));  // no data to move, but the copy is timed
  ASSERT_EQ(dev.records().size(), 2u);
  for (const auto& r : dev.records()) EXPECT_NEAR(r.end_s - r.start_s, copy_time(chip, 2.0 * (1 << 20)), 1e-15);
  test::expect_error([&] { (void)dev.download(b); }, {"'w'", "no data", "timing-only"});
}

// ---------------------------------------------------------------------------------------------
// Kernels, streams and events

TEST(DeviceLaunch, FunctionalLaunchComputesAndTimes) {
  Device dev(h100(), ExecMode::kFunctional, 2);
  const int n = 1000;  // not a multiple of the tile
  const auto xs = test::random_values(n, DType::kBF16, 41);
  const Buffer x = dev.alloc(DType::kBF16, n, "x");
  const Buffer y = dev.alloc(DType::kF32, n, "y");
  dev.upload(x, xs);
  const KernelTiming t = dev.launch(scale_kernel(x, y, -3.0f));
  const auto ys = dev.download(y);
  for (int i = 0; i < n; ++i) EXPECT_EQ(ys[static_cast<size_t>(i)], -3.0f * xs[static_cast<size_t>(i)]) << i;
  ASSERT_EQ(dev.records().size(), 3u);
  const OpRecord& k = dev.records()[1];
  EXPECT_EQ(k.kind, OpKind::kKernel);
  EXPECT_EQ(k.name, "scale");
  ASSERT_NE(k.timing, nullptr);
  EXPECT_DOUBLE_EQ(k.end_s - k.start_s, t.time_s);
  EXPECT_GE(k.start_s, dev.records()[0].end_s) << "the kernel waits for the upload on its stream";
  EXPECT_GE(dev.records()[2].start_s, k.end_s) << "the download waits for the kernel";
  EXPECT_EQ(t.blocks, (n + 255) / 256);
}

TEST(DeviceLaunch, InvalidLaunches) {
  Device dev(h100(), ExecMode::kTimingOnly);
  const Buffer x = dev.alloc(DType::kF32, 256, "x");
  Kernel k = scale_kernel(x, x, 2.0f, "bad");
  k.grid = 0;
  test::expect_error([&] { dev.launch(k); }, {"'bad'", "grid of 0 blocks", "positive"});
  k.grid = 1;
  k.build = nullptr;
  test::expect_error([&] { dev.launch(k); }, {"'bad'", "no program builder"});
  EXPECT_TRUE(dev.records().empty());
}

// ---------------------------------------------------------------------------------------------
// Captured graphs: the first kernel of a graph pays launch_latency, the others graph_node_latency.

TEST(DeviceGraph, KernelsAfterTheFirstPayTheGraphNodeLatency) {
  const ChipSpec& c = h100();
  ASSERT_TRUE(c.graph_node_latency.present);
  const double saving = c.launch_latency.value - c.graph_node_latency_value();
  ASSERT_GT(saving, 0);
  Device plain(c, ExecMode::kTimingOnly), graphed(c, ExecMode::kTimingOnly);
  const Buffer x = plain.alloc(DType::kF32, 1000, "x"), gx = graphed.alloc(DType::kF32, 1000, "x");
  std::vector<double> t_plain, t_graph;
  for (int i = 0; i < 3; ++i) t_plain.push_back(plain.launch(scale_kernel(x, x, 2.0f)).time_s);
  EXPECT_EQ(graphed.graph_launch_saving_s(), 0.0) << "no graph open";
  {
    GraphScope g(graphed);
    EXPECT_TRUE(graphed.in_graph());
    EXPECT_EQ(graphed.graph_launch_saving_s(), 0.0) << "the first kernel launches the graph";
    for (int i = 0; i < 3; ++i) t_graph.push_back(graphed.launch(scale_kernel(gx, gx, 2.0f)).time_s);
    EXPECT_DOUBLE_EQ(graphed.graph_launch_saving_s(), saving);
  }
  EXPECT_FALSE(graphed.in_graph());
  EXPECT_DOUBLE_EQ(t_graph[0], t_plain[0]);
  for (size_t i = 1; i < 3; ++i) EXPECT_NEAR(t_graph[i], t_plain[i] - saving, 1e-15);
  EXPECT_NEAR(graphed.synchronize(), plain.synchronize() - 2 * saving, 1e-15);
  // The records say the same; a kernel after the graph launches on its own again.
  EXPECT_DOUBLE_EQ(graphed.records()[1].timing->launch_s, c.graph_node_latency_value());
  EXPECT_DOUBLE_EQ(graphed.launch(scale_kernel(gx, gx, 2.0f)).time_s, t_plain[0]);
}

TEST(DeviceGraph, NumbersAreTheSameAsKernelByKernel) {
  const auto xs = test::random_values(777, DType::kF32, 5);
  std::vector<float> out[2];
  for (int graph = 0; graph < 2; ++graph) {
    Device dev(h100(), ExecMode::kFunctional, 2);
    const Buffer x = dev.alloc(DType::kF32, 777, "x"), y = dev.alloc(DType::kBF16, 777, "y");
    dev.upload(x, xs);
    {
      GraphScope g(dev, graph == 1);
      EXPECT_EQ(dev.in_graph(), graph == 1);
      dev.launch(scale_kernel(x, x, 3.0f));
      dev.launch(scale_kernel(x, y, -0.5f));
    }
    out[graph] = dev.download(y);
  }
  EXPECT_EQ(out[0], out[1]);
}

TEST(DeviceGraph, WithoutAGraphNodeLatencyNothingIsSaved) {
  ChipSpec c = h100();
  c.graph_node_latency = Quantity{};  // absent: launch_latency
  EXPECT_DOUBLE_EQ(c.graph_node_latency_value(), c.launch_latency.value);
  Device dev(c, ExecMode::kTimingOnly);
  const Buffer x = dev.alloc(DType::kF32, 256, "x");
  const double alone = dev.launch(scale_kernel(x, x, 2.0f)).time_s;
  GraphScope g(dev);
  dev.launch(scale_kernel(x, x, 2.0f));
  EXPECT_DOUBLE_EQ(dev.launch(scale_kernel(x, x, 2.0f)).time_s, alone);
}

TEST(DeviceGraph, OpeningTwiceOrClosingNoneAreErrorsAndScopesCloseOnExceptions) {
  Device dev(h100(), ExecMode::kTimingOnly);
  test::expect_error([&] { dev.end_graph(); }, {"end_graph", "h100", "no captured graph is open"});
  dev.begin_graph();
  test::expect_error([&] { dev.begin_graph(); }, {"begin_graph", "already open"});
  dev.end_graph();
  try {
    GraphScope g(dev);
    throw UserError("inside");
  } catch (const UserError&) {
  }
  EXPECT_FALSE(dev.in_graph());
}

TEST(DeviceStreams, CopyAndKernelOnDifferentStreamsOverlap) {
  Device dev(h100(), ExecMode::kFunctional, 2);
  Stream& s1 = dev.create_stream("copies");
  Stream& s2 = dev.create_stream("compute");
  EXPECT_NE(s1.id, s2.id);
  EXPECT_NE(s1.id, dev.default_stream().id);
  const Buffer big = dev.alloc(DType::kF32, 1 << 20, "big");
  const Buffer x = dev.alloc(DType::kF32, 1 << 16, "x");
  const Buffer y = dev.alloc(DType::kF32, 1 << 16, "y");
  dev.upload(big, std::vector<float>(1 << 20, 1.0f), &s1);
  dev.launch(scale_kernel(x, y, 2.0f), &s2);
  ASSERT_EQ(dev.records().size(), 2u);
  const OpRecord& copy = dev.records()[0];
  const OpRecord& kern = dev.records()[1];
  EXPECT_EQ(copy.stream, s1.id);
  EXPECT_EQ(kern.stream, s2.id);
  EXPECT_TRUE(overlaps(copy, kern)) << "h2d on one stream runs while a kernel runs on another";
  EXPECT_DOUBLE_EQ(dev.synchronize(), std::max(copy.end_s, kern.end_s));
  EXPECT_LT(dev.synchronize(), (copy.end_s - copy.start_s) + (kern.end_s - kern.start_s));
}

TEST(DeviceStreams, EachEngineRunsOneOperationAtATime) {
  Device dev(h100(), ExecMode::kTimingOnly);
  Stream& s1 = dev.create_stream("a");
  Stream& s2 = dev.create_stream("b");
  const Buffer x = dev.alloc(DType::kF32, 1 << 20, "x");
  const Buffer y = dev.alloc(DType::kF32, 1 << 20, "y");
  dev.copy_to_device_timed(x, &s1);  // 0: h2d engine
  dev.copy_to_device_timed(y, &s2);  // 1: h2d engine again, other stream
  dev.launch(scale_kernel(x, x, 2.0f, "k1"), &s1);  // 2
  dev.launch(scale_kernel(y, y, 2.0f, "k2"), &s2);  // 3
  const auto& r = dev.records();
  ASSERT_EQ(r.size(), 4u);
  EXPECT_GE(r[1].start_s, r[0].end_s) << "two host-to-device copies share one engine";
  EXPECT_GE(r[2].start_s, r[0].end_s) << "k1 follows its stream's copy";
  EXPECT_GE(r[3].start_s, r[1].end_s) << "k2 follows its stream's copy";
  EXPECT_FALSE(overlaps(r[2], r[3])) << "kernels run one at a time on the compute engine";
}

TEST(DeviceStreams, KernelsOnDifferentStreamsDoNotOverlap) {
  Device dev(h100(), ExecMode::kTimingOnly);
  Stream& s1 = dev.create_stream("a");
  Stream& s2 = dev.create_stream("b");
  const Buffer x = dev.alloc(DType::kF32, 1 << 20, "x");
  const Buffer y = dev.alloc(DType::kF32, 1 << 20, "y");
  dev.launch(scale_kernel(x, x, 2.0f, "k1"), &s1);
  dev.launch(scale_kernel(y, y, 2.0f, "k2"), &s2);
  const auto& r = dev.records();
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].start_s, 0.0);
  EXPECT_GE(r[1].start_s, r[0].end_s) << "the compute engine runs one kernel at a time, whatever the stream";
  EXPECT_DOUBLE_EQ(dev.synchronize(), r[1].end_s);
}

TEST(DeviceStreams, CopiesInOppositeDirectionsOverlap) {
  Device dev(h100(), ExecMode::kFunctional, 2);
  Stream& s1 = dev.create_stream("up");
  Stream& s2 = dev.create_stream("down");
  const Buffer a = dev.alloc(DType::kF32, 1 << 18, "a");
  const Buffer b = dev.alloc(DType::kF32, 1 << 18, "b");
  dev.upload(a, std::vector<float>(1 << 18, 1.0f), &s1);
  (void)dev.download(b, &s2);
  ASSERT_EQ(dev.records().size(), 2u);
  EXPECT_TRUE(overlaps(dev.records()[0], dev.records()[1])) << "h2d and d2h have their own engines";
}

TEST(DeviceStreams, EventsMakeAStreamWait) {
  const ChipSpec& chip = h100();
  Device dev(chip, ExecMode::kTimingOnly);
  Stream& s1 = dev.create_stream("producer");
  Stream& s2 = dev.create_stream("consumer");
  const Buffer x = dev.alloc(DType::kF32, 1 << 22, "x");
  dev.copy_to_device_timed(x, &s1);
  const Event e = dev.record(s1);
  EXPECT_DOUBLE_EQ(e.time_s, dev.records()[0].end_s);
  dev.wait(s2, e);
  dev.launch(scale_kernel(x, x, 2.0f), &s2);
  EXPECT_GE(dev.records()[1].start_s, e.time_s) << "the kernel waits for the event";
  // Waiting on an event already passed does not move a stream back.
  const double before = s2.ready_s;
  dev.wait(s2, Event{0.0});
  EXPECT_EQ(s2.ready_s, before);
  // Control: without the wait the kernel on a fresh stream would start at once.
  Device dev2(chip, ExecMode::kTimingOnly);
  Stream& t1 = dev2.create_stream("producer");
  Stream& t2 = dev2.create_stream("consumer");
  const Buffer x2 = dev2.alloc(DType::kF32, 1 << 22, "x");
  dev2.copy_to_device_timed(x2, &t1);
  dev2.launch(scale_kernel(x2, x2, 2.0f), &t2);
  EXPECT_LT(dev2.records()[1].start_s, e.time_s);
}

TEST(DeviceRecords, EveryOperationIsRecorded) {
  Device dev(h100(), ExecMode::kFunctional, 2);
  Stream& s = dev.create_stream("side");
  const Buffer x = dev.alloc(DType::kF32, 512, "x");
  const Buffer y = dev.alloc(DType::kF32, 512, "y");
  dev.upload(x, std::vector<float>(512, 1.0f));
  dev.launch(scale_kernel(x, y, 2.0f, "first"));
  dev.launch(scale_kernel(y, x, 2.0f, "second"), &s);
  std::vector<float> host(512);
  dev.copy_to_host(host.data(), x, &s);
  dev.copy_to_device(y, host.data(), &s);
  const auto& r = dev.records();
  ASSERT_EQ(r.size(), 5u);
  const OpKind kinds[] = {OpKind::kCopyH2D, OpKind::kKernel, OpKind::kKernel, OpKind::kCopyD2H, OpKind::kCopyH2D};
  const int streams[] = {0, 0, s.id, s.id, s.id};
  for (size_t i = 0; i < r.size(); ++i) {
    EXPECT_EQ(r[i].kind, kinds[i]) << i;
    EXPECT_EQ(r[i].stream, streams[i]) << i;
    EXPECT_LE(r[i].start_s, r[i].end_s) << i;
    EXPECT_EQ(r[i].timing != nullptr, r[i].kind == OpKind::kKernel) << i;
  }
  EXPECT_NE(r[0].name.find("x"), std::string::npos);
  EXPECT_EQ(r[1].name, "first");
  EXPECT_EQ(r[2].name, "second");
  EXPECT_EQ(r[3].bytes, 2048.0);
  // Ops on one stream never overlap.
  for (size_t i = 2; i + 1 < r.size(); ++i) EXPECT_GE(r[i + 1].start_s, r[i].end_s) << i;
  EXPECT_EQ(host[0], 4.0f) << "x = 2 * (2 * 1)";
  EXPECT_DOUBLE_EQ(dev.synchronize(), r.back().end_s);
}

// ---------------------------------------------------------------------------------------------
// Trace

// Events of `j` with the given phase and pid.
std::vector<json> events(const json& j, const std::string& ph, int pid) {
  std::vector<json> out;
  for (const auto& e : j.at("traceEvents"))
    if (e.at("ph") == ph && e.at("pid") == pid) out.push_back(e);
  return out;
}

TEST(DeviceTrace, SlicesForEveryRecord) {
  Device dev(h100(), ExecMode::kFunctional, 2);
  Stream& s = dev.create_stream("side");
  const Buffer x = dev.alloc(DType::kF32, 2048, "x");
  const Buffer y = dev.alloc(DType::kF32, 2048, "y");
  dev.upload(x, std::vector<float>(2048, 1.0f));
  dev.launch(scale_kernel(x, y, 2.0f), &s);
  (void)dev.download(y, &s);
  TraceWriter w;
  dev.write_trace(w);
  // The file is valid JSON: write it, read it back, parse it.
  const std::string path = test::temp_path("trace.json");
  w.write_file(path);
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  const json j = json::parse(ss.str());
  EXPECT_EQ(j, w.to_json());
  const auto slices = events(j, "X", 1);
  // Each record on its stream's lane; copies also on their engine's lane.
  EXPECT_EQ(slices.size(), dev.records().size() + 2);
  for (const auto& r : dev.records()) {
    const auto match = std::count_if(slices.begin(), slices.end(), [&](const json& e) {
      return e.at("name") == r.name && e.at("tid") == r.stream &&
             std::fabs(e.at("ts").get<double>() - r.start_s * 1e6) < 1e-6 &&
             std::fabs(e.at("dur").get<double>() - (r.end_s - r.start_s) * 1e6) < 1e-6;
    });
    EXPECT_EQ(match, 1) << "record " << r.name;
  }
  EXPECT_TRUE(events(j, "X", 2).empty()) << "no per-core lanes unless a kernel trace limit is set";
}

TEST(DeviceTrace, PerCoreLanesWithAKernelTraceLimit) {
  Device dev(h100(), ExecMode::kTimingOnly);
  dev.set_kernel_trace_limit(100'000);
  const Buffer x = dev.alloc(DType::kF32, 1 << 16, "x");
  const KernelTiming t = dev.launch(scale_kernel(x, x, 2.0f));
  ASSERT_FALSE(t.trace.empty());
  TraceWriter w;
  dev.write_trace(w);
  const json j = json::parse(w.to_json().dump());
  const auto core_slices = events(j, "X", 2);
  EXPECT_EQ(core_slices.size(), t.trace.size()) << "one slice per per-instruction event";
  std::set<std::string> lanes;
  for (const auto& e : j.at("traceEvents"))
    if (e.at("ph") == "M" && e.at("pid") == 2 && e.at("name") == "thread_name")
      lanes.insert(e.at("args").at("name").get<std::string>());
  EXPECT_TRUE(lanes.count("core 0 dma_in")) << "lanes are named by core and unit";
  EXPECT_TRUE(lanes.count("core 0 vector"));
  const double k_start = dev.records()[0].start_s, k_end = dev.records()[0].end_s;
  for (const auto& e : core_slices) {
    EXPECT_GE(e.at("ts").get<double>(), k_start * 1e6 - 1e-6);
    EXPECT_LE(e.at("ts").get<double>() + e.at("dur").get<double>(), k_end * 1e6 + 1e-6);
  }
  EXPECT_FALSE(events(j, "C", 3).empty()) << "memory bandwidth counters";
}

}  // namespace
}  // namespace ppu

namespace ppu {
namespace {

TEST(BufferView, KernelsSeeOnlyTheViewedElements) {
  Device dev(load_chip("h100"));
  Buffer big = dev.alloc(DType::kF32, 10, "big");
  dev.upload(big, std::vector<float>(10, 1.0f));
  Buffer part = big.view(3, 4);
  EXPECT_EQ(part.numel, 4);
  EXPECT_EQ(part.addr, big.addr + 12);
  Buffer src = dev.alloc(DType::kF32, 4, "src");
  dev.upload(src, {5, 6, 7, 8});
  kernels::copy(dev, src, part);
  const auto got = dev.download(big);
  const std::vector<float> want = {1, 1, 1, 5, 6, 7, 8, 1, 1, 1};
  EXPECT_EQ(got, want);
}

TEST(BufferView, RangesOutsideTheBufferAndFreeingAViewAreErrors) {
  Device dev(load_chip("h100"));
  Buffer big = dev.alloc(DType::kBF16, 10, "big");
  test::expect_error([&] { big.view(8, 3); }, {"view of 'big'", "[8, 11)", "10 elements"});
  test::expect_error([&] { big.view(-1, 2); }, {"[-1, 1)"});
  Buffer v = big.view(0, 2);
  test::expect_error([&] { dev.free(v); }, {"'big' is a view"});
}

}  // namespace
}  // namespace ppu
