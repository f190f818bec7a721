# ppu_write_if_changed(FILE TEXT): writes TEXT to FILE unless FILE already holds it, so that a
# generated source keeps its time stamp (and nothing recompiles) when its inputs did not change.
function(ppu_write_if_changed file text)
  set(old "")
  if(EXISTS "${file}")
    file(READ "${file}" old)
  endif()
  if(NOT "${old}" STREQUAL "${text}")
    file(WRITE "${file}" "${text}")
  endif()
endfunction()
