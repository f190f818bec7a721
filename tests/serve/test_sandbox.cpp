// serve/Sandbox and the `code` tool: programs run and report their output and status; each escape
// attempt of issue 13 fails safely, and each test says what "safe" means there. Every test runs real
// sandboxes: a machine without bubblewrap or user namespaces fails them with the reason (the Sandbox
// constructor's or try_run's UserError), never skips them. Timeouts are kept small (the whole file
// takes a few seconds).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "TestUtil.hpp"
#include "serve/Sandbox.hpp"
#include "serve/Tools.hpp"

using namespace ppu;
using namespace ppu::serve;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

// Limits small enough for a test: a run that goes wrong ends within seconds.
SandboxLimits quick() {
  SandboxLimits l;
  l.wall_time_s = 5;
  l.cpu_time_s = 5;
  l.memory_bytes = int64_t{256} << 20;
  return l;
}

Sandbox& box() {
  static Sandbox sandbox(SandboxConfig{});  // throws, failing the test with the reason, where unavailable
  return sandbox;
}

SandboxResult run(std::string_view program, const SandboxLimits& l = quick()) {
  const std::optional<SandboxResult> r = box().try_run(program, l);
  if (!r) ADD_FAILURE() << "the sandbox answered busy";
  return r.value_or(SandboxResult{});
}

bool contains(const std::string& text, std::string_view part) { return text.find(part) != std::string::npos; }

// How many processes live in the pid namespace `ns` ("pid:[4026532178]"), as far as this process may
// look (root sees all).
int processes_in(const std::string& ns) {
  int n = 0;
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::error_code ec;
    if (fs::read_symlink(e.path() / "ns" / "pid", ec).string() == ns) ++n;
  }
  return n;
}

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

}  // namespace

TEST(Sandbox, RunsAProgram) {
  const SandboxResult r = run("print('hello')\nprint(6 * 7)\n");
  EXPECT_EQ(r.stdout_text, "hello\n42\n");
  EXPECT_EQ(r.stderr_text, "");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.signal, 0);
  EXPECT_FALSE(r.timed_out || r.stdout_truncated || r.stderr_truncated);
  EXPECT_GT(r.wall_time_s, 0);
}

TEST(Sandbox, ExitStatusStderrAndErrors) {
  SandboxResult r = run("import sys\nprint('to stderr', file=sys.stderr)\nsys.exit(3)\n");
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_EQ(r.stderr_text, "to stderr\n");
  EXPECT_EQ(r.stdout_text, "");
  // An exception: Python's traceback of the program's own frames and lines, nothing of the prelude.
  r = run("x = 1\ny = x / 0\n");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(r.stderr_text.starts_with(
      "Traceback (most recent call last):\n  File \"<code>\", line 2, in <module>\n    y = x / 0\n"))
      << r.stderr_text;  // then, from Python 3.11 on, a line of ~~^~~ under the expression
  EXPECT_TRUE(r.stderr_text.ends_with("\nZeroDivisionError: division by zero\n")) << r.stderr_text;
  EXPECT_EQ(r.stderr_text.find("  File ", 40), std::string::npos) << r.stderr_text;  // one frame only
  // A syntax error.
  r = run("print('a'\n");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(contains(r.stderr_text, "File \"<code>\", line 1")) << r.stderr_text;
  EXPECT_TRUE(contains(r.stderr_text, "SyntaxError: '(' was never closed")) << r.stderr_text;
  EXPECT_FALSE(contains(r.stderr_text, "exec(")) << r.stderr_text;
  // The program is __main__, reads an empty stdin, and may be any UTF-8.
  r = run("import sys\nprint(__name__, repr(sys.stdin.read()), 'café')\n");
  EXPECT_EQ(r.stdout_text, "__main__ '' café\n");
}

