#include "arch/NameSuggestions.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>

namespace ppu {

namespace {

char lower(char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); }

std::string lowered(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), lower);
  return out;
}

// Optimal-string-alignment distance (Levenshtein plus swaps of two neighbouring letters, so "trian"
// is 1 from "train"); O(|a| |b|), fine for names.
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i)
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[a.size()][b.size()];
}

}  // namespace

bool same_name_ignoring_case(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) { return lower(x) == lower(y); });
}

std::vector<std::string> nearest_names(std::string_view given, const std::vector<std::string>& known, size_t max_names) {
  if (given.empty() || std::find(known.begin(), known.end(), given) != known.end()) return {};
  const std::string g = lowered(given);
  const size_t max_distance = std::max<size_t>(1, g.size() / 3);
  struct Candidate {
    size_t distance;
    bool prefix;
    size_t index;
  };
  std::vector<Candidate> close;
  for (size_t i = 0; i < known.size(); ++i) {
    const std::string k = lowered(known[i]);
    const bool prefix = g.size() >= 2 && k.size() > g.size() && k.compare(0, g.size(), g) == 0;
    const size_t distance = edit_distance(g, k);
    if (prefix || distance <= max_distance) close.push_back({distance, prefix, i});
  }
  std::stable_sort(close.begin(), close.end(), [](const Candidate& a, const Candidate& b) {
    return a.distance != b.distance ? a.distance < b.distance : a.prefix > b.prefix;
  });
  std::vector<std::string> out;
  for (const Candidate& c : close)
    if (out.size() < max_names && (c.prefix || c.distance == close.front().distance)) out.push_back(known[c.index]);
  return out;
}

std::string did_you_mean(std::string_view given, const std::vector<std::string>& known) {
  const std::vector<std::string> near = nearest_names(given, known);
  if (near.empty()) return "";
  std::string out = "did you mean ";
  for (size_t i = 0; i < near.size(); ++i)
    out += fmt::format("{}'{}'", i == 0 ? "" : i + 1 == near.size() ? " or " : ", ", near[i]);
  return out + "? ";
}

}  // namespace ppu
