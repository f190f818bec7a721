# The charting library of the `ppu compare` page (src/report/CompareHtml.cpp): ECharts'
# dist/echarts.min.js (Apache-2.0), pinned by tools/report-page/package-lock.json and installed by
# scripts/setup.sh (npm ci --prefix tools/report-page). CompareHtml.cpp includes the file's bytes with
# the assembler's .incbin, so the binary carries it and the page needs no network.
# Sets PPU_ECHARTS_JS and the compile definition and dependency of CompareHtml.cpp.
set(PPU_ECHARTS_JS ${CMAKE_SOURCE_DIR}/tools/report-page/node_modules/echarts/dist/echarts.min.js)
if(NOT EXISTS ${PPU_ECHARTS_JS})
  message(FATAL_ERROR "${PPU_ECHARTS_JS} is missing: run scripts/setup.sh, which installs the report page's "
                      "charting library with `npm ci --prefix tools/report-page`")
endif()
if(PPU_ECHARTS_JS MATCHES "[\"\\\\]")
  message(FATAL_ERROR "the source path ${CMAKE_SOURCE_DIR} holds a quote or backslash, which the assembler's "
                      ".incbin of ${PPU_ECHARTS_JS} cannot take: build from another folder")
endif()
set_source_files_properties(${CMAKE_SOURCE_DIR}/src/report/CompareHtml.cpp PROPERTIES
                            COMPILE_DEFINITIONS "PPU_ECHARTS_JS=\"${PPU_ECHARTS_JS}\""
                            OBJECT_DEPENDS ${PPU_ECHARTS_JS})