// Safe: the program sees a fixed, minimal environment - never a variable of the server's - and an
// empty work directory of its own that is gone after the call.
TEST(Sandbox, CleanEnvironmentAndAFreshWorkDirectory) {
  ASSERT_EQ(::setenv("PPU_SANDBOX_TEST_SECRET", "hunter2-4f1c", 1), 0);
  const char* program = R"(import json, os
files = sorted(os.listdir('.'))
open('note.txt', 'w').write('left behind?')
init_env = open('/proc/1/environ', 'rb').read().decode()
print(json.dumps({'env': dict(os.environ), 'cwd': os.getcwd(), 'files': files, 'tmp': os.path.realpath('/tmp'),
                  'init_env': init_env}))
)";
  for (int call = 0; call < 2; ++call) {
    const SandboxResult r = run(program);
    ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
    EXPECT_FALSE(contains(r.stdout_text, "hunter2")) << r.stdout_text;
    const json j = json::parse(r.stdout_text);
    EXPECT_EQ(j["env"], json({{"PATH", "/usr/local/bin:/usr/bin:/bin"}, {"HOME", "/sandbox"}, {"TMPDIR", "/sandbox"},
                              {"LANG", "C.UTF-8"}, {"PWD", "/sandbox"}}))
        << j["env"].dump();
    EXPECT_EQ(j["cwd"], "/sandbox");
    EXPECT_EQ(j["tmp"], "/sandbox");
    EXPECT_EQ(j["files"], json::array()) << "call " << call << ": the work directory is not fresh";
  }
  ::unsetenv("PPU_SANDBOX_TEST_SECRET");
}

// Safe: no file of the host outside the read-only system is visible - not /etc/shadow, not this
// test's own executable, sources or scratch files, not /root - and the root holds only the system
// trees the sandbox binds.
TEST(Sandbox, CannotReadTheServersFiles) {
  const std::string secret = test::temp_path("secret.txt");
  test::write_file(secret, "secret-5b2e");
  const json paths = {"/etc/shadow",
                      "/etc/passwd",
                      secret,
                      fs::read_symlink("/proc/self/exe").string(),
                      std::string(PPU_TEST_SOURCE_DIR) + "/CMakeLists.txt",
                      fmt::format("/proc/{}/environ", ::getpid()),
                      "/root/.bashrc"};
  const SandboxResult r = run(fmt::format(R"(import json, os
for p in json.loads({}):
    try:
        open(p, 'rb').read()
        print('READ', p)
    except OSError as e:
        print('refused', type(e).__name__)
print(json.dumps(sorted(os.listdir('/'))))
)",
                                          json(paths.dump()).dump()));
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_FALSE(contains(r.stdout_text, "READ")) << r.stdout_text;
  EXPECT_FALSE(contains(r.stdout_text, "secret-5b2e"));
  std::string lines = r.stdout_text;
  int refused = 0;
  for (size_t at = 0; (at = lines.find("refused FileNotFoundError", at)) != std::string::npos; ++at) ++refused;
  EXPECT_EQ(refused, static_cast<int>(paths.size())) << r.stdout_text;  // absent, not merely forbidden
  const std::string last = r.stdout_text.substr(r.stdout_text.rfind('[', r.stdout_text.size() - 2));
  const std::set<std::string> allowed = {"bin", "dev",   "etc",    "lib", "lib32", "lib64",
                                         "libx32", "proc", "sandbox", "sbin", "tmp", "usr"};
  for (const auto& name : json::parse(last)) EXPECT_TRUE(allowed.contains(name.get<std::string>())) << name;
}

// Safe: no connection leaves the sandbox - not to a port this process listens on at 127.0.0.1, not
// to an outside address, no name resolution; its only interface is its own loopback.
TEST(Sandbox, NoNetwork) {
  const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  ASSERT_GE(listener, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(listener, 4), 0);
  socklen_t len = sizeof addr;
  ASSERT_EQ(::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const int port = ntohs(addr.sin_port);
  // 192.0.2.1: TEST-NET-1 (RFC 5737), an outside address that is never anyone's.
  const SandboxResult r = run(fmt::format(R"(import socket
print([name for _, name in socket.if_nameindex()])
for host, port in [('127.0.0.1', {}), ('192.0.2.1', 80)]:
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((host, port))
        print('CONNECTED', host)
    except OSError as e:
        print('refused', host, e.errno)
try:
    socket.getaddrinfo('example.com', 80)
    print('RESOLVED')
except OSError:
    print('no name resolution')
)",
                                          port));
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_EQ(r.stdout_text,
            "['lo']\nrefused 127.0.0.1 111\nrefused 192.0.2.1 101\nno name resolution\n");  // ECONNREFUSED, ENETUNREACH
  EXPECT_LT(::accept(listener, nullptr, nullptr), 0);  // nothing reached our listener
  EXPECT_EQ(errno, EAGAIN);
  ::close(listener);
}

