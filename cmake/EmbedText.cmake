# Generates a C++ source that holds one text file as a std::string_view (a raw string literal), so
# that the binary carries it. Invoked at build time (cmake -P) so that editing the file regenerates
# the source. Inputs: IN_FILE, OUT_FILE, SYMBOL (a qualified name, e.g. ppu::serve::kChatPage).
# The text must stay under 65,536 characters (-Wpedantic's limit for a string literal) and must not
# contain the literal's delimiter.
file(READ "${IN_FILE}" text)
string(LENGTH "${text}" length)
if(length GREATER 65000)
  message(FATAL_ERROR "${IN_FILE}: ${length} characters; a string literal holds at most 65,536 (-Wpedantic)")
endif()
if(text MATCHES "\\)PPU_TEXT\"")
  message(FATAL_ERROR "${IN_FILE} contains the raw string delimiter )PPU_TEXT\"")
endif()
string(REGEX REPLACE "::[^:]+$" "" ns "${SYMBOL}")
string(REGEX REPLACE "^.*::" "" name "${SYMBOL}")
get_filename_component(in_name "${IN_FILE}" NAME)
set(body "// Generated from ${in_name} by cmake/EmbedText.cmake. Do not edit.\n#include <string_view>\n")
string(APPEND body "namespace ${ns} {\nextern const std::string_view ${name};\n")
string(APPEND body "const std::string_view ${name} = R\"PPU_TEXT(${text})PPU_TEXT\";\n}  // namespace ${ns}\n")
include(${CMAKE_CURRENT_LIST_DIR}/WriteIfChanged.cmake)
ppu_write_if_changed("${OUT_FILE}" "${body}")
