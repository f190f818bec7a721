// Tests of models/Safetensors: files written here by a small little-endian safetensors writer
// (independent of the reader) round-trip every supported dtype bit-exactly; sharded checkpoints
// resolve through their index; and every kind of corruption or mismatch the reader promises to catch
// gets its own test asserting the message names the file and the tensor.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "TestUtil.hpp"
#include "models/Safetensors.hpp"

namespace ppu {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// A minimal safetensors writer, for tests only.

struct TensorBlob {
  std::string name;
  std::string dtype;  // safetensors spelling, written as given (so tests can write invalid ones)
  std::vector<int64_t> shape;
  std::string bytes;
};

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

// A file from a header text and a data section, with the header length written as `length`
// (default: the header's true length).
std::string raw_file(const std::string& header, const std::string& data, std::optional<uint64_t> length = {}) {
  return le64(length.value_or(header.size())) + header + data;
}

// A well-formed file: tensors laid out back to back in the given order. pad_to: the header is padded
// with spaces to a multiple of this (8, as the reference writer does; 1 leaves it unpadded, so that
// data can start at an odd address).
std::string safetensors_file(const std::vector<TensorBlob>& tensors, const json& metadata = nullptr,
                             size_t pad_to = 8) {
  json h = json::object();
  std::string data;
  for (const auto& t : tensors) {
    h[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data += t.bytes;
  }
  if (!metadata.is_null()) h["__metadata__"] = metadata;
  std::string header = h.dump();
  while (header.size() % pad_to) header += ' ';
  return raw_file(header, data);
}

// fp32 values stored in `t`, as little-endian bytes.
std::string encode(DType t, const std::vector<float>& v) {
  std::string out(v.size() * static_cast<size_t>(dtype_size_bytes(t)), '\0');
  if (v.empty()) return out;
  convert_from_f32(t, v.data(), out.data(), static_cast<int64_t>(v.size()));
  return out;
}

TensorBlob blob(const std::string& name, DType t, std::vector<int64_t> shape, const std::vector<float>& v) {
  return {name, std::string(safetensors_dtype_name(t)), std::move(shape), encode(t, v)};
}

// Writes `bytes` to a per-test temp file and returns its path.
std::string write_temp(const std::string& file, const std::string& bytes) {
  const std::string path = test::temp_path(file);
  test::write_file(path, bytes);
  return path;
}

// A per-test empty directory.
std::string temp_dir(const std::string& name) {
  const fs::path d = test::temp_path(name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

const std::vector<DType> kAllDTypes = {DType::kF32, DType::kBF16, DType::kF16, DType::kF8E4M3, DType::kF8E5M2};

// ---------------------------------------------------------------------------------------------
// Round trips

TEST(Safetensors, DTypeNamesRoundTrip) {
  for (DType t : kAllDTypes) EXPECT_EQ(dtype_from_safetensors_name(safetensors_dtype_name(t)), t);
  for (const char* s : {"I64", "F64", "U8", "BOOL", "bf16", "F8_E8M0", ""})
    EXPECT_FALSE(dtype_from_safetensors_name(s).has_value()) << s;
}

// Every dtype x {matrix, odd vector, scalar, empty}: bytes, shape and values come back exactly
// (the values were rounded to the dtype first, so conversion to fp32 is exact: tolerance 0).
TEST(Safetensors, RoundTripEveryDType) {
  const std::vector<std::vector<int64_t>> shapes = {{3, 5}, {7}, {}, {0, 4}, {2, 1, 3}};
  std::vector<TensorBlob> blobs;
  std::vector<std::vector<float>> values;
  std::vector<std::string> names;
  uint64_t seed = 1;
  for (DType t : kAllDTypes) {
    for (const auto& s : shapes) {
      int64_t n = 1;
      for (int64_t d : s) n *= d;
      values.push_back(test::random_values(static_cast<size_t>(n), t, seed++, -4.0f, 4.0f));
      names.push_back(fmt::format("{}.{}", safetensors_dtype_name(t), names.size()));
      blobs.push_back(blob(names.back(), t, s, values.back()));
    }
  }
  const std::string path = write_temp("all.safetensors", safetensors_file(blobs, json{{"format", "pt"}}));
  const SafetensorsFile f(path);
  EXPECT_EQ(f.path(), path);
  EXPECT_EQ(f.tensors().size(), blobs.size());
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.header_size_bytes() % 8, 0u);
  for (size_t i = 0; i < blobs.size(); ++i) {
    SCOPED_TRACE(names[i]);
    const SafetensorsTensor& t = f.at(names[i]);
    EXPECT_EQ(t.name, names[i]);
    EXPECT_EQ(t.file, path);
    EXPECT_EQ(safetensors_dtype_name(t.dtype), blobs[i].dtype);
    EXPECT_EQ(t.shape, blobs[i].shape);
    EXPECT_EQ(t.numel(), static_cast<int64_t>(values[i].size()));
    EXPECT_EQ(t.size_bytes, blobs[i].bytes.size());
    EXPECT_EQ(std::memcmp(t.data, blobs[i].bytes.data(), blobs[i].bytes.size()), 0);
    const std::vector<float> back = tensor_to_f32(t, blobs[i].shape);
    ASSERT_EQ(back.size(), values[i].size());
    for (size_t k = 0; k < back.size(); ++k) EXPECT_EQ(f32_bits(back[k]), f32_bits(values[i][k])) << k;
  }
}

// Infinities and NaN survive in the dtypes that have them; e4m3 has no infinity, only NaN.
TEST(Safetensors, SpecialValuesPassThrough) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<TensorBlob> blobs;
  for (DType t : {DType::kF32, DType::kBF16, DType::kF16, DType::kF8E5M2})
    blobs.push_back(blob(std::string(safetensors_dtype_name(t)), t, {4}, {inf, -inf, nan, -0.0f}));
  blobs.push_back(blob("F8_E4M3", DType::kF8E4M3, {2}, {nan, -0.0f}));
  const SafetensorsFile f(write_temp("special.safetensors", safetensors_file(blobs)));
  for (const auto& b : blobs) {
    SCOPED_TRACE(b.name);
    const auto v = tensor_to_f32(f.at(b.name), b.shape);
    if (v.size() == 4) {
      EXPECT_EQ(v[0], inf);
      EXPECT_EQ(v[1], -inf);
      EXPECT_TRUE(std::isnan(v[2]));
      EXPECT_TRUE(std::signbit(v[3]) && v[3] == 0.0f);
    } else {
      EXPECT_TRUE(std::isnan(v[0]));
      EXPECT_TRUE(std::signbit(v[1]) && v[1] == 0.0f);
    }
  }
}

// NaN and Inf are counted from bit patterns in every float dtype (fp8e4m3: NaN only); a checkpoint
// holding any is reported by name (issue 17: such weights ran without a word and printed "!!").
TEST(Safetensors, NonFiniteValuesAreCountedAndReported) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<TensorBlob> blobs;
  for (DType t : {DType::kF32, DType::kBF16, DType::kF16, DType::kF8E5M2})
    blobs.push_back(blob(std::string(safetensors_dtype_name(t)), t, {6}, {inf, -inf, nan, 1.5f, -0.0f, 448.0f}));
  blobs.push_back(blob("F8_E4M3", DType::kF8E4M3, {3}, {nan, -0.0f, 448.0f}));  // 448: e4m3's largest, finite
  blobs.push_back(blob("finite", DType::kBF16, {3}, {1.0f, -2.0f, 65504.0f}));
  const std::string path = write_temp("nonfinite.safetensors", safetensors_file(blobs));
  const SafetensorsFile f(path);
  for (const auto& b : blobs) {
    SCOPED_TRACE(b.name);
    const NonFiniteCount c = count_nonfinite(f.at(b.name));
    EXPECT_EQ(c.nan, b.name == "finite" ? 0 : 1);
    EXPECT_EQ(c.inf, b.name == "finite" || b.name == "F8_E4M3" ? 0 : 2);
  }
  const std::string r = CheckpointSet(path).nonfinite_report();
  EXPECT_NE(r.find("5 of the 6 tensors hold NaN or Inf values"), std::string::npos) << r;
  EXPECT_NE(r.find("BF16: 1 NaN and 2 Inf of 6"), std::string::npos) << r;
  EXPECT_EQ(r.find("finite:"), std::string::npos) << r;
  EXPECT_EQ(CheckpointSet(write_temp("finite.safetensors", safetensors_file({blobs.back()}))).nonfinite_report(), "");
}

// An unpadded header of odd length puts the data section at an odd address: values still convert.
TEST(Safetensors, UnalignedDataConverts) {
  for (DType t : {DType::kF32, DType::kBF16, DType::kF16}) {
    SCOPED_TRACE(dtype_name(t));
    const auto v = test::random_values(40000, t, 7);  // more than one staging chunk
    std::vector<TensorBlob> blobs = {blob("w", t, {200, 200}, v)};
    std::string bytes = safetensors_file(blobs, nullptr, 1);
    if ((bytes.size() - blobs[0].bytes.size()) % 2 == 0) {  // make the header length odd
      blobs[0].name = "ww";
      bytes = safetensors_file(blobs, nullptr, 1);
    }
    const SafetensorsFile f(write_temp("odd.safetensors", bytes));
    const SafetensorsTensor& w = f.tensors().at(0);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(w.data) % 2, 1u);
    std::vector<float> back(v.size());
    tensor_to_f32(w, {200, 200}, back.data());
    for (size_t k = 0; k < v.size(); ++k) ASSERT_EQ(f32_bits(back[k]), f32_bits(v[k])) << k;
  }
}

