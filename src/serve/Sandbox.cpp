#include "serve/Sandbox.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "arch/Error.hpp"

namespace ppu::serve {

namespace {

// The uid and gid a root server drops to before bubblewrap: the kernel's overflow id, `nobody` and
// `nogroup` on Debian (and most distributions). RLIMIT_NPROC is not enforced for uid 0.
constexpr uid_t kNobodyUid = 65534;
constexpr gid_t kNobodyGid = 65534;

// The fds the sandboxed process gets: 0 the program (a memfd), 1 and 2 its output pipes, 3 a pipe the
// prelude writes one byte to once Python runs (so a sandbox that never started is told apart from a
// program that failed), 4 bwrap's --info-fd (the sandbox's init pid; the prelude closes it).
constexpr int kMarkerFd = 3;
constexpr int kInfoFd = 4;
constexpr int kFirstFreeFd = 5;

// How long to wait for a killed sandbox to be gone before killing bwrap itself too.
constexpr int kKillGraceMs = 2000;

// The Python that runs first in the sandbox: it signals that it started, closes bwrap's info fd, sets
// the process limit (inside the sandbox's user namespace, so it counts this sandbox's processes only;
// set before bwrap it would count every sandbox of the same uid), reads the program from stdin,
// and runs it as __main__ with a traceback that shows the program's own lines and frames only.
constexpr const char* kPrelude = R"PY(import os, resource, sys, types
os.write(3, b"s")
os.close(3)
try:
    os.close(4)
except OSError:
    pass
resource.setrlimit(resource.RLIMIT_NPROC, ({nproc}, {nproc}))
src = sys.stdin.buffer.read().decode("utf-8", "replace")
fd = os.open(os.devnull, os.O_RDONLY)
os.dup2(fd, 0)
os.close(fd)
sys.argv = ["<code>"]
sys.path.insert(0, "")
import linecache
linecache.cache["<code>"] = (len(src), None, src.splitlines(True), "<code>")
main = types.ModuleType("__main__")
sys.modules["__main__"] = main
del os, resource, types, linecache, fd
try:
    exec(compile(src, "<code>", "exec"), main.__dict__)
except SystemExit:
    raise
except BaseException as e:
    import traceback
    traceback.print_exception(type(e), e, e.__traceback__.tb_next)
    sys.exit(1)
)PY";

// An owned file descriptor.
struct Fd {
  int fd = -1;
  Fd() = default;
  explicit Fd(int f) : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  void reset() {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
};

std::string errno_text(const char* what) { return fmt::format("{}: {}", what, std::strerror(errno)); }

// A descriptor at kFirstFreeFd or above, close-on-exec, so the child's dup2s onto 0..4 never clobber
// a source (a server started with stdin closed gets fd 0 from pipe()).
int high_fd(int fd, const char* what) {
  if (fd < 0) throw UserError(fmt::format("sandbox: {}", errno_text(what)));
  const int hi = ::fcntl(fd, F_DUPFD_CLOEXEC, kFirstFreeFd);
  const int saved = errno;
  ::close(fd);
  errno = saved;
  if (hi < 0) throw UserError(fmt::format("sandbox: {}", errno_text(what)));
  return hi;
}

void make_pipe(Fd& r, Fd& w) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) throw UserError(fmt::format("sandbox: {}", errno_text("pipe")));
  r.fd = high_fd(p[0], "pipe");
  w.fd = high_fd(p[1], "pipe");
}

bool is_executable_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), X_OK) == 0;
}

std::string find_on_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "";
  dirs += ":/usr/bin:/bin";
  std::stringstream ss(dirs);
  for (std::string dir; std::getline(ss, dir, ':');)
    if (!dir.empty() && is_executable_file(dir + "/" + name)) return dir + "/" + name;
  return "";
}

template <class T>
void check_range(const char* what, const char* field, T value, T lo, T hi, const char* unit) {
  if (!(value >= lo && value <= hi))  // also refuses NaN
    throw UserError(fmt::format("{}: {} is {}; valid: {} to {}{}", what, field, value, lo, hi, unit));
}

