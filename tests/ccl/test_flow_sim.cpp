// The flow model's properties: shared links share bandwidth, the two directions of a link do not,
// latency adds, rates are max-min fair, weights count, completions are deterministic. Times are exact
// here because the scenarios are tiny and analytic.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <map>

#include "TestUtil.hpp"
#include "ccl/Fabric.hpp"
#include "ccl/FlowSim.hpp"

namespace ppu::ccl {
namespace {

std::map<uint64_t, double> run_all(FlowSim& sim) {
  std::map<uint64_t, double> done;
  while (auto c = sim.next()) done[c->tag] = c->time_s;
  return done;
}

TEST(FlowSim, TwoFlowsOnOneLinkShareIt) {
  FlowSim sim;
  const int ab = sim.add_resource("a->b", 1e9);
  sim.start(0, {ab}, 1e6, 0, 1);
  sim.start(0, {ab}, 1e6, 0, 2);
  auto d = run_all(sim);
  EXPECT_NEAR(d[1], 2e-3, 1e-12);
  EXPECT_NEAR(d[2], 2e-3, 1e-12);
}

TEST(FlowSim, FullDuplexDirectionsDoNotShare) {
  FlowSim sim;
  const int ab = sim.add_resource("a->b", 1e9), ba = sim.add_resource("b->a", 1e9);
  sim.start(0, {ab}, 1e6, 0, 1);
  sim.start(0, {ba}, 1e6, 0, 2);
  auto d = run_all(sim);
  EXPECT_NEAR(d[1], 1e-3, 1e-12);
  EXPECT_NEAR(d[2], 1e-3, 1e-12);
}

TEST(FlowSim, LatencyAddsAndFreedBandwidthIsReused) {
  FlowSim sim;
  const int ab = sim.add_resource("a->b", 1e9);
  sim.start(0, {ab}, 1e6, 1e-6, 1);   // alone for 1 ms after its latency
  sim.start(0, {ab}, 3e6, 1e-6, 2);   // shares, then has the link to itself
  auto d = run_all(sim);
  EXPECT_NEAR(d[1], 1e-6 + 2e-3, 1e-12);
  EXPECT_NEAR(d[2], 1e-6 + 4e-3, 1e-12);
  FlowSim delay;
  delay.start(5e-6, {}, 0, 2e-6, 9);
  EXPECT_NEAR(run_all(delay)[9], 7e-6, 1e-15);
}

TEST(FlowSim, MaxMinFair) {
  // r1 (1 GB/s) carries A and B; r2 (2 GB/s) carries B and C. Max-min: A = B = 0.5, C = 1.5 GB/s.
  FlowSim sim;
  const int r1 = sim.add_resource("r1", 1e9), r2 = sim.add_resource("r2", 2e9);
  sim.start(0, {r1}, 0.5e6, 0, 1);
  sim.start(0, {r1, r2}, 0.5e6, 0, 2);
  sim.start(0, {r2}, 1.5e6, 0, 3);
  auto d = run_all(sim);
  EXPECT_NEAR(d[1], 1e-3, 1e-12);
  EXPECT_NEAR(d[2], 1e-3, 1e-12);
  EXPECT_NEAR(d[3], 1e-3, 1e-12);
}

TEST(FlowSim, WeightsCountAgainstCapacity) {
  FlowSim sim;
  const int mem = sim.add_resource("hbm", 3e9);
  sim.start_weighted(0, {{mem, 3.0}}, 1e6, 0, 1);  // a reduction: 3 bytes of memory per byte
  EXPECT_NEAR(run_all(sim)[1], 1e-3, 1e-12);
}

TEST(FlowSim, SameTimeCompletionsComeInStartOrder) {
  FlowSim sim;
  const int r = sim.add_resource("r", 1e9);
  for (uint64_t t = 10; t > 0; --t) sim.start(0, {r}, 1e3, 0, t);
  std::vector<uint64_t> order;
  while (auto c = sim.next()) order.push_back(c->tag);
  EXPECT_EQ(order, (std::vector<uint64_t>{10, 9, 8, 7, 6, 5, 4, 3, 2, 1}));
}

TEST(Fabric, PathsFollowTheTopology) {
  const Fabric mesh(load_node("zhenwu-8"));
  EXPECT_EQ(mesh.path(0, 5).size(), 1u);
  EXPECT_NE(mesh.path(0, 5), mesh.path(5, 0));  // full duplex: one resource per direction
  EXPECT_NEAR(mesh.path_bandwidth(0, 5), 50e9 * mesh.node().link_efficiency.value, 1);
  const Fabric sw(load_node("h100-dgx"));
  EXPECT_EQ(sw.path(0, 3), (std::vector<int>{sw.switch_up(0), sw.switch_down(3)}));
  EXPECT_TRUE(sw.has_switch_reduction());
  const Fabric two(load_node("zhenwu-16"));
  EXPECT_EQ(two.path(0, 7).size(), 1u);        // inside a mesh: one ICN link
  EXPECT_EQ(two.path(0, 8).size(), 4u);        // across: chip -> PCIe switch -> host -> PCIe switch -> chip
  EXPECT_GT(two.path_latency_s(0, 8), two.path_latency_s(0, 7));
  const Fabric pcie(load_node("zhenwu-8-pcie"));
  EXPECT_EQ(pcie.path(0, 1).size(), 2u);       // under one PCIe switch
  EXPECT_EQ(pcie.path(0, 4).size(), 4u);       // through the host
}

// Issue 17, part 5: a flow that can never finish, or a node whose rates or latencies would leave
// flows unable to finish, is a UserError naming the resource or field - not an abort or a hang.
TEST(FlowSim, AFlowThatCanNeverFinishNamesItsResource) {
  FlowSim sim;
  const int r = sim.add_resource("c0->c1", 1e-300);  // normal, but 1e10 bytes / 1e-300 B/s overflows
  sim.start(0, {r}, 1e10, 0, 1);
  EXPECT_EQ(ppu::test::error_message([&] { sim.next(); }),
            "a flow over resource 'c0->c1' (1e-300 B/s) can never finish: 1e+10 bytes left at 1e-300 B/s take longer "
            "than a double can count; the resource's bandwidth is too small");
}

TEST(Fabric, ZeroDenormalOrNonFiniteRatesAndLatenciesNameTheField) {
  auto error_with = [](const char* name, const std::function<void(NodeSpec&)>& edit) {
    NodeSpec node = load_node(name);
    edit(node);
    return ppu::test::error_message([&] { Fabric f(node); });
  };
  EXPECT_EQ(error_with("zhenwu-8", [](NodeSpec& n) { n.link_bandwidth.value = 0; }),
            "node 'zhenwu-8': resource 'c0->c1' would move 0 B/s (fields 'link_bandwidth' x 'link_efficiency'); a "
            "collective over it could never finish: the rate must be positive and finite");
  EXPECT_EQ(error_with("h100-dgx", [](NodeSpec& n) { n.switch_reduction_bandwidth.value = 1e-310; }),
            "node 'h100-dgx': resource 'nvls' would move 1e-310 B/s (field 'switch_reduction_bandwidth'); a collective "
            "over it could never finish: the rate must be positive and finite");
  EXPECT_EQ(error_with("zhenwu-8", [](NodeSpec& n) { n.chip.hbm_read_efficiency.value = NAN; }),
            "node 'zhenwu-8': resource 'hbm c0' would move nan B/s (chip fields 'hbm_bandwidth' x "
            "'hbm_read_efficiency'); a collective over it could never finish: the rate must be positive and finite");
  EXPECT_EQ(error_with("zhenwu-8", [](NodeSpec& n) { n.step_latency.value = INFINITY; }),
            "node 'zhenwu-8': field 'step_latency' is inf s; the collective simulation needs a finite, non-negative "
            "latency");
  EXPECT_EQ(error_with("zhenwu-8", [](NodeSpec& n) { n.link_latency.value = -1e-6; }),
            "node 'zhenwu-8': field 'link_latency' is -1e-06 s; the collective simulation needs a finite, "
            "non-negative latency");
}

}  // namespace
}  // namespace ppu::ccl
