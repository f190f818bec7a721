// Tests of models/SafetensorsWriter (and models/AtomicFile under it): every dtype and edge shape
// (0-d, empty, odd) round-trips bit-exactly through the project's reader; a tiny file matches a
// hand-written byte string (u64 length, compact header with __metadata__ first and tensors by name,
// space padding to 8 bytes, contiguous data); larger files keep the rules Hugging Face's reader
// enforces (header starts with '{', offsets contiguous from 0 to the end of the file); each bad input
// gets its error; I/O failures (missing or non-directory parent, a directory in the way, a full disk)
// name the path and leave no half file and no temporary file behind.
#include <gtest/gtest.h>

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "FileSizeLimit.hpp"
#include "TestUtil.hpp"
#include "models/Safetensors.hpp"
#include "models/SafetensorsWriter.hpp"

namespace ppu {
namespace {

namespace fs = std::filesystem;

const std::vector<DType> kAllDTypes = {DType::kBF16, DType::kF16, DType::kF32, DType::kF8E4M3, DType::kF8E5M2};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// A fresh, empty scratch directory for this test.
std::string scratch_dir() {
  const std::string d = test::temp_path("dir");
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// Files in `dir` whose name contains ".tmp-" (what a failed atomic write must not leave).
std::vector<std::string> temp_files(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().find(".tmp-") != std::string::npos) out.push_back(e.path().string());
  return out;
}

TEST(SafetensorsWriter, EveryDTypeAndShapeRoundTripsBitExactly) {
  const std::vector<TensorShape> shapes = {{}, {0}, {1}, {7}, {3, 5}, {2, 0, 3}, {1, 3, 1, 2}};
  SafetensorsWriter w;
  w.set_metadata("format", "pt");
  w.set_metadata("note", "written by a test \xe2\x9c\x93");  // UTF-8 passes through
  std::vector<std::pair<std::string, std::vector<float>>> expect;
  uint64_t seed = 1;
  for (DType t : kAllDTypes)
    for (size_t s = 0; s < shapes.size(); ++s) {
      int64_t n = 1;
      for (int64_t d : shapes[s]) n *= d;
      const std::string name = fmt::format("{}.shape{}", safetensors_dtype_name(t), s);
      std::vector<float> v = test::random_values(static_cast<size_t>(n), t, seed++, -3.0f, 3.0f);
      w.add_f32(name, t, shapes[s], v);
      expect.emplace_back(name, std::move(v));
    }
  // Raw bytes are written as given (add), including patterns that are NaN in the dtype.
  std::vector<std::byte> raw = {std::byte{0xff}, std::byte{0x7f}, std::byte{0x01}, std::byte{0x80}};
  w.add("raw.bf16", DType::kBF16, {2}, raw);

  const std::string path = scratch_dir() + "/all.safetensors";
  w.write(path);
  EXPECT_EQ(fs::file_size(path), w.file_size_bytes());
  EXPECT_EQ(read_file(path), w.to_bytes());

  SafetensorsFile f(path);
  EXPECT_EQ(f.tensors().size(), expect.size() + 1);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("note"), "written by a test \xe2\x9c\x93");
  size_t i = 0;
  for (DType t : kAllDTypes)
    for (const TensorShape& shape : shapes) {
      const auto& [name, want] = expect[i++];
      const SafetensorsTensor& x = f.at(name);
      EXPECT_EQ(x.dtype, t) << name;
      EXPECT_EQ(x.shape, shape) << name;
      const std::vector<float> got = tensor_to_f32(x, shape);
      ASSERT_EQ(got.size(), want.size()) << name;
      for (size_t k = 0; k < got.size(); ++k) EXPECT_EQ(f32_bits(got[k]), f32_bits(want[k])) << name << "[" << k << "]";
    }
  const SafetensorsTensor& r = f.at("raw.bf16");
  ASSERT_EQ(r.size_bytes, raw.size());
  EXPECT_EQ(std::memcmp(r.data, raw.data(), raw.size()), 0);
}

TEST(SafetensorsWriter, TinyFileMatchesTheFormatByteForByte) {
  SafetensorsWriter w;
  w.add_f32("b", DType::kBF16, {}, std::vector<float>{1.0f});  // added first, written second (name order)
  w.add_f32("a", DType::kF32, {2}, std::vector<float>{1.0f, -2.0f});
  w.set_metadata("format", "pt");
  // Header: 139 bytes of JSON + 5 spaces = 144 = 0x90, so the data starts at 8 + 144 = 152 (8-aligned).
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"BF16","shape":[],"data_offsets":[8,10]}})"
      "     ";
  const std::string expected = std::string("\x90\0\0\0\0\0\0\0", 8) + header +
                               std::string("\x00\x00\x80\x3f" "\x00\x00\x00\xc0", 8) +  // a: 1.0f, -2.0f
                               std::string("\x80\x3f", 2);                                // b: bf16 1.0
  EXPECT_EQ(w.header(), header);
  EXPECT_EQ(w.to_bytes(), expected);
  EXPECT_EQ(w.file_size_bytes(), expected.size());

  // No tensors, no metadata: "{}" padded to 8 bytes is still a valid file.
  EXPECT_EQ(SafetensorsWriter().to_bytes(), std::string("\x08\0\0\0\0\0\0\0{}      ", 16));
}

