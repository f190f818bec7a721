// Safetensors checkpoints: one file (SafetensorsFile), or the shards of a Hugging Face checkpoint
// directory (CheckpointSet), memory-mapped read-only and validated before any byte is trusted.
//
//   CheckpointSet ckpt("path/to/Qwen3-0.6B");                // directory, index.json or .safetensors
//   ckpt.require_names(expected_weight_names);                // missing / unexpected tensors -> UserError
//   std::vector<float> w = ckpt.read_f32("model.norm.weight", {1024});   // any dtype -> fp32
//
// File format (https://github.com/huggingface/safetensors, "Format"):
//
//   [u64 little-endian N][N bytes of JSON header][data section: every tensor's bytes]
//   header = {"<name>": {"dtype": "BF16", "shape": [d0, d1, ...], "data_offsets": [begin, end]}, ...,
//             "__metadata__": {"<key>": "<string value>", ...}}          (metadata optional)
//
// Offsets are bytes relative to the start of the data section; tensors are row-major (C order),
// little-endian. A sharded checkpoint is a directory with model.safetensors.index.json
// ({"weight_map": {"<tensor>": "<shard file>", ...}}) next to the shards.
//
// Validation (each failure is a ppu::UserError starting with the file and naming the tensor):
// file shorter than 8 bytes; header length over the format's 100 MB limit or past the end of the file;
// header not JSON or not an object; duplicate tensor names; a tensor entry that is not an object with
// "dtype", "shape" and "data_offsets"; a dtype other than BF16, F16, F32, F8_E4M3, F8_E5M2; negative or
// non-integer dims; data_offsets not [begin, end] with 0 <= begin <= end; end past the data section
// (a truncated file); end - begin != numel x dtype size (the header lies); two tensors' byte ranges
// overlapping; __metadata__ not an object of strings. Gaps between tensors are allowed (the format
// does not forbid them and they are harmless to a reader).
//
// Not here: writing checkpoints (models/SafetensorsWriter), integer or fp64 tensors, conversions other than to fp32 (the raw
// bytes are exposed for loaders that keep bf16/fp8), weight names of a particular model (the model
// file says which names it expects and passes them to require_names).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "arch/DType.hpp"

namespace ppu {

// A tensor shape, outermost dimension first, e.g. [vocab, hidden] = {151936, 1024}.
using TensorShape = std::vector<int64_t>;

// "[151936, 1024]"; "[]" for a scalar.
std::string shape_to_string(std::span<const int64_t> shape);

// The safetensors dtype string ("BF16", "F16", "F32", "F8_E4M3", "F8_E5M2") of a DType; its inverse
// returns nullopt for any other string (including valid safetensors dtypes we do not support, such as
// "I64" or "F64").
std::string_view safetensors_dtype_name(DType t);
std::optional<DType> dtype_from_safetensors_name(std::string_view s);

// One tensor of a mapped file. `data` points into the mapping and stays valid as long as the
// SafetensorsFile (or CheckpointSet) that produced it is alive. `data` need not be aligned to the
// element size (the format does not guarantee alignment): read elements with memcpy or use
// tensor_to_f32, which handles it.
struct SafetensorsTensor {
  std::string name;
  std::string file;          // path of the file holding it, for error messages
  DType dtype = DType::kF32;
  TensorShape shape;         // may be empty (a scalar, one element); dims may be 0
  const std::byte* data = nullptr;
  uint64_t offset_bytes = 0;  // begin of its bytes within the data section
  uint64_t size_bytes = 0;    // numel x dtype size, checked against data_offsets

  int64_t numel() const;
};

// Largest header the format allows (safetensors' own reader rejects larger ones).
inline constexpr uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;

// A parsed safetensors header: what SafetensorsFile validates, without the file.
struct SafetensorsHeader {
  uint64_t header_bytes = 0;                     // N, the JSON header's length
  std::vector<SafetensorsTensor> tensors;        // sorted by name; `data` points into the parsed bytes
  std::map<std::string, std::string> metadata;   // "__metadata__", empty if absent
};

// Parses and validates `bytes`, a whole safetensors file's contents (or all of it that was read: tensor
// ranges are checked against bytes.size()), every check listed in the file header above. `origin`
// starts every UserError message and fills SafetensorsTensor::file. The tensors' `data` point into
// `bytes`, valid while it is. No I/O; SafetensorsFile calls it on its mapping.
SafetensorsHeader parse_safetensors(std::span<const std::byte> bytes, const std::string& origin);

// The weight_map of a model.safetensors.index.json text: tensor name -> shard file name. UserError
// naming `origin`: not JSON; not an object with a "weight_map" object; an entry that is not a
// non-empty string; a shard that is an absolute path or has a ".." component. No I/O; CheckpointSet
// calls it on the index it reads.
std::map<std::string, std::string> parse_safetensors_index(std::string_view json_text, const std::string& origin);

// One .safetensors file mapped read-only (mmap). Move-only; unmaps on destruction.
// Thread safety: const methods may be called concurrently.
class SafetensorsFile {
 public:
  // Maps and validates `path`; throws UserError naming the file (and tensor) on any problem listed
  // in the file header above, or if the file cannot be opened or mapped.
  explicit SafetensorsFile(std::string path);
  ~SafetensorsFile();
  SafetensorsFile(SafetensorsFile&& other) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  uint64_t file_size_bytes() const { return size_bytes_; }
  uint64_t header_size_bytes() const { return header_bytes_; }
  // Every tensor, sorted by name.
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
  // The optional "__metadata__" map (e.g. {"format": "pt"}); empty if absent.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // The tensor called `name`, or nullptr.
  const SafetensorsTensor* find(std::string_view name) const;
  // The tensor called `name`; throws UserError naming the file and the tensor if absent.
  const SafetensorsTensor& at(std::string_view name) const;