TEST(Safetensors, EmptyHeaderIsAnEmptyFile) {
  const SafetensorsFile f(write_temp("empty.safetensors", raw_file("{}", "")));
  EXPECT_TRUE(f.tensors().empty());
  EXPECT_TRUE(f.metadata().empty());
  EXPECT_EQ(f.find("x"), nullptr);
}

// parse_safetensors (the reader without a file, which SafetensorsFile and fuzz/ use): the same
// tensors and metadata as the mapped file, data pointing into the bytes given, errors naming `origin`.
TEST(Safetensors, ParsesBytesAsTheFileReaderDoes) {
  const std::string bytes = safetensors_file({blob("w", DType::kBF16, {2, 3}, {1, 2, 3, 4, 5, 6}),
                                              blob("b", DType::kF32, {3}, {-1, 0, 1})},
                                             json{{"format", "pt"}});
  const SafetensorsFile f(write_temp("bytes.safetensors", bytes));
  const auto* p = reinterpret_cast<const std::byte*>(bytes.data());
  const SafetensorsHeader h = parse_safetensors({p, bytes.size()}, "memory");
  EXPECT_EQ(h.header_bytes, f.header_size_bytes());
  EXPECT_EQ(h.metadata, f.metadata());
  ASSERT_EQ(h.tensors.size(), 2u);
  for (const SafetensorsTensor& t : h.tensors) {
    const SafetensorsTensor& ft = f.at(t.name);
    EXPECT_EQ(t.file, "memory");
    EXPECT_EQ(t.shape, ft.shape);
    EXPECT_EQ(t.offset_bytes, ft.offset_bytes);
    EXPECT_EQ(t.data, p + 8 + h.header_bytes + t.offset_bytes);
    EXPECT_EQ(tensor_to_f32(t, t.shape), tensor_to_f32(ft, ft.shape));
  }
  test::expect_error([&] { parse_safetensors({p, 7}, "memory"); }, {"memory: file is 7 bytes, too short"});
  test::expect_error([&] { parse_safetensors({p, bytes.size() - 1}, "memory"); },
                     {"memory: tensor 'b'", "end past the data section"});
}

