#include "report/Table.hpp"

#include <algorithm>
#include <cctype>

namespace ppu {

namespace {
bool numeric(const std::string& s) {
  if (s.empty()) return false;
  const char c = s[0];
  return std::isdigit(static_cast<unsigned char>(c)) || ((c == '-' || c == '+') && s.size() > 1);
}
size_t width(const std::string& s) {  // display width: count UTF-8 code points
  size_t w = 0;
  for (unsigned char c : s) w += (c & 0xC0) != 0x80;
  return w;
}
}  // namespace

std::string Table::render() const {
  std::vector<size_t> w(header_.size(), 0);
  for (size_t i = 0; i < header_.size(); ++i) w[i] = width(header_[i]);
  for (const auto& r : rows_)
    for (size_t i = 0; i < r.size() && i < w.size(); ++i) w[i] = std::max(w[i], width(r[i]));
  std::string out;
  auto line = [&](const std::vector<std::string>& r, bool head) {
    for (size_t i = 0; i < w.size(); ++i) {
      const std::string cell = i < r.size() ? r[i] : "";
      const std::string pad(w[i] - width(cell), ' ');
      if (i) out += "  ";
      if (!head && numeric(cell)) out += pad + cell;
      else out += cell + (i + 1 < w.size() ? pad : "");
    }
    out += '\n';
  };
  line(header_, true);
  size_t total = 0;
  for (size_t x : w) total += x;
  out += std::string(total + 2 * (w.empty() ? 0 : w.size() - 1), '-') + '\n';
  for (const auto& r : rows_) line(r, false);
  return out;
}

std::string Table::render_markdown() const {
  std::string out = "|";
  for (const auto& h : header_) out += " " + h + " |";
  out += "\n|";
  for (size_t i = 0; i < header_.size(); ++i) out += "---|";
  out += "\n";
  for (const auto& r : rows_) {
    out += "|";
    for (size_t i = 0; i < header_.size(); ++i) out += " " + (i < r.size() ? r[i] : "") + " |";
    out += "\n";
  }
  return out;
}

}  // namespace ppu
