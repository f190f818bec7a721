// NameSuggestions: what a user probably meant by a name that matched nothing - a preset ("zhenwu" ->
// zhenwu-810e), a subcommand ("gem" -> gemm) - for "did you mean ...?" in error messages. Names are
// compared ignoring ASCII case, by prefix and by edit distance (insertions, deletions, substitutions
// and swaps of two neighbouring letters each count 1).
//
//   nearest_names("h10", {"h100", "h20", "b200"});   // {"h100", "h20"}
//   did_you_mean("gem", {"gemm", "copy"});            // "did you mean 'gemm'? "
//
// Not here: looking anything up (callers own their name lists), or non-ASCII case folding.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace ppu {

// Whether `a` and `b` are the same name ignoring ASCII case ("H100" and "h100").
bool same_name_ignoring_case(std::string_view a, std::string_view b);

// The names of `known` closest to `given`, best first, at most `max_names`: those that begin with
// `given` (two letters or more: "zhenwu" -> "zhenwu-810e"), and those at the smallest edit distance
// found if that is at most a third of `given`'s length (at least 1: "qwen3-8" -> "qwen3-8b", not also
// "qwen3-4b"); ordered by distance, then prefix matches first, then as in `known`. Empty when none is
// that close, when `given` is empty, or when `given` is itself in `known`.
std::vector<std::string> nearest_names(std::string_view given, const std::vector<std::string>& known,
                                       size_t max_names = 3);

// "did you mean 'a'? " or "did you mean 'a' or 'b'? " (nearest_names, quoted), or "" when none is
// close; written to sit between "unknown x 'y'; " and the list of valid names.
std::string did_you_mean(std::string_view given, const std::vector<std::string>& known);

}  // namespace ppu
