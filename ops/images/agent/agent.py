"""Executor agent: the main process of every sandbox-executor container.

The node daemon talks to it through the container's stdin and stdout (docker attach), one JSON
object per line, as PROTOCOL.md beside this file says: it runs code (in the stateful Python
kernel, kernel.py, or in fresh processes for Python, shell and JavaScript), streams the output,
enforces timeouts and output caps, kills every process a run leaves behind, and reads and
writes files in /workspace. Its own log lines go to stderr.

Design:
- one single-threaded asyncio loop, so one writer owns stdout (lines never interleave) and a
  run's result is written only after its remaining output has been read from its pipes and
  sent;
- children are reaped on SIGCHLD with waitpid(-1) (no watcher threads; it also reaps orphans
  when the agent is PID 1, in a container without --init);
- every process of a run carries SANDBOX_EXECUTION_ID in its environment, which is how the
  agent finds the ones that left the run's process group.

Python 3.11 standard library only (Debian bookworm's python3).
"""

import asyncio
import base64
import binascii
import datetime
import errno
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import traceback

PROTOCOL = 1
MAX_LINE = 1 << 20  # longest protocol line either way, newline included
OUT_CHUNK = 65536  # most bytes of output in one out frame (and in one pipe read)
READ_MAX = 524288  # most bytes one file_read returns
WORKSPACE = "/workspace"
ID_VAR = "SANDBOX_EXECUTION_ID"
KERNEL_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernel.py")
INTERRUPT_GRACE = 1.0  # seconds a stateful run has to end after SIGINT
DRAIN_BUDGET = 0.1  # most seconds spent reading what an ended run left in a pipe
KILL_PATIENCE = 10.0  # give up (and log) when a run's processes outlive this many seconds of SIGKILL
UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
LANGUAGES = ("python", "shell", "javascript")
# Runs the JavaScript file named by argv[1] as if it were /workspace/[execution], so that
# require('./x') and node_modules resolve from the user's folder, not from /tmp.
NODE_RUNNER = ["node", "-e", (
    "const Module = require('module');"
    "const name = '/workspace/[execution]';"
    "const code = require('fs').readFileSync(process.argv[1], 'utf8');"
    "const main = new Module(name, null);"
    "main.filename = name;"
    "main.paths = Module._nodeModulePaths('/workspace');"
    "main._compile(code, name);"
)]
# The container's OOM-kill counter: cgroup v2, then v1.
OOM_FILES = ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control")
ERRNO_CODES = {
    errno.ENOENT: "not_found",
    errno.EISDIR: "is_directory",
    errno.ENOTDIR: "not_directory",
    errno.EFBIG: "too_large",
    errno.ENAMETOOLONG: "invalid",
}


def log(message):
    print(f"agent: {message}", file=sys.stderr, flush=True)


def encode(message):
    """One protocol line. Lone surrogates (file names that are not UTF-8) become '?'."""
    text = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8", "replace") + b"\n"


def b64(data):
    return base64.b64encode(data).decode("ascii")


def oom_kills():
    """The container cgroup's OOM-kill counter, or None where it cannot be read."""
    for path in OOM_FILES:
        try:
            with open(path) as counters:
                for line in counters:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return None


def oom_killed(status, before):
    """True when a process ended by SIGKILL while the OOM-kill counter went up."""
    if before is None or not os.WIFSIGNALED(status) or os.WTERMSIG(status) != signal.SIGKILL:
        return False
    return (oom_kills() or 0) > before


