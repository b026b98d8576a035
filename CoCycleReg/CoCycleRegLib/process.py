"""A registration process the GUI can watch and cancel without freezing.

The process runs in its own process group (session); a reader thread moves its output lines
into a queue that the GUI drains from a timer. Cancelling kills the whole group. On Windows its
console window is hidden, with the flags ``slicer.util.launchConsoleProcess`` uses (otherwise
PythonSlicer opens a console, and closing that console kills the run).
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

# winbase.h / winuser.h: STARTUPINFO.dwFlags bit that makes wShowWindow apply, and SW_HIDE.
STARTF_USESHOWWINDOW = 0x00000001
SW_HIDE = 0
CREATE_NEW_PROCESS_GROUP = 0x00000200


def popen_options(platform: str = sys.platform) -> dict:
    """``subprocess.Popen`` options: a process group of its own (so Cancel kills the whole
    tree) and, on Windows, no console window."""
    if platform != "win32":
        return {"start_new_session": True}
    startup = subprocess.STARTUPINFO()
    startup.dwFlags |= STARTF_USESHOWWINDOW
    startup.wShowWindow = SW_HIDE
    return {"creationflags": CREATE_NEW_PROCESS_GROUP, "startupinfo": startup}


class RegistrationProcess:
    """Run ``command``; ``poll()`` returns new output lines; ``cancel()`` kills it.

    ``workdir`` (the run's temporary folder) is removed by ``cleanup()``.
    """

    def __init__(self, command: list[str], env: dict | None = None, workdir=None):
        self.command = [str(c) for c in command]
        self.env = env
        self.workdir = Path(workdir) if workdir is not None else None
        self.cancelled = False
        self._process: subprocess.Popen | None = None
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader: threading.Thread | None = None
        self.output: list[str] = []

    def start(self) -> RegistrationProcess:
        options = popen_options()
        self._process = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            **options,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._process.stdout.close()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def finished(self) -> bool:
        """The process has exited and all of its output has been read."""
        if self._process is None or self._process.poll() is None:
            return False
        return self._reader is None or not self._reader.is_alive()

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    @property
    def succeeded(self) -> bool:
        return self.finished and self.returncode == 0 and not self.cancelled

    def poll(self) -> list[str]:
        """Output lines that arrived since the last call."""
        lines = []
        while True:
            try:
                lines.append(self._lines.get_nowait())
            except queue.Empty:
                break
        self.output += lines
        return lines

    def wait(self, timeout: float | None = None) -> int:
        assert self._process is not None
        code = self._process.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        return code

    def cancel(self) -> None:
        """Kill the process and everything it started."""
        self.cancelled = True
        if not self.running:
            return
        assert self._process is not None
        try:
            if sys.platform == "win32":
                subprocess.run(
                    ["taskkill", "/F", "/T", "/PID", str(self._process.pid)],
                    capture_output=True,
                    check=False,
                )
            else:
                os.killpg(self._process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            self._process.kill()
        self._process.wait()

    def error_text(self) -> str:
        """The error lines of a failed run (the ``cocyclereg ...: error:`` line if any)."""
        errors = [line for line in self.output if ": error:" in line]
        if errors:
            return errors[-1].split(": error:", 1)[1].strip()
        tail = [line for line in self.output if line.strip()][-5:]
        return "\n".join(tail) or f"the process exited with code {self.returncode}"

    def cleanup(self) -> None:
        if self.running:
            self.cancel()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
