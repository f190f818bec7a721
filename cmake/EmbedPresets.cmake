# Generates a C++ source holding every presets/<kind>/<name>.json as a string literal.
# Invoked at build time (cmake -P) so that editing a preset re-generates the file.
# Inputs: PRESET_DIR, OUT_FILE.
file(GLOB_RECURSE preset_files RELATIVE "${PRESET_DIR}" "${PRESET_DIR}/*.json")
list(SORT preset_files)
set(body "// Generated from presets/ by cmake/EmbedPresets.cmake. Do not edit.\n#include <string_view>\n")
string(APPEND body "namespace ppu::presets_generated {\nstruct Entry { std::string_view kind, name, text; };\n")
string(APPEND body "extern const Entry kEntries[];\nextern const int kNumEntries;\nconst Entry kEntries[] = {\n")
set(count 0)
foreach(rel ${preset_files})
  get_filename_component(kind "${rel}" DIRECTORY)
  get_filename_component(name "${rel}" NAME_WLE)  # last extension only: "qwen3-0.6b.json" -> "qwen3-0.6b"
  file(READ "${PRESET_DIR}/${rel}" text)
  string(APPEND body "  {\"${kind}\", \"${name}\", R\"PPU_PRESET(${text})PPU_PRESET\"},\n")
  math(EXPR count "${count} + 1")
endforeach()
string(APPEND body "};\nconst int kNumEntries = ${count};\n}  // namespace ppu::presets_generated\n")
include(${CMAKE_CURRENT_LIST_DIR}/WriteIfChanged.cmake)
ppu_write_if_changed("${OUT_FILE}" "${body}")