// parse_safetensors_index: the weight_map as read from the text, errors naming `origin`.
TEST(CheckpointSet, ParsesIndexText) {
  const auto m = parse_safetensors_index(R"({"metadata": {}, "weight_map": {"a": "x.safetensors", "b": "d/y.safetensors"}})",
                                         "idx");
  EXPECT_EQ(m, (std::map<std::string, std::string>{{"a", "x.safetensors"}, {"b", "d/y.safetensors"}}));
  test::expect_error([&] { parse_safetensors_index("[", "idx"); }, {"idx: not valid JSON"});
  test::expect_error([&] { parse_safetensors_index(R"({"weight_map": {"a": "../x"}})", "idx"); },
                     {"idx: weight_map entry for tensor 'a' names shard '../x'"});
}

TEST(Safetensors, GapsBetweenTensorsAreAllowed) {
  const std::string header =
      R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})";
  const std::string data = encode(DType::kF32, {1.0f}) + std::string(4, '\x7f') + encode(DType::kF32, {2.0f});
  const SafetensorsFile f(write_temp("gap.safetensors", raw_file(header, data)));
  EXPECT_EQ(tensor_to_f32(f.at("b"), {1})[0], 2.0f);
}

TEST(Safetensors, MovedFileKeepsItsMapping) {
  const auto v = test::random_values(6, DType::kBF16, 3);
  SafetensorsFile a(write_temp("m.safetensors", safetensors_file({blob("w", DType::kBF16, {2, 3}, v)})));
  SafetensorsFile b(std::move(a));
  EXPECT_EQ(tensor_to_f32(b.at("w"), {2, 3}), v);
  SafetensorsFile c(write_temp("m2.safetensors", safetensors_file({blob("z", DType::kF32, {1}, {5.0f})})));
  c = std::move(b);
  EXPECT_EQ(tensor_to_f32(c.at("w"), {2, 3}), v);
}

