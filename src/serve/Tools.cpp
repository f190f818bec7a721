#include "serve/Tools.hpp"

#include <fmt/format.h>

#include <signal.h>
#include <string.h>

#include <cmath>
#include <iterator>
#include <limits>

#include "arch/Error.hpp"
#include "serve/MemoryStore.hpp"
#include "serve/SearchIndex.hpp"

namespace ppu::serve {

using ojson = nlohmann::ordered_json;
using nlohmann::json;

ToolSpec parse_tool_spec(std::string_view text) {
  ToolSpec spec;
  if (text.empty()) throw UserError("--tools: empty; give e.g. search=kb.sqlite,memory=mem.sqlite");
  size_t i = 0;
  while (i <= text.size()) {
    const size_t j = std::min(text.find(',', i), text.size());
    const std::string_view entry = text.substr(i, j - i);
    const size_t eq = entry.find('=');
    const std::string_view name = entry.substr(0, eq);
    const std::string file(eq == std::string_view::npos ? std::string_view() : entry.substr(eq + 1));
    if (name == "code") {
      if (eq != std::string_view::npos)
        throw UserError(fmt::format("--tools: '{}': code takes no file; write just 'code'", entry));
      if (spec.code) throw UserError("--tools: 'code' is given twice");
      spec.code = true;
      i = j + 1;
      continue;
    }
    std::string* slot = name == "search" ? &spec.search_db : name == "memory" ? &spec.memory_db : nullptr;
    if (!slot)
      throw UserError(fmt::format("--tools: '{}' is not a tool; valid: search=INDEX.sqlite (ppu index), "
                                  "memory=FILE.sqlite, code",
                                  entry));
    if (file.empty())
      throw UserError(fmt::format("--tools: '{}' needs its file: {}=FILE.sqlite", entry, name));
    if (!slot->empty()) throw UserError(fmt::format("--tools: '{}' is given twice", name));
    *slot = file;
    i = j + 1;
  }
  return spec;
}

namespace {

const char* json_type_of(const json& v) {
  if (v.is_string()) return "string";
  if (v.is_boolean()) return "boolean";
  if (v.is_number_integer()) return "integer";
  if (v.is_number()) return "number";
  if (v.is_object()) return "object";
  if (v.is_array()) return "array";
  return "null";
}

bool has_type(const json& v, std::string_view type) {
  if (type == "integer")
    return v.is_number_integer() || (v.is_number_float() && std::trunc(v.get<double>()) == v.get<double>());
  if (type == "number") return v.is_number();
  return type == json_type_of(v);
}

ojson property(const char* type, const char* description) { return {{"type", type}, {"description", description}}; }

ojson bounded(const char* description, int64_t min, int64_t max, int64_t dflt) {
  return {{"type", "integer"}, {"description", description}, {"minimum", min}, {"maximum", max}, {"default", dflt}};
}

ojson object_schema(ojson properties, std::vector<std::string> required) {
  return {{"type", "object"}, {"properties", std::move(properties)}, {"required", std::move(required)},
          {"additionalProperties", false}};
}

// An argument with the schema's default when absent.
int64_t int_arg(const ToolDef& def, const json& args, const char* key) {
  if (args.contains(key)) return static_cast<int64_t>(args.at(key).get<double>());
  return def.parameters.at("properties").at(key).at("default").get<int64_t>();
}

}  // namespace

std::string check_arguments(const ojson& schema, const json& args) {
  if (!args.is_object()) return fmt::format("the arguments must be a JSON object, not {}", json_type_of(args));
  const ojson& props = schema.at("properties");
  for (const auto& req : schema.value("required", ojson::array()))
    if (!args.contains(req.get<std::string>())) return fmt::format("missing argument '{}'", req.get<std::string>());
  for (const auto& [key, value] : args.items()) {
    if (!props.contains(key)) {
      std::string names;
      for (const auto& [k, v] : props.items()) names += (names.empty() ? "" : ", ") + k;
      return fmt::format("unknown argument '{}'; this tool takes: {}", key, names);
    }
    const ojson& p = props.at(key);
    const std::string type = p.at("type").get<std::string>();
    if (!has_type(value, type))
      return fmt::format("argument '{}' must be {} {}, not {}", key, type == "integer" ? "an" : "a", type, json_type_of(value));
    if (type == "integer") {
      const double x = value.get<double>();
      if ((p.contains("minimum") && x < p["minimum"].get<double>()) || (p.contains("maximum") && x > p["maximum"].get<double>()))
        return fmt::format("argument '{}' is {}; valid: {} to {}", key, value.dump(), p.value("minimum", ojson()).dump(),
                           p.value("maximum", ojson()).dump());
    }
  }
  return "";
}

ToolSet::ToolSet(const ToolSpec& spec) {
  if (!spec.search_db.empty()) {
    search_ = std::make_unique<SearchIndex>(SearchIndex::open(spec.search_db, SearchIndex::Mode::kOpen));
    defs_.push_back({"search",
                     "Full-text search over the indexed documents. Returns the best-matching files with a passage "
                     "around the matches, marked [like this].",
                     object_schema({{"query", property("string", "Words to look for (plain words, no operators)")},
                                    {"limit", bounded("Most results", 1, 20, 5)}},
                                   {"query"})});
  }
  if (!spec.memory_db.empty()) {
    memory_ = std::make_unique<MemoryStore>(MemoryStore::open(spec.memory_db));
    defs_.push_back({"memory_save", "Remember a fact about the user for later conversations.",
                     object_schema({{"text", property("string", "The fact, in one or two sentences")}}, {"text"})});
    defs_.push_back({"memory_recall", "Recall what was remembered about the user that matches the query, best first.",
                     object_schema({{"query", property("string", "Words to look for")},
                                    {"limit", bounded("Most memories", 1, 20, 5)}},
                                   {"query"})});
    defs_.push_back({"memory_list", "List what was remembered about the user, newest first.",
                     object_schema({{"limit", bounded("Most memories", 1, 50, 10)},
                                    {"offset", bounded("Memories to skip", 0, 1000000, 0)}},
                                   {})});
    defs_.push_back({"memory_forget", "Forget one remembered fact by its id.",
                     object_schema({{"id", property("integer", "The memory's id, as recall or list give it")}}, {"id"})});
  }
  if (spec.code) {
    sandbox_ = std::make_unique<Sandbox>(spec.sandbox);
    const SandboxLimits& l = sandbox_->config().limits;
    const auto max_s = std::max<int64_t>(1, static_cast<int64_t>(l.wall_time_s));
    defs_.push_back(
        {"code",
         fmt::format("Run a Python 3 program in a sandbox and get its exit status, stdout and stderr: print what you "
                     "want to see. No network. Its working directory (/sandbox, also /tmp) is empty at the start and "
                     "gone after the call, so nothing is kept between calls. The standard library and the system's "
                     "installed Python packages only. Limits: {} s, {} MiB of memory per process, {} processes, {} "
                     "KiB of output per stream.",
                     max_s, l.memory_bytes >> 20, l.processes, l.output_bytes >> 10),
         object_schema({{"code", property("string", "The Python 3 program")},
                        {"timeout_s", bounded("Seconds it may run before it is stopped", 1, max_s, max_s)}},
                       {"code"})});
  }
}

ToolSet::~ToolSet() = default;

ToolResult ToolSet::call(std::string_view name, const json& arguments, std::string_view user) {
  for (const ToolDef& def : defs_) {  // defs_ is fixed at construction: no lock needed to read it
    if (def.name != name) continue;
    if (const std::string why = check_arguments(def.parameters, arguments); !why.empty())
      return {fmt::format("{}: {}", name, why), true};
    try {
      if (def.name == "code") return run_code(def, arguments);  // in parallel, bounded by the pool
      std::lock_guard lk(mu_);
      return run(def, arguments, user);
    } catch (const UserError& e) {  // a locked database, a user the store refuses, ...
      return {fmt::format("{}: {}", name, e.what()), true};
    }
  }
  std::string names;
  for (const ToolDef& d : defs_) names += (names.empty() ? "" : ", ") + d.name;
  return {fmt::format("no tool named '{}'; the tools are: {}", name, names.empty() ? "(none)" : names), true};
}

namespace {

// Why the sandbox or a signal stopped the program, as the model reads it; "" when it exited by itself.
std::string stop_reason(const SandboxResult& r, const SandboxLimits& l) {
  if (r.timed_out) return fmt::format("stopped: it ran past its time limit of {:g} s", l.wall_time_s);
  if (r.stdout_truncated || r.stderr_truncated)
    return fmt::format("stopped: its {} passed {} bytes, the output limit", r.stdout_truncated ? "stdout" : "stderr",
                       l.output_bytes);
  if (r.signal == SIGXCPU) return fmt::format("stopped: it used its {} s of CPU time (SIGXCPU)", l.cpu_time_s);
  if (r.signal != 0) {
    const char* abbrev = sigabbrev_np(r.signal);
    return fmt::format("ended by signal {} (SIG{})", r.signal, abbrev ? abbrev : "?");
  }
  return "";
}

}  // namespace

ToolResult code_tool_result(const SandboxResult& r, const SandboxLimits& limits) {
  const std::string stopped = stop_reason(r, limits);
  std::string out = stopped.empty() ? fmt::format("exit status {}", r.exit_code) : stopped;
  const auto section = [&](const char* name, const std::string& text, bool truncated) {
    if (text.empty() && !truncated) return;
    out += fmt::format("{}{}:\n{}", out.ends_with('\n') ? "" : "\n", name, text);
    if (truncated) out += fmt::format("{}... [truncated]", text.ends_with('\n') ? "" : "\n");
  };
  section("stdout", r.stdout_text, r.stdout_truncated);
  section("stderr", r.stderr_text, r.stderr_truncated);
  if (r.stdout_text.empty() && r.stderr_text.empty()) out += "\n(no output)";
  if (!out.ends_with('\n')) out += '\n';
  return {out, !stopped.empty()};
}

ToolResult ToolSet::run_code(const ToolDef& def, const json& args) {
  SandboxLimits l = sandbox_->config().limits;
  l.wall_time_s = static_cast<double>(int_arg(def, args, "timeout_s"));
  l.cpu_time_s = std::min<int64_t>(l.cpu_time_s, int_arg(def, args, "timeout_s"));
  const std::optional<SandboxResult> r = sandbox_->try_run(args.at("code").get<std::string>(), l);
  if (!r) {
    const SandboxConfig& c = sandbox_->config();
    return {fmt::format("code: busy: this server runs {} program{} at once and queues {} more; try again shortly",
                        c.max_running, c.max_running == 1 ? "" : "s", c.max_waiting),
            true, true};
  }
  ToolResult res = code_tool_result(*r, l);
  if (res.is_error) res.text = "code: " + res.text;
  return res;
}

ToolResult ToolSet::run(const ToolDef& def, const json& args, std::string_view user) {
  std::string out;
  if (def.name == "search") {
    const auto hits = search_->search(args.at("query").get<std::string>(), static_cast<int>(int_arg(def, args, "limit")));
    if (hits.empty()) return {"no documents match"};
    for (size_t i = 0; i < hits.size(); ++i)
      fmt::format_to(std::back_inserter(out), "{}{}. {} (score {:.2f})\n   {}", i ? "\n" : "", i + 1, hits[i].path,
                     hits[i].score, hits[i].snippet);
    return {out};
  }
  if (def.name == "memory_save") return {fmt::format("saved as memory {}", memory_->save(user, args.at("text").get<std::string>()))};
  if (def.name == "memory_forget") {
    const auto id = args.at("id").get<int64_t>();
    return memory_->forget(user, id) ? ToolResult{fmt::format("forgot memory {}", id)}
                                     : ToolResult{fmt::format("there is no memory {} of yours", id), true};
  }
  const std::vector<Memory> ms =
      def.name == "memory_recall"
          ? memory_->recall(user, args.at("query").get<std::string>(), static_cast<int>(int_arg(def, args, "limit")))
          : memory_->list(user, static_cast<int>(int_arg(def, args, "limit")), static_cast<int>(int_arg(def, args, "offset")));
  if (ms.empty()) return {def.name == "memory_recall" ? "nothing remembered matches" : "nothing remembered"};
  for (size_t i = 0; i < ms.size(); ++i) fmt::format_to(std::back_inserter(out), "{}[{}] {}", i ? "\n" : "", ms[i].id, ms[i].text);
  return {out};
}

}  // namespace ppu::serve
