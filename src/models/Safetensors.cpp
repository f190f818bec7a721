#include "models/Safetensors.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>

#include "arch/Error.hpp"
#include "arch/Presets.hpp"

namespace ppu {

using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

// Safetensors dtype strings, indexed by DType (kCount excluded).
constexpr std::array<std::string_view, static_cast<size_t>(DType::kCount)> kSafetensorsNames = {
    "F32", "BF16", "F16", "F8_E4M3", "F8_E5M2", "I8", "I32"};
static_assert(kSafetensorsNames.size() == static_cast<size_t>(DType::kCount),
              "every DType needs its safetensors name");

std::string supported_dtypes() {
  std::string out;
  for (DType t : {DType::kBF16, DType::kF16, DType::kF32, DType::kF8E4M3, DType::kF8E5M2})
    out += fmt::format("{}{}", out.empty() ? "" : ", ", safetensors_dtype_name(t));
  return out;
}

// A JSON value as a non-negative integer, or nullopt (negative, fractional, not a number).
std::optional<uint64_t> as_unsigned(const json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0) return static_cast<uint64_t>(v.get<int64_t>());
  return std::nullopt;
}

// Spells out at most `limit` names, then "... and N more".
std::string name_list(const std::vector<std::string>& names, size_t limit,
                      const std::function<std::string(const std::string&)>& decorate) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < limit; ++i)
    out += fmt::format("{}{}", i ? ", " : "", decorate(names[i]));
  if (names.size() > limit) out += fmt::format(", ... and {} more", names.size() - limit);
  return out;
}

}  // namespace

std::string shape_to_string(std::span<const int64_t> shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += fmt::format("{}{}", i ? ", " : "", shape[i]);
  return out + "]";
}

std::string_view safetensors_dtype_name(DType t) { return kSafetensorsNames[static_cast<size_t>(t)]; }

std::optional<DType> dtype_from_safetensors_name(std::string_view s) {
  // Integer tensors (a quantised checkpoint's I8 weights) need their scales to mean anything, and no
  // reader here pairs them: they stay unsupported, as before OpenPPU had integer dtypes.
  for (size_t i = 0; i < kSafetensorsNames.size(); ++i)
    if (kSafetensorsNames[i] == s && !dtype_is_int(static_cast<DType>(i))) return static_cast<DType>(i);
  return std::nullopt;
}

int64_t SafetensorsTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // no overflow: checked when the header was parsed
  return n;
}

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