// The sandbox's init pid from bwrap's --info-fd JSON ({"child-pid": N, ...}), or 0 until it is whole.
pid_t parse_child_pid(const std::string& info) {
  if (info.find('}') == std::string::npos) return 0;
  const size_t k = info.find("\"child-pid\"");
  if (k == std::string::npos) return 0;
  size_t i = info.find(':', k);
  if (i == std::string::npos) return 0;
  ++i;
  while (i < info.size() && info[i] == ' ') ++i;
  long v = 0;
  for (; i < info.size() && info[i] >= '0' && info[i] <= '9' && v < (1L << 31); ++i) v = v * 10 + (info[i] - '0');
  return static_cast<pid_t>(v);
}

// The parent pid of `pid` (from /proc/PID/stat), or -1.
pid_t parent_of(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/stat", pid));
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t close = stat.rfind(')');  // the command name may hold spaces and parentheses
  if (close == std::string::npos) return -1;
  std::istringstream rest(stat.substr(close + 1));
  std::string state;
  long ppid = -1;
  rest >> state >> ppid;
  return rest ? static_cast<pid_t>(ppid) : -1;
}

int pidfd_open(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

// Waits until the process behind `pidfd` has exited, at most `ms`; true when it has.
bool wait_exit(int pidfd, int ms) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
    pollfd p{pidfd, POLLIN, 0};
    const int n = ::poll(&p, 1, static_cast<int>(std::max<int64_t>(0, left.count())));
    if (n > 0) return true;
    if (n == 0) return false;
    if (errno != EINTR) return false;
  }
}

// bwrap's arguments: the namespaces, the read-only system, the work directory, then python.
std::vector<std::string> bwrap_args(const SandboxConfig& c, const SandboxLimits& l) {
  std::vector<std::string> a = {c.bwrap,          "--unshare-all", "--unshare-user", "--disable-userns",
                                "--die-with-parent", "--new-session", "--hostname",   "sandbox",
                                "--ro-bind",      "/usr",          "/usr"};
  // Merged-/usr systems have /bin, /lib ... as links into /usr; older ones as folders.
  for (const char* top : {"/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"}) {
    struct stat st {};
    if (::lstat(top, &st) != 0) continue;
    if (S_ISLNK(st.st_mode)) {
      char target[4096];
      const ssize_t n = ::readlink(top, target, sizeof target - 1);
      if (n <= 0) continue;
      a.insert(a.end(), {"--symlink", std::string(target, static_cast<size_t>(n)), top});
    } else if (S_ISDIR(st.st_mode)) {
      a.insert(a.end(), {"--ro-bind", top, top});
    }
  }
  const std::string size = std::to_string(l.work_dir_bytes);
  // Of /etc only the loader's cache. /dev is read-only but for a /dev/shm of its own (multiprocessing's
  // semaphores); the work directory is also /tmp.
  a.insert(a.end(), {"--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
                     "--proc", "/proc", "--dev", "/dev", "--size", size, "--tmpfs", "/dev/shm", "--remount-ro", "/dev",
                     "--size", size, "--tmpfs", "/sandbox", "--symlink", "/sandbox", "/tmp", "--chdir", "/sandbox",
                     "--remount-ro", "/", "--info-fd", std::to_string(kInfoFd), "--", c.python, "-I", "-c",
                     fmt::format(fmt::runtime(kPrelude), fmt::arg("nproc", l.processes))});
  return a;
}

// What the program's environment holds: nothing of the server's.
const std::vector<std::string> kEnvironment = {"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/sandbox", "TMPDIR=/sandbox",
                                               "LANG=C.UTF-8"};

}  // namespace

void check_sandbox_limits(const SandboxLimits& l) {
  check_range("sandbox limits", "wall_time_s", l.wall_time_s, 0.1, 3600.0, " s");
  check_range<int64_t>("sandbox limits", "cpu_time_s", l.cpu_time_s, 1, 3600, " s");
  check_range<int64_t>("sandbox limits", "memory_bytes", l.memory_bytes, int64_t{32} << 20, int64_t{1} << 40, " bytes");
  check_range<int64_t>("sandbox limits", "processes", l.processes, 4, 4096, "");
  check_range<int64_t>("sandbox limits", "file_bytes", l.file_bytes, 1024, int64_t{1} << 36, " bytes");
  check_range<int64_t>("sandbox limits", "work_dir_bytes", l.work_dir_bytes, int64_t{64} << 10, int64_t{1} << 36,
                       " bytes");
  check_range<int64_t>("sandbox limits", "open_files", l.open_files, 16, 65536, "");
  check_range<int64_t>("sandbox limits", "output_bytes", l.output_bytes, 1024, int64_t{64} << 20, " bytes");
}