TEST(SafetensorsWriter, LayoutKeepsTheRulesHuggingFacesReaderEnforces) {
  // safetensors (Rust) validates: header JSON starting with '{' (trailing spaces allowed); the
  // tensors' data_offsets, sorted, start at 0 and each begins where the previous ended; the last
  // ends at the end of the buffer. Odd sizes in mixed dtypes make misplaced offsets show.
  SafetensorsWriter w;
  w.add_f32("z.f32", DType::kF32, {3}, std::vector<float>{1, 2, 3});
  w.add_f32("m.bf16", DType::kBF16, {5}, std::vector<float>(5, 0.5f));
  w.add_f32("a.e4m3", DType::kF8E4M3, {1, 3}, std::vector<float>(3, 2.0f));
  w.add_f32("empty", DType::kF16, {4, 0}, std::vector<float>{});
  const std::string bytes = w.to_bytes();
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[static_cast<size_t>(i)]);
  ASSERT_LE(8 + n, bytes.size());
  EXPECT_EQ((8 + n) % 8, 0u);
  const std::string header = bytes.substr(8, n);
  EXPECT_EQ(header.front(), '{');
  const size_t end = header.find_last_not_of(' ');
  EXPECT_EQ(header[end], '}');
  const auto j = nlohmann::json::parse(header.substr(0, end + 1));
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& [name, e] : j.items()) ranges.emplace_back(e["data_offsets"][0], e["data_offsets"][1]);
  std::sort(ranges.begin(), ranges.end());
  uint64_t at = 0;
  for (const auto& [b, e] : ranges) {
    EXPECT_EQ(b, at);
    at = e;
  }
  EXPECT_EQ(at, bytes.size() - 8 - n);
}

TEST(SafetensorsWriter, BadTensorsAreRefusedNamingThem) {
  SafetensorsWriter w;
  w.add_f32("x", DType::kF32, {2}, std::vector<float>{1, 2});
  test::expect_error([&] { w.add_f32("x", DType::kBF16, {1}, std::vector<float>{1}); }, {"tensor 'x'", "added twice"});
  test::expect_error([&] { w.add("", DType::kF32, {}, std::vector<std::byte>(4)); }, {"non-empty name"});
  test::expect_error([&] { w.add("__metadata__", DType::kF32, {}, std::vector<std::byte>(4)); },
                     {"'__metadata__'", "reserved"});
  test::expect_error([&] { w.add("bad\xff", DType::kF32, {}, std::vector<std::byte>(4)); }, {"not valid UTF-8"});
  test::expect_error([&] { w.add("y", DType::kBF16, {2, 3}, std::vector<std::byte>(10)); },
                     {"tensor 'y'", "10 bytes given", "shape [2, 3] of BF16 needs 12"});
  test::expect_error([&] { w.add("y", DType::kF32, {2, -1}, {}); }, {"tensor 'y'", "[2, -1]", "negative"});
  test::expect_error([&] { w.add("y", DType::kF32, {int64_t{1} << 40, int64_t{1} << 40}, {}); },
                     {"tensor 'y'", "too many elements"});
  test::expect_error([&] { w.add_f32("y", DType::kF32, {3}, std::vector<float>{1, 2}); },
                     {"tensor 'y'", "2 values given for shape [3]"});
  test::expect_error([&] { w.set_metadata("k", "\xc3"); }, {"metadata 'k'", "UTF-8"});
  EXPECT_EQ(w.size(), 1u) << "a refused tensor is not added";
}

TEST(SafetensorsWriter, IOFailuresNameThePathAndLeaveNoHalfFile) {
  const std::string dir = scratch_dir();
  SafetensorsWriter w;
  w.add_f32("w", DType::kF32, {4096}, std::vector<float>(4096, 1.0f));  // 16 KiB of data

  test::expect_error([&] { w.write(dir + "/missing/sub/x.safetensors"); },
                     {dir + "/missing/sub/x.safetensors", "cannot create file", "No such file or directory"});
  test::write_file(dir + "/plain", "a file, not a directory");
  test::expect_error([&] { w.write(dir + "/plain/x.safetensors"); }, {dir + "/plain/x.safetensors", "Not a directory"});
  fs::create_directories(dir + "/taken/inside");
  test::expect_error([&] { w.write(dir + "/taken"); }, {dir + "/taken", "cannot write", "renaming"});
  EXPECT_TRUE(fs::is_directory(dir + "/taken/inside")) << "what was in the way is untouched";
  if (::geteuid() != 0) {  // root writes through permissions
    fs::create_directories(dir + "/readonly");
    fs::permissions(dir + "/readonly", fs::perms::owner_read | fs::perms::owner_exec);
    test::expect_error([&] { w.write(dir + "/readonly/x.safetensors"); },
                       {dir + "/readonly/x.safetensors", "Permission denied"});
    fs::permissions(dir + "/readonly", fs::perms::owner_all);
  }

  // A full disk halfway through the data: the previous file stays whole, no temporary is left.
  const std::string path = dir + "/model.safetensors";
  SafetensorsWriter old;
  old.add_f32("old", DType::kBF16, {3}, std::vector<float>{1, 2, 3});
  old.write(path);
  const std::string before = read_file(path);
  {
    test::FileSizeLimit full(8192);
    test::expect_error([&] { w.write(path); }, {path, "File too large"});
  }
  EXPECT_EQ(read_file(path), before);
  EXPECT_TRUE(temp_files(dir).empty()) << temp_files(dir).front();
  EXPECT_NO_THROW(SafetensorsFile{path});

  // And with room, the new file replaces the old one whole.
  w.write(path);
  EXPECT_EQ(read_file(path), w.to_bytes());
  EXPECT_TRUE(temp_files(dir).empty());
}

}  // namespace
}  // namespace ppu