// ---------------------------------------------------------------------------------------------
// One test per corruption: the message names the file, the tensor and the problem.

// Header text of one tensor entry.
std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                  const std::string& offsets) {
  return fmt::format(R"("{}":{{"dtype":{},"shape":{},"data_offsets":{}}})", name, dtype, shape, offsets);
}

// A header object holding the given entries.
std::string header_of(const std::string& a) { return fmt::format("{{{}}}", a); }
std::string header_of(const std::string& a, const std::string& b) { return fmt::format("{{{},{}}}", a, b); }

// Opening a file made of `header` + `data` fails with a message holding the path and `parts`.
void expect_corrupt(const std::string& header, const std::string& data, std::initializer_list<std::string> parts,
                    std::optional<uint64_t> length = {}) {
  const std::string path = write_temp("bad.safetensors", raw_file(header, data, length));
  test::expect_error([&] { SafetensorsFile f(path); }, {path});
  test::expect_error([&] { SafetensorsFile f(path); }, parts);
}

TEST(SafetensorsErrors, FileTooShortForHeaderLength) {
  for (size_t n : {0, 1, 7}) {
    const std::string path = write_temp("short.safetensors", std::string(n, '\0'));
    test::expect_error([&] { SafetensorsFile f(path); },
                       {path, fmt::format("file is {} bytes", n), "too short for the 8-byte header length"});
  }
}

TEST(SafetensorsErrors, HeaderLengthAbsurd) {
  expect_corrupt("{}", "", {"header length 1099511627776 bytes exceeds the format's limit of 100000000 bytes"},
                 1ull << 40);
  expect_corrupt("{}", "", {"header length 18446744073709551615"}, ~0ull);  // all ones
}

TEST(SafetensorsErrors, HeaderLengthPastEndOfFile) {
  expect_corrupt("{}", "", {"header length 1000 bytes runs past the end of the file (2 bytes after"}, 1000);
}

TEST(SafetensorsErrors, HeaderNotJson) {
  expect_corrupt("{\"a\": ", "", {"header is not valid JSON"});
  expect_corrupt("\xff\xfe garbage  ", "", {"header is not valid JSON"});
}

TEST(SafetensorsErrors, HeaderNotAnObject) {
  expect_corrupt("[1, 2]", "", {"header must be a JSON object of tensors, got array"});
  expect_corrupt("\"x\"", "", {"got string"});
}

TEST(SafetensorsErrors, DuplicateTensorName) {
  const std::string e = entry("w", "\"F32\"", "[1]", "[0,4]");
  expect_corrupt(header_of(e, e), std::string(4, '\0'), {"tensor 'w' appears more than once"});
}

