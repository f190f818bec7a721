// Fuzzes the cluster preset parser (arch/ClusterSpec parse_cluster, what `--cluster file.json` reads;
// its "node" loads a built-in node and chip): the input is the file's text. Finding: anything but a
// UserError (fuzz/FuzzInput.hpp). Seeds: presets/clusters.
#include "FuzzInput.hpp"
#include "arch/ClusterSpec.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return ppu::fuzz::run([&] { ppu::parse_cluster(ppu::fuzz::text(data, size), "fuzz-cluster.json"); });
}
