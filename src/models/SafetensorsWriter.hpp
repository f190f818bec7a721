// SafetensorsWriter: tensors -> one .safetensors file, byte for byte as the format specifies, so that
// models/Safetensors (this project's reader) and Hugging Face's safetensors library load it.
//
//   SafetensorsWriter w;
//   w.set_metadata("format", "pt");                       // transformers wants this on model weights
//   w.add_f32("model.norm.weight", DType::kBF16, {64}, values);   // fp32 values rounded to bf16 (RNE)
//   w.add("step", DType::kF32, {}, raw_bytes);             // raw little-endian bytes, a 0-d tensor
//   w.write("out/model.safetensors");                      // atomic: the old file or the whole new one
//
// Layout written (https://github.com/huggingface/safetensors, "Format"):
//
//   [u64 little-endian N][N bytes of header][data: every tensor's bytes, in name order, no gaps]
//   header = {"__metadata__":{"<key>":"<value>",...},"<name>":{"dtype":"BF16","shape":[d0,...],
//             "data_offsets":[begin,end]},...}   compact JSON, __metadata__ first (only if any),
//             tensors sorted by name (byte order), then spaces up to a multiple of 8 bytes, so that
//             the data section starts 8-byte aligned (as the Rust library pads).
//
// Offsets are relative to the data section; the first tensor starts at 0 and each next one where the
// previous ended, the last ending at the end of the file - what Hugging Face's reader demands
// (contiguous, complete buffer). A tensor's bytes are row-major, little-endian, numel x dtype size;
// 0-d tensors ([]) hold one element, tensors with a 0 dimension hold none.
//
// Not here: sharded checkpoints (an index over several files), integer/fp64/bool dtypes, streaming
// tensors larger than memory (the writer holds every tensor's bytes until write), alignment of each
// tensor to its element size (readers must not assume it; models/Safetensors does not).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <ostream>
#include <span>
#include <string>
#include <vector>

#include "arch/DType.hpp"
#include "models/Safetensors.hpp"

namespace ppu {

class SafetensorsWriter {
 public:
  // Adds tensor `name` with `bytes` (numel(shape) x dtype size, little-endian, row-major), taken
  // over without a copy. Every DType is accepted (BF16, F16, F32, F8_E4M3, F8_E5M2). Throws
  // UserError naming the tensor for: an empty name, the reserved name "__metadata__", a name that
  // is not valid UTF-8, a name already added, a negative dimension or an element count that
  // overflows, and a byte count other than numel x dtype size.
  void add(const std::string& name, DType dtype, TensorShape shape, std::vector<std::byte> bytes);
  // As add, from fp32 values rounded to `dtype` (round to nearest even; exact for values already in
  // it). `values` holds numel(shape) floats.
  void add_f32(const std::string& name, DType dtype, TensorShape shape, std::span<const float> values);
  // Sets "__metadata__"[key] = value (replacing an earlier value). UserError for a key or value that
  // is not valid UTF-8.
  void set_metadata(const std::string& key, const std::string& value);

  size_t size() const { return tensors_.size(); }
  // The header as written: compact JSON padded with spaces so that 8 + its length is a multiple of 8.
  // UserError if it would exceed the format's kSafetensorsMaxHeaderBytes.
  std::string header() const;
  // Bytes of the whole file: 8 + header().size() + every tensor's bytes.
  uint64_t file_size_bytes() const;

  // Writes the whole file to `out`. `origin` names the destination in messages. Throws UserError
  // "<origin>: cannot write ..." if the stream fails.
  void serialize(std::ostream& out, const std::string& origin) const;
  // The whole file in memory (tests, small files).
  std::string to_bytes() const;
  // Writes `path` atomically (models/AtomicFile): never a half file, even on a full disk. Throws
  // UserError naming the path and the system's reason on any I/O failure.
  void write(const std::string& path) const;

 private:
  struct Entry {
    DType dtype = DType::kF32;
    TensorShape shape;
    std::vector<std::byte> bytes;
  };
  std::map<std::string, Entry> tensors_;  // sorted by name: the file's data order
  std::map<std::string, std::string> metadata_;
};

}  // namespace ppu
