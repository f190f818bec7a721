#include "models/AtomicFile.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "arch/Error.hpp"

namespace ppu {

namespace fs = std::filesystem;

namespace {

// The system's reason for the last failure, or `fallback` when errno says nothing.
std::string reason(int err, const char* fallback) { return err != 0 ? std::strerror(err) : fallback; }

}  // namespace

void sync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw UserError(fmt::format("{}: cannot open to sync ({})", path, std::strerror(errno)));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  // Some filesystems cannot sync a directory (EINVAL); the rename is then as durable as they make it.
  if (rc != 0 && err != EINVAL) throw UserError(fmt::format("{}: cannot sync ({})", path, std::strerror(err)));
}

void write_file_atomically(const std::string& path, const std::function<void(std::ostream&)>& write) {
  const std::string tmp = fmt::format("{}.tmp-{}", path, static_cast<long>(::getpid()));
  auto remove_tmp = [&] {
    std::error_code ignored;
    fs::remove(tmp, ignored);
  };
  try {
    {
      errno = 0;
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      if (!out)
        throw UserError(fmt::format("{}: cannot create file ({})", path, reason(errno, "unknown reason")));
      errno = 0;  // a failing write(2) inside the stream leaves its reason here
      write(out);
      if (out) out.flush();
      if (!out) throw UserError(fmt::format("{}: cannot write ({})", path, reason(errno, "write failed")));
      out.close();
      if (out.fail()) throw UserError(fmt::format("{}: cannot write ({})", path, reason(errno, "close failed")));
    }
    sync_path(tmp);
    if (std::rename(tmp.c_str(), path.c_str()) != 0)
      throw UserError(fmt::format("{}: cannot write (renaming {} into place: {})", path, tmp, std::strerror(errno)));
  } catch (...) {
    remove_tmp();
    throw;
  }
  const fs::path parent = fs::path(path).parent_path();
  sync_path(parent.empty() ? std::string(".") : parent.string());
}

}  // namespace ppu
