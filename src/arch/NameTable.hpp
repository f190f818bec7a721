// Lookups in the name tables every enum carries (kXxxNames, checked against the enum's size):
// the enum value of a name, and the names joined for "valid: ..." messages.
//
//   std::optional<Collective> c = find_name<Collective>(kCollectiveNames, "allreduce");
//   join_names(kCollectiveNames);   // "allreduce, reducescatter, ..."
#pragma once

#include <fmt/format.h>

#include <optional>
#include <string>
#include <string_view>

namespace ppu {

template <class E, class Table>
std::optional<E> find_name(const Table& names, std::string_view s) {
  for (size_t i = 0; i < std::size(names); ++i)
    if (std::string_view(names[i]) == s) return static_cast<E>(i);
  return std::nullopt;
}

template <class Table>
std::string join_names(const Table& names) {
  std::string out;
  for (auto n : names) out += fmt::format("{}{}", out.empty() ? "" : ", ", n);
  return out;
}

}  // namespace ppu
