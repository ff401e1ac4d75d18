#!/usr/bin/env python3
"""Developer self-test of the executor agent (PROTOCOL.md) against Docker.

Starts one container of the executor image the way the node daemon will (stdin/stdout, no TTY,
no network, pids/memory limits, no capabilities), speaks the protocol to the agent, and checks
the answers: runs in every language, stateful Python, timeouts that kill whole process trees
(a fork bomb too), OOM detection, output caps, streaming, cancel, and the file ops with their
path rules. Then it times a warm stateful `print(1)` against `docker exec ... python3 -c`.

Usage: python3 ops/images/agent/selftest.py [IMAGE]   (build it first: ops/images/build.sh)
Exits 1 when a check fails; the last line is a summary.
"""

import base64
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time

IMAGE = sys.argv[1] if len(sys.argv) > 1 else "sandbox-executor:v1.0"
NAME = f"sandbox-agent-selftest-{os.getpid()}"
DOCKER = ["docker", "run", "-i", "--rm", "--init", "--name", NAME, "--network", "none",
          "--pids-limit", "128", "--memory", "256m", "--memory-swap", "256m", "--cap-drop", "ALL",
          "--security-opt", "no-new-privileges", IMAGE]
MIB = 1 << 20
# A fresh Python run that prints how many processes carry SANDBOX_EXECUTION_ID=<id>.
LEFTOVERS = """
import os
needle = b'SANDBOX_EXECUTION_ID=%s\\0'
count = 0
for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
        count += needle in open(f'/proc/{pid}/environ', 'rb').read()
    except OSError:
        pass
print(count)
"""