Sandbox::Sandbox(SandboxConfig config) : config_(std::move(config)) {
  check_sandbox_limits(config_.limits);
  check_range("code sandbox", "max_running", config_.max_running, 1, 256, "");
  check_range("code sandbox", "max_waiting", config_.max_waiting, 0, 100000, "");
  if (config_.bwrap.empty()) {
    config_.bwrap = find_on_path("bwrap");
    if (config_.bwrap.empty())
      throw UserError("code sandbox: bubblewrap (bwrap) is not installed, or not on PATH; install it: "
                      "apt-get install bubblewrap (scripts/setup.sh does)");
  } else if (!is_executable_file(config_.bwrap)) {
    throw UserError(fmt::format("code sandbox: bwrap '{}' is not an executable file; install bubblewrap: "
                                "apt-get install bubblewrap",
                                config_.bwrap));
  }
  if (!config_.python.starts_with("/usr/") || config_.python.find("/../") != std::string::npos)
    throw UserError(fmt::format("code sandbox: python '{}' must be under /usr, the only system tree the sandbox "
                                "sees",
                                config_.python));
  if (!is_executable_file(config_.python))
    throw UserError(fmt::format("code sandbox: python '{}' is not installed; install it: apt-get install python3",
                                config_.python));
}

SandboxStats Sandbox::stats() const {
  std::lock_guard lk(mu_);
  return stats_;
}

std::optional<SandboxResult> Sandbox::try_run(std::string_view program, const SandboxLimits& limits) {
  check_sandbox_limits(limits);
  if (program.size() > kSandboxMaxProgramBytes)
    throw UserError(fmt::format("the program is {} bytes; at most {}", program.size(), kSandboxMaxProgramBytes));
  {
    // A slot, first come first served: a call waits when all run or others already wait.
    std::unique_lock lk(mu_);
    if (stats_.running >= config_.max_running || stats_.waiting > 0) {
      if (stats_.waiting >= config_.max_waiting) {
        ++stats_.busy;
        return std::nullopt;
      }
      const int64_t ticket = next_ticket_++;
      ++stats_.waiting;
      stats_.peak_waiting = std::max(stats_.peak_waiting, stats_.waiting);
      slot_freed_.wait(lk, [&] { return stats_.running < config_.max_running && ticket == serving_ticket_; });
      ++serving_ticket_;
      --stats_.waiting;
    }
    ++stats_.running;
    ++stats_.runs;
    stats_.peak_running = std::max(stats_.peak_running, stats_.running);
  }
  struct Release {
    Sandbox* box;
    ~Release() {
      {
        std::lock_guard lk(box->mu_);
        --box->stats_.running;
      }
      box->slot_freed_.notify_all();
    }
  } release{this};
  slot_freed_.notify_all();  // the next in line may take a slot that is still free
  return run_one(program, limits);
}

