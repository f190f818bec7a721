// Sandbox: runs a Python 3 program, given as text, in a throw-away sandbox - the agent's `code` tool
// (serve/Tools). Built on bubblewrap (Debian `bubblewrap`, https://github.com/containers/bubblewrap),
// started with fork/exec and pipes (no shell).
//
//   Sandbox box({});                                   // default limits; UserError if bwrap is missing
//   std::optional<SandboxResult> r = box.try_run("print(6 * 7)");
//   if (!r) ...                                        // busy: every slot and the waiting queue taken
//   r->stdout_text;   // "42\n"
//   r->exit_code;     // 0
//
// What the program gets (docs/agent.md, "code"):
//  * namespaces: user, pid, network, mount, ipc, uts, cgroup (bwrap --unshare-all); no network at all
//    (a loopback of its own, no routes); no further user namespaces (--disable-userns); its own pid 1,
//    so it sees and can signal only its own processes.
//  * files: /usr, the /bin, /sbin and /lib* links or folders, and /etc/ld.so.cache, read-only; a new
//    /proc and a minimal /dev (read-only, but /dev/shm); a fresh tmpfs work directory, /sandbox (also
//    /tmp), its cwd, of limits.work_dir_bytes; nothing else - not /etc, /home, /root, the server's
//    files or this project.
//  * who: when the server is root, the sandbox runs as uid/gid 65534 (nobody), so that RLIMIT_NPROC
//    applies (the kernel exempts uid 0) and an escape would find no privileges; no_new_privs is set.
//  * limits: CPU seconds, address space, processes (counted in the sandbox's own user namespace, so one
//    sandbox's fork bomb does not starve another), file size, open files (setrlimit); a wall-clock
//    timeout after which the whole sandbox is killed (its pid namespace dies with its init); stdout
//    and stderr each captured up to limits.output_bytes - past that the sandbox is killed at once,
//    so printing a gigabyte ends within milliseconds.
//  * environment: PATH, HOME, TMPDIR, LANG only - never the server's.
//
// What it does not do: no seccomp filter (the kernel's whole syscall surface is reachable from the
// namespaces above); memory is bounded per process (RLIMIT_AS), so a sandbox's total is at most
// processes x memory_bytes - a cgroup would bound the sum, and is not used because a delegated cgroup
// is not available everywhere the tests run.
//
// Thread-safe: try_run may be called from many threads; at most max_running sandboxes run at once,
// max_waiting more calls wait for a slot, and beyond that try_run answers busy (nullopt) at once.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

namespace ppu::serve {

// Per-call limits. Each field is checked by check_sandbox_limits (UserError naming it).
struct SandboxLimits {
  double wall_time_s = 10;                 // the whole run, start included; then the sandbox is killed
  int64_t cpu_time_s = 10;                 // RLIMIT_CPU per process (SIGXCPU, SIGKILL a second later)
  int64_t memory_bytes = int64_t{1} << 30; // RLIMIT_AS per process
  int64_t processes = 32;                  // RLIMIT_NPROC in the sandbox: processes and threads, its init included
  int64_t file_bytes = int64_t{16} << 20;  // RLIMIT_FSIZE: the largest file it may write
  int64_t work_dir_bytes = int64_t{64} << 20;  // the work directory's tmpfs (and /dev/shm's), in all
  int64_t open_files = 64;                 // RLIMIT_NOFILE
  int64_t output_bytes = int64_t{32} << 10;  // stdout and stderr each; past it the sandbox is killed
};

// UserError naming the first field out of its range, with the range.
void check_sandbox_limits(const SandboxLimits& limits);

inline constexpr size_t kSandboxMaxProgramBytes = 1 << 20;  // a program's text, at most

struct SandboxConfig {
  SandboxLimits limits;       // a call's limits unless it gives its own
  int max_running = 8;        // sandboxes at once (1..256)
  int max_waiting = 32;       // calls waiting for one (0..100000); more are answered busy
  std::string bwrap;          // the bubblewrap binary; empty: `bwrap` on PATH
  std::string python = "/usr/bin/python3";  // must live under /usr, the only tree the sandbox sees
};

struct SandboxResult {
  std::string stdout_text;  // at most limits.output_bytes
  std::string stderr_text;
  bool stdout_truncated = false;  // the stream passed output_bytes (the sandbox was killed then)
  bool stderr_truncated = false;
  // The program's exit status, or -1 when a signal ended it; bwrap reports a signal N as status
  // 128 + N, so a program's own exit status above 128 reads as a signal, as in a shell.
  int exit_code = -1;
  int signal = 0;  // the signal that ended it (SIGXCPU: CPU time; SIGKILL: we stopped it), else 0
  bool timed_out = false;  // it ran past limits.wall_time_s (its start included) and was killed
  double wall_time_s = 0;  // from fork to the sandbox's end, as the caller waited for it
};

struct SandboxStats {
  int running = 0, waiting = 0;            // now
  int peak_running = 0, peak_waiting = 0;  // since construction
  int64_t runs = 0, busy = 0;              // calls that ran, calls answered busy
};

class Sandbox {
 public:
  // Checks the config, finds bwrap and python. UserError: a bad limit or count (naming the field),
  // bwrap missing (saying to install bubblewrap), python missing or outside /usr.
  explicit Sandbox(SandboxConfig config);
  Sandbox(const Sandbox&) = delete;
  Sandbox& operator=(const Sandbox&) = delete;

  // Runs `program` (Python 3 source, UTF-8) with `limits`, waiting for a slot if needed; nullopt when
  // busy (max_running running and max_waiting waiting). A program that fails, is killed or times out
  // is a result, not an error. UserError: a program over kSandboxMaxProgramBytes, bad limits, and a
  // sandbox that could not start (bwrap's message and what it needs: unprivileged user namespaces).
  std::optional<SandboxResult> try_run(std::string_view program, const SandboxLimits& limits);
  std::optional<SandboxResult> try_run(std::string_view program) { return try_run(program, config_.limits); }

  const SandboxConfig& config() const { return config_; }
  SandboxStats stats() const;

 private:
  SandboxResult run_one(std::string_view program, const SandboxLimits& limits) const;

  SandboxConfig config_;
  mutable std::mutex mu_;
  std::condition_variable slot_freed_;
  SandboxStats stats_;
  int64_t next_ticket_ = 0, serving_ticket_ = 0;  // waiting calls take slots in arrival order
};

}  // namespace ppu::serve