class Agent:
    """The container and its protocol stream; messages are read by a thread into a queue."""

    def __init__(self):
        self.proc = subprocess.Popen(DOCKER, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.inbox = queue.Queue()
        self.held = []  # read but not yet asked for
        self.req = 0
        self.runs = 0
        threading.Thread(target=self.pump, daemon=True).start()

    def pump(self):
        for line in self.proc.stdout:
            self.inbox.put((time.monotonic(), json.loads(line)))
        self.inbox.put((time.monotonic(), None))

    def send(self, message):
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        self.proc.stdin.flush()

    def take(self, match, timeout=30.0):
        """The first message match() accepts, with the time it arrived."""
        deadline = time.monotonic() + timeout
        while True:
            for item in self.held:
                if match(item[1]):
                    self.held.remove(item)
                    return item
            try:
                item = self.inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError("no answer in time") from None
            if item[1] is None:
                raise AssertionError("the agent's stdout ended")
            self.held.append(item)

    def request(self, op, **fields):
        self.req += 1
        req = self.req
        self.send({"op": op, "req": req, **fields})
        return self.take(lambda m: m.get("t") == "reply" and m.get("req") == req)[1]

    def start(self, code, language="python", **fields):
        self.runs += 1
        run_id = f"run-{self.runs}"
        message = {"op": "exec", "id": run_id, "language": language, "code": code, "stdin": "",
                   "env": {}, "timeout_ms": 20000, "output_limit": MIB, "fresh": language != "python"}
        message.update(fields)
        self.send(message)
        return run_id

    def finish(self, run_id, timeout=60.0):
        """(result, {stream: bytes}, arrival time of the first out frame)."""
        output = {"stdout": b"", "stderr": b""}
        first = None
        while True:
            at, message = self.take(lambda m: m.get("id") == run_id, timeout)
            if message["t"] == "result":
                return message, output, first
            first = first or at
            output[message["stream"]] += base64.b64decode(message["data"])

    def run(self, code, language="python", **fields):
        result, output, _ = self.finish(self.start(code, language, **fields))
        return result, output["stdout"].decode(errors="replace"), output["stderr"].decode(errors="replace")

    def leftovers(self, run_id):
        result, out, _ = self.run(LEFTOVERS % run_id, fresh=True)
        assert result["status"] == "completed", result
        return int(out)


failures = []
passed = 0


def check(name, test, agent):
    global passed
    started = time.monotonic()
    try:
        test(agent)
    except Exception as exc:  # report and go on with the other checks
        failures.append(name)
        print(f"FAIL {name}: {type(exc).__name__}: {exc}", flush=True)
    else:
        passed += 1
        print(f"ok   {name} ({time.monotonic() - started:.1f}s)", flush=True)


def expect(result, status, exit_code="any", **fields):
    assert result["status"] == status, result
    assert exit_code == "any" or result["exit_code"] == exit_code, result
    for key, value in fields.items():
        assert result[key] == value, (key, result)


def t_hello_ping(a):
    assert a.take(lambda m: m.get("t") == "hello")[1]["protocol"] == 1
    assert a.request("ping")["protocol"] == 1
    a.proc.stdin.write(b"not json\n{\"op\":\"nope\"}\n")
    reply = a.request("nope")
    assert not reply["ok"] and reply["error"]["code"] == "invalid", reply
    assert a.request("ping")["ok"]


def t_stateful(a):
    result, out, _ = a.run("print(6*7)")
    expect(result, "completed", 0)
    assert out == "42\n", out
    expect(a.run("x = 41")[0], "completed", 0)
    result, out, _ = a.run("print(x + 1)")
    assert out == "42\n", out
    expect(a.run("x + 1")[0], "completed", 0, return_value="42")
    result, out, _ = a.run("import sys\nprint(input())\nsys.stdin.read()", stdin="hello\nrest")
    expect(result, "completed", 0, return_value="'rest'")
    assert out == "hello\n", out
    result, out, err = a.run("1/0")
    expect(result, "failed", 1)
    assert "ZeroDivisionError" in err and "kernel.py" not in err, err
    expect(a.run("raise SystemExit(4)")[0], "failed", 4, state_lost=False)
    result, out, _ = a.run("import os\nprint(os.environ['SANDBOX_EXECUTION_ID'], os.environ['K'], os.getcwd())",
                           env={"K": "v"})
    assert out.split()[1:] == ["v", "/workspace"] and out.startswith("run-"), out


def t_streams_and_exit_codes(a):
    result, out, err = a.run("import sys; print('o'); print('e', file=sys.stderr)", fresh=True)
    expect(result, "completed", 0)
    assert (out, err) == ("o\n", "e\n"), (out, err)
    result, out, err = a.run("echo hi; echo oops >&2; exit 3", "shell")
    expect(result, "failed", 3)
    assert (out, err) == ("hi\n", "oops\n"), (out, err)
    result, out, _ = a.run("console.log(6 * 7); process.exit(2)", "javascript")
    expect(result, "failed", 2)
    assert out == "42\n", out
    big = "y" * (900 * 1024)  # more than a pipe holds: stdin must be fed while output is read
    result, out, _ = a.run("cat; echo", "shell", stdin=big)
    expect(result, "completed", 0)
    assert out == big + "\n", len(out)


def t_stateful_timeout(a):
    expect(a.run("x = 41")[0], "completed", 0)
    started = time.monotonic()
    result, _, err = a.run("while True: pass", timeout_ms=1000)
    expect(result, "timeout", state_lost=False)
    assert time.monotonic() - started < 3, "took too long"
    assert "KeyboardInterrupt" in err, err
    result, out, _ = a.run("print(x)")
    assert out == "41\n", (result, out)
    # An interrupt the code swallows: killed after the grace second, state lost, then a new kernel.
    result, _, _ = a.run("import time\nwhile True:\n    try:\n        time.sleep(10)\n    except KeyboardInterrupt:\n"
                         "        pass", timeout_ms=1000)
    expect(result, "timeout", 137, state_lost=True, signal=9)
    result, _, err = a.run("print(x)")
    expect(result, "failed", 1)
    assert "NameError" in err, err


def t_kernel_death(a):
    expect(a.run("y = 1")[0], "completed", 0)
    result, _, _ = a.run("import os; os._exit(5)")
    expect(result, "failed", 5, state_lost=True)
    expect(a.run("print('alive')")[0], "completed", 0)


def t_shell_tree_timeout(a):
    run_id = a.start("sleep 1000 & sleep 1000 & while true; do :; done", "shell", timeout_ms=1500)
    result, _, _ = a.finish(run_id)
    expect(result, "timeout")
    assert a.leftovers(run_id) == 0, "processes of the run are left"


def t_leftovers_after_exit(a):
    run_id = a.start("sleep 1000 & echo started", "shell")
    result, output, _ = a.finish(run_id)
    expect(result, "completed", 0)
    assert output["stdout"] == b"started\n", output
    assert a.leftovers(run_id) == 0, "the background sleep is left"


def t_fork_bomb(a):
    # dash refuses the function name ':'. The bare bomb's shell returns at once (the run ends and
    # its leftovers are killed); with a sleep after it the timeout has to stop it.
    for tail, status in (("", "completed"), ("; sleep 1000", "timeout")):
        run_id = a.start("bomb() { bomb | bomb & }; bomb" + tail, "shell", timeout_ms=5000)
        result, _, _ = a.finish(run_id)
        expect(result, status)
        result, out, _ = a.run("echo ok", "shell")
        expect(result, "completed", 0)
        assert out == "ok\n", out
        assert a.leftovers(run_id) == 0


def t_oom(a):
    result, _, _ = a.run("x = b'x' * (400 << 20)\nprint(len(x))", fresh=True)
    expect(result, "failed", 137, oom_killed=True, signal=9)
    assert result["error"], result
    expect(a.run("print('fine')")[0], "completed", 0)


def t_output_cap(a):
    result, out, _ = a.run("import sys; sys.stdout.write('x' * (3 << 20))", fresh=True, output_limit=MIB)
    expect(result, "completed", 0, truncated_stdout=True, truncated_stderr=False)
    assert len(out) == MIB, len(out)


def t_streaming(a):
    code = "import time\nfor i in range(4):\n    print(i, flush=True)\n    time.sleep(0.5)"
    run_id = a.start(code, fresh=True)
    result, output, first = a.finish(run_id)
    ended = time.monotonic()
    expect(result, "completed", 0)
    assert output["stdout"] == b"0\n1\n2\n3\n", output
    assert ended - first > 1.0, f"first output came {ended - first:.2f}s before the result"


def t_cancel_and_parallel(a):
    slow = a.start("import time; time.sleep(100)", timeout_ms=60000)
    fresh = a.start("sleep 100", "shell", timeout_ms=60000)
    queued = a.start("print('queued')")  # waits for the kernel
    result, out, _ = a.run("echo quick", "shell")  # not blocked by the others
    assert out == "quick\n", out
    assert a.request("file_list", path="")["ok"]
    a.send({"op": "cancel", "id": queued})
    expect(a.finish(queued)[0], "error", error="cancelled")
    a.send({"op": "cancel", "id": slow})
    expect(a.finish(slow)[0], "error", error="cancelled", state_lost=False)
    a.send({"op": "cancel", "id": fresh})
    expect(a.finish(fresh)[0], "error", error="cancelled")
    assert a.leftovers(fresh) == 0


def t_files(a):
    blob = os.urandom(5 * MIB)
    chunk = 512 * 1024
    for offset in range(0, len(blob), chunk):
        last = offset + chunk >= len(blob)
        reply = a.request("file_write", path="data/blob.bin", upload="u1", offset=offset,
                          data=base64.b64encode(blob[offset:offset + chunk]).decode(), last=last)
        assert reply["ok"] and reply["received"] == min(offset + chunk, len(blob)), reply
    assert reply["entry"]["size"] == len(blob) and reply["entry"]["path"] == "data/blob.bin", reply
    back = b""
    while True:
        reply = a.request("file_read", path="data/blob.bin", offset=len(back), length=chunk)
        assert reply["ok"] and reply["size"] == len(blob), reply
        back += base64.b64decode(reply["data"])
        if reply["eof"]:
            break
    assert back == blob, "the file read back differs"
    entries = a.request("file_list", path="data")["entries"]
    assert [(e["name"], e["kind"], e["size"]) for e in entries] == [("blob.bin", "file", len(blob))], entries
    bad = a.request("file_write", path="data/blob.bin", upload="u2", offset=7, data="", last=False)
    assert bad["error"]["code"] == "invalid", bad
    assert a.request("file_write", path="t.txt", upload="u3", offset=0, data="aGk=", last=False)["ok"]
    assert a.request("file_abort", path="t.txt", upload="u3")["ok"]
    assert a.request("file_read", path="t.txt", offset=0, length=10)["error"]["code"] == "not_found"
    assert a.request("file_read", path="data", offset=0, length=10)["error"]["code"] == "is_directory"
    assert a.request("file_list", path="data/blob.bin")["error"]["code"] == "not_directory"
    assert a.request("file_delete", path="data")["ok"]
    assert [e["name"] for e in a.request("file_list", path="")["entries"]] == []
    expect(a.run("ln -s /etc /workspace/etc-link", "shell")[0], "completed", 0)
    for path in ("../x", "/etc/passwd", "etc-link/passwd", "a/../../x"):
        for op, fields in (("file_read", {"offset": 0, "length": 10}), ("file_list", {}),
                           ("file_delete", {}), ("file_write", {"upload": "u", "offset": 0, "data": "", "last": True})):
            reply = a.request(op, path=path, **fields)
            assert reply["error"]["code"] == "path_escape", (op, path, reply)
    assert a.request("file_delete", path="etc-link")["error"]["code"] == "path_escape"


def measure(a):
    a.run("print(1)")
    times = []
    for _ in range(50):
        started = time.monotonic()
        result, out, _ = a.run("print(1)")
        times.append((time.monotonic() - started) * 1000)
        assert out == "1\n", (result, out)
    exec_times = []
    for _ in range(20):
        started = time.monotonic()
        subprocess.run(["docker", "exec", NAME, "python3", "-c", "print(1)"], check=True, capture_output=True)
        exec_times.append((time.monotonic() - started) * 1000)

    def describe(values):
        q = statistics.quantiles(values, n=20)
        return f"p50 {statistics.median(values):.1f} ms, p95 {q[18]:.1f} ms"

    print(f"latency: agent stateful print(1) x50: {describe(times)}; "
          f"docker exec python3 -c x20: {describe(exec_times)}", flush=True)


def main():
    agent = Agent()
    try:
        for test in (t_hello_ping, t_stateful, t_streams_and_exit_codes, t_stateful_timeout, t_kernel_death,
                     t_shell_tree_timeout, t_leftovers_after_exit, t_fork_bomb, t_oom, t_output_cap,
                     t_streaming, t_cancel_and_parallel, t_files):
            check(test.__name__[2:], test, agent)
        if not failures:
            measure(agent)
    finally:
        agent.proc.stdin.close()  # the agent exits on EOF and --rm removes the container
        try:
            agent.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            subprocess.run(["docker", "rm", "-f", NAME], capture_output=True)
    print(f"selftest: {passed} passed, {len(failures)} failed" + (f" ({', '.join(failures)})" if failures else ""))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