SandboxResult Sandbox::run_one(std::string_view program, const SandboxLimits& l) const {
  // Everything the child needs is built before fork: after it, only async-signal-safe calls.
  const std::vector<std::string> args = bwrap_args(config_, l);
  std::vector<char*> argv, envp;
  for (const auto& s : args) argv.push_back(const_cast<char*>(s.c_str()));
  argv.push_back(nullptr);
  for (const auto& s : kEnvironment) envp.push_back(const_cast<char*>(s.c_str()));
  envp.push_back(nullptr);

  Fd code(high_fd(static_cast<int>(::memfd_create("ppu-sandbox-program", MFD_CLOEXEC)), "memfd_create"));
  for (size_t done = 0; done < program.size();) {
    const ssize_t n = ::write(code.fd, program.data() + done, program.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw UserError(fmt::format("sandbox: {}", errno_text("writing the program")));
    done += static_cast<size_t>(n);
  }
  ::lseek(code.fd, 0, SEEK_SET);
  Fd out_r, out_w, err_r, err_w, marker_r, marker_w, info_r, info_w;
  make_pipe(out_r, out_w);
  make_pipe(err_r, err_w);
  make_pipe(marker_r, marker_w);
  make_pipe(info_r, info_w);

  const bool drop_to_nobody = ::geteuid() == 0;
  const rlim_t cpu = static_cast<rlim_t>(l.cpu_time_s);
  const rlimit rl_cpu{cpu, cpu + 1};  // SIGXCPU at the limit, SIGKILL a second later
  const rlimit rl_as{static_cast<rlim_t>(l.memory_bytes), static_cast<rlim_t>(l.memory_bytes)};
  const rlimit rl_fsize{static_cast<rlim_t>(l.file_bytes), static_cast<rlim_t>(l.file_bytes)};
  const rlimit rl_nofile{static_cast<rlim_t>(l.open_files), static_cast<rlim_t>(l.open_files)};
  const pid_t parent = ::getpid();
  static constexpr char kExecFailed[] = "cannot run bwrap (exec failed)\n";
  static constexpr char kDropFailed[] = "cannot switch to uid/gid 65534 (nobody)\n";

  const auto t0 = std::chrono::steady_clock::now();
  const pid_t pid = ::fork();
  if (pid < 0) throw UserError(fmt::format("sandbox: {}", errno_text("fork")));
  if (pid == 0) {
    ::setpgid(0, 0);
    if (::dup2(code.fd, 0) < 0 || ::dup2(out_w.fd, 1) < 0 || ::dup2(err_w.fd, 2) < 0 ||
        ::dup2(marker_w.fd, kMarkerFd) < 0 || ::dup2(info_w.fd, kInfoFd) < 0)
      ::_exit(127);
    if (::syscall(SYS_close_range, kFirstFreeFd, ~0U, 0) != 0)
      for (int fd = kFirstFreeFd; fd < 65536; ++fd) ::close(fd);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int s = 1; s < NSIG; ++s)
      if (s != SIGKILL && s != SIGSTOP) ::sigaction(s, &dfl, nullptr);
    if (drop_to_nobody && (::syscall(SYS_setgroups, 0, nullptr) != 0 ||
                           ::syscall(SYS_setresgid, kNobodyGid, kNobodyGid, kNobodyGid) != 0 ||
                           ::syscall(SYS_setresuid, kNobodyUid, kNobodyUid, kNobodyUid) != 0)) {
      [[maybe_unused]] const ssize_t n = ::write(2, kDropFailed, sizeof kDropFailed - 1);
      ::_exit(127);
    }
    ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // after the uid change, which clears it
    if (::getppid() != parent) ::_exit(127);
    ::setrlimit(RLIMIT_CPU, &rl_cpu);
    ::setrlimit(RLIMIT_AS, &rl_as);
    ::setrlimit(RLIMIT_FSIZE, &rl_fsize);
    ::setrlimit(RLIMIT_NOFILE, &rl_nofile);
    ::execve(argv[0], argv.data(), envp.data());
    [[maybe_unused]] const ssize_t n = ::write(2, kExecFailed, sizeof kExecFailed - 1);
    ::_exit(127);
  }
  ::setpgid(pid, pid);  // also here, so a kill of the group cannot race the child's own setpgid

  // From here the child is reaped on every path, exceptions included.
  struct Child {
    pid_t pid;
    Fd pidfd;
    Fd inner;  // the sandbox's init (bwrap's child): the pid namespace ends with it
    bool reaped = false;
    int status = 0;
    void kill_all() {
      if (inner.fd >= 0) ::syscall(SYS_pidfd_send_signal, inner.fd, SIGKILL, nullptr, 0);
      else ::kill(-pid, SIGKILL);  // bwrap's group; --die-with-parent takes the sandbox with it
      if (pidfd.fd < 0 || !wait_exit(pidfd.fd, kKillGraceMs)) ::kill(-pid, SIGKILL);
      if (inner.fd >= 0) wait_exit(inner.fd, kKillGraceMs);
    }
    void reap() {
      while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      reaped = true;
    }
    ~Child() {
      if (reaped) return;
      kill_all();
      reap();
    }
  } child{pid, Fd(pidfd_open(pid)), Fd()};
  for (Fd* f : {&code, &out_w, &err_w, &marker_w, &info_w}) f->reset();

  SandboxResult r;
  std::string info;
  bool out_open = true, err_open = true, info_open = true, kill = false;
  const auto deadline = t0 + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                 std::chrono::duration<double>(l.wall_time_s));
  const auto ms_left = [&] {
    return std::max<int64_t>(
        0, std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count());
  };
  const size_t cap = static_cast<size_t>(l.output_bytes);
  std::vector<char> buf(64 << 10);
  // Read until both streams end (bwrap holds them open until the sandbox is gone), the deadline, or a
  // stream passes its cap.
  while ((out_open || err_open) && !kill) {
    pollfd p[3];
    int* which[3];
    int n = 0;
    for (auto [open, fd] : {std::pair{out_open, &out_r.fd}, {err_open, &err_r.fd}, {info_open, &info_r.fd}})
      if (open) {
        p[n] = {*fd, POLLIN, 0};
        which[n++] = fd;
      }
    const int64_t left = ms_left();
    if (left == 0) {
      r.timed_out = kill = true;
      break;
    }
    const int ready = ::poll(p, static_cast<nfds_t>(n), static_cast<int>(left));
    if (ready < 0 && errno == EINTR) continue;
    if (ready < 0) throw UserError(fmt::format("sandbox: {}", errno_text("poll")));
    for (int i = 0; i < n; ++i) {
      if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      const ssize_t got = ::read(p[i].fd, buf.data(), buf.size());
      if (got < 0 && errno == EINTR) continue;
      if (which[i] == &info_r.fd) {
        if (got <= 0 || info.size() > 4096) {
          info_open = false;
        } else {
          info.append(buf.data(), static_cast<size_t>(got));
          if (child.inner.fd < 0) {
            // Trust the pid only if it is bwrap's child: then it is the sandbox's init.
            const pid_t inner = parse_child_pid(info);
            if (inner > 0 && parent_of(inner) == pid) {
              child.inner.fd = pidfd_open(inner);
              if (child.inner.fd >= 0 && parent_of(inner) != pid) child.inner.reset();
            }
            if (inner > 0) info_open = false;
          }
        }
        continue;
      }
      const bool is_out = which[i] == &out_r.fd;
      if (got <= 0) {
        (is_out ? out_open : err_open) = false;
        continue;
      }
      std::string& text = is_out ? r.stdout_text : r.stderr_text;
      const size_t room = cap - text.size();
      text.append(buf.data(), std::min(room, static_cast<size_t>(got)));
      if (static_cast<size_t>(got) > room) {
        (is_out ? r.stdout_truncated : r.stderr_truncated) = true;
        kill = true;
      }
    }
  }
  // Both streams ended: bwrap is exiting; it may still not, if the program closed them and went on.
  if (!kill && child.pidfd.fd >= 0 && !wait_exit(child.pidfd.fd, static_cast<int>(ms_left())))
    r.timed_out = kill = true;
  if (kill) child.kill_all();
  child.reap();
  r.wall_time_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  char mark = 0;
  ::fcntl(marker_r.fd, F_SETFL, O_NONBLOCK);
  const bool started = ::read(marker_r.fd, &mark, 1) == 1;
  // A sandbox that ended without starting Python failed; one the deadline stopped before it got there
  // simply timed out (the time limit covers the start), as on a machine too loaded to start it in time.
  if (!started && !r.timed_out) {
    std::string why = r.stderr_text.substr(0, 2000);
    while (!why.empty() && (why.back() == '\n' || why.back() == ' ')) why.pop_back();
    throw UserError(fmt::format(
        "the sandbox did not start ({}): {}. It needs bubblewrap (apt-get install bubblewrap), python3 "
        "under /usr, and unprivileged user namespaces (sysctl user.max_user_namespaces > 0; on Debian "
        "kernel.unprivileged_userns_clone=1, on Ubuntu kernel.apparmor_restrict_unprivileged_userns=0)",
        WIFEXITED(child.status) ? fmt::format("exit status {}", WEXITSTATUS(child.status))
                                : fmt::format("signal {}", WTERMSIG(child.status)),
        why.empty() ? "no message" : why));
  }
  if (kill) {
    r.signal = SIGKILL;
  } else if (WIFSIGNALED(child.status)) {
    r.signal = WTERMSIG(child.status);
  } else {
    // bwrap exits with its child's status, 128 + N for a child a signal N ended (as shells report it).
    const int code_or_signal = WEXITSTATUS(child.status);
    if (code_or_signal > 128 && code_or_signal < 128 + NSIG) r.signal = code_or_signal - 128;
    else r.exit_code = code_or_signal;
  }
  return r;
}

}  // namespace ppu::serve
