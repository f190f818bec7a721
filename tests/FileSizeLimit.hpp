// FileSizeLimit: a full disk, simulated for one scope. While it lives, this process may not write any
// regular file past `bytes` (RLIMIT_FSIZE): write(2) fails with EFBIG ("File too large") instead of
// raising SIGXFSZ, which is ignored meanwhile - the failure a writer meets on a full disk, on the
// real write path, without root or a small filesystem.
//
//   { test::FileSizeLimit full(1024); EXPECT_THROW(writer.write(path), UserError); }
//
// Not for: pipes and terminals (unaffected), threads writing concurrently (the limit is per process).
#pragma once

#include <sys/resource.h>

#include <csignal>

namespace ppu::test {

class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    ::getrlimit(RLIMIT_FSIZE, &saved_);
    old_handler_ = std::signal(SIGXFSZ, SIG_IGN);
    rlimit r = saved_;
    r.rlim_cur = bytes;
    ::setrlimit(RLIMIT_FSIZE, &r);
  }
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &saved_);
    std::signal(SIGXFSZ, old_handler_);
  }
  FileSizeLimit(const FileSizeLimit&) = delete;
  FileSizeLimit& operator=(const FileSizeLimit&) = delete;

 private:
  rlimit saved_{};
  void (*old_handler_)(int) = SIG_DFL;
};

}  // namespace ppu::test