// Safe: a fork bomb gets at most `processes` processes (threads and the sandbox's init included),
// the host can still fork meanwhile and after, and when the run returns every one of them is gone.
TEST(Sandbox, ForkBombIsContained) {
  SandboxLimits l = quick();
  l.processes = 8;
  // Forks until refused; the children sleep, and die with the sandbox when the program ends.
  SandboxResult r = run(R"(import os, time
n = 0
while True:
    try:
        pid = os.fork()
    except OSError as e:
        print('refused after', n, 'errno', e.errno, flush=True)
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    n += 1
)",
                        l);
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_EQ(r.stdout_text, "refused after 6 errno 11\n");  // 8 = bwrap's init + python + 6 children; EAGAIN
  EXPECT_FALSE(r.timed_out);  // the children, asleep for 30 s, died with the program: the run ended
  // A bomb that never stops: killed at the time limit, with all its processes.
  l.wall_time_s = 1;
  r = run(R"(import os
print(os.readlink('/proc/self/ns/pid'), flush=True)
while True:
    try:
        os.fork()
    except OSError:
        pass
)",
          l);
  EXPECT_TRUE(r.timed_out);
  EXPECT_EQ(r.signal, SIGKILL);
  EXPECT_LT(r.wall_time_s, 6.0);  // 1 s, and the kill (generous: CI's two cores run tests in parallel)
  const std::string ns = first_line(r.stdout_text);
  ASSERT_TRUE(ns.starts_with("pid:[")) << r.stdout_text;
  if (::geteuid() == 0) {  // root may look at every process's namespace
    EXPECT_GE(processes_in(fs::read_symlink("/proc/self/ns/pid").string()), 1);  // the check sees processes
    EXPECT_EQ(processes_in(ns), 0) << "processes of the bomb outlived its run";
  }
  EXPECT_EQ(run("print('after')").stdout_text, "after\n");  // the host forks and runs sandboxes as before
}

// Safe: allocating 10 GB is refused inside the sandbox (MemoryError), quickly, and the program goes on.
TEST(Sandbox, MemoryIsLimited) {
  const SandboxResult r = run(R"(try:
    b = bytearray(10 * 2**30)
    print('ALLOCATED', len(b))
except MemoryError:
    print('MemoryError')
x = bytearray(64 * 2**20)
print('64 MiB fine')
)");
  EXPECT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_EQ(r.stdout_text, "MemoryError\n64 MiB fine\n");
}

// Safe: a loop or a sleep forever is stopped at the wall-clock limit; a busy loop with a shorter CPU
// limit is stopped by SIGXCPU first.
TEST(Sandbox, TimeLimits) {
  SandboxLimits l = quick();
  l.wall_time_s = 0.5;
  for (const char* forever : {"while True:\n    pass\n", "import time\ntime.sleep(3600)\n"}) {
    const SandboxResult r = run(forever, l);
    EXPECT_TRUE(r.timed_out) << forever;
    EXPECT_EQ(r.signal, SIGKILL);
    EXPECT_EQ(r.exit_code, -1);
    EXPECT_GE(r.wall_time_s, 0.5);
    EXPECT_LT(r.wall_time_s, 3.0);
  }
  l.wall_time_s = 5;
  l.cpu_time_s = 1;
  const SandboxResult r = run("while True:\n    pass\n", l);
  EXPECT_FALSE(r.timed_out);  // CPU time ran out before the 5 s of wall-clock time
  EXPECT_EQ(r.signal, SIGXCPU);
}

// Safe: nothing outside the work directory can be written - the system is read-only or absent,
// a path of the host's scratch folder lands in the sandbox's own /tmp (the host file never appears),
// and the work directory is bounded per file (EFBIG) and in all (ENOSPC).
TEST(Sandbox, CannotWriteOutsideTheWorkDirectory) {
  SandboxLimits l = quick();
  l.file_bytes = 64 << 10;
  l.work_dir_bytes = 256 << 10;
  const std::string host_file = test::temp_path("escape.txt");
  fs::remove(host_file);
  const SandboxResult r = run(fmt::format(R"(import errno
for p in ['/x', '/usr/x', '/usr/lib/x', '/etc/x', '/dev/x', '/proc/x', '/sandbox/../x', '/bin/x']:
    try:
        with open(p, 'w') as f:
            f.write('1')
        print('WROTE', p)
    except OSError as e:
        print(errno.errorcode[e.errno])
try:
    with open({}, 'w') as f:  # lands in the sandbox's /tmp, or fails: never on the host
        f.write('inside')
except OSError:
    pass
with open('/tmp/ok', 'w') as f:
    f.write('ok')
print(open('/sandbox/ok').read())
try:
    with open('big', 'wb') as f:
        f.write(b'x' * (128 << 10))
except OSError as e:
    print('one file:', errno.errorcode[e.errno])
try:
    for i in range(10):
        with open(f'part{{i}}', 'wb') as f:
            f.write(b'x' * (60 << 10))
except OSError as e:
    print('all files:', errno.errorcode[e.errno])
)",
                                          json(host_file).dump()),
                              l);
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_EQ(r.stdout_text,
            "EROFS\nEROFS\nEROFS\nEROFS\nEROFS\nENOENT\nEROFS\nEROFS\nok\none file: EFBIG\nall files: ENOSPC\n");
  EXPECT_FALSE(fs::exists(host_file));
}

