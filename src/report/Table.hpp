// Plain-text tables for the CLI: columns sized to their content, numeric columns right-aligned,
// text columns left-aligned, long text optionally wrapped within its column.
//
//   Table t({"chip", "BF16 TFLOPS", "source"});
//   t.set_max_width(2, 80);                   // wrap the source column at 80 characters
//   t.add_row({"h100", "989.4", "NVIDIA H100 datasheet ..."});
//   std::cout << t.render();
//
// Alignment is decided per column, never per cell: a column is numeric (right-aligned, its header
// too) when every cell of its body that is not a placeholder is a number, and it has at least one
// such cell. Otherwise it is text (left-aligned), even where a cell starts with a digit
// ("8 x a800-hgx", "128/2048", "256x128x128 tiles"). Placeholders ("" and "-") take their column's
// alignment. A number here is
//   [+-] digits [, digits...] [. digits] [e[+-]digits]       e.g. 42, -3.5, 1,024, 2.5e-3
// optionally followed by "%" or a unit of letters and '/', right after it or after one space
// ("2.5x", "1.65B", "195.2 us", "1.431 GB", "12 tok/s"); two numbers joined by " x " count as one
// ("18 x 50", links times bandwidth); any of these may end in '*' (an assumed value, AssumedMarks in
// cli/Commands.hpp).
//
// Widths count UTF-8 code points (no East Asian wide characters in our output). Not here: colours,
// column spans, wrapping of the markdown rendering (markdown cells stay on one line).
#pragma once

#include <string>
#include <vector>

namespace ppu {

class Table {
 public:
  explicit Table(std::vector<std::string> header) : header_(std::move(header)) {}
  // A row shorter than the header is padded with empty cells; cells beyond the header are ignored.
  void add_row(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  // Cells of column `col` wider than `width` characters (> 0) are wrapped at spaces onto
  // continuation lines, the row's other cells blank there; a word longer than `width` is cut. The
  // column is never narrower than its header. Columns beyond the header are ignored.
  void set_max_width(size_t col, size_t width);
  std::string render() const;
  // GitHub-flavoured markdown (for docs/validation.md); cells are never wrapped.
  std::string render_markdown() const;

 private:
  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;
  std::vector<size_t> max_width_;  // per column; 0: unlimited
};

// Whether `cell` is a number in the sense of Table's alignment rule (see above).
bool table_cell_is_number(const std::string& cell);

// `text` cut into lines of at most `width` characters (UTF-8 code points) at spaces; words longer
// than `width` are cut. Empty text gives one empty line; width 0 leaves the text whole.
std::vector<std::string> wrap_words(const std::string& text, size_t width);

}  // namespace ppu
