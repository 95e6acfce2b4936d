"""The few cgroup attach calls bcc does not offer, through Debian's libbpf (ctypes).

bcc attaches with BPF_PROG_ATTACH but cannot list what is attached or replace a program
in place. A restarted daemon needs both: find the programs its predecessor left (they
outlive it on purpose, keeping agents fail-closed) and swap in new ones atomically.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

BPF_F_ALLOW_MULTI = 2
BPF_F_REPLACE = 4

# enum bpf_attach_type (uapi/linux/bpf.h)
CGROUP_SOCK_OPS = 3
CGROUP_INET4_CONNECT = 10
CGROUP_INET6_CONNECT = 11
CGROUP_UDP4_SENDMSG = 14
CGROUP_UDP6_SENDMSG = 15

_PROG_NAME_OFFSET = 64  # struct bpf_prog_info: name[16] follows 64 bytes of ids, lengths and pointers
_RUN_TIME_OFFSET = 192  # struct bpf_prog_info: run_time_ns, then run_cnt (u64 each)
_INFO_SIZE = 256


class _AttachOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("flags", ctypes.c_uint32), ("replace_prog_fd", ctypes.c_int)]


def _load() -> ctypes.CDLL:
    path = ctypes.util.find_library("bpf") or "libbpf.so.1"
    lib = ctypes.CDLL(path, use_errno=True)
    lib.bpf_prog_query.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_uint32,
                                   ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint32),
                                   ctypes.POINTER(ctypes.c_uint32)]
    lib.bpf_prog_get_fd_by_id.argtypes = [ctypes.c_uint32]
    lib.bpf_obj_get_info_by_fd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
    lib.bpf_prog_attach_opts.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.POINTER(_AttachOpts)]
    lib.bpf_prog_detach2.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    return lib


_lib: ctypes.CDLL | None = None


def lib() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        _lib = _load()
    return _lib


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno() or -rc
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


def attached_programs(cgroup_fd: int, attach_type: int) -> list[tuple[int, str]]:
    """(program id, program name) of everything attached to the cgroup for this hook."""
    count = ctypes.c_uint32(64)
    ids = (ctypes.c_uint32 * 64)()
    flags = ctypes.c_uint32(0)
    _check(lib().bpf_prog_query(cgroup_fd, attach_type, 0, ctypes.byref(flags), ids, ctypes.byref(count)),
           "bpf_prog_query")
    result = []
    for prog_id in ids[: count.value]:
        fd = lib().bpf_prog_get_fd_by_id(prog_id)
        if fd < 0:
            continue  # detached meanwhile
        try:
            result.append((prog_id, program_name(fd)))
        finally:
            os.close(fd)
    return result


def _info(prog_fd: int) -> bytes:
    info = ctypes.create_string_buffer(_INFO_SIZE)
    size = ctypes.c_uint32(_INFO_SIZE)
    _check(lib().bpf_obj_get_info_by_fd(prog_fd, info, ctypes.byref(size)), "bpf_obj_get_info_by_fd")
    return info.raw


def program_name(prog_fd: int) -> str:
    return _info(prog_fd)[_PROG_NAME_OFFSET:_PROG_NAME_OFFSET + 16].split(b"\0", 1)[0].decode()


def program_run_stats(prog_id: int) -> tuple[int, int]:
    """(total run time in ns, runs) the kernel counted while kernel.bpf_stats_enabled was 1."""
    fd = _check(lib().bpf_prog_get_fd_by_id(prog_id), "bpf_prog_get_fd_by_id")
    try:
        raw = _info(fd)
    finally:
        os.close(fd)
    return (int.from_bytes(raw[_RUN_TIME_OFFSET:_RUN_TIME_OFFSET + 8], "little"),
            int.from_bytes(raw[_RUN_TIME_OFFSET + 8:_RUN_TIME_OFFSET + 16], "little"))


def attach(prog_fd: int, cgroup_fd: int, attach_type: int, replace_id: int | None = None) -> None:
    """Attach with ALLOW_MULTI; with `replace_id`, atomically swap out that program."""
    opts = _AttachOpts(ctypes.sizeof(_AttachOpts), BPF_F_ALLOW_MULTI, 0)
    old_fd = -1
    if replace_id is not None:
        old_fd = _check(lib().bpf_prog_get_fd_by_id(replace_id), "bpf_prog_get_fd_by_id")
        opts.flags |= BPF_F_REPLACE
        opts.replace_prog_fd = old_fd
    try:
        _check(lib().bpf_prog_attach_opts(prog_fd, cgroup_fd, attach_type, ctypes.byref(opts)),
               "bpf_prog_attach")
    finally:
        if old_fd >= 0:
            os.close(old_fd)


def detach(prog_id: int, cgroup_fd: int, attach_type: int) -> None:
    fd = lib().bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return  # already gone
    try:
        _check(lib().bpf_prog_detach2(fd, cgroup_fd, attach_type), "bpf_prog_detach")
    finally:
        os.close(fd)
