// Plain-text tables for the CLI: columns sized to their content, numbers right-aligned.
//
//   Table t({"chip", "BF16 TFLOPS"});
//   t.add_row({"h100", "989.4"});
//   std::cout << t.render();
#pragma once

#include <string>
#include <vector>

namespace ppu {

class Table {
 public:
  explicit Table(std::vector<std::string> header) : header_(std::move(header)) {}
  void add_row(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  std::string render() const;
  // GitHub-flavoured markdown (for docs/validation.md).
  std::string render_markdown() const;

 private:
  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;
};

}  // namespace ppu
