"""Stateful Python kernel of the executor agent (agent.py, see PROTOCOL.md).

One long-lived interpreter per container. The agent starts it on the first stateful Python run
and sends it runs over a private pipe pair whose file descriptors are the two arguments; every
run executes in the same globals (a `__main__` module of its own), so variables, imports and open
files persist. On the pipes, one JSON object per line:

    agent -> kernel: {"id": E, "code": C, "stdin": S, "env": {K: V}}
    kernel -> agent: {"exit_code": N, "return_value": STR|null}

The kernel's stdout and stderr are the run's output. It flushes both before it answers, so when
the answer arrives the agent already has all of the run's output in its pipes. SIGINT (the
agent's timeout) raises KeyboardInterrupt only while user code runs; between runs it is ignored,
so a late interrupt cannot kill the kernel.
"""

import ast
import builtins
import io
import json
import linecache
import os
import signal
import sys
import traceback
import types

# Longest return_value, in characters (a result line must stay under the protocol's 1 MiB).
RETURN_VALUE_MAX = 65536

executing = False


def on_sigint(signum, frame):
    if executing:
        raise KeyboardInterrupt


def report(exc):
    """Prints exc's traceback to stderr without the kernel's own frames."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb)


def exit_code_of(exc):
    """The exit code a process would have for this SystemExit."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def run_cell(code, filename, namespace):
    """Runs code in namespace; returns (exit_code, repr of the last expression or None)."""
    global executing
    try:
        tree = ast.parse(code, filename)
        # Tracebacks show the lines of the cell (and of functions defined in earlier cells).
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        tail = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            tail = compile(ast.Expression(tree.body.pop().value), filename, "eval")
        body = compile(tree, filename, "exec")
        executing = True
        exec(body, namespace)
        value = None if tail is None else eval(tail, namespace)
        # repr runs user code too, so it stays interruptible.
        return 0, None if value is None else repr(value)[:RETURN_VALUE_MAX]
    except SystemExit as exc:
        executing = False  # before anything else: an interrupt here would kill the kernel
        return exit_code_of(exc), None
    except BaseException as exc:  # the user's exception, KeyboardInterrupt included
        executing = False
        report(exc)
        return 1, None
    finally:
        executing = False


def flush_output():
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except Exception:  # the user may have replaced or closed them
            pass


def main():
    command_fd, reply_fd = int(sys.argv[1]), int(sys.argv[2])
    # Programs the user starts must not inherit the control channel.
    os.set_inheritable(command_fd, False)
    os.set_inheritable(reply_fd, False)
    commands = os.fdopen(command_fd, "rb")
    replies = os.fdopen(reply_fd, "wb", buffering=0)
    signal.signal(signal.SIGINT, on_sigint)

    module = types.ModuleType("__main__")
    module.__builtins__ = builtins
    sys.modules["__main__"] = module
    sys.argv = [""]
    sys.path[0] = ""  # imports from the current folder (/workspace), as in a REPL
    base_env = dict(os.environ)
    applied = set()  # variables the previous run's request set

    for number, line in enumerate(commands, start=1):
        request = json.loads(line)
        for key in applied:
            if key in base_env:
                os.environ[key] = base_env[key]
            else:
                os.environ.pop(key, None)
        os.environ.update(request["env"])
        os.environ["SANDBOX_EXECUTION_ID"] = request["id"]
        applied = set(request["env"]) | {"SANDBOX_EXECUTION_ID"}
        sys.stdin = io.TextIOWrapper(io.BytesIO(request["stdin"].encode()), encoding="utf-8")

        exit_code, value = run_cell(request["code"], f"<run-{number}>", module.__dict__)
        flush_output()
        answer = {"exit_code": exit_code, "return_value": value}
        replies.write(json.dumps(answer).encode() + b"\n")


if __name__ == "__main__":
    main()