 private:
  void unmap();
  void parse_header();

  std::string path_;
  void* map_ = nullptr;      // the whole file
  uint64_t size_bytes_ = 0;  // file size
  uint64_t header_bytes_ = 0;
  std::vector<SafetensorsTensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Throws UserError "<file>: tensor '<name>': shape [a, b] does not match the expected [c, d]" unless
// `t.shape == expected`.
void check_shape(const SafetensorsTensor& t, const TensorShape& expected);

// Converts `t` to fp32 after check_shape(t, expected). `dst` holds t.numel() floats. Values convert
// exactly (every supported dtype is a subset of fp32); NaN and inf pass through.
void tensor_to_f32(const SafetensorsTensor& t, const TensorShape& expected, float* dst);
std::vector<float> tensor_to_f32(const SafetensorsTensor& t, const TensorShape& expected);

// Missing and unexpected tensor names, from CheckpointSet::compare_names.
struct CheckpointNameDiff {
  std::vector<std::string> missing;     // expected but in no file, sorted
  std::vector<std::string> unexpected;  // in a file but not expected, sorted
  bool ok() const { return missing.empty() && unexpected.empty(); }
};

// All tensors of a checkpoint, sharded or not, found by name.
//
// `path` may be
//   * a directory holding model.safetensors.index.json (sharded) or model.safetensors (one file),
//   * a *.safetensors.index.json file (its shards are resolved relative to its directory),
//   * a single .safetensors file.
// Every shard is mapped and validated. For an index: its weight_map must be an object of
// tensor -> shard file name (a plain relative path inside the directory, no ".."); each listed tensor
// must be in the shard the index names; a tensor may appear in only one shard; a tensor in a shard
// but absent from the index is an error (the index is what loaders trust). Errors are UserErrors
// naming the index or shard and the tensor.
// Elements of a tensor that are not finite, found from their bit patterns (no conversion).
struct NonFiniteCount {
  int64_t nan = 0, inf = 0;
  bool any() const { return nan + inf > 0; }
};
NonFiniteCount count_nonfinite(const SafetensorsTensor& t);

class CheckpointSet {
 public:
  explicit CheckpointSet(const std::string& path);

  // What was opened: the directory, index or file given (for messages).
  const std::string& origin() const { return origin_; }
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }
  size_t size() const { return by_name_.size(); }
  std::vector<std::string> names() const;  // sorted

  const SafetensorsTensor* find(std::string_view name) const;
  // Throws UserError "<origin>: tensor '<name>' not found (checkpoint has N tensors in K files)".
  const SafetensorsTensor& at(std::string_view name) const;

  // Which of `expected` are missing and which present names are not in `expected`.
  CheckpointNameDiff compare_names(std::span<const std::string> expected) const;
  // Throws one UserError listing every missing tensor (with the checkpoint it was looked for in) and
  // every unexpected tensor (with the file holding it); at most 20 names of each kind are spelled out.
  void require_names(std::span<const std::string> expected) const;

  // "<origin>: N of the M tensors hold NaN or Inf values (name: a NaN and b Inf of n, ...; at most 5
  // named)", or "" when every value is finite: a run with such weights computes NaN (`ppu run` and
  // `ppu serve` print it as a warning). Reads every byte of the weights once.
  std::string nonfinite_report() const;

  // tensor_to_f32(at(name), expected).
  std::vector<float> read_f32(std::string_view name, const TensorShape& expected) const;
  void read_f32(std::string_view name, const TensorShape& expected, float* dst) const;

 private:
  void add_file(std::unique_ptr<SafetensorsFile> f);

  std::string origin_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const SafetensorsTensor*, std::less<>> by_name_;
};

}  // namespace ppu
