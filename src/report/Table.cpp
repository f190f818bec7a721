#include "report/Table.hpp"

#include <algorithm>
#include <cctype>

namespace ppu {

namespace {

bool digit(char c) { return std::isdigit(static_cast<unsigned char>(c)) != 0; }

// The end of the number starting at s[i] ([+-] digits [,digits] [.digits] [e[+-]digits], or inf/nan),
// or npos if none starts there.
size_t number_end(const std::string& s, size_t i) {
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
  for (const char* word : {"inf", "nan"})
    if (s.compare(i, 3, word) == 0) return i + 3;
  const size_t first = i;
  while (i < s.size() && (digit(s[i]) || (s[i] == ',' && i > first && i + 1 < s.size() && digit(s[i + 1])))) ++i;
  if (i == first) return std::string::npos;
  if (i + 1 < s.size() && s[i] == '.' && digit(s[i + 1])) {
    ++i;
    while (i < s.size() && digit(s[i])) ++i;
  }
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    size_t j = i + 1;
    if (j < s.size() && (s[j] == '+' || s[j] == '-')) ++j;
    if (j < s.size() && digit(s[j])) {
      while (j < s.size() && digit(s[j])) ++j;
      i = j;
    }
  }
  return i;
}

// The end of a number with its optional suffix at s[i] ("%", a unit right after it or after one
// space), or npos.
size_t quantity_end(const std::string& s, size_t i) {
  i = number_end(s, i);
  if (i == std::string::npos || i == s.size()) return i;
  if (s[i] == '%') return i + 1;
  // A unit: letters (any non-ASCII byte counts, for "µs") and '/', not starting with '/'.
  auto unit_char = [&](char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '/' || (c & 0x80); };
  size_t j = s[i] == ' ' && s.compare(i, 3, " x ") != 0 ? i + 1 : i;
  if (j == s.size() || !unit_char(s[j]) || s[j] == '/') return i;
  while (j < s.size() && unit_char(s[j])) ++j;
  return j;
}

bool placeholder(const std::string& s) { return s.empty() || s == "-"; }

size_t width(const std::string& s) {  // display width: count UTF-8 code points
  size_t w = 0;
  for (unsigned char c : s) w += (c & 0xC0) != 0x80;
  return w;
}

// The byte offset after the first `n` code points of s (s.size() if it has fewer).
size_t code_points_prefix(const std::string& s, size_t n) {
  size_t i = 0;
  for (size_t seen = 0; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) continue;
    if (seen++ == n) break;
  }
  return i;
}

}  // namespace

bool table_cell_is_number(const std::string& cell) {
  size_t i = quantity_end(cell, 0);
  if (i == std::string::npos) return false;
  if (cell.compare(i, 3, " x ") == 0) {
    i = quantity_end(cell, i + 3);
    if (i == std::string::npos) return false;
  }
  if (i < cell.size() && cell[i] == '*') ++i;
  return i == cell.size();
}

std::vector<std::string> wrap_words(const std::string& text, size_t max_width) {
  std::vector<std::string> lines;
  if (max_width == 0) return {text};
  size_t start = 0;
  while (true) {  // paragraph by paragraph ('\n' breaks a line where it stands)
    const size_t nl = text.find('\n', start);
    const std::string para = text.substr(start, nl == std::string::npos ? std::string::npos : nl - start);
    std::string line;
    size_t pos = 0;
    while (pos < para.size()) {
      if (para[pos] == ' ') {
        ++pos;
        continue;
      }
      const size_t end = std::min(para.find(' ', pos), para.size());
      std::string word = para.substr(pos, end - pos);
      pos = end;
      if (!line.empty() && width(line) + 1 + width(word) <= max_width) {
        line += ' ' + word;
        continue;
      }
      if (!line.empty()) lines.push_back(std::move(line));
      while (width(word) > max_width) {
        const size_t cut = code_points_prefix(word, max_width);
        lines.push_back(word.substr(0, cut));
        word.erase(0, cut);
      }
      line = std::move(word);
    }
    lines.push_back(std::move(line));
    if (nl == std::string::npos) break;
    start = nl + 1;
  }
  return lines;
}

void Table::set_max_width(size_t col, size_t max_width) {
  if (col >= header_.size()) return;
  max_width_.resize(header_.size(), 0);
  max_width_[col] = max_width;
}

std::string Table::render() const {
  const size_t n = header_.size();
  // Alignment per column, from the cells as given.
  std::vector<bool> numeric(n, false);
  for (size_t i = 0; i < n; ++i) {
    bool any = false, all = true;
    for (const auto& r : rows_) {
      if (i >= r.size() || placeholder(r[i])) continue;
      any = true;
      all = all && table_cell_is_number(r[i]);
    }
    numeric[i] = any && all;
  }
  // Every row as the lines it takes (wrapped columns spill onto continuation lines).
  std::vector<std::vector<std::string>> lines;
  for (const auto& r : rows_) {
    std::vector<std::vector<std::string>> cells(n);
    size_t height = 1;
    for (size_t i = 0; i < n; ++i) {
      const std::string cell = i < r.size() ? r[i] : "";
      const size_t limit = i < max_width_.size() ? max_width_[i] : 0;
      cells[i] = limit > 0 && width(cell) > std::max(limit, width(header_[i]))
                     ? wrap_words(cell, std::max(limit, width(header_[i])))
                     : std::vector<std::string>{cell};
      height = std::max(height, cells[i].size());
    }
    for (size_t k = 0; k < height; ++k) {
      std::vector<std::string> line(n);
      for (size_t i = 0; i < n; ++i)
        if (k < cells[i].size()) line[i] = cells[i][k];
      lines.push_back(std::move(line));
    }
  }
  std::vector<size_t> w(n, 0);
  for (size_t i = 0; i < n; ++i) w[i] = width(header_[i]);
  for (const auto& l : lines)
    for (size_t i = 0; i < n; ++i) w[i] = std::max(w[i], width(l[i]));
  std::string out;
  auto emit = [&](const std::vector<std::string>& cells) {
    std::string s;
    for (size_t i = 0; i < n; ++i) {
      const std::string pad(w[i] - width(cells[i]), ' ');
      if (i) s += "  ";
      s += numeric[i] ? pad + cells[i] : cells[i] + pad;
    }
    s.erase(s.find_last_not_of(' ') + 1);
    out += s + '\n';
  };
  emit(header_);
  size_t total = 0;
  for (size_t x : w) total += x;
  out += std::string(total + 2 * (n == 0 ? 0 : n - 1), '-') + '\n';
  for (const auto& l : lines) emit(l);
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
