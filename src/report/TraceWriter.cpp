#include "report/TraceWriter.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "arch/Error.hpp"

namespace ppu {

void TraceWriter::name_process(int pid, const std::string& name) {
  events_.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", pid}, {"args", {{"name", name}}}});
}

void TraceWriter::name_thread(int pid, int tid, const std::string& name) {
  events_.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", pid}, {"tid", tid}, {"args", {{"name", name}}}});
  events_.push_back(
      {{"name", "thread_sort_index"}, {"ph", "M"}, {"pid", pid}, {"tid", tid}, {"args", {{"sort_index", tid}}}});
}

void TraceWriter::slice(int pid, int tid, const std::string& name, double start_s, double dur_s, nlohmann::json args) {
  events_.push_back({{"name", name},
                     {"ph", "X"},
                     {"pid", pid},
                     {"tid", tid},
                     {"ts", start_s * 1e6},
                     {"dur", dur_s * 1e6},
                     {"args", std::move(args)}});
}

void TraceWriter::counter(int pid, const std::string& name, double t_s, double value) {
  events_.push_back({{"name", name}, {"ph", "C"}, {"pid", pid}, {"ts", t_s * 1e6}, {"args", {{"value", value}}}});
}

nlohmann::json TraceWriter::to_json() const {
  return {{"traceEvents", events_}, {"displayTimeUnit", "ns"}};
}

void TraceWriter::write_file(const std::string& path) const {
  std::ofstream out(path);
  if (!out) throw UserError(fmt::format("{}: cannot write trace file ({})", path, std::strerror(errno)));
  out << to_json().dump() << '\n';
  if (!out) throw UserError(fmt::format("{}: error while writing trace file", path));
}

}  // namespace ppu
