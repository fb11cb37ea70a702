"""Where a run keeps its private sockets: one per-user runtime directory, a run directory per run.

The per-user directory is `$XDG_RUNTIME_DIR/tailproxy`, or `/tmp/tailproxy-UID` without it. In
/tmp any local user can create that name first, or plant a symlink there, so (as tmux and
ssh-agent do) it is created 0700, opened with O_NOFOLLOW and checked by fstat: a directory, owned
by us, no access for group or others. Anything else is refused with one clear line.

Each run gets `tailproxy-XXXXXXXX` inside it, holding its channel sockets and an `owner` record
(pid and the process's start time). A run killed with SIGKILL cannot clean up, so every start
removes the run directories whose owner process is gone.
"""
from __future__ import annotations

import os
import stat

RUN_PREFIX = "tailproxy-"
_OWNER = "owner"
_LONGEST_SOCKET = "channel.sock.dgram"     # the longest socket name a run creates
_SUN_PATH_MAX = 108                         # sizeof(sockaddr_un.sun_path), with its NUL


class RunDirError(Exception):
    """The runtime directory is not safe to use; the message says why and what to do."""


def user_runtime_dir(env: dict | None = None) -> str:
    """The per-user runtime directory, created if missing, verified private; RunDirError if not."""
    env = os.environ if env is None else env
    base = env.get("XDG_RUNTIME_DIR")
    path = os.path.join(base, "tailproxy") if base else f"/tmp/tailproxy-{os.getuid()}"
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise RunDirError(f"cannot create the runtime directory {path}: {e.strerror}") from None
    fd = open_private_dir(path)
    os.close(fd)
    return path


def open_private_dir(path: str) -> int:
    """An O_NOFOLLOW fd of `path` after checking it is a directory of ours with mode 0700 or
    stricter. Checking the opened fd (not the name) leaves no window for a swap."""
    hint = "remove it, or set XDG_RUNTIME_DIR to a private directory"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if os.path.islink(path):
            raise RunDirError(f"{path} is a symbolic link, not a directory of yours; {hint}") \
                from None
        raise RunDirError(f"cannot open the runtime directory {path}: {e.strerror}; {hint}") \
            from None
    st = os.fstat(fd)
    problem = None
    if st.st_uid != os.getuid():
        problem = f"is owned by uid {st.st_uid}, not by you (uid {os.getuid()})"
    elif st.st_mode & 0o077:
        problem = f"has mode {stat.S_IMODE(st.st_mode):04o}; it must be 0700"
    if problem:
        os.close(fd)
        raise RunDirError(f"the runtime directory {path} {problem}; {hint}")
    return fd


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), or None when
    there is no such process. With the pid it names one process, even after pid reuse."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and ')'; the fields after the last ')' do not.
    fields = data[data.rfind(b")") + 2:].split()
    return fields[19].decode() if len(fields) > 19 else None


def create_run_dir(env: dict | None = None) -> str:
    """A fresh 0700 run directory for this process, after removing stale ones."""
    base = user_runtime_dir(env)
    longest = os.path.join(base, RUN_PREFIX + "XXXXXXXX", _LONGEST_SOCKET)
    if len(longest.encode()) >= _SUN_PATH_MAX:
        raise RunDirError(f"the runtime directory {base} is too long a path for unix sockets "
                          f"(at most {_SUN_PATH_MAX - 1} bytes); set XDG_RUNTIME_DIR to a "
                          "shorter one")
    import tempfile     # imported here: an attaching run never creates a run dir
    remove_stale_run_dirs(base)
    path = tempfile.mkdtemp(prefix=RUN_PREFIX, dir=base)
    pid = os.getpid()
    with open(os.path.join(path, _OWNER), "x") as f:
        f.write(f"{pid} {_start_time(pid)}\n")
    return path


def _owner_alive(dir_fd: int, name: str) -> bool:
    """True unless the run directory's owner record names a process that is gone. A directory
    without a readable record is being created right now (or is not ours to judge): kept."""
    try:
        fd = os.open(f"{name}/{_OWNER}", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except OSError:
        return True
    try:
        pid_s, _, started = os.read(fd, 128).decode("ascii", "replace").strip().partition(" ")
    finally:
        os.close(fd)
    if not pid_s.isdigit():
        return True
    return _start_time(int(pid_s)) == started


def remove_stale_run_dirs(base: str) -> list[str]:
    """Remove this user's run directories in `base` whose owner is gone; returns their names.
    Only real directories (lstat, never a symlink) owned by us are considered, and rmtree works
    on file descriptors, so nothing outside them is touched."""
    removed = []
    dir_fd = open_private_dir(base)
    try:
        for name in os.listdir(dir_fd):
            if not name.startswith(RUN_PREFIX):
                continue
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
                continue
            if _owner_alive(dir_fd, name):
                continue
            import shutil
            shutil.rmtree(name, dir_fd=dir_fd, ignore_errors=True)
            removed.append(name)
    finally:
        os.close(dir_fd)
    return removed