def describe_exit(status):
    """(exit_code, signal) of a wait status; signal N gives exit code 128 + N, as in a shell."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        return 128 + number, number
    return os.WEXITSTATUS(status), None


def raise_oom_score():
    """Runs in a child before exec: the OOM killer takes user code before the agent."""
    try:
        with open("/proc/self/oom_score_adj", "w") as adj:
            adj.write("1000")
    except OSError:  # no /proc: run anyway
        pass


def pids_of_run(run_id):
    """Processes whose environment holds SANDBOX_EXECUTION_ID=run_id."""
    needle = f"\0{ID_VAR}={run_id}\0".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as environ:
                if needle in b"\0" + environ.read() + b"\0":
                    found.append(int(name))
        except OSError:  # gone, or not ours
            continue
    return found


def int_field(message, name, minimum):
    value = message.get(name)
    if type(value) is not int or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}")
    return value


class FileError(Exception):
    """A file op's failure, with its protocol error code."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def resolve(path):
    """(real path, normalised relative path) of a request's path; path_escape if it leads out."""
    if not isinstance(path, str):
        raise FileError("invalid", "path must be a string")
    if "\0" in path or path.startswith("/") or ".." in path.split("/"):
        raise FileError("path_escape", f"{path!r} is not a path inside /workspace")
    rel = "/".join(part for part in path.split("/") if part not in ("", "."))
    real = os.path.realpath(os.path.join(WORKSPACE, rel))
    if real != WORKSPACE and not real.startswith(WORKSPACE + "/"):
        raise FileError("path_escape", f"{path!r} leads out of /workspace")
    return real, rel


def file_entry(real, rel):
    """A listing entry, shaped like messages::files::FileEntry."""
    info = os.lstat(real)
    if stat.S_ISREG(info.st_mode):
        kind = "file"
    elif stat.S_ISDIR(info.st_mode):
        kind = "directory"
    elif stat.S_ISLNK(info.st_mode):
        kind = "symlink"
    else:
        kind = "other"
    modified = datetime.datetime.fromtimestamp(info.st_mtime_ns / 1e9, datetime.timezone.utc)
    return {
        "name": rel.rsplit("/", 1)[-1],
        "path": rel,
        "kind": kind,
        "size": info.st_size if kind == "file" else 0,
        "modified_at": modified.isoformat(timespec="microseconds").replace("+00:00", "Z"),
    }


def upload_path(real, message):
    """The temporary file of an upload, next to its target."""
    upload = message.get("upload")
    if not isinstance(upload, str) or not UPLOAD_ID.fullmatch(upload):
        raise FileError("invalid", "upload must be 1 to 128 characters of A-Z a-z 0-9 _ -")
    if real == WORKSPACE:
        raise FileError("is_directory", "/workspace is a folder")
    folder, name = os.path.split(real)
    return os.path.join(folder, f".{name}.upload-{upload}")


class Writer:
    """Writes to a pipe without blocking the loop; whole writes stay in order."""

    def __init__(self, loop, fd):
        self.loop, self.fd = loop, fd
        self.pending = bytearray()
        self.closing = False
        os.set_blocking(fd, False)

    def write(self, data):
        if self.fd >= 0:
            self.pending += data
            self.flush()

    def finish(self):
        """Closes the pipe once everything is written (a child's stdin gets its EOF)."""
        self.closing = True
        self.flush()

    def flush(self):
        if self.fd < 0:
            return
        try:
            while self.pending:
                del self.pending[: os.write(self.fd, self.pending)]
        except BlockingIOError:
            self.loop.add_writer(self.fd, self.flush)
            return
        except OSError:  # the reader is gone (EPIPE): nobody wants the rest
            self.pending.clear()
        self.loop.remove_writer(self.fd)
        if self.closing:
            self.close()

    def flush_blocking(self):
        """Writes what is left before the agent exits."""
        if self.fd >= 0 and self.pending:
            self.loop.remove_writer(self.fd)
            os.set_blocking(self.fd, True)
            self.flush()

    def close(self):
        if self.fd >= 0:
            self.loop.remove_writer(self.fd)
            os.close(self.fd)
            self.fd = -1


class Reader:
    """Reads a pipe as data comes and hands each chunk to sink."""

    def __init__(self, loop, fd, sink):
        self.loop, self.fd, self.sink = loop, fd, sink
        os.set_blocking(fd, False)
        loop.add_reader(fd, self.read)

    def read(self):
        """Reads once; False when nothing is there now (or ever again)."""
        if self.fd < 0:
            return False
        try:
            data = os.read(self.fd, OUT_CHUNK)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self.close()
            return False
        self.sink(data)
        return True

    def drain(self):
        """Reads what is in the pipe now; a writer that never stops gets DRAIN_BUDGET."""
        deadline = time.monotonic() + DRAIN_BUDGET
        while time.monotonic() < deadline and self.read():
            pass

    def close(self):
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1


