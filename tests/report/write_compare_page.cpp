// write_compare_page REPORT.json PAGE.html: the `ppu compare` page of a report.json document, for
// tests/report/compare_page.mjs (which opens it in Chromium). Exit status 1 with the error on stderr
// when the document cannot be read or is not one the page can draw.
#include <exception>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>

#include "report/CompareHtml.hpp"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: write_compare_page REPORT.json PAGE.html\n";
    return 2;
  }
  try {
    std::ifstream in(argv[1], std::ios::binary);
    if (!in) throw std::runtime_error(std::string("cannot read ") + argv[1]);
    std::stringstream text;
    text << in.rdbuf();
    const std::string page = ppu::report::compare_report_html(nlohmann::json::parse(text.str()));
    std::ofstream out(argv[2], std::ios::binary);
    out << page;
    if (!out.flush()) throw std::runtime_error(std::string("cannot write ") + argv[2]);
  } catch (const std::exception& e) {
    std::cerr << "write_compare_page: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