TEST(SafetensorsErrors, EntryNotAnObjectOrIncomplete) {
  expect_corrupt(R"({"w": [1,2]})", "", {"tensor 'w'", "entry must be an object", "got array"});
  expect_corrupt(R"({"w": {"shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0'),
                 {"tensor 'w'", "missing \"dtype\""});
  expect_corrupt(R"({"w": {"dtype":"F32","data_offsets":[0,4]}})", std::string(4, '\0'),
                 {"tensor 'w'", "missing \"shape\""});
  expect_corrupt(R"({"w": {"dtype":"F32","shape":[1]}})", std::string(4, '\0'),
                 {"tensor 'w'", "missing \"data_offsets\""});
}

TEST(SafetensorsErrors, UnknownDType) {
  for (const char* d : {"I64", "F64", "BOOL", "bf16", "F4"})
    expect_corrupt(header_of(entry("w", fmt::format("\"{}\"", d), "[1]", "[0,8]")), std::string(8, '\0'),
                   {"tensor 'w'", fmt::format("dtype '{}' is not supported", d),
                    "supported: BF16, F16, F32, F8_E4M3, F8_E5M2"});
  expect_corrupt(header_of(entry("w", "7", "[1]", "[0,4]")), std::string(4, '\0'),
                 {"tensor 'w'", "dtype must be a string, got 7"});
}

TEST(SafetensorsErrors, NegativeOrNonIntegerDims) {
  expect_corrupt(header_of(entry("w", "\"F32\"", "[2,-3]", "[0,0]")), "",
                 {"tensor 'w'", "shape [2,-3]: dimension 1 is -3, must be a non-negative integer"});
  expect_corrupt(header_of(entry("w", "\"F32\"", "[1.5]", "[0,4]")), std::string(4, '\0'),
                 {"tensor 'w'", "dimension 0 is 1.5"});
  expect_corrupt(header_of(entry("w", "\"F32\"", "3", "[0,12]")), std::string(12, '\0'),
                 {"tensor 'w'", "shape must be an array"});
}

TEST(SafetensorsErrors, ShapeTooLargeToAddress) {
  expect_corrupt(header_of(entry("w", "\"F32\"", "[4294967296,4294967296]", "[0,4]")), std::string(4, '\0'),
                 {"tensor 'w'", "too many elements"});
}

TEST(SafetensorsErrors, DataOffsetsMalformed) {
  const std::string data(8, '\0');
  for (const char* off : {"[0]", "[0,4,8]", "[4,0]", "[-4,4]", "\"0-4\"", "[0,4.0]"})
    expect_corrupt(header_of(entry("w", "\"F32\"", "[1]", off)), data,
                   {"tensor 'w'", "data_offsets must be [begin, end] with 0 <= begin <= end", off});
}

TEST(SafetensorsErrors, TruncatedFile) {
  // A good file with its last bytes cut off.
  const auto v = test::random_values(16, DType::kBF16, 5);
  std::string bytes = safetensors_file({blob("a", DType::kBF16, {4}, {1, 2, 3, 4}), blob("b", DType::kBF16, {16}, v)});
  bytes.resize(bytes.size() - 3);
  const std::string path = write_temp("cut.safetensors", bytes);
  test::expect_error([&] { SafetensorsFile f(path); },
                     {path, "tensor 'b'", "data_offsets [8,40] end past the data section (37 bytes)", "truncated"});
}

TEST(SafetensorsErrors, SizeDisagreesWithShape) {
  expect_corrupt(header_of(entry("w", "\"BF16\"", "[2,3]", "[0,8]")), std::string(8, '\0'),
                 {"tensor 'w'", "data_offsets [0,8] span 8 bytes but shape [2, 3] of BF16 needs 12 bytes",
                  "the header lies"});
  expect_corrupt(header_of(entry("w", "\"F32\"", "[]", "[0,0]")), "", {"shape [] of F32 needs 4 bytes"});
}