SafetensorsFile::SafetensorsFile(std::string path) : path_(std::move(path)) {
  const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw UserError(fmt::format("{}: cannot open file ({})", path_, std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    throw UserError(fmt::format("{}: cannot stat file ({})", path_, std::strerror(e)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw UserError(fmt::format("{}: not a regular file (a .safetensors file was expected)", path_));
  }
  size_bytes_ = static_cast<uint64_t>(st.st_size);
  if (size_bytes_ < 8) {
    ::close(fd);
    throw UserError(fmt::format(
        "{}: file is {} bytes, too short for the 8-byte header length (not a safetensors file, or truncated)", path_,
        size_bytes_));
  }
  map_ = ::mmap(nullptr, size_bytes_, PROT_READ, MAP_PRIVATE, fd, 0);
  const int e = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    throw UserError(fmt::format("{}: cannot map file ({})", path_, std::strerror(e)));
  }
  try {
    parse_header();
  } catch (...) {
    unmap();
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() { unmap(); }

SafetensorsFile::SafetensorsFile(SafetensorsFile&& o) noexcept
    : path_(std::move(o.path_)),
      map_(std::exchange(o.map_, nullptr)),
      size_bytes_(std::exchange(o.size_bytes_, 0)),
      header_bytes_(std::exchange(o.header_bytes_, 0)),
      tensors_(std::move(o.tensors_)),
      metadata_(std::move(o.metadata_)) {}

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& o) noexcept {
  if (this != &o) {
    unmap();
    path_ = std::move(o.path_);
    map_ = std::exchange(o.map_, nullptr);
    size_bytes_ = std::exchange(o.size_bytes_, 0);
    header_bytes_ = std::exchange(o.header_bytes_, 0);
    tensors_ = std::move(o.tensors_);
    metadata_ = std::move(o.metadata_);
  }
  return *this;
}

void SafetensorsFile::unmap() {
  if (map_) ::munmap(map_, size_bytes_);
  map_ = nullptr;
}

void SafetensorsFile::parse_header() {
  SafetensorsHeader h = parse_safetensors({static_cast<const std::byte*>(map_), size_bytes_}, path_);
  header_bytes_ = h.header_bytes;
  tensors_ = std::move(h.tensors);
  metadata_ = std::move(h.metadata);
}

SafetensorsHeader parse_safetensors(std::span<const std::byte> bytes, const std::string& origin) {
  const uint64_t size_bytes = bytes.size();
  if (size_bytes < 8)
    throw UserError(fmt::format(
        "{}: file is {} bytes, too short for the 8-byte header length (not a safetensors file, or truncated)", origin,
        size_bytes));
  SafetensorsHeader out;
  std::vector<SafetensorsTensor>& tensors = out.tensors;
  std::map<std::string, std::string>& metadata = out.metadata;
  const auto* u8 = reinterpret_cast<const unsigned char*>(bytes.data());
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | u8[i];  // little-endian, whatever the host
  if (n > kSafetensorsMaxHeaderBytes)
    throw UserError(fmt::format(
        "{}: header length {} bytes exceeds the format's limit of {} bytes (not a safetensors file, or corrupt)", origin,
        n, kSafetensorsMaxHeaderBytes));
  if (n > size_bytes - 8)
    throw UserError(fmt::format(
        "{}: header length {} bytes runs past the end of the file ({} bytes after the 8-byte length; truncated?)",
        origin, n, size_bytes - 8));
  out.header_bytes = n;
  const char* text = reinterpret_cast<const char*>(u8 + 8);

  // Duplicate names are invisible once parsed into an object, so top-level keys are collected as the
  // parser meets them.
  std::set<std::string> seen;
  std::string duplicate;
  const json::parser_callback_t cb = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth == 1 && event == json::parse_event_t::key) {
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!seen.insert(key).second && duplicate.empty()) duplicate = key;
    }
    return true;
  };
  json h;
  try {
    h = json::parse(text, text + n, cb);
  } catch (const json::exception& e) {
    throw UserError(fmt::format("{}: header is not valid JSON: {}", origin, e.what()));
  }
  if (!h.is_object())
    throw UserError(fmt::format("{}: header must be a JSON object of tensors, got {}", origin, h.type_name()));
  if (!duplicate.empty())
    throw UserError(fmt::format("{}: tensor '{}' appears more than once in the header", origin, duplicate));

  const uint64_t data_bytes = size_bytes - 8 - n;
  const std::byte* data = bytes.data() + 8 + n;
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    const json& e = it.value();
    if (name == "__metadata__") {
      if (!e.is_object())
        throw UserError(fmt::format("{}: __metadata__ must be an object of strings, got {}", origin, e.type_name()));
      for (auto m = e.begin(); m != e.end(); ++m) {
        if (!m.value().is_string())
          throw UserError(fmt::format("{}: __metadata__ value of '{}' must be a string, got {}", origin, m.key(),
                                      m.value().dump()));
        metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto err = [&](const std::string& what) {
      return UserError(fmt::format("{}: tensor '{}': {}", origin, name, what));
    };
    if (!e.is_object())
      throw err(fmt::format("entry must be an object with \"dtype\", \"shape\" and \"data_offsets\", got {}",
                            e.type_name()));
    for (const char* key : {"dtype", "shape", "data_offsets"})
      if (!e.contains(key)) throw err(fmt::format("missing \"{}\"", key));

    SafetensorsTensor t;
    t.name = name;
    t.file = origin;
    const json& dt = e.at("dtype");
    if (!dt.is_string()) throw err(fmt::format("dtype must be a string, got {}", dt.dump()));
    const auto dtype = dtype_from_safetensors_name(dt.get<std::string>());
    if (!dtype)
      throw err(fmt::format("dtype '{}' is not supported; supported: {}", dt.get<std::string>(), supported_dtypes()));
    t.dtype = *dtype;

    const json& sh = e.at("shape");
    if (!sh.is_array()) throw err(fmt::format("shape must be an array of non-negative integers, got {}", sh.dump()));
    uint64_t numel = 1;
    bool overflow = false;
    for (size_t i = 0; i < sh.size(); ++i) {
      const auto d = as_unsigned(sh[i]);
      if (!d)
        throw err(fmt::format("shape {}: dimension {} is {}, must be a non-negative integer", sh.dump(), i,
                              sh[i].dump()));
      if (*d > static_cast<uint64_t>(INT64_MAX)) overflow = true;
      overflow = overflow || __builtin_mul_overflow(numel, *d, &numel);
      t.shape.push_back(static_cast<int64_t>(std::min<uint64_t>(*d, INT64_MAX)));
    }
    uint64_t need = 0;
    overflow = overflow || __builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size_bytes(t.dtype)), &need);
    if (overflow || numel > static_cast<uint64_t>(INT64_MAX))
      throw err(fmt::format("shape {} has too many elements to address", sh.dump()));

    const json& off = e.at("data_offsets");
    std::optional<uint64_t> begin, end;
    if (off.is_array() && off.size() == 2) {
      begin = as_unsigned(off[0]);
      end = as_unsigned(off[1]);
    }
    if (!begin || !end || *begin > *end)
      throw err(fmt::format("data_offsets must be [begin, end] with 0 <= begin <= end, got {}", off.dump()));
    if (*end > data_bytes)
      throw err(fmt::format(
          "data_offsets {} end past the data section ({} bytes): the file is truncated or the header is wrong",
          off.dump(), data_bytes));
    if (*end - *begin != need)
      throw err(fmt::format("data_offsets {} span {} bytes but shape {} of {} needs {} bytes (the header lies)",
                            off.dump(), *end - *begin, shape_to_string(t.shape), dt.get<std::string>(), need));
    t.offset_bytes = *begin;
    t.size_bytes = need;
    t.data = data + *begin;
    tensors.push_back(std::move(t));
  }

  // Overlap: walk the tensors in data order; empty tensors occupy nothing.
  std::vector<const SafetensorsTensor*> order;
  for (const auto& t : tensors)
    if (t.size_bytes > 0) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const SafetensorsTensor* a, const SafetensorsTensor* b) {
    return a->offset_bytes != b->offset_bytes ? a->offset_bytes < b->offset_bytes : a->name < b->name;
  });
  for (size_t i = 1; i < order.size(); ++i) {
    const SafetensorsTensor& a = *order[i - 1];
    const SafetensorsTensor& b = *order[i];
    if (b.offset_bytes < a.offset_bytes + a.size_bytes)
      throw UserError(fmt::format("{}: tensors '{}' (bytes [{}, {})) and '{}' (bytes [{}, {})) overlap", origin, a.name,
                                  a.offset_bytes, a.offset_bytes + a.size_bytes, b.name, b.offset_bytes,
                                  b.offset_bytes + b.size_bytes));
  }
  // nlohmann's object is ordered by key, so tensors is already sorted by name.
  return out;
}

