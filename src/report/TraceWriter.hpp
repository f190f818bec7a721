// TraceWriter: Chrome/Perfetto trace JSON (the "Trace Event Format"), openable in ui.perfetto.dev
// or chrome://tracing.
//
//   TraceWriter w;
//   w.name_process(1, "zhenwu-810e: cores");
//   w.name_thread(1, 7, "core 1 matrix");
//   w.slice(1, 7, "mma", start_s, dur_s, {{"block", 3}});
//   w.counter(2, "HBM GB/s", t_s, 1834.0);
//   w.write_file("gemm.json");
//
// Times are simulated seconds; the file holds microseconds as the format requires.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace ppu {

class TraceWriter {
 public:
  void name_process(int pid, const std::string& name);
  void name_thread(int pid, int tid, const std::string& name);
  void slice(int pid, int tid, const std::string& name, double start_s, double dur_s,
             nlohmann::json args = nlohmann::json::object());
  void counter(int pid, const std::string& name, double t_s, double value);
  size_t size() const { return events_.size(); }
  nlohmann::json to_json() const;
  // Throws UserError naming the path if it cannot be written.
  void write_file(const std::string& path) const;

 private:
  nlohmann::json events_ = nlohmann::json::array();
};

}  // namespace ppu
