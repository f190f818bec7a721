// AtomicFile: writing a file so that a reader (or a crash) sees either the old file or the whole new
// one, never a part of it - for checkpoints and exported configs, which a full disk or a killed
// process must not leave half written.
//
//   write_file_atomically("out/config.json", [&](std::ostream& os) { os << text; });
//
// How: the bytes go to "<path>.tmp-<pid>" in the same directory (the same filesystem, so the rename
// is atomic), are flushed and fsync'd, then renamed over <path>; the directory is fsync'd so that the
// rename itself survives a power loss. On any failure the temporary file is removed and a UserError
// names the path and the reason (the system's: "No space left on device", "File too large").
//
// Not here: whole directories (train/Checkpoint swaps those), locking against two writers of the
// same path (the last rename wins), creating missing parent directories (an error naming the path).
#pragma once

#include <functional>
#include <ostream>
#include <string>

namespace ppu {

// Writes `path` atomically: `write` fills the stream (it may throw; the temporary file is then
// removed and the exception passes through). Throws UserError "<path>: cannot write (<reason>)" if
// the temporary file cannot be created, written, flushed or synced, or renamed over `path` (e.g.
// `path` is a directory). An existing file at `path` is replaced only once the new one is complete.
void write_file_atomically(const std::string& path, const std::function<void(std::ostream&)>& write);

// fsync of a file or directory, so what was written (a directory: its entries, i.e. renames) is on
// disk. Throws UserError naming `path` if it cannot be opened or synced.
void sync_path(const std::string& path);

}  // namespace ppu