const SafetensorsTensor* SafetensorsFile::find(std::string_view name) const {
  auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                             [](const SafetensorsTensor& t, std::string_view n) { return t.name < n; });
  return it != tensors_.end() && it->name == name ? &*it : nullptr;
}

const SafetensorsTensor& SafetensorsFile::at(std::string_view name) const {
  if (const auto* t = find(name)) return *t;
  throw UserError(
      fmt::format("{}: tensor '{}' not found (the file has {} tensors)", path_, name, tensors_.size()));
}

// ---------------------------------------------------------------------------------------------
// Conversion

void check_shape(const SafetensorsTensor& t, const TensorShape& expected) {
  if (t.shape != expected)
    throw UserError(fmt::format("{}: tensor '{}': shape {} does not match the expected {}", t.file, t.name,
                                shape_to_string(t.shape), shape_to_string(expected)));
}

void tensor_to_f32(const SafetensorsTensor& t, const TensorShape& expected, float* dst) {
  check_shape(t, expected);
  const int64_t n = t.numel();
  if (n == 0) return;  // dst may be null for an empty tensor
  const int esize = dtype_size_bytes(t.dtype);
  if (reinterpret_cast<uintptr_t>(t.data) % static_cast<uintptr_t>(esize) == 0) {
    convert_to_f32(t.dtype, t.data, dst, n);
    return;
  }
  // Unaligned data (the header length is not a multiple of the element size): copy through an
  // aligned staging buffer in chunks.
  constexpr int64_t kChunk = 1 << 14;
  std::vector<uint32_t> staging(kChunk);
  for (int64_t i = 0; i < n; i += kChunk) {
    const int64_t m = std::min(kChunk, n - i);
    std::memcpy(staging.data(), t.data + i * esize, static_cast<size_t>(m * esize));
    convert_to_f32(t.dtype, staging.data(), dst + i, m);
  }
}

std::vector<float> tensor_to_f32(const SafetensorsTensor& t, const TensorShape& expected) {
  check_shape(t, expected);
  std::vector<float> out(static_cast<size_t>(t.numel()));
  tensor_to_f32(t, expected, out.data());
  return out;
}

// ---------------------------------------------------------------------------------------------
// CheckpointSet