class Run:
    """One exec: the checked request, its output accounting, and why it was stopped."""

    def __init__(self, agent, run_id, message):
        self.agent, self.id = agent, run_id
        self.language = message.get("language")
        if self.language not in LANGUAGES:
            raise ValueError(f"language must be one of {', '.join(LANGUAGES)}")
        self.code = message.get("code")
        stdin = message.get("stdin", "")
        env = message.get("env", {})
        fresh = message.get("fresh", False)
        if not isinstance(self.code, str) or not isinstance(stdin, str):
            raise ValueError("code and stdin must be strings")
        try:
            self.code.encode()
            self.stdin = stdin.encode()
        except UnicodeEncodeError:
            raise ValueError("code and stdin must be valid Unicode (no lone surrogates)") from None
        if not isinstance(fresh, bool):
            raise ValueError("fresh must be a boolean")
        if not isinstance(env, dict) or not all(
            isinstance(key, str) and isinstance(value, str) and key and "=" not in key
            and "\0" not in key + value
            for key, value in env.items()
        ):
            raise ValueError("env must map variable names to strings")
        self.timeout = int_field(message, "timeout_ms", 1) / 1000
        self.limit = int_field(message, "output_limit", 0)
        self.env = {**agent.base_env, **env, ID_VAR: run_id}
        self.request_env = env
        self.fresh = fresh or self.language != "python"
        self.sent = {"stdout": 0, "stderr": 0}
        self.truncated = {"stdout": False, "stderr": False}
        self.started = None
        self.ended = False  # a cancel that comes after this is too late to count
        self.stop_reason = None  # "timeout" or "cancelled"
        self.stopped = asyncio.Event()

    def emit(self, stream, data):
        """Sends output of the run, up to its cap; past it, counts what was dropped."""
        room = self.limit - self.sent[stream]
        if len(data) > room:
            self.truncated[stream] = True
            data = data[: max(room, 0)]
        self.sent[stream] += len(data)
        for start in range(0, len(data), OUT_CHUNK):
            chunk = data[start : start + OUT_CHUNK]
            self.agent.out.write(encode({"t": "out", "id": self.id, "stream": stream, "data": b64(chunk)}))

    def stop(self, reason):
        if self.stop_reason is None and not self.ended:
            self.stop_reason = reason
            self.stopped.set()

    def outcome(self, exit_code, signal_number, oom):
        """The result fields that say how the run ended."""
        result = {"exit_code": exit_code, "signal": signal_number, "oom_killed": False}
        if self.stop_reason == "timeout":
            result["status"] = "timeout"
        elif self.stop_reason == "cancelled":
            result.update(status="error", error="cancelled")
        elif oom:
            result.update(status="failed", oom_killed=True,
                          error="out of memory: the kernel's OOM killer ended the run")
        else:
            result["status"] = "completed" if exit_code == 0 else "failed"
        return result


class Kernel:
    """The stateful Python interpreter (kernel.py) and the pipes to it."""

    def __init__(self, agent):
        self.loop = loop = agent.loop
        command_r, command_w = os.pipe()
        reply_r, reply_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        argv = [sys.executable, "-u", KERNEL_SCRIPT, str(command_r), str(reply_w)]
        try:
            self.pid, self.exited = agent.spawn(
                argv, agent.base_env, subprocess.DEVNULL, out_w, err_w, (command_r, reply_w)
            )
        except BaseException:
            for fd in (command_w, reply_r, out_r, err_r):
                os.close(fd)
            raise
        finally:
            for fd in (command_r, reply_w, out_w, err_w):
                os.close(fd)
        self.run = None
        self.answer = None
        self.reply_buffer = bytearray()
        self.commands = Writer(loop, command_w)
        self.replies = Reader(loop, reply_r, self.on_reply)
        self.pipes = [Reader(loop, out_r, self.forward("stdout")),
                      Reader(loop, err_r, self.forward("stderr"))]

    def forward(self, stream):
        """Sink of a kernel pipe: output between runs (a thread left running) is dropped."""

        def sink(data):
            if self.run is not None:
                self.run.emit(stream, data)

        return sink

    def on_reply(self, data):
        self.reply_buffer += data
        while b"\n" in self.reply_buffer:
            line, _, rest = self.reply_buffer.partition(b"\n")
            self.reply_buffer = rest
            try:
                answer = json.loads(line)
                valid = type(answer["exit_code"]) is int and (
                    answer["return_value"] is None or isinstance(answer["return_value"], str))
            except (ValueError, TypeError, KeyError):
                valid = False
            if not valid:
                log("ignored a malformed line from the kernel")
            elif self.answer is not None and not self.answer.done():
                self.answer.set_result(answer)

    def start(self, run):
        """Sends run to the kernel; returns the future of its answer."""
        self.run = run
        self.answer = self.loop.create_future()
        request = {"id": run.id, "code": run.code, "stdin": run.stdin.decode(), "env": run.request_env}
        self.commands.write(json.dumps(request).encode() + b"\n")
        return self.answer

    def finish(self):
        """After the answer: the run's output is in the pipes already; take it, then detach."""
        for pipe in self.pipes:
            pipe.drain()
        self.run = None

    def close(self):
        self.finish()
        for end in (*self.pipes, self.replies, self.commands):
            end.close()