// Safe: signals reach only the sandbox's own processes - its init ignores them, this test's pid does
// not exist in there - and the program, the sandbox and this process go on.
TEST(Sandbox, CannotSignalOutside) {
  const SandboxResult r = run(fmt::format(R"(import os, signal
def attempt(what, f):
    try:
        f()
        print(what, 'sent')
    except OSError as e:
        print(what, 'refused', type(e).__name__)
print('ppid', os.getppid())
attempt('parent', lambda: os.kill(os.getppid(), signal.SIGKILL))
attempt('test', lambda: os.kill({}, signal.SIGKILL))
attempt('everyone', lambda: os.kill(-1, signal.SIGKILL))
print('still running')
)",
                                          ::getpid()));
  EXPECT_EQ(r.exit_code, 0) << r.stderr_text;
  // The parent is the sandbox's init (pid 1): SIGKILL from inside its namespace is dropped. kill(-1)
  // finds no process it may signal but itself and its init.
  EXPECT_EQ(r.stdout_text,
            "ppid 1\nparent sent\ntest refused ProcessLookupError\neveryone refused ProcessLookupError\nstill running\n");
}

// Safe: printing without end (a gigabyte) stops at the output cap within a moment - the sandbox is
// killed when a stream passes it - and the host keeps exactly the cap.
TEST(Sandbox, HugeOutputIsCappedQuickly) {
  SandboxLimits l = quick();
  l.wall_time_s = 30;
  l.output_bytes = 64 << 10;
  SandboxResult r = run(R"(import sys
chunk = 'x' * (1 << 20)
for _ in range(1024):
    sys.stdout.write(chunk)
sys.stdout.flush()
print('finished', file=sys.stderr)
)",
                        l);
  EXPECT_TRUE(r.stdout_truncated);
  EXPECT_EQ(r.stdout_text, std::string(64 << 10, 'x'));
  EXPECT_EQ(r.signal, SIGKILL);
  EXPECT_FALSE(r.timed_out);
  EXPECT_EQ(r.stderr_text, "");  // it never got to the end
  EXPECT_LT(r.wall_time_s, 5.0);  // of the 30 s it had (generous: CI's two cores run tests in parallel)
  r = run("import sys\nsys.stderr.write('e' * 100000)\nprint('out')\n", l);
  EXPECT_TRUE(r.stderr_truncated);
  EXPECT_FALSE(r.stdout_truncated);
  EXPECT_EQ(r.stderr_text.size(), size_t{64} << 10);
}

TEST(Sandbox, BadLimitsAreRefused) {
  const auto bad = [](auto set, std::string message) {
    SandboxLimits l;
    set(l);
    EXPECT_EQ(test::error_message([&] { check_sandbox_limits(l); }), message);
  };
  bad([](SandboxLimits& l) { l.wall_time_s = 0; }, "sandbox limits: wall_time_s is 0; valid: 0.1 to 3600 s");
  bad([](SandboxLimits& l) { l.wall_time_s = std::nan(""); }, "sandbox limits: wall_time_s is nan; valid: 0.1 to 3600 s");
  bad([](SandboxLimits& l) { l.cpu_time_s = 0; }, "sandbox limits: cpu_time_s is 0; valid: 1 to 3600 s");
  bad([](SandboxLimits& l) { l.memory_bytes = 1 << 20; },
      "sandbox limits: memory_bytes is 1048576; valid: 33554432 to 1099511627776 bytes");
  bad([](SandboxLimits& l) { l.processes = 2; }, "sandbox limits: processes is 2; valid: 4 to 4096");
  bad([](SandboxLimits& l) { l.file_bytes = -1; }, "sandbox limits: file_bytes is -1; valid: 1024 to 68719476736 bytes");
  bad([](SandboxLimits& l) { l.work_dir_bytes = 0; },
      "sandbox limits: work_dir_bytes is 0; valid: 65536 to 68719476736 bytes");
  bad([](SandboxLimits& l) { l.open_files = 3; }, "sandbox limits: open_files is 3; valid: 16 to 65536");
  bad([](SandboxLimits& l) { l.output_bytes = 10; }, "sandbox limits: output_bytes is 10; valid: 1024 to 67108864 bytes");
  SandboxConfig c;
  c.max_running = 0;
  test::expect_error([&] { Sandbox s(c); }, {"code sandbox: max_running is 0; valid: 1 to 256"});
  c = {};
  c.max_waiting = -1;
  test::expect_error([&] { Sandbox s(c); }, {"code sandbox: max_waiting is -1; valid: 0 to 100000"});
  c = {};
  c.limits.processes = 5000;
  test::expect_error([&] { Sandbox s(c); }, {"processes is 5000"});
  SandboxLimits l;
  l.output_bytes = 0;
  test::expect_error([&] { box().try_run("print(1)", l); }, {"output_bytes is 0"});
  test::expect_error([&] { box().try_run(std::string(kSandboxMaxProgramBytes + 1, '#')); },
                     {"the program is 1048577 bytes; at most 1048576"});
}

