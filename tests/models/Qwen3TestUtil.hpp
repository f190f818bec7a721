// Shared steps of the model tests.
#pragma once

#include <algorithm>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "arch/NodeSpec.hpp"
#include "ccl/Communicator.hpp"
#include "models/Qwen3.hpp"

namespace ppu::test {

// Prefills `prompts` as one batch, then decodes `steps` greedy tokens for every sequence (each
// continuing its own cache); the logits of the last step, [prompts.size(), vocab].
inline std::vector<float> greedy_batch(Qwen3Model& m, const std::vector<std::vector<int32_t>>& prompts, int steps) {
  ForwardResult r = m.forward_batch(prompts);
  const auto vocab = static_cast<size_t>(m.config().vocab_size);
  for (int step = 0; step < steps; ++step) {
    std::vector<std::vector<int32_t>> next;
    for (size_t b = 0; b < prompts.size(); ++b) {
      const auto row = r.logits.begin() + static_cast<std::ptrdiff_t>(b * vocab);
      next.push_back({static_cast<int32_t>(std::max_element(row, row + static_cast<std::ptrdiff_t>(vocab)) - row)});
    }
    r = m.forward_batch(next);
  }
  return r.logits;
}

// Runs body(rank, device, comm) for `ranks` ranks, each on its own functional device of `node` (one
// execution thread) and host thread, with one communicator over them; returns each rank's error
// text ("" when it finished).
inline std::vector<std::string> on_ranks(const NodeSpec& node, int ranks,
                                         const std::function<void(int, Device&, ccl::Communicator&)>& body) {
  std::vector<std::unique_ptr<Device>> devs;
  std::vector<Device*> ptrs;
  for (int r = 0; r < ranks; ++r) {
    devs.push_back(std::make_unique<Device>(node.chip, ExecMode::kFunctional, 1));
    ptrs.push_back(devs.back().get());
  }
  ccl::CommOptions co;
  co.rendezvous_timeout_s = 60;
  ccl::Communicator comm(node, ptrs, co);
  std::vector<std::string> errors(static_cast<size_t>(ranks));
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r)
    threads.emplace_back([&, r] {
      try {
        body(r, *devs[static_cast<size_t>(r)], comm);
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(r)] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  return errors;
}

}  // namespace ppu::test
