// Shared helpers of the collective tests: a node of emulated devices with a communicator.
#pragma once

#include <memory>
#include <vector>

#include "ccl/Communicator.hpp"

namespace ppu::ccl::test {

struct Rig {
  NodeSpec node;
  std::vector<std::unique_ptr<Device>> devs;
  std::unique_ptr<Communicator> comm;
  // `ranks` devices on `node_name` (on chips `chips`, default 0..ranks-1). A small chunk size makes
  // even small buffers travel as many pipelined chunks.
  Rig(const std::string& node_name, int ranks, std::vector<int> chips = {}, ExecMode mode = ExecMode::kFunctional,
      double chunk_bytes = 256, double timeout_s = 5.0)
      : node(load_node(node_name)) {
    node.chunk_size.value = chunk_bytes;
    std::vector<Device*> ptrs;
    for (int r = 0; r < ranks; ++r) {
      devs.push_back(std::make_unique<Device>(node.chip, mode, 1));
      ptrs.push_back(devs.back().get());
    }
    CommOptions o;
    o.chips = std::move(chips);
    o.host_threads = 2;
    o.rendezvous_timeout_s = timeout_s;
    comm = std::make_unique<Communicator>(node, ptrs, o);
  }
  int size() const { return static_cast<int>(devs.size()); }
  Device& dev(int r) { return *devs[static_cast<size_t>(r)]; }
};

}  // namespace ppu::ccl::test