namespace {

constexpr const char* kIndexFile = "model.safetensors.index.json";
constexpr const char* kSingleFile = "model.safetensors";

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

std::map<std::string, std::string> parse_safetensors_index(std::string_view json_text, const std::string& origin) {
  json idx;
  try {
    idx = json::parse(json_text);
  } catch (const json::exception& e) {  // syntax, or a number beyond a double (out_of_range.406)
    throw UserError(fmt::format("{}: not valid JSON: {}", origin, e.what()));
  }
  if (!idx.is_object() || !idx.contains("weight_map") || !idx.at("weight_map").is_object())
    throw UserError(fmt::format(
        "{}: an index must be a JSON object with \"weight_map\": {{\"<tensor>\": \"<shard file>\", ...}}", origin));
  const json& wm = idx.at("weight_map");
  std::map<std::string, std::string> shard_of;  // tensor -> shard file name
  for (auto it = wm.begin(); it != wm.end(); ++it) {
    if (!it.value().is_string() || it.value().get<std::string>().empty())
      throw UserError(fmt::format("{}: weight_map entry for tensor '{}' must be a shard file name, got {}", origin,
                                  it.key(), it.value().dump()));
    const std::string shard = it.value().get<std::string>();
    const fs::path sp(shard);
    bool escapes = sp.is_absolute();
    for (const auto& part : sp) escapes = escapes || part == "..";
    if (escapes)
      throw UserError(fmt::format(
          "{}: weight_map entry for tensor '{}' names shard '{}', which is outside the checkpoint directory", origin,
          it.key(), shard));
    shard_of[it.key()] = shard;
  }
  return shard_of;
}

CheckpointSet::CheckpointSet(const std::string& path) : origin_(path) {
  std::error_code ec;
  const fs::path p(path);
  fs::path index_path;
  if (fs::is_directory(p, ec)) {
    if (fs::exists(p / kIndexFile, ec)) {
      index_path = p / kIndexFile;
    } else if (fs::exists(p / kSingleFile, ec)) {
      add_file(std::make_unique<SafetensorsFile>((p / kSingleFile).string()));
      return;
    } else {
      std::vector<std::string> found;
      for (const auto& entry : fs::directory_iterator(p, ec))
        if (ends_with(entry.path().filename().string(), ".safetensors")) found.push_back(entry.path().filename().string());
      std::sort(found.begin(), found.end());
      throw UserError(fmt::format("{}: no {} or {} in this directory{}", path, kIndexFile, kSingleFile,
                                  found.empty() ? std::string(" (and no .safetensors files)")
                                                : fmt::format(" (it has {}: pass one of them directly)",
                                                              name_list(found, 10, [](auto& s) { return s; }))));
    }
  } else if (ends_with(path, ".index.json")) {
    index_path = p;
  } else {
    add_file(std::make_unique<SafetensorsFile>(path));
    return;
  }

  // Sharded: the index maps every tensor to its shard.
  const std::string index_name = index_path.string();
  const std::map<std::string, std::string> shard_of =
      parse_safetensors_index(read_input_file(index_name, "safetensors index", kIndexFileMaxBytes), index_name);
  std::vector<std::string> shards;
  for (const auto& [tensor, shard] : shard_of) shards.push_back(shard);
  std::sort(shards.begin(), shards.end());
  shards.erase(std::unique(shards.begin(), shards.end()), shards.end());
  const fs::path dir = index_path.parent_path();
  for (const auto& shard : shards) {
    auto f = std::make_unique<SafetensorsFile>((dir / shard).string());
    for (const auto& t : f->tensors()) {
      auto it = shard_of.find(t.name);
      if (it == shard_of.end())
        throw UserError(fmt::format("{}: tensor '{}' is not listed in the index {}", f->path(), t.name, index_name));
      if (it->second != shard)
        throw UserError(fmt::format("{}: tensor '{}' is in shard '{}', but the index places it in '{}'",
                                    index_name, t.name, shard, it->second));
    }
    add_file(std::move(f));
  }
  for (const auto& [name, shard] : shard_of)
    if (!find(name))
      throw UserError(fmt::format("{}: tensor '{}' is listed in shard '{}', which does not contain it", index_name,
                                  name, shard));
}

void CheckpointSet::add_file(std::unique_ptr<SafetensorsFile> f) {
  for (const auto& t : f->tensors()) {
    auto [it, inserted] = by_name_.emplace(t.name, &t);
    if (!inserted)
      throw UserError(fmt::format("{}: tensor '{}' is in both {} and {}", origin_, t.name, it->second->file, t.file));
  }
  files_.push_back(std::move(f));
}

std::vector<std::string> CheckpointSet::names() const {
  std::vector<std::string> out;
  out.reserve(by_name_.size());
  for (const auto& [n, t] : by_name_) out.push_back(n);
  return out;
}

const SafetensorsTensor* CheckpointSet::find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

const SafetensorsTensor& CheckpointSet::at(std::string_view name) const {
  if (const auto* t = find(name)) return *t;
  throw UserError(fmt::format("{}: tensor '{}' not found (checkpoint has {} tensors in {} file{})", origin_, name,
                              by_name_.size(), files_.size(), files_.size() == 1 ? "" : "s"));
}

CheckpointNameDiff CheckpointSet::compare_names(std::span<const std::string> expected) const {
  CheckpointNameDiff d;
  const std::set<std::string, std::less<>> want(expected.begin(), expected.end());
  for (const auto& n : want)
    if (!find(n)) d.missing.push_back(n);
  for (const auto& [n, t] : by_name_)
    if (!want.count(n)) d.unexpected.push_back(n);
  return d;
}

void CheckpointSet::require_names(std::span<const std::string> expected) const {
  const CheckpointNameDiff d = compare_names(expected);
  if (d.ok()) return;
  constexpr size_t kLimit = 20;
  std::string msg = fmt::format("{}: checkpoint does not match the model", origin_);
  if (!d.missing.empty())
    msg += fmt::format("; {} missing tensor{} (expected by the model, in no file of {}): {}", d.missing.size(),
                       d.missing.size() == 1 ? "" : "s", origin_,
                       name_list(d.missing, kLimit, [](const std::string& s) { return "'" + s + "'"; }));
  if (!d.unexpected.empty())
    msg += fmt::format(
        "; {} unexpected tensor{} (not used by the model): {}", d.unexpected.size(),
        d.unexpected.size() == 1 ? "" : "s",
        name_list(d.unexpected, kLimit, [&](const std::string& s) { return fmt::format("'{}' (in {})", s, at(s).file); }));
  throw UserError(msg);
}

std::vector<float> CheckpointSet::read_f32(std::string_view name, const TensorShape& expected) const {
  return tensor_to_f32(at(name), expected);
}

void CheckpointSet::read_f32(std::string_view name, const TensorShape& expected, float* dst) const {
  tensor_to_f32(at(name), expected, dst);
}

NonFiniteCount count_nonfinite(const SafetensorsTensor& t) {
  NonFiniteCount c;
  const auto n = static_cast<size_t>(t.numel());
  // (exponent mask, mantissa mask) of each float dtype's bit pattern; fp8e4m3 has no infinity: its
  // NaN is exponent and mantissa all ones.
  const auto scan = [&](auto word, uint32_t exp_mask, uint32_t man_mask, bool has_inf) {
    using W = decltype(word);
    for (size_t i = 0; i < n; ++i) {
      W w;
      std::memcpy(&w, t.data + i * sizeof(W), sizeof(W));
      const uint32_t bits = w;
      if ((bits & exp_mask) != exp_mask) continue;
      if (!has_inf) c.nan += (bits & man_mask) == man_mask;
      else if (bits & man_mask) ++c.nan;
      else ++c.inf;
    }
  };
  switch (t.dtype) {
    case DType::kF32: scan(uint32_t{}, 0x7F800000u, 0x007FFFFFu, true); break;
    case DType::kBF16: scan(uint16_t{}, 0x7F80u, 0x007Fu, true); break;
    case DType::kF16: scan(uint16_t{}, 0x7C00u, 0x03FFu, true); break;
    case DType::kF8E5M2: scan(uint8_t{}, 0x7Cu, 0x03u, true); break;
    case DType::kF8E4M3: scan(uint8_t{}, 0x78u, 0x07u, false); break;
    case DType::kI8:
    case DType::kI32:  // integers have no NaN or infinity
    case DType::kCount: break;
  }
  return c;
}

std::string CheckpointSet::nonfinite_report() const {
  std::vector<std::string> named;
  size_t bad = 0;
  for (const auto& [name, t] : by_name_) {
    const NonFiniteCount c = count_nonfinite(*t);
    if (!c.any()) continue;
    if (++bad <= 5) named.push_back(fmt::format("{}: {} NaN and {} Inf of {}", name, c.nan, c.inf, t->numel()));
  }
  if (bad == 0) return "";
  return fmt::format("{}: {} of the {} tensors hold NaN or Inf values ({}{}); a run with these weights computes NaN",
                     origin_, bad, by_name_.size(), fmt::join(named, "; "), bad > named.size() ? "; ..." : "");
}

}  // namespace ppu