TEST(SafetensorsErrors, OverlappingTensors) {
  const std::string h = header_of(entry("a", "\"F32\"", "[2]", "[0,8]"), entry("b", "\"F32\"", "[2]", "[4,12]"));
  expect_corrupt(h, std::string(12, '\0'), {"tensors 'a' (bytes [0, 8)) and 'b' (bytes [4, 12)) overlap"});
  // An empty tensor inside another's range occupies nothing and is fine.
  const std::string ok = header_of(entry("a", "\"F32\"", "[2]", "[0,8]"), entry("e", "\"F32\"", "[0]", "[4,4]"));
  EXPECT_NO_THROW(SafetensorsFile(write_temp("ok.safetensors", raw_file(ok, std::string(8, '\0')))));
}

TEST(SafetensorsErrors, MetadataNotStrings) {
  expect_corrupt(R"({"__metadata__": {"format": 1}})", "", {"__metadata__ value of 'format' must be a string"});
  expect_corrupt(R"({"__metadata__": [1]})", "", {"__metadata__ must be an object of strings"});
}

TEST(SafetensorsErrors, NotARegularFileOrMissing) {
  const std::string dir = temp_dir("d");
  test::expect_error([&] { SafetensorsFile f(dir); }, {dir, "not a regular file"});
  const std::string missing = dir + "/nope.safetensors";
  test::expect_error([&] { SafetensorsFile f(missing); }, {missing, "cannot open file"});
}

TEST(SafetensorsErrors, MissingTensorAndShapeMismatch) {
  const std::string path = write_temp("w.safetensors", safetensors_file({blob("w", DType::kF32, {2, 3}, {1, 2, 3, 4, 5, 6})}));
  const SafetensorsFile f(path);
  test::expect_error([&] { (void)f.at("v"); }, {path, "tensor 'v' not found", "1 tensors"});
  test::expect_error([&] { (void)tensor_to_f32(f.at("w"), {3, 2}); },
                     {path, "tensor 'w'", "shape [2, 3] does not match the expected [3, 2]"});
  test::expect_error([&] { (void)tensor_to_f32(f.at("w"), {6}); }, {"shape [2, 3]", "expected [6]"});
}

// ---------------------------------------------------------------------------------------------
// Checkpoint sets

// Two shards and an index, as Hugging Face writes them; returns the directory.
std::string write_sharded(const json& weight_map_override = nullptr) {
  const std::string dir = temp_dir("ckpt");
  test::write_file(dir + "/model-00001-of-00002.safetensors",
                   safetensors_file({blob("embed.weight", DType::kBF16, {4, 2}, {1, 2, 3, 4, 5, 6, 7, 8}),
                                     blob("norm.weight", DType::kF32, {2}, {0.5f, 2.0f})}));
  test::write_file(dir + "/model-00002-of-00002.safetensors",
                   safetensors_file({blob("layers.0.w", DType::kF16, {2, 2}, {1, -1, 0.25f, 8}),
                                     blob("layers.0.s", DType::kF8E4M3, {3}, {1, 2, 448})}));
  json wm = weight_map_override;
  if (wm.is_null())
    wm = {{"embed.weight", "model-00001-of-00002.safetensors"},
          {"norm.weight", "model-00001-of-00002.safetensors"},
          {"layers.0.w", "model-00002-of-00002.safetensors"},
          {"layers.0.s", "model-00002-of-00002.safetensors"}};
  test::write_file(dir + "/model.safetensors.index.json",
                   json{{"metadata", {{"total_size", 42}}}, {"weight_map", wm}}.dump(2));
  return dir;
}

const std::vector<std::string> kShardedNames = {"embed.weight", "layers.0.s", "layers.0.w", "norm.weight"};

