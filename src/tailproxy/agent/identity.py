"""Where an identity's agent lives, and the lock that makes it the only one.

An identity is a state dir (its resolved path: the default one already names the hostname, and
the node keeps the control URL in it). Its agent holds an flock on `<state dir>/agent.lock` for
its whole life; the kernel releases it when the agent dies, even by SIGKILL, so a dead agent's
lock needs no recovery. The agent's sockets are in a 0700 run directory whose name is derived
from the identity, so later invocations find them; only the lock holder ever removes a socket
there. What a SIGKILLed agent left is removed by the next tailproxy for its identity that takes
the free lock (a run, `down`, `ps`), never by one that only found the lock held.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat

from ..rundir import RunDirError, open_private_dir, user_runtime_dir

AGENT_PREFIX = "agent-"
LOCK_NAME = "agent.lock"
LOG_NAME = "agent.log"
CONTROL = "control.sock"


class IdentityError(Exception):
    """The state dir cannot hold an agent (not a directory, not ours, unreadable)."""


def identity(state_dir: str) -> str:
    return os.path.realpath(os.path.expanduser(state_dir))


def check_state_dir(state_dir: str) -> str:
    """The resolved state dir, created 0700 when missing; IdentityError with one clear line when
    it is a file, a foreign user's directory, or has another owner's agent.lock."""
    path = identity(state_dir)
    try:
        os.makedirs(path, 0o700, exist_ok=True)
    except FileExistsError:
        raise IdentityError(f"the state dir {path} is not a directory") from None
    except OSError as e:
        raise IdentityError(f"cannot create the state dir {path}: {e.strerror}") from None
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise IdentityError(f"the state dir {path} is not a directory")
    if st.st_uid != os.getuid():
        raise IdentityError(f"the state dir {path} belongs to uid {st.st_uid}, not to you "
                            f"(uid {os.getuid()}); choose another with --state-dir")
    return path


def open_lock(state_dir: str) -> int:
    """An fd of the identity's lock file (not locked yet); IdentityError when it cannot be."""
    path = os.path.join(identity(state_dir), LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise IdentityError(f"{path} is a symbolic link; remove it") from None
        raise IdentityError(f"cannot open {path}: {e.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
        os.close(fd)
        raise IdentityError(f"{path} is not a file of yours; remove it")
    return fd


def try_lock(fd: int) -> bool:
    """Take the lock without waiting: True if this open file now holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def run_dir(state_dir: str, env: dict | None = None) -> str:
    """The agent's run directory path for this identity (not created)."""
    try:
        from _sha256 import sha256      # the builtin module: hashlib loads OpenSSL (~20 ms)
    except ImportError:
        from hashlib import sha256
    digest = sha256(identity(state_dir).encode()).hexdigest()[:16]
    return os.path.join(user_runtime_dir(env), AGENT_PREFIX + digest)


def create_run_dir(state_dir: str, env: dict | None = None) -> str:
    """The agent's run directory, created 0700 and checked private; only the lock holder calls
    this, and it removes what a dead agent left there (sockets and the owner record)."""
    path = run_dir(state_dir, env)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise RunDirError(f"cannot create {path}: {e.strerror}") from None
    fd = open_private_dir(path)
    try:
        for name in os.listdir(fd):
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)
    with open(os.path.join(path, "identity"), "w") as f:
        f.write(identity(state_dir) + "\n")
    return path


def agent_run_dirs(env: dict | None = None) -> list[str]:
    """Every agent run directory of this user (live or left by a dead agent)."""
    base = user_runtime_dir(env)
    return sorted(os.path.join(base, n) for n in os.listdir(base) if n.startswith(AGENT_PREFIX))


def remove_dead_run_dir(state_dir: str, env: dict | None = None) -> bool:
    """Remove the run directory a dead agent of this identity left (its sockets, tables and
    identity record); True if there was one. Only for a caller holding the identity's lock: no
    agent runs then, and none can start. A real directory of ours only (never a symlink), removed
    through file descriptors."""
    base, name = os.path.split(run_dir(state_dir, env))
    try:
        base_fd = open_private_dir(base)
    except (RunDirError, OSError):
        return False
    try:
        st = os.stat(name, dir_fd=base_fd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            return False
        import shutil       # here: an attaching run never needs it
        shutil.rmtree(name, dir_fd=base_fd, ignore_errors=True)
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(base_fd)


def identity_of_run_dir(path: str) -> str | None:
    """The state dir an agent run directory belongs to (its identity record), if it says."""
    try:
        with open(os.path.join(path, "identity")) as f:
            state = f.read(4096).strip()
    except OSError:
        return None
    return state if state and run_dir(state, None) == path else None


def remove_if_dead(state_dir: str) -> bool:
    """Take the identity's lock without waiting; if no agent held it, remove what a dead agent
    left. True if a run directory was removed."""
    try:
        fd = open_lock(state_dir)
    except IdentityError:
        return False
    try:
        return try_lock(fd) and remove_dead_run_dir(state_dir)
    finally:
        os.close(fd)        # drops the lock taken just to look