// Where bubblewrap is missing or cannot make its namespaces, the sandbox says so and what it needs.
TEST(Sandbox, MissingOrFailingBubblewrap) {
  SandboxConfig c;
  c.bwrap = test::temp_path("no-such-bwrap");
  test::expect_error([&] { Sandbox s(c); }, {"no-such-bwrap' is not an executable file", "apt-get install bubblewrap"});
  c = {};
  c.python = "/opt/python3";
  test::expect_error([&] { Sandbox s(c); }, {"python '/opt/python3' must be under /usr"});
  c.python = "/usr/bin/no-such-python3";
  test::expect_error([&] { Sandbox s(c); }, {"'/usr/bin/no-such-python3' is not installed", "apt-get install python3"});
  // A bwrap that fails as bwrap does where user namespaces are refused.
  c = {};
  c.bwrap = test::temp_path("failing-bwrap");
  test::write_file(c.bwrap, "#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n");
  fs::permissions(c.bwrap, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                               fs::perms::others_read | fs::perms::others_exec);
  Sandbox failing(c);
  test::expect_error([&] { failing.try_run("print(1)"); },
                     {"the sandbox did not start (exit status 1): bwrap: No permissions to create new namespace",
                      "apt-get install bubblewrap", "unprivileged user namespaces"});
  // Through the tool: an error the model reads, the conversation going on.
  ToolSpec spec = parse_tool_spec("code");
  spec.sandbox.bwrap = c.bwrap;
  ToolSet tools(spec);
  const ToolResult r = tools.call("code", {{"code", "print(1)"}}, "alice");
  EXPECT_TRUE(r.is_error);
  EXPECT_TRUE(r.text.starts_with("code: the sandbox did not start (exit status 1): bwrap: No permissions")) << r.text;
  // And a ToolSet without bubblewrap refuses to start, saying what to install.
  spec.sandbox.bwrap = test::temp_path("no-such-bwrap");
  test::expect_error([&] { ToolSet t(spec); }, {"is not an executable file", "apt-get install bubblewrap"});
}

// Safe under load: at most max_running sandboxes at once, at most max_waiting calls waiting, and a
// call beyond that is answered busy at once rather than queued without bound.
TEST(Sandbox, BusyBeyondTheQueue) {
  SandboxConfig c;
  c.max_running = 1;
  c.max_waiting = 1;
  Sandbox pool(c);
  const auto wait_for = [&](auto pred) {
    for (int i = 0; i < 1000 && !pred(pool.stats()); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    return pred(pool.stats());
  };
  std::optional<SandboxResult> a, b;
  std::thread ta([&] { a = pool.try_run("import time\ntime.sleep(0.5)\nprint('a')"); });
  ASSERT_TRUE(wait_for([](const SandboxStats& s) { return s.running == 1; }));
  std::thread tb([&] { b = pool.try_run("print('b')"); });
  ASSERT_TRUE(wait_for([](const SandboxStats& s) { return s.waiting == 1; }));
  EXPECT_FALSE(pool.try_run("print('c')").has_value());  // busy, at once
  ta.join();
  tb.join();
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->stdout_text, "a\n");
  EXPECT_EQ(b->stdout_text, "b\n");
  const SandboxStats s = pool.stats();
  EXPECT_EQ(s.peak_running, 1);
  EXPECT_EQ(s.peak_waiting, 1);
  EXPECT_EQ(s.runs, 2);
  EXPECT_EQ(s.busy, 1);
  EXPECT_EQ(s.running + s.waiting, 0);
}

