#include "models/SafetensorsWriter.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "arch/Error.hpp"
#include "models/AtomicFile.hpp"

namespace ppu {

namespace {

using json = nlohmann::json;

// `s` as a JSON string literal; nullopt if it is not valid UTF-8 (JSON text must be).
std::optional<std::string> json_quoted(const std::string& s) {
  try {
    return json(s).dump();
  } catch (const json::type_error&) {
    return std::nullopt;
  }
}

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

// numel(shape), or nullopt for a negative dimension or an overflowing product.
std::optional<uint64_t> element_count(const TensorShape& shape) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return std::nullopt;
  }
  if (n > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
  return n;
}

}  // namespace

void SafetensorsWriter::add(const std::string& name, DType dtype, TensorShape shape, std::vector<std::byte> bytes) {
  auto err = [&](const std::string& what) {
    return UserError(fmt::format("safetensors writer: tensor '{}': {}", name, what));
  };
  if (name.empty()) throw UserError("safetensors writer: a tensor needs a non-empty name");
  if (name == "__metadata__") throw err("the name is reserved for the file's metadata");
  if (!json_quoted(name)) throw err("the name is not valid UTF-8");
  if (tensors_.count(name)) throw err("added twice (tensor names must be unique in a file)");
  PPU_CHECK(dtype != DType::kCount, "safetensors writer: DType::kCount is not a dtype");
  const auto n = element_count(shape);
  if (!n) throw err(fmt::format("shape {} has a negative dimension or too many elements", shape_to_string(shape)));
  uint64_t need = 0;
  if (__builtin_mul_overflow(*n, static_cast<uint64_t>(dtype_size_bytes(dtype)), &need))
    throw err(fmt::format("shape {} has too many elements to address", shape_to_string(shape)));
  if (bytes.size() != need)
    throw err(fmt::format("{} bytes given, but shape {} of {} needs {} ({} elements x {} bytes)", bytes.size(),
                          shape_to_string(shape), safetensors_dtype_name(dtype), need, *n, dtype_size_bytes(dtype)));
  tensors_.emplace(name, Entry{dtype, std::move(shape), std::move(bytes)});
}

void SafetensorsWriter::add_f32(const std::string& name, DType dtype, TensorShape shape,
                                std::span<const float> values) {
  const auto n = element_count(shape);
  if (!n || values.size() != *n)
    throw UserError(fmt::format("safetensors writer: tensor '{}': {} values given for shape {}{}", name,
                                values.size(), shape_to_string(shape),
                                n ? fmt::format(" ({} elements)", *n) : std::string(" (invalid)")));
  std::vector<std::byte> bytes(values.size() * static_cast<size_t>(dtype_size_bytes(dtype)));
  if (!values.empty()) convert_from_f32(dtype, values.data(), bytes.data(), static_cast<int64_t>(values.size()));
  add(name, dtype, std::move(shape), std::move(bytes));
}

void SafetensorsWriter::set_metadata(const std::string& key, const std::string& value) {
  if (!json_quoted(key) || !json_quoted(value))
    throw UserError(fmt::format("safetensors writer: metadata '{}': key and value must be valid UTF-8", key));
  metadata_[key] = value;
}

std::string SafetensorsWriter::header() const {
  std::string h = "{";
  if (!metadata_.empty()) {
    h += "\"__metadata__\":{";
    for (const auto& [k, v] : metadata_) h += fmt::format("{}:{},", *json_quoted(k), *json_quoted(v));
    h.back() = '}';
    h += ',';
  }
  uint64_t offset = 0;
  for (const auto& [name, e] : tensors_) {
    std::string dims;
    for (size_t i = 0; i < e.shape.size(); ++i) dims += fmt::format("{}{}", i ? "," : "", e.shape[i]);
    h += fmt::format("{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}},", *json_quoted(name),
                     safetensors_dtype_name(e.dtype), dims, offset, offset + e.bytes.size());
    offset += e.bytes.size();
  }
  if (h.back() == ',') h.pop_back();
  h += '}';
  while ((8 + h.size()) % 8 != 0) h += ' ';
  if (h.size() > kSafetensorsMaxHeaderBytes)
    throw UserError(fmt::format("safetensors writer: header of {} tensors is {} bytes, over the format's limit of {}",
                                tensors_.size(), h.size(), kSafetensorsMaxHeaderBytes));
  return h;
}

uint64_t SafetensorsWriter::file_size_bytes() const {
  uint64_t n = 8 + header().size();
  for (const auto& [name, e] : tensors_) n += e.bytes.size();
  return n;
}

void SafetensorsWriter::serialize(std::ostream& out, const std::string& origin) const {
  const std::string h = header();
  errno = 0;
  auto check = [&](const std::string& what) {
    if (!out)
      throw UserError(fmt::format("{}: cannot write {} ({})", origin, what,
                                  errno ? std::strerror(errno) : "the stream failed"));
  };
  out.write(le64(h.size()).data(), 8);
  out.write(h.data(), static_cast<std::streamsize>(h.size()));
  check("the header");
  for (const auto& [name, e] : tensors_) {
    out.write(reinterpret_cast<const char*>(e.bytes.data()), static_cast<std::streamsize>(e.bytes.size()));
    check(fmt::format("tensor '{}'", name));
  }
}

std::string SafetensorsWriter::to_bytes() const {
  std::ostringstream os;
  serialize(os, "<memory>");
  return std::move(os).str();
}

void SafetensorsWriter::write(const std::string& path) const {
  write_file_atomically(path, [&](std::ostream& os) { serialize(os, path); });
}

}  // namespace ppu
