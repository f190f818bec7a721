#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>

#include "arch/Units.hpp"
#include "cli/Commands.hpp"
#include "kernels/Elementwise.hpp"
#include "kernels/Gemm.hpp"
#include "report/JsonDoc.hpp"
#include "report/Table.hpp"
#include "report/TraceWriter.hpp"

namespace ppu::cli {

DType parse_dtype_option(const std::string& s, const char* option) {
  auto d = dtype_from_name(s);
  if (!d) throw UserError(fmt::format("{} '{}' is not a dtype; valid: {}", option, s, dtype_valid_names()));
  return *d;
}

namespace {

using nlohmann::json;

// Uniform in [-1, 1) rounded to `t`; int8: uniform integers over the whole range [-128, 127].
std::vector<float> random_values(int64_t n, DType t, uint64_t seed) {
  std::mt19937_64 rng(seed);
  if (t == DType::kI8) {
    std::uniform_int_distribution<int> di(-128, 127);
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = static_cast<float>(di(rng));
    return v;
  }
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = round_to(t, dist(rng));
  return v;
}

void write_trace(const Device& dev, const std::string& path) {
  TraceWriter w;
  dev.write_trace(w);
  w.write_file(path);
}

double wall_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int cmd_bench_gemm(const GemmBenchOptions& o) {
  const DType in_t = parse_dtype_option(o.dtype, "--dtype");
  const DType out_t = parse_dtype_option(o.out_dtype, "--out-dtype");
  kernels::GemmShape s{o.m, o.n, o.k, o.batch, o.trans_a, o.trans_b, 1.0f};
  if (s.m <= 0 || s.n <= 0 || s.k <= 0 || s.batch <= 0)
    throw UserError(fmt::format("bench gemm: M={} N={} K={} batch={}; every size must be positive", s.m, s.n, s.k, s.batch));
  const auto chips = expand_chips(o.chip);
  if (!o.trace.empty() && chips.size() > 1) throw UserError("--trace needs a single --chip, not 'all'");
  json rows = json::array();
  Table t({"chip", "time", "TFLOPS", "% of peak", "bound", "blocks", "waves", "tiles", "HBM read", "L2 hits"});
  bool all_ok = true;
  AssumedMarks marks;
  for (const auto& name : chips) {
    const ChipSpec chip = load_chip(name);
    if (!chip.supports(in_t)) {
      if (chips.size() > 1) {
        t.add_row({chip.name, "-", "-", "-", fmt::format("no {} matrix unit", dtype_name(in_t))});
        rows.push_back({{"chip", chip.name}, {"supported", false},
                        {"unsupported_reason", fmt::format("no {} matrix unit", dtype_name(in_t))}});
        continue;
      }
      throw UserError(fmt::format("bench gemm: --dtype {}: {}", dtype_name(in_t),
                                  matrix_unit_refusal(chip, in_t, "--dtype")));
    }
    Device dev(chip, o.check ? ExecMode::kFunctional : ExecMode::kTimingOnly);
    if (!o.trace.empty()) dev.set_kernel_trace_limit(2'000'000);
    Buffer a = dev.alloc(in_t, s.batch * s.m * s.k, "A");
    Buffer b = dev.alloc(in_t, s.batch * s.k * s.n, "B");
    Buffer c = dev.alloc(out_t, s.batch * s.m * s.n, "C");
    std::vector<float> av, bv;
    if (o.check) {
      av = random_values(a.numel, in_t, static_cast<uint64_t>(o.seed));
      bv = random_values(b.numel, in_t, static_cast<uint64_t>(o.seed) + 1);
      dev.upload(a, av);
      dev.upload(b, bv);
    }
    const auto cfg = kernels::choose_gemm_config(chip, s, in_t);
    const auto wall0 = std::chrono::steady_clock::now();
    const KernelTiming kt = kernels::gemm(dev, s, a, b, c, nullptr, &cfg);
    const double wall = wall_since(wall0);
    const double tflops = kt.useful_flops / kt.time_s / 1e12;
    const double peak = chip.matrix_flops_per_s(in_t) / 1e12;
    json row = {{"chip", chip.name},
                {"supported", true},
                {"m", s.m}, {"n", s.n}, {"k", s.k}, {"batch", s.batch},
                {"trans_a", s.trans_a}, {"trans_b", s.trans_b},
                {"dtype", std::string(dtype_name(in_t))},
                {"out_dtype", std::string(dtype_name(out_t))},
                {"time_s", kt.time_s},
                {"achieved_flops_per_s", kt.useful_flops / kt.time_s},
                {"peak_flops_per_s", chip.matrix_flops_per_s(in_t)},
                {"fraction_of_peak", tflops / peak},
                {"bound", kt.bound(chip)},
                {"blocks", kt.blocks},
                {"waves", kt.waves},
                {"tile_config", cfg.describe()},
                {"hbm_read_bytes", kt.hbm_read_bytes},
                {"hbm_write_bytes", kt.hbm_write_bytes},
                {"l2_hit_bytes", kt.l2_hit_bytes},
                {"matrix_utilization", kt.matrix_utilization(chip)},
                {"hbm_utilization", kt.hbm_utilization(chip)},
                {"host_wall_s", wall},
                {"assumed_fields", AssumedMarks::among(chip, {matrix_field_for(in_t), "hbm_bandwidth"})}};
    t.add_row({marks.mark(chip, chip.name, {matrix_field_for(in_t), "hbm_bandwidth"}), format_quantity(Dimension::kTime, kt.time_s), fmt::format("{:.1f}", tflops),
               fmt::format("{:.1f}%", 100.0 * tflops / peak), kt.bound(chip), fmt::format("{}", kt.blocks),
               fmt::format("{:.2f}", kt.waves), cfg.describe(), format_quantity(Dimension::kBytes, kt.hbm_read_bytes),
               format_quantity(Dimension::kBytes, kt.l2_hit_bytes)});
    if (o.check) {
      const std::vector<float> cv = dev.download(c);
      // Check every output for small problems, an even sample of 4096 outputs otherwise.
      const int64_t total = c.numel;
      const int64_t samples = std::min<int64_t>(total, s.m * s.n * s.k * s.batch <= (int64_t{1} << 31) ? total : 4096);
      double max_err = 0, max_ratio = 0;
      // int8: the int32 sums are exact; what remains is their conversion to fp32 (2^-24) and the
      // rounding into C (an int32 C is downloaded as fp32: the same 2^-24).
      const bool int8 = in_t == DType::kI8;
      const double u_acc = int8 ? 0.0 : std::ldexp(1.0, -24) * (static_cast<double>(s.k) + 2);
      const double u_out = int8 ? unit_roundoff(out_t) + std::ldexp(1.0, -24) : unit_roundoff(out_t);
      for (int64_t si = 0; si < samples; ++si) {
        const int64_t idx = samples == total ? si : (si * 7919 * 104729) % total;
        const int64_t bt = idx / (s.m * s.n), i = (idx / s.n) % s.m, j = idx % s.n;
        double ref = 0, mag = 0;
        for (int64_t p = 0; p < s.k; ++p) {
          const double x = av[kernels::gemm_a_index(s, bt, i, p)];
          const double y = bv[kernels::gemm_b_index(s, bt, p, j)];
          ref += x * y;
          mag += std::fabs(x * y);
        }
        const double err = std::fabs(cv[static_cast<size_t>(idx)] - ref);
        // Bound: fp32 accumulation error, then one rounding of the (slightly perturbed) sum.
        const double tol = u_acc * mag * (1.0 + u_out) + u_out * std::fabs(ref) + 1e-30;
        max_err = std::max(max_err, err);
        max_ratio = std::max(max_ratio, err / tol);
      }
      const bool ok = max_ratio <= 1.0;
      all_ok = all_ok && ok;
      row["check"] = {{"outputs_checked", samples}, {"max_abs_error", max_err}, {"max_error_over_tolerance", max_ratio},
                      {"tolerance", int8 ? "exact int32 sums; conversion to fp32 and output rounding"
                                         : "fp32 accumulation bound (k+2)*2^-24*sum|a*b| + output rounding"},
                      {"passed", ok}};
      if (!o.json)
        std::cout << fmt::format("{}: checked {} of {} outputs against a double-precision reference: max |error| {:.3g}, "
                                 "{:.3g} of the tolerance -> {}\n",
                                 chip.name, samples, total, max_err, max_ratio, ok ? "PASS" : "FAIL");
    }
    rows.push_back(row);
    if (!o.trace.empty()) {
      write_trace(dev, o.trace);
      if (!o.json) std::cout << fmt::format("trace: {} (open in ui.perfetto.dev)\n", o.trace);
    }
  }
  if (o.json) {
    print_json_document("bench gemm", rows);
  } else {
    std::cout << fmt::format("GEMM {}x{}x{}{} {} -> {}{}{}, simulated\n", s.m, s.n, s.k,
                             s.batch > 1 ? fmt::format(" batch {}", s.batch) : "", dtype_name(in_t), dtype_name(out_t),
                             s.trans_a ? ", A transposed" : "", s.trans_b ? ", B transposed" : "")
              << t.render() << marks.legend();
  }
  return all_ok ? 0 : 1;
}

int cmd_bench_copy(const CopyBenchOptions& o) {
  const DType t = parse_dtype_option(o.dtype, "--dtype");
  const int64_t bytes = parse_size_bytes(o.size, "bench copy size");
  const int64_t n = std::max<int64_t>(1, bytes / dtype_size_bytes(t));
  const std::string& kn = o.kernel;
  if (kn != "copy" && kn != "mul" && kn != "add" && kn != "triad")
    throw UserError(fmt::format("--kernel '{}' is not known; valid: copy, mul, add, triad", kn));
  const int arrays_moved = (kn == "copy" || kn == "mul") ? 2 : 3;
  const auto chips = expand_chips(o.chip);
  if (!o.trace.empty() && chips.size() > 1) throw UserError("--trace needs a single --chip, not 'all'");
  json rows = json::array();
  Table tab({"chip", "kernel", "array", "time", "GB/s", "% of HBM peak", "bound"});
  bool all_ok = true;
  AssumedMarks marks;
  const float scalar = 0.4f;
  for (const auto& name : chips) {
    const ChipSpec chip = load_chip(name);
    Device dev(chip, o.check ? ExecMode::kFunctional : ExecMode::kTimingOnly);
    if (!o.trace.empty()) dev.set_kernel_trace_limit(2'000'000);
    Buffer a = dev.alloc(t, n, "a"), b = dev.alloc(t, n, "b"), c = dev.alloc(t, n, "c");
    std::vector<float> av, bv, cv;
    if (o.check) {
      av = random_values(n, t, 11);
      bv = random_values(n, t, 12);
      cv = random_values(n, t, 13);
      dev.upload(a, av);
      dev.upload(b, bv);
      dev.upload(c, cv);
    }
    // BabelStream kernels: copy c = a; mul b = scalar * c; add c = a + b; triad a = b + scalar * c.
    KernelTiming kt;
    Buffer out;
    if (kn == "copy") kt = kernels::copy(dev, a, c), out = c;
    else if (kn == "mul") kt = kernels::unary(dev, UnaryOp::kScale, c, b, scalar), out = b;
    else if (kn == "add") kt = kernels::binary(dev, BinaryOp::kAdd, a, b, c), out = c;
    else kt = kernels::triad(dev, b, c, a, scalar), out = a;
    const double moved = static_cast<double>(arrays_moved) * n * dtype_size_bytes(t);
    const double gbs = moved / kt.time_s / 1e9;
    const double pct = 100.0 * moved / kt.time_s / chip.hbm_bandwidth.value;
    json row = {{"chip", chip.name}, {"kernel", kn}, {"dtype", std::string(dtype_name(t))},
                {"array_bytes", n * dtype_size_bytes(t)}, {"bytes_moved", moved}, {"time_s", kt.time_s},
                {"bandwidth_bytes_per_s", moved / kt.time_s},
                {"fraction_of_hbm_peak", pct / 100.0},
                {"bound", kt.bound(chip)}, {"blocks", kt.blocks},
                {"assumed_fields", AssumedMarks::among(chip, {"hbm_bandwidth"})}};
    tab.add_row({marks.mark(chip, chip.name, {"hbm_bandwidth"}), kn, format_quantity(Dimension::kBytes, double(n) * dtype_size_bytes(t)),
                 format_quantity(Dimension::kTime, kt.time_s), fmt::format("{:.0f}", gbs), fmt::format("{:.1f}%", pct),
                 kt.bound(chip)});
    if (o.check) {
      const std::vector<float> got = dev.download(out);
      int64_t bad = 0;
      for (int64_t i = 0; i < n; ++i) {
        const auto ii = static_cast<size_t>(i);
        float expect;
        if (kn == "copy") expect = av[ii];
        else if (kn == "mul") expect = round_to(t, scalar * cv[ii]);
        else if (kn == "add") expect = round_to(t, av[ii] + bv[ii]);
        else expect = round_to(t, bv[ii] + scalar * cv[ii]);
        if (got[ii] != expect) ++bad;
      }
      all_ok = all_ok && bad == 0;
      row["check"] = {{"elements", n}, {"mismatches", bad}, {"tolerance", "exact (fp32 math, RNE store)"},
                      {"passed", bad == 0}};
      if (!o.json)
        std::cout << fmt::format("{}: checked {} elements exactly against a scalar reference: {} mismatches -> {}\n",
                                 chip.name, n, bad, bad == 0 ? "PASS" : "FAIL");
    }
    rows.push_back(row);
    if (!o.trace.empty()) {
      write_trace(dev, o.trace);
      if (!o.json) std::cout << fmt::format("trace: {} (open in ui.perfetto.dev)\n", o.trace);
    }
  }
  if (o.json) print_json_document("bench copy", rows);
  else std::cout << fmt::format("{} over {} arrays, BabelStream byte counting ({} arrays moved), simulated\n", kn,
                                dtype_name(t), arrays_moved)
                 << tab.render() << marks.legend();
  return all_ok ? 0 : 1;
}

}  // namespace ppu::cli