class Agent:
    """The protocol endpoint: reads requests, runs code, answers file ops."""

    def __init__(self, loop):
        self.loop = loop
        self.out = Writer(loop, 1)
        self.base_env = dict(os.environ)
        self.runs = {}  # id -> Run, while it runs
        self.children = {}  # pid -> (Popen, future of its wait status)
        self.kernel = None
        self.kernel_lock = asyncio.Lock()  # stateful runs go one at a time
        self.input = bytearray()
        self.skipping = False  # inside an over-long request line
        self.closed = loop.create_future()
        self.handlers = {
            "ping": lambda message: self.reply(message["req"], protocol=PROTOCOL),
            "exec": self.on_exec,
            "cancel": self.on_cancel,
            "file_write": self.file_op(self.file_write),
            "file_abort": self.file_op(self.file_abort),
            "file_read": self.file_op(self.file_read),
            "file_list": self.file_op(self.file_list),
            "file_delete": self.file_op(self.file_delete),
        }

    # --- the protocol channel

    def on_input(self):
        try:
            data = os.read(0, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            log("stdin closed: exiting")
            self.loop.remove_reader(0)
            self.close()
            return
        self.input += data
        while True:
            newline = self.input.find(b"\n")
            if newline < 0:
                if len(self.input) >= MAX_LINE:
                    if not self.skipping:
                        log("dropped a request line longer than 1 MiB")
                    self.skipping = True
                    self.input.clear()
                return
            line = bytes(self.input[:newline])
            del self.input[: newline + 1]
            if self.skipping:  # the end of an over-long line
                self.skipping = False
            elif len(line) >= MAX_LINE:
                log("dropped a request line longer than 1 MiB")
            elif line.strip():
                self.handle(line)

    def handle(self, line):
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            message = None
        if not isinstance(message, dict):
            log("ignored a line that is not a JSON object")
            return
        op = message.get("op")
        handler = self.handlers.get(op) if isinstance(op, str) else None
        if handler is None:
            if "req" in message:
                self.reply_error(message["req"], "invalid", f"unknown op {op!r}")
            else:
                log(f"ignored a line with unknown op {op!r} and no req")
            return
        if op not in ("exec", "cancel") and "req" not in message:
            log(f"ignored {op} without req")
            return
        handler(message)

    def reply(self, req, **fields):
        line = encode({"t": "reply", "req": req, "ok": True, **fields})
        if len(line) > MAX_LINE:
            self.reply_error(req, "too_large", "the answer would not fit in one protocol line")
        else:
            self.out.write(line)

    def reply_error(self, req, code, message):
        error = {"code": code, "message": message}
        self.out.write(encode({"t": "reply", "req": req, "ok": False, "error": error}))

    def close(self):
        if not self.closed.done():
            self.closed.set_result(None)

    # --- processes

    def spawn(self, argv, env, stdin, stdout, stderr, pass_fds=()):
        """Starts a child in a session of its own (process group = its pid) in /workspace."""
        process = subprocess.Popen(
            argv, stdin=stdin, stdout=stdout, stderr=stderr, cwd=WORKSPACE, env=env,
            start_new_session=True, pass_fds=pass_fds, preexec_fn=raise_oom_score,
        )
        exited = self.loop.create_future()
        self.children[process.pid] = (process, exited)
        return process.pid, exited

    def reap(self):
        """SIGCHLD: collects every child that ended (and orphans, when the agent is PID 1)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            process, exited = self.children.pop(pid, (None, None))
            if process is not None:
                # Popen must not wait for this pid later: it may belong to someone else by then.
                process.returncode = os.waitstatus_to_exitcode(status)
                exited.set_result(status)

    async def kill_tree(self, group, run_id):
        """SIGKILL to a process group and to every process carrying run_id, until none is left.

        New processes of a fork bomb inherit the variable, so repeating ends it too."""
        deadline = time.monotonic() + KILL_PATIENCE
        while True:
            alive = False
            try:
                os.killpg(group, signal.SIGKILL)
                alive = True  # members may be zombies until their parent reaps them
            except ProcessLookupError:
                pass
            for pid in pids_of_run(run_id):
                try:
                    os.kill(pid, signal.SIGKILL)
                    alive = True
                except ProcessLookupError:
                    pass
            if not alive:
                return
            if time.monotonic() > deadline:
                log(f"processes of run {run_id} survive SIGKILL; giving up on them")
                return
            await asyncio.sleep(0.01)

    async def wait_or_stop(self, run, futures):
        """Waits for any of futures until the run's timeout or a cancel; False if they lost."""
        stopped = self.loop.create_task(run.stopped.wait())
        await asyncio.wait({*futures, stopped}, timeout=run.timeout, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if any(future.done() for future in futures):
            run.ended = True
            return True
        run.stop("timeout")  # a cancel came first: its reason stays
        return False

    # --- runs

    def on_exec(self, message):
        run_id = message.get("id")
        if not isinstance(run_id, str) or not run_id or "\0" in run_id:
            log("ignored an exec without a usable id")
            return
        try:
            if run_id in self.runs:
                raise ValueError("a run with this id is still running")
            run = Run(self, run_id, message)
        except ValueError as exc:
            result = {"status": "error", "error": f"invalid exec: {exc}"}
            self.out.write(encode(self.result_message(run_id, None, result)))
            return
        self.runs[run_id] = run
        self.loop.create_task(self.execute(run))

    def on_cancel(self, message):
        run = self.runs.get(message.get("id"))
        if run is None:
            log(f"cancel of {message.get('id')!r}, which is not running")
        else:
            run.stop("cancelled")

    async def execute(self, run):
        try:
            result = await (self.run_fresh(run) if run.fresh else self.run_stateful(run))
        except Exception as exc:  # a bug must still give the run its one result
            log(f"run {run.id} failed: {traceback.format_exc()}")
            result = {"status": "error", "error": f"agent error: {exc}"}
        del self.runs[run.id]
        self.out.write(encode(self.result_message(run.id, run, result)))

    @staticmethod
    def result_message(run_id, run, fields):
        message = {
            "t": "result", "id": run_id, "status": None, "exit_code": None, "signal": None,
            "oom_killed": False, "state_lost": False, "error": None, "return_value": None,
            "truncated_stdout": bool(run and run.truncated["stdout"]),
            "truncated_stderr": bool(run and run.truncated["stderr"]),
            "duration_ms": round((time.monotonic() - run.started) * 1000) if run and run.started else 0,
        }
        message.update(fields)
        return message

    async def run_fresh(self, run):
        code_file = None
        if run.language == "shell":
            argv = ["sh", "-c", run.code]
        else:
            python = run.language == "python"
            suffix, interpreter = (".py", ["python3", "-u"]) if python else (".js", NODE_RUNNER)
            fd, code_file = tempfile.mkstemp(prefix="sandbox-run-", suffix=suffix)
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(run.code)
            argv = [*interpreter, code_file]
            if python:
                # The code file sits in /tmp; imports should find the user's modules first.
                run.env = {"PYTHONPATH": WORKSPACE, **run.env}
        try:
            return await self.run_process(run, argv)
        finally:
            if code_file:
                try:
                    os.unlink(code_file)
                except FileNotFoundError:  # the user's code may have cleaned /tmp
                    pass

    async def run_process(self, run, argv):
        stdin_r, stdin_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        oom_before = oom_kills()
        try:
            pid, exited = self.spawn(argv, run.env, stdin_r, out_w, err_w)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            for fd in (stdin_w, out_r, err_r):
                os.close(fd)
            return {"status": "error", "error": f"could not start {argv[0]}: {exc}"}
        finally:
            for fd in (stdin_r, out_w, err_w):
                os.close(fd)
        run.started = time.monotonic()
        stdin = Writer(self.loop, stdin_w)
        stdin.write(run.stdin)
        stdin.finish()
        pipes = [Reader(self.loop, out_r, lambda data: run.emit("stdout", data)),
                 Reader(self.loop, err_r, lambda data: run.emit("stderr", data))]
        try:
            if not await self.wait_or_stop(run, {exited}):
                await self.kill_tree(pid, run.id)
            status = await exited
            # What the program wrote before it ended is in the pipes now.
            for pipe in pipes:
                pipe.drain()
        finally:
            for end in (*pipes, stdin):
                end.close()
            await self.kill_tree(pid, run.id)  # what the run left behind
        return run.outcome(*describe_exit(status), oom_killed(status, oom_before))

    async def run_stateful(self, run):
        acquire = self.loop.create_task(self.kernel_lock.acquire())
        stopped = self.loop.create_task(run.stopped.wait())
        await asyncio.wait({acquire, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if run.stop_reason is not None:  # cancelled while waiting for the kernel
            if acquire.done():
                self.kernel_lock.release()
            else:
                acquire.cancel()
            return run.outcome(None, None, False)
        try:
            return await self.run_in_kernel(run)
        finally:
            self.kernel_lock.release()

    async def run_in_kernel(self, run):
        state_lost = False
        if self.kernel is not None and self.kernel.exited.done():
            log("the kernel died between runs; starting a new one")
            await self.bury_kernel()
            state_lost = True
        if self.kernel is None:
            try:
                self.kernel = Kernel(self)
            except (OSError, subprocess.SubprocessError) as exc:
                error = f"could not start the Python kernel: {exc}"
                return {"status": "error", "error": error, "state_lost": state_lost}
        kernel = self.kernel
        oom_before = oom_kills()
        run.started = time.monotonic()
        answer = kernel.start(run)
        if not await self.wait_or_stop(run, {answer, kernel.exited}):
            try:
                os.kill(kernel.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
            done, _ = await asyncio.wait({answer, kernel.exited}, timeout=INTERRUPT_GRACE,
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done:
                await self.kill_tree(kernel.pid, run.id)
        if answer.done():
            kernel.finish()
            reply = answer.result()
            result = run.outcome(reply["exit_code"], None, False)
            result.update(return_value=reply["return_value"], state_lost=state_lost)
            return result
        status = await kernel.exited
        await self.bury_kernel()
        result = run.outcome(*describe_exit(status), oom_killed(status, oom_before))
        if result["status"] == "failed" and not result["oom_killed"]:
            result["error"] = "the Python kernel died"
        result["state_lost"] = True
        return result

    async def bury_kernel(self):
        """After the kernel's death: kills what it left, takes its last output, closes its pipes."""
        kernel, self.kernel = self.kernel, None
        run_id = kernel.run.id if kernel.run else ""
        await self.kill_tree(kernel.pid, run_id)
        kernel.close()

    # --- files

    def file_op(self, operation):
        def handler(message):
            try:
                fields = operation(message)
            except FileError as exc:
                self.reply_error(message["req"], exc.code, str(exc))
            except ValueError as exc:
                self.reply_error(message["req"], "invalid", str(exc))
            except FileExistsError as exc:  # a file where a folder should be
                self.reply_error(message["req"], "not_directory", f"{exc.strerror}: {message.get('path')}")
            except OSError as exc:
                code = ERRNO_CODES.get(exc.errno, "io")
                self.reply_error(message["req"], code, f"{exc.strerror}: {message.get('path')}")
            else:
                self.reply(message["req"], **fields)

        return handler

    def file_write(self, message):
        real, rel = resolve(message.get("path"))
        temp = upload_path(real, message)
        offset = int_field(message, "offset", 0)
        last = message.get("last", False)
        if not isinstance(last, bool):
            raise ValueError("last must be a boolean")
        try:
            data = base64.b64decode(message.get("data", ""), validate=True)
        except (binascii.Error, TypeError, ValueError) as exc:
            raise ValueError(f"data is not base64: {exc}") from None
        if os.path.isdir(real):
            raise FileError("is_directory", f"{rel} is a folder")
        if offset == 0:
            os.makedirs(os.path.dirname(real), exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        else:
            flags = os.O_WRONLY | os.O_APPEND
        try:
            # O_NOFOLLOW and O_NONBLOCK: a symlink or a FIFO put there cannot redirect or hang us.
            fd = os.open(temp, flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except FileNotFoundError:
            message = f"no upload of {rel} in progress (a first chunk has offset 0)"
            raise FileError("invalid", message) from None
        with os.fdopen(fd, "wb") as file:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise FileError("invalid", f"the upload's temporary file for {rel} is not a file")
            if info.st_size != offset:
                raise FileError("invalid", f"the upload of {rel} has {info.st_size} bytes, not {offset}")
            file.write(data)
        received = offset + len(data)
        if not last:
            return {"received": received}
        os.replace(temp, real)
        return {"received": received, "entry": file_entry(real, rel)}

    def file_abort(self, message):
        real, _ = resolve(message.get("path"))
        try:
            os.unlink(upload_path(real, message))
        except FileNotFoundError:
            pass
        return {}

    def file_read(self, message):
        real, rel = resolve(message.get("path"))
        offset = int_field(message, "offset", 0)
        length = int_field(message, "length", 0)
        if length > READ_MAX:
            raise FileError("too_large", f"length is at most {READ_MAX}")
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK)
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise FileError("is_directory", f"{rel or '/workspace'} is a folder")
            if not stat.S_ISREG(info.st_mode):
                raise FileError("invalid", f"{rel} is not a regular file")
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        return {"data": b64(data), "size": info.st_size, "eof": offset + len(data) >= info.st_size}

    def file_list(self, message):
        real, rel = resolve(message.get("path"))
        entries = []
        for name in sorted(os.listdir(real)):
            try:
                entries.append(file_entry(os.path.join(real, name), f"{rel}/{name}" if rel else name))
            except FileNotFoundError:  # removed meanwhile
                continue
        return {"entries": entries}

    def file_delete(self, message):
        real, rel = resolve(message.get("path"))
        if real == WORKSPACE:
            raise FileError("invalid", "/workspace itself cannot be deleted")
        if stat.S_ISDIR(os.lstat(real).st_mode):
            shutil.rmtree(real)
        else:
            os.unlink(real)
        return {}


async def serve():
    loop = asyncio.get_running_loop()
    agent = Agent(loop)
    loop.add_signal_handler(signal.SIGCHLD, agent.reap)
    loop.add_signal_handler(signal.SIGTERM, agent.close)
    os.set_blocking(0, False)
    loop.add_reader(0, agent.on_input)
    agent.out.write(encode({"t": "hello", "protocol": PROTOCOL, "pid": os.getpid()}))
    await agent.closed
    # Nobody can talk to the agent any more: end every run and the kernel, then exit at once
    # (tearing down the tasks one by one would only send results nobody reads).
    for group in list(agent.children):  # every child leads its own process group
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    agent.out.flush_blocking()
    os._exit(0)


def guard_channel():
    """Keeps user code off the protocol channel and away from the agent.

    User code runs as the agent's user, so by default it could open /proc/<agent>/fd/1 (the
    channel) and write a forged result, or ptrace the agent. An undumpable process's /proc
    entries belong to root and it cannot be traced; children regain dumpability at exec, so
    user code is unaffected. As PID 1 of its container (no --init), signals from inside for
    which it keeps the default action are dropped by the kernel: SIGINT is set back to the
    default so that user code cannot interrupt the agent."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_dumpable = 4
        if libc.prctl(pr_set_dumpable, 0, 0, 0, 0) != 0:
            log(f"prctl(PR_SET_DUMPABLE, 0) failed: {os.strerror(ctypes.get_errno())}")
    except (ImportError, OSError, AttributeError) as error:
        log(f"cannot make the agent undumpable: {error}")


def main():
    # Stdout (fd 1) is the protocol channel: a stray print must land in the log instead.
    sys.stdout = sys.stderr
    guard_channel()
    asyncio.run(serve())


if __name__ == "__main__":
    main()
