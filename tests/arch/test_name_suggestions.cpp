// Tests of arch/NameSuggestions (the "did you mean ...?" of unknown presets and commands) and of the
// case-insensitive preset lookup built on it (arch/Presets, models/ModelConfig).
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "TestUtil.hpp"
#include "arch/ChipSpec.hpp"
#include "arch/NameSuggestions.hpp"
#include "arch/Presets.hpp"
#include "models/ModelConfig.hpp"

namespace ppu {
namespace {

using Names = std::vector<std::string>;

TEST(NameSuggestions, SameNameIgnoringCase) {
  EXPECT_TRUE(same_name_ignoring_case("H100", "h100"));
  EXPECT_TRUE(same_name_ignoring_case("", ""));
  EXPECT_FALSE(same_name_ignoring_case("h100", "h1000"));
  EXPECT_FALSE(same_name_ignoring_case("h100", "h200"));
}

TEST(NameSuggestions, NearestByEditDistanceAndPrefix) {
  const Names chips = chip_preset_names();
  EXPECT_EQ(nearest_names("zhenwu", chips), Names{"zhenwu-810e"});  // a prefix, however far
  EXPECT_EQ(nearest_names("h10", chips), (Names{"h100", "h20"}));   // distance 1 both; the prefix first
  EXPECT_EQ(nearest_names("H1000", chips), Names{"h100"});          // case does not count
  EXPECT_EQ(nearest_names("gem", {"gemm", "copy"}), Names{"gemm"});
  EXPECT_EQ(nearest_names("trian", {"train"}), Names{"train"});  // a swap of neighbours is one edit
  // Only the smallest distance: "qwen3-4b" is 2 away from "qwen3-8", "qwen3-8b" 1.
  EXPECT_EQ(nearest_names("qwen3-8", {"qwen3-4b", "qwen3-8b", "qwen3-14b"}), Names{"qwen3-8b"});
  // At most three, prefix matches by distance.
  EXPECT_EQ(nearest_names("qwen3", {"qwen3-14b", "qwen3-4b", "qwen3-8b", "qwen3-max", "tiny"}),
            (Names{"qwen3-4b", "qwen3-8b", "qwen3-14b"}));
  EXPECT_EQ(nearest_names("qwen3", {"qwen3-4b", "qwen3-8b"}, 1), Names{"qwen3-4b"});
}

TEST(NameSuggestions, NothingCloseNothingSuggested) {
  EXPECT_TRUE(nearest_names("serv", {"chips", "bench", "run", "train"}).empty());  // "run" is 4 edits away
  EXPECT_TRUE(nearest_names("", {"a", "b"}).empty());
  EXPECT_TRUE(nearest_names("h100", {"h100", "h200"}).empty());  // a known name needs no suggestion
  EXPECT_TRUE(nearest_names("x", {}).empty());
  EXPECT_TRUE(nearest_names("z", {"zhenwu-8"}).empty());  // one letter is no prefix worth naming
  EXPECT_EQ(did_you_mean("serv", {"run"}), "");
}

TEST(NameSuggestions, DidYouMeanQuotesAndJoins) {
  EXPECT_EQ(did_you_mean("gem", {"gemm", "copy"}), "did you mean 'gemm'? ");
  EXPECT_EQ(did_you_mean("h10", {"h100", "h20"}), "did you mean 'h100' or 'h20'? ");
  EXPECT_EQ(did_you_mean("zhenwu", {"zhenwu-8", "zhenwu-16", "zhenwu-8-pcie"}),
            "did you mean 'zhenwu-8', 'zhenwu-16' or 'zhenwu-8-pcie'? ");
}

TEST(NameSuggestions, PresetsMatchIgnoringCase) {
  const auto p = find_builtin_preset("chips", "H100");
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->name, "h100");
  EXPECT_EQ(p->text, *builtin_preset("chips", "h100"));
  EXPECT_FALSE(find_builtin_preset("chips", "h10").has_value());
  EXPECT_EQ(load_chip("Zhenwu-810E").name, "zhenwu-810e");
  const ModelConfig m = load_model_config("Qwen3-0.6B");
  EXPECT_EQ(m.name, "qwen3-0.6b");  // the preset's own name, not as typed
  EXPECT_EQ(m.file, "<built-in>/models/qwen3-0.6b.json");
}

TEST(NameSuggestions, UnknownPresetsSuggestTheNearest) {
  test::expect_error([] { load_chip("zhenwu"); },
                     {"unknown chip 'zhenwu'; did you mean 'zhenwu-810e'? known chips: a100-80g", "chip .json file"});
  test::expect_error([] { load_model_config("qwen3-8"); },
                     {"unknown model 'qwen3-8'; did you mean 'qwen3-8b'? known models:", "config.json or its directory"});
  test::expect_error([] { load_chip("nothing-like-it"); }, {"unknown chip 'nothing-like-it'; known chips:"});
}

// A directory named like a preset but for case is more likely a downloaded checkpoint than the preset:
// no silent preset then, but the error saying how to load the directory. The exact name stays the preset.
TEST(NameSuggestions, ADirectoryOfThatNameWinsOverCaseFolding) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(test::temp_path("cwd"));
  fs::create_directories(dir / "Qwen3-0.6B");
  fs::create_directories(dir / "tiny");
  const fs::path saved = fs::current_path();
  fs::current_path(dir);
  test::expect_error([] { load_model_config("Qwen3-0.6B"); },
                     {"unknown model 'Qwen3-0.6B'", "a directory 'Qwen3-0.6B' exists here: write ./Qwen3-0.6B"});
  EXPECT_EQ(load_model_config("tiny").name, "tiny");
  fs::current_path(saved);
}

}  // namespace
}  // namespace ppu
