#!/usr/bin/env python3
"""Runs a command with its stdout in OUT and writes its CPU seconds (user + system of
the child and every thread it had, from wait4's rusage) to CPU.
Usage: rusage.py OUT CPU COMMAND [ARG...]"""
import os, sys

out, cpu, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
pid = os.fork()
if pid == 0:
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.execvp(argv[0], argv)
_, status, ru = os.wait4(pid, 0)
with open(cpu, "w") as f:
    f.write(f"{ru.ru_utime + ru.ru_stime:.6f}\n")
sys.exit(os.waitstatus_to_exitcode(status))