TEST(CodeTool, SpecParsing) {
  EXPECT_TRUE(parse_tool_spec("code").code);
  const ToolSpec s = parse_tool_spec("search=k.sqlite,code");
  EXPECT_TRUE(s.code);
  EXPECT_EQ(s.search_db, "k.sqlite");
  EXPECT_FALSE(parse_tool_spec("search=k.sqlite").code);
  test::expect_error([] { parse_tool_spec("code=x.sqlite"); }, {"'code=x.sqlite': code takes no file"});
  test::expect_error([] { parse_tool_spec("code,code"); }, {"'code' is given twice"});
}

TEST(CodeTool, AnswersAsText) {
  ToolSet tools(parse_tool_spec("code"));
  ASSERT_EQ(tools.definitions().size(), 1u);
  const ToolDef& d = tools.definitions()[0];
  EXPECT_EQ(d.name, "code");
  EXPECT_EQ(d.parameters["required"], json::array({"code"}));
  EXPECT_EQ(d.parameters["properties"]["timeout_s"]["maximum"], 10);
  ToolResult r = tools.call("code", {{"code", "print(6 * 7)"}}, "alice");
  EXPECT_FALSE(r.is_error);
  EXPECT_EQ(r.text, "exit status 0\nstdout:\n42\n");
  r = tools.call("code", {{"code", "print('partial')\n1 / 0"}}, "alice");
  EXPECT_FALSE(r.is_error);  // the program ran: its failure is its output
  EXPECT_TRUE(r.text.starts_with("exit status 1\nstdout:\npartial\nstderr:\nTraceback (most recent call last):\n"))
      << r.text;
  EXPECT_TRUE(r.text.ends_with("ZeroDivisionError: division by zero\n")) << r.text;
  EXPECT_EQ(tools.call("code", {{"code", "x = 1"}}, "alice").text, "exit status 0\n(no output)\n");
  r = tools.call("code", {{"code", "import time\nprint('start', flush=True)\ntime.sleep(60)"}, {"timeout_s", 1}}, "alice");
  EXPECT_TRUE(r.is_error);
  EXPECT_EQ(r.text, "code: stopped: it ran past its time limit of 1 s\nstdout:\nstart\n");
  r = tools.call("code", {{"code", "print('x' * 40000)"}}, "alice");
  EXPECT_TRUE(r.is_error);
  EXPECT_TRUE(r.text.starts_with("code: stopped: its stdout passed 32768 bytes, the output limit\nstdout:\nxxx"));
  EXPECT_TRUE(r.text.ends_with("x\n... [truncated]\n")) << r.text.substr(r.text.size() - 40);
  r = tools.call("code", {{"code", 5}}, "alice");
  EXPECT_TRUE(r.is_error);
  EXPECT_EQ(r.text, "code: argument 'code' must be a string, not integer");
  EXPECT_EQ(tools.call("code", {{"code", "1"}, {"timeout_s", 11}}, "alice").text,
            "code: argument 'timeout_s' is 11; valid: 1 to 10");
  r = tools.call("code", {{"code", std::string(kSandboxMaxProgramBytes + 1, '#')}}, "alice");
  EXPECT_TRUE(r.is_error);
  EXPECT_EQ(r.text, "code: the program is 1048577 bytes; at most 1048576");
}

TEST(CodeTool, BusyIsAToolError) {
  ToolSpec spec = parse_tool_spec("code");
  spec.sandbox.max_running = 1;
  spec.sandbox.max_waiting = 0;
  ToolSet tools(spec);
  ToolResult first;
  std::thread t([&] { first = tools.call("code", {{"code", "import time\ntime.sleep(1)"}}, "a"); });
  std::this_thread::sleep_for(std::chrono::milliseconds(250));  // the first call holds the only slot by then
  const ToolResult second = tools.call("code", {{"code", "print(1)"}}, "b");
  t.join();
  EXPECT_FALSE(first.is_error) << first.text;
  EXPECT_TRUE(second.busy);
  EXPECT_TRUE(second.is_error);
  EXPECT_EQ(second.text, "code: busy: this server runs 1 program at once and queues 0 more; try again shortly");
}
