// Fuzzes the model config parser (models/ModelConfig parse_model_config, a Hugging Face config.json
// as `--model dir/` reads it, non-strict): the input is the file's text. A config that parses is then
// used as the rest of the program uses one: its derived sizes (parameter counts, weight and KV-cache
// bytes, FLOPs; the field ranges promise they cannot overflow) and its round trip through
// model_config_json, which must parse back to the same architecture.
// Finding: anything but a UserError (fuzz/FuzzInput.hpp), including a round trip that parses back to
// a different config (reported by abort with both values). Seeds: tests/data/*/config.json and
// presets/models.
#include <cstdio>
#include <cstdlib>

#include "FuzzInput.hpp"
#include "arch/DType.hpp"
#include "models/ModelConfig.hpp"
#include "models/ModelConfigJson.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ppu;
  return fuzz::run([&] {
    const ModelConfig m = parse_model_config(fuzz::text(data, size), "fuzz-config.json");
    (void)param_counts(m);
    (void)weight_bytes(m);
    (void)kv_cache_bytes_per_token(m, DType::kBF16);
    (void)forward_flops_per_token(m, 4096.0);
    const std::string written = model_config_json(m);  // UserError: a config it cannot write
    const ModelConfig back = parse_model_config(written, "written-config.json");
    if (const auto d = compare_model_configs(m, back)) {
      std::fprintf(stderr, "round trip changed field '%s': '%s' -> '%s'\n%s\n", d->field.c_str(), d->a.c_str(),
                   d->b.c_str(), written.c_str());
      std::abort();
    }
  });
}