TEST(CheckpointSet, ShardedDirectory) {
  const std::string dir = write_sharded();
  const CheckpointSet c(dir);
  EXPECT_EQ(c.origin(), dir);
  EXPECT_EQ(c.files().size(), 2u);
  EXPECT_EQ(c.size(), 4u);
  EXPECT_EQ(c.names(), kShardedNames);
  EXPECT_NE(c.at("layers.0.w").file.find("model-00002-of-00002.safetensors"), std::string::npos);
  EXPECT_EQ(c.read_f32("embed.weight", {4, 2}), (std::vector<float>{1, 2, 3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(c.read_f32("layers.0.w", {2, 2}), (std::vector<float>{1, -1, 0.25f, 8}));
  EXPECT_EQ(c.read_f32("layers.0.s", {3}), (std::vector<float>{1, 2, 448}));
  float norm[2];
  c.read_f32("norm.weight", {2}, norm);
  EXPECT_EQ(norm[0], 0.5f);
  EXPECT_EQ(norm[1], 2.0f);
  EXPECT_NO_THROW(c.require_names(kShardedNames));
  EXPECT_TRUE(c.compare_names(kShardedNames).ok());
  // The index itself can be given too.
  EXPECT_EQ(CheckpointSet(dir + "/model.safetensors.index.json").size(), 4u);
}

TEST(CheckpointSet, SingleFileDirectoryAndPath) {
  const std::string dir = temp_dir("single");
  test::write_file(dir + "/model.safetensors", safetensors_file({blob("w", DType::kBF16, {2}, {1, 2})}));
  const CheckpointSet a(dir);
  EXPECT_EQ(a.files().size(), 1u);
  EXPECT_EQ(a.read_f32("w", {2}), (std::vector<float>{1, 2}));
  const CheckpointSet b(dir + "/model.safetensors");
  EXPECT_EQ(b.names(), std::vector<std::string>{"w"});
}

TEST(CheckpointSet, MissingTensorNamesTheCheckpoint) {
  const std::string dir = write_sharded();
  const CheckpointSet c(dir);
  EXPECT_EQ(c.find("lm_head.weight"), nullptr);
  test::expect_error([&] { (void)c.at("lm_head.weight"); },
                     {dir, "tensor 'lm_head.weight' not found", "4 tensors in 2 files"});
  test::expect_error([&] { (void)c.read_f32("embed.weight", {2, 4}); },
                     {"model-00001-of-00002.safetensors", "tensor 'embed.weight'", "shape [4, 2]",
                      "expected [2, 4]"});
}

TEST(CheckpointSet, MissingAndUnexpectedNamesReportedWithTheirFiles) {
  const std::string dir = write_sharded();
  const CheckpointSet c(dir);
  const std::vector<std::string> expected = {"embed.weight", "norm.weight", "layers.0.w", "lm_head.weight",
                                             "layers.1.w"};
  const CheckpointNameDiff d = c.compare_names(expected);
  EXPECT_EQ(d.missing, (std::vector<std::string>{"layers.1.w", "lm_head.weight"}));
  EXPECT_EQ(d.unexpected, std::vector<std::string>{"layers.0.s"});
  test::expect_error([&] { c.require_names(expected); },
                     {dir, "checkpoint does not match the model",
                      "2 missing tensors (expected by the model, in no file of " + dir + "): 'layers.1.w', 'lm_head.weight'",
                      "1 unexpected tensor (not used by the model): 'layers.0.s' (in " + dir +
                          "/model-00002-of-00002.safetensors)"});
}

TEST(CheckpointSet, LongNameListsAreCut) {
  const std::string dir = write_sharded();
  const CheckpointSet c(dir);
  std::vector<std::string> expected = kShardedNames;
  for (int i = 0; i < 25; ++i) expected.push_back(fmt::format("extra.{:02}", i));
  test::expect_error([&] { c.require_names(expected); }, {"25 missing tensors", "'extra.19', ... and 5 more"});
}

TEST(CheckpointSetErrors, DirectoryWithoutCheckpoint) {
  const std::string dir = temp_dir("none");
  test::expect_error([&] { CheckpointSet c(dir); },
                     {dir, "no model.safetensors.index.json or model.safetensors", "no .safetensors files"});
  test::write_file(dir + "/b.safetensors", "");
  test::write_file(dir + "/a.safetensors", "");
  test::expect_error([&] { CheckpointSet c(dir); }, {"it has a.safetensors, b.safetensors: pass one of them"});
}

TEST(CheckpointSetErrors, IndexNotJsonOrWithoutWeightMap) {
  const std::string dir = write_sharded();
  const std::string index = dir + "/model.safetensors.index.json";
  test::write_file(index, "{ nope");
  test::expect_error([&] { CheckpointSet c(dir); }, {index, "not valid JSON"});
  test::write_file(index, R"({"metadata": {}})");
  test::expect_error([&] { CheckpointSet c(dir); }, {index, "\"weight_map\""});
  test::write_file(index, R"({"weight_map": {"w": 3}})");
  test::expect_error([&] { CheckpointSet c(dir); }, {index, "entry for tensor 'w' must be a shard file name, got 3"});
}

TEST(CheckpointSetErrors, ShardOutsideDirectory) {
  for (const char* shard : {"../model-00001-of-00002.safetensors", "/abs/x.safetensors"}) {
    const std::string dir = write_sharded(json{{"w", shard}});
    test::expect_error([&] { CheckpointSet c(dir); },
                       {"tensor 'w'", fmt::format("names shard '{}', which is outside the checkpoint directory", shard)});
  }
}

TEST(CheckpointSetErrors, ShardFileMissing) {
  const std::string dir = write_sharded();
  fs::remove(dir + "/model-00002-of-00002.safetensors");
  test::expect_error([&] { CheckpointSet c(dir); }, {"model-00002-of-00002.safetensors", "cannot open file"});
}

TEST(CheckpointSetErrors, ShardCorruptNamesTheShard) {
  const std::string dir = write_sharded();
  const std::string shard = dir + "/model-00002-of-00002.safetensors";
  fs::resize_file(shard, fs::file_size(shard) - 1);
  test::expect_error([&] { CheckpointSet c(dir); }, {shard, "tensor 'layers.0.s'", "truncated"});
}

TEST(CheckpointSetErrors, IndexListsTensorTheShardLacks) {
  json wm = {{"embed.weight", "model-00001-of-00002.safetensors"},
             {"norm.weight", "model-00001-of-00002.safetensors"},
             {"layers.0.w", "model-00002-of-00002.safetensors"},
             {"layers.0.s", "model-00002-of-00002.safetensors"},
             {"layers.9.w", "model-00002-of-00002.safetensors"}};
  const std::string dir = write_sharded(wm);
  test::expect_error([&] { CheckpointSet c(dir); },
                     {"model.safetensors.index.json", "tensor 'layers.9.w' is listed in shard "
                                                      "'model-00002-of-00002.safetensors', which does not contain it"});
}

TEST(CheckpointSetErrors, ShardHoldsTensorTheIndexLacks) {
  json wm = {{"embed.weight", "model-00001-of-00002.safetensors"},
             {"norm.weight", "model-00001-of-00002.safetensors"},
             {"layers.0.w", "model-00002-of-00002.safetensors"}};
  const std::string dir = write_sharded(wm);
  test::expect_error([&] { CheckpointSet c(dir); },
                     {"model-00002-of-00002.safetensors", "tensor 'layers.0.s' is not listed in the index"});
}

TEST(CheckpointSetErrors, TensorInTheWrongShard) {
  json wm = {{"embed.weight", "model-00001-of-00002.safetensors"},
             {"norm.weight", "model-00002-of-00002.safetensors"},
             {"layers.0.w", "model-00002-of-00002.safetensors"},
             {"layers.0.s", "model-00002-of-00002.safetensors"}};
  const std::string dir = write_sharded(wm);
  test::expect_error([&] { CheckpointSet c(dir); },
                     {"tensor 'norm.weight' is in shard 'model-00001-of-00002.safetensors', but the index places it "
                      "in 'model-00002-of-00002.safetensors'"});
}

TEST(CheckpointSetErrors, SameTensorInTwoShards) {
  const std::string dir = write_sharded();
  // Shard 2 also carries norm.weight, which the index places in shard 1.
  test::write_file(dir + "/model-00002-of-00002.safetensors",
                   safetensors_file({blob("layers.0.w", DType::kF16, {2, 2}, {1, -1, 0.25f, 8}),
                                     blob("layers.0.s", DType::kF8E4M3, {3}, {1, 2, 448}),
                                     blob("norm.weight", DType::kF32, {2}, {0.5f, 2.0f})}));
  test::expect_error([&] { CheckpointSet c(dir); },
                     {"tensor 'norm.weight' is in shard 'model-00002-of-00002.safetensors', but the index places it"});
}

}  // namespace
}  // namespace ppu
