"""Judge an SshRequest by the rules about SSH (sans-IO): a rule's `ssh:` block names exec
commands (patterns), interactive shells (`shell: true`), file reads and writes (path globs)
and forwards (host:port globs). A rule matches a request one of its keys covers.

Precedence is interceptor.policy.judgement's: explicit deny, then approve, then allow; nothing:
default deny. An allow or approve rule must cover the request the narrowest way, a deny rule
takes it the widest way (interceptor.policy.ssh_command says how a command is read):

- exec: `commands` patterns of an allow or approve rule must cover the strict argv of a
  command that is not shell class (and asked for no terminal); `shell: true` covers every
  exec. A deny rule's `commands` match any simple command of the lax reading (every command
  of a list or pipeline, every wrapper level, `sh -c` strings, argv0 also by its last path
  segment), and every command with an opaque part; a deny rule with `shell: true` matches a
  shell-class command and an exec with a terminal.
- shell (an interactive shell, recorded by the handler): only `shell: true` rules; deny
  `commands` do not reach into it (nothing in it can be judged in advance).
- read / write (SFTP, legacy scp): `read` and `write` globs on the absolute path in normal
  form; `*` and `?` do not cross `/`, `**` does, and `/**` also matches the directory itself
  (`/srv/uploads/**` covers `/srv/uploads`). A path not in normal form (a `.`, `..` or empty
  segment, a backslash, a leading `~`, percent-encoding, NUL: interceptor.policy.mcp_rules.
  in_normal_form), longer than MAX_PATH or not absolute matches no allow glob and every deny glob; deny globs also
  match case-folded and Unicode-normalized (_folded). A write to a path that makes the server run code (ssh_command.runs_code:
  `.ssh/`, shell startup files, crontabs, programs) is covered only by a rule with a `write`
  glob and `shell: true`; a deny rule with `shell: true` matches it.
- a tree (a read or write whose action ends in `-tree`, tree_action: a directory renamed,
  hard-linked or made the target of a symlink over SFTP, whose every entry moves or becomes
  reachable under another name): the path and everything below it, judged as a recursive scp
  download's tree is: an allow glob must end in `/**` over the path or a directory above it,
  and a deny glob matches when it may match any path below it (a deny on
  `/srv/config/secret.env` refuses moving `/srv/config`). A tree written runs code when its
  path does (runs_code reads names, segments and prefixes: a name below the path that runs
  code there runs code anywhere, and was judged so when it was written).
- metadata (a read request whose action is in METADATA_ACTIONS: stat, lstat, fstat,
  realpath): what an SFTP or scp client asks of a path before it reads or writes it (an
  upload's first stat of its target). Judged as a read; when no rule allows that read and no
  deny rule matched it, also as a write of the path, and the better of the two wins (an
  explicit deny of the write over default deny): allowed when reading or writing the path
  is, so a write-only glob lets the uploader see its target, and a deny on reading the path
  still refuses it.
- legacy scp run on the server (an exec of `scp -f PATH` or `scp -t PATH`, OpenSSH scp.c's
  remote mode): the handler serves it through the SFTP proxy (every file the client names is
  judged by path there, a `.bashrc` written into PATH as any write), so the exec is judged as
  the transfer's target: a download is a read of PATH, an upload a write of PATH, each with
  everything below it for `-r` (and an upload for `-d`, PATH being a directory): an allow
  glob must end in `/**` over PATH or a directory above it. Deny `commands` rules match it as
  any command (`scp **` refuses legacy scp), and deny read and write globs also see the scp
  commands of the lax reading (`sudo scp -t /etc/x`). `commands` patterns do not allow an scp
  command line: it is judged as the transfer it is (and scp run through a wrapper is shell
  class). A read or write request (action `scp` too) is one file, judged as above.
- forward: `forward` globs ("host:port") for local and dynamic forwards (direct-tcpip) by
  their destination, `remote_forward` for remote forwards (tcpip-forward) by where the server
  listens; hosts lower-cased without a trailing dot or IPv6 brackets. The server resolves
  names, the enforcer cannot: an allow glob covers a name only as written (and an address
  only in canonical form), and an allow glob written for addresses (an address, or a glob
  whose other characters may all be an address's and hold a digit or `:`, such as
  `10.0.0.*`) covers addresses only, never a name (`10.0.0.5.nip.io` resolves anywhere),
  while a deny glob naming an address (a literal address in any
  spelling, `localhost`, every address, or a glob that may match an address's text such as
  `10.0.*`) matches every destination given by a name, and every spelling of the addresses
  it names: inet_aton's (`127.1`, `0x7f.0.0.1`, `2130706433`), IPv6 in any form, IPv4-mapped
  IPv6, and for the server itself (loopback) and every address (`0.0.0.0`, `::`, "", and
  `*`, which sshd reads as every address for a remote forward) all spellings of both.

Refused whatever the policy (rules named here): agent and X11 forwarding, Unix socket forwarding
both ways and tunnels (`ssh-forwarding`),
subsystems other than sftp (`ssh-subsystem`), a command too long, holding NUL, or holding no
words at all (empty, blank or only comments: asyncssh asks the server for an interactive shell
when an exec's command is empty; `ssh-bad-command`), a request of unknown shape
(`ssh-bad-request`).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from interceptor.decision import Decision, Verdict
from interceptor.operations import Request, SshRequest
from interceptor.policy.judgement import DEFAULT_DENY, Judgement, pick, severity
from interceptor.policy.learn import UNLEARNED_NOTE, is_learning, learning_rule
from interceptor.policy.mcp_rules import in_normal_form
from interceptor.policy.model import Rule
from interceptor.policy.ssh_command import (
    CommandReading,
    ScpAccess,
    covers,
    parse_pattern,
    read_command,
    read_scp,
    runs_code,
    touches,
)

if TYPE_CHECKING:  # the protocol registry imports this module
    from interceptor.protocols.spec import Context, Problem

OPERATION_KEY = "ssh"
FORWARDING_RULE = "ssh-forwarding"
REFUSED_FORWARDS = {"agent": "agent forwarding", "x11": "X11 forwarding",  # SshRequest.forward kinds
                    "unix": "forwarding to a Unix socket", "remote-unix": "forwarding from a Unix socket",
                    "tun": "tunnel forwarding (tun/tap)"}
SUBSYSTEM_RULE = "ssh-subsystem"
BAD_COMMAND_RULE = "ssh-bad-command"
BAD_REQUEST_RULE = "ssh-bad-request"
REQUESTS = frozenset({"exec", "shell", "subsystem", "read", "write", "forward"})
CASE_KEYS = ("command", "shell", "read", "write", "stat", "forward", "remote_forward", "pty")
_SHOWN = 200  # characters of a command quoted in a refusal
# The longest path a server opens (Linux PATH_MAX, in bytes, so at most as many characters);
# a longer one is not in normal form: no allow glob covers it, every deny glob does
MAX_PATH = 4096
TREE_SUFFIX = "-tree"  # an action's suffix: the path and everything below it
# Read actions that ask only about a path's metadata (SFTP stat, lstat, fstat, realpath):
# allowed when reading or writing the path is (see the module docstring)
METADATA_ACTIONS = frozenset({"stat", "lstat", "fstat", "realpath"})
# A command the shell reads as no words: blanks, line continuations and comments only
_NO_WORDS = re.compile(r"(?:(?:[ \t]|\\\n)*(?:#[^\n]*)?\n)*(?:[ \t]|\\\n)*(?:#[^\n]*)?")


@dataclass(frozen=True, slots=True)
class SshMatch:
    """A rule's `ssh:` block; the rule matches a request any given key covers. `commands`:
    each pattern's words (ssh_command.parse_pattern)."""

    commands: tuple[tuple[str, ...], ...] | None = None
    shell: bool = False
    read: tuple[str, ...] | None = None
    write: tuple[str, ...] | None = None
    forward: tuple[str, ...] | None = None
    remote_forward: tuple[str, ...] | None = None


def parse_ssh_match(raw: Mapping[str, Any], problem: Problem) -> SshMatch:
    """A schema-valid `ssh:` block as an SshMatch, reporting to `problem` a command pattern
    that does not split as a shell would (or has `**` before its last word), a path glob that
    is not absolute or holds a class no character can match as is or case-folded (`[b-a]`,
    `[Z-a]`), and a forward glob without `:PORT`."""
    patterns: list[tuple[str, ...]] = []
    for i, text in enumerate(raw.get("commands", ())):
        try:
            patterns.append(parse_pattern(text))
        except ValueError as exc:
            problem(("commands", i), f"command pattern {text!r}: {exc}")
    for key in ("read", "write"):
        for i, glob in enumerate(raw.get(key, ())):
            if not glob.startswith("/"):
                problem((key, i), f"path glob {glob!r}: expected an absolute path glob such as /var/log/**")
            try:
                _path_tokens(glob)
                _path_tokens(_folded(glob))  # deny globs are also matched folded
            except re.error as exc:
                problem((key, i), f"path glob {glob!r}: a character class no path can match ({exc})")
    for key in ("forward", "remote_forward"):
        for i, glob in enumerate(raw.get(key, ())):
            if _split_target(glob) is None:
                problem((key, i), f"forward glob {glob!r}: expected HOST:PORT (globs allowed: db.internal:5432, "
                        "*.internal:*)")

    def listed(key: str) -> tuple[str, ...] | None:
        return tuple(raw[key]) if key in raw else None

    return SshMatch(tuple(patterns) if "commands" in raw else None, raw.get("shell") is True, listed("read"),
                    listed("write"), listed("forward"), listed("remote_forward"))


def tree_action(action: str) -> str:
    """The action of a read or write request about `action`'s path and everything below it
    ("rename" -> "rename-tree"): a directory moved, linked or made reachable under another
    name (see the module docstring)."""
    return f"{action}{TREE_SUFFIX}"


def ssh_match(rule: Rule) -> SshMatch | None:
    """The rule's `ssh:` block; None for a rule about any operation."""
    return rule.match if isinstance(rule.match, SshMatch) else None


@dataclass(frozen=True, slots=True)
class _View:
    """What is judged of one request: its `kind` (exec, shell, read, write, forward,
    remote_forward), the command's reading, the file accessed (`tree`: and everything below
    it; `metadata`: a read of its metadata only), the forward's target."""

    kind: str
    reading: CommandReading | None = None
    pty: bool = False
    path: str = ""
    target: tuple[str, str] | None = None
    tree: bool = False
    metadata: bool = False


def judge_ssh(context: Context, request: Request, operation: SshRequest) -> Decision:
    """The Decision for one SSH request (see the module docstring); never raises on bad input."""
    view = _view(operation)
    if isinstance(view, Decision):
        return view
    judgement = _judgement(context, request, view)
    if view.metadata and (judgement.verdict is Verdict.APPROVE or judgement.rule == DEFAULT_DENY):
        written = _judgement(context, request, replace(view, kind="write", metadata=False))
        if severity(written) < severity(judgement) or (judgement.rule == DEFAULT_DENY and written.rule != DEFAULT_DENY):
            judgement = written
    return judgement.decision()


def _judgement(context: Context, request: Request, view: _View) -> Judgement:
    rules = context.rules(request, OPERATION_KEY)
    matching = [r for r in rules if r.effect != "mask" and _matches(r, view)]
    judgement = pick(matching, _unmatched(view) + (
        UNLEARNED_NOTE if learning_rule(rules) is not None and never_learned(view) else ""))
    note = _note(view, [r for r in matching if r.name == judgement.rule]) if judgement.verdict is Verdict.DENY else ""
    return replace(judgement, reason=f"{judgement.reason} ({note})") if note else judgement


def _note(view: _View, denying: list[Rule]) -> str:
    """Why a deny rule matched when it does not name what was asked: the command holds an
    opaque part, the tree holds paths the rule's globs may match, or the forward names a host
    that may resolve to the rule's addresses; "" else (and for default deny: no rule matched)."""
    reading, target = view.reading, view.target
    if not denying:
        return ""
    if view.tree and not any(_matches(r, replace(view, tree=False)) for r in denying):
        return f"{view.path} is judged with everything below it (a directory moved or linked), where the rule may match"
    if reading is not None and reading.opaque and not any(_touched(r, reading) for r in denying):
        return (f"the command holds what cannot be read before it runs: {reading.opaque[0]}; every deny rule "
                "about commands matches it")
    if target is not None and _name(target[0]) and not any(_by_spelling(r, view.kind, target) for r in denying):
        return (f"{target[0]} is a name the server resolves, so a deny rule naming an address matches it: forward "
                "to an address")
    return ""


def _by_spelling(rule: Rule, kind: str, target: tuple[str, str]) -> bool:
    """Does a deny rule match the forward's target by one of its spellings, not only because
    it is a name?"""
    match = ssh_match(rule)
    patterns = None if match is None else match.forward if kind == "forward" else match.remote_forward
    return patterns is None or _target(patterns, target, deny=True, names=False)


def _touched(rule: Rule, reading: CommandReading) -> bool:
    """Does a deny rule match the command by name, not only because part of it is opaque?"""
    match = ssh_match(rule)
    return match is None or match.commands is None or any(
        touches(p, c) for p in match.commands for c in reading.commands)


def _view(operation: SshRequest) -> _View | Decision:
    kind = operation.request
    if not isinstance(kind, str) or kind not in REQUESTS:
        return Decision.deny(BAD_REQUEST_RULE, f"unknown SSH request {kind!r}")
    if kind == "subsystem":
        return Decision.deny(SUBSYSTEM_RULE, f"subsystem {operation.command!r} is refused: only sftp is served")
    if kind == "shell":
        return _View("shell", pty=operation.pty)
    if kind == "exec":
        if not isinstance(operation.command, str):
            return Decision.deny(BAD_REQUEST_RULE, "an exec request without a command")
        reading = read_command(operation.command)
        if reading.refused is not None:
            return Decision.deny(BAD_COMMAND_RULE, reading.refused)
        if _NO_WORDS.fullmatch(operation.command):
            return Decision.deny(BAD_COMMAND_RULE, "the command holds no words (empty, blank or only a comment): the "
                                 "server would run nothing, or an interactive shell for an empty one")
        return _View("exec", reading, operation.pty)
    if kind in ("read", "write"):
        action = operation.action if isinstance(operation.action, str) else ""
        return _View(kind, path=operation.path if isinstance(operation.path, str) else "",
                     tree=action.endswith(TREE_SUFFIX), metadata=kind == "read" and action in METADATA_ACTIONS)
    if isinstance(operation.forward, str) and operation.forward in REFUSED_FORWARDS:
        return Decision.deny(FORWARDING_RULE, f"{REFUSED_FORWARDS[operation.forward]} is refused whatever the policy")
    text = operation.target if isinstance(operation.target, str) else ""
    target = _split_target(text, empty_host=operation.forward == "remote")
    if operation.forward not in ("local", "remote") or target is None or not _port(target[1]):
        return Decision.deny(BAD_REQUEST_RULE, f"forward {operation.forward!r} to {operation.target!r}: expected a "
                             "local or remote forward to HOST:PORT")
    kind = "forward" if operation.forward == "local" else "remote_forward"
    return _View(kind, target=(target[0], str(int(target[1]))))


def _matches(rule: Rule, view: _View) -> bool:
    match = ssh_match(rule)
    if match is None:
        return rule.operation is None and not (is_learning(rule) and never_learned(view))
    deny = rule.effect == "deny"
    if view.kind == "shell":
        return match.shell
    if view.kind == "exec":
        return _exec(match, view, deny)
    if view.kind in ("read", "write"):
        return _file(match, view.kind, view.path, view.tree, deny)
    patterns = match.forward if view.kind == "forward" else match.remote_forward
    return patterns is not None and view.target is not None and _target(patterns, view.target, deny)


def never_learned(view: _View) -> bool:
    """What the learning rule (interceptor.policy.learn) does not cover, as `shell: true` and
    forward rules alone do: an interactive shell, a shell-class command or one on a terminal
    (nothing it runs can be judged), a write (a legacy scp upload too) that makes the server
    run code or whose path is not absolute and in normal form, and a forward (it carries
    traffic nothing judges)."""
    if view.kind == "exec":
        reading = view.reading
        if reading is None or reading.shell or reading.opaque or view.pty:
            return True
        if reading.scp is None:
            return False
        access = _scp_judged(reading.scp, reading.argv)
        return _unlearned_file(access.mode, access.path)
    if view.kind in ("read", "write"):
        return _unlearned_file(view.kind, view.path)
    return True


def _unlearned_file(kind: str, path: str) -> bool:
    return not _normal(path) or (kind == "write" and runs_code(path))


def _exec(match: SshMatch, view: _View, deny: bool) -> bool:
    reading = view.reading
    if reading is None:
        return False
    shell_class = bool(reading.shell) or view.pty
    if deny:
        if match.shell and shell_class:
            return True
        if match.commands is not None and (reading.opaque or any(
                touches(p, c) for p in match.commands for c in reading.commands)):
            return True
        return any(_file(match, access.mode, access.path, access.recursive, True)
                   for access in _scp_accesses(reading))
    if match.shell:
        return True
    if shell_class:
        return False
    access = None if reading.scp is None else _scp_judged(reading.scp, reading.argv)
    if access is None and match.commands is not None and any(covers(p, reading.argv) for p in match.commands):
        return True
    return access is not None and _file(match, access.mode, access.path, access.recursive, False)


def _scp_judged(access: ScpAccess, words: tuple[str, ...]) -> ScpAccess:
    """The transfer as judged: an upload with `-d` (its path a directory the client writes
    into; `words` the scp command's) as a tree, as one with `-r`."""
    if access.recursive or access.mode != "write" or "-d" not in words:
        return access
    return replace(access, recursive=True)


def _scp_accesses(reading: CommandReading) -> list[ScpAccess]:
    """The legacy scp transfers among the lax reading's commands; one whose words are not all
    known is taken as a read and a write of any path (an empty path: matched by every deny
    glob)."""
    accesses: list[ScpAccess] = []
    for command in reading.commands:
        if command[0] is None or command[0].rpartition("/")[2] != "scp":
            continue
        known = tuple(w for w in command if w is not None)
        found = read_scp(known) if len(known) == len(command) else None
        if isinstance(found, ScpAccess):
            accesses.append(_scp_judged(found, known))
        else:
            accesses.extend((ScpAccess("read", "", True), ScpAccess("write", "", True)))
    return accesses


def _file(match: SshMatch, kind: str, path: str, tree: bool, deny: bool) -> bool:
    """Does the block cover a read or write of `path` (`tree`: and everything below it)?"""
    globs = match.read if kind == "read" else match.write
    code = kind == "write" and runs_code(path)
    if deny:
        return (match.shell and code) or (globs is not None and any(
            _path_touches(g, path, tree) for g in globs))
    if globs is None or (code and not match.shell) or not _normal(path):
        return False
    return any(_tree_covered(g, path) if tree else _path_match(g, path) for g in globs)


def _normal(path: str) -> bool:
    """Absolute, in normal form, and no longer than a server opens (MAX_PATH): a longer
    one, which an SFTP packet may carry (MiBs), would be matched against each glob on the
    loop every flow shares for nothing."""
    return path.startswith("/") and len(path) <= MAX_PATH and in_normal_form(path)


PathToken = tuple[str, re.Pattern[str] | str | None]  # (kind, its character class or literal)


@lru_cache(maxsize=1024)
def _path_tokens(glob: str) -> tuple[PathToken, ...]:
    """A path glob as tokens: `*` and `?` within a segment ("seg", "one"), `[...]` a character
    of a segment ("one" with its class; `[!]`, an empty one, is no class), `**` across
    segments ("any"), `/**` also matching nothing, the directory itself ("dirs"), any other
    character itself ("lit"). re.error for a class no regex can hold (`[b-a]`)."""
    out: list[PathToken] = []
    i, n = 0, len(glob)
    while i < n:
        if glob.startswith("/**", i) and (i + 3 == n or glob[i + 3] == "/"):
            out.append(("dirs", None))
            i += 3
        elif glob.startswith("**", i):
            out.append(("any", None))
            i += 2
        elif glob[i] == "*":
            out.append(("seg", None))
            i += 1
        elif glob[i] == "?":
            out.append(("one", None))
            i += 1
        elif glob[i] == "[" and (end := glob.find("]", i + 2)) > 0 and glob[i + 1:end] != "!":
            body = glob[i + 1:end]
            negate = body[:1] == "!"
            body = body[1:] if negate else body
            out.append(("one", re.compile(f"[{'^' if negate else ''}{re.escape(body).replace(chr(92) + '-', '-')}]",
                                          re.DOTALL)))
            i = end + 1
        else:
            out.append(("lit", glob[i]))
            i += 1
    return tuple(out)


def _path_match(glob: str, path: str) -> bool:
    """Does the path glob (_path_tokens) match all of `path`?"""
    return len(path) in _match_ends(glob, path)


def _match_ends(glob: str, path: str) -> set[int]:
    """The positions q where the path glob (_path_tokens) matches `path[:q]`: the positions
    each token can end at, token by token (a set, as an NFA runs; no token looks past the
    position it ends at): time in proportion to the glob's length times the path's, never
    backtracking (a glob like `/**/a/**/b/**/*.txt` on a long path took a regex engine
    minutes)."""
    n = len(path)
    at = {0}
    for kind, arg in _path_tokens(glob):
        if kind == "lit":
            at = {p + 1 for p in at if p < n and path[p] == arg}
        elif kind == "one":
            at = {p + 1 for p in at if p < n and path[p] != "/"
                  and (not isinstance(arg, re.Pattern) or arg.fullmatch(path[p]))}
        elif kind == "any":
            at = set(range(min(at), n + 1))
        elif kind == "seg":
            at = _segment_ends(path, at)
        else:  # dirs: nothing, or "/" and then anything
            slashes = [p for p in at if p < n and path[p] == "/"]
            at = at | (set(range(min(slashes) + 1, n + 1)) if slashes else set())
        if not at:
            break
    return at


def _segment_ends(path: str, starts: set[int]) -> set[int]:
    """Every position `[^/]*` can end at from one of `starts`."""
    reach: set[int] = set()
    for p in sorted(starts):
        if p in reach:
            continue  # an earlier start in the same segment reached through to its end
        reach.add(p)
        while p < len(path) and path[p] != "/":
            p += 1
            reach.add(p)
    return reach


def _tree_covered(glob: str, path: str) -> bool:
    """Does the glob cover `path` and everything below it (a glob ending in `/**` over it or
    a directory above it)?"""
    if not glob.endswith("/**"):
        return False
    base = glob[:-3] or "/"
    path = path.rstrip("/")
    ends = _match_ends(base, path)  # each directory above is a prefix of the path: matched once, not apart
    return _path_match(base, "/") or any(q in ends for q in range(1, len(path) + 1) if q == len(path) or path[q] == "/")


def _path_touches(glob: str, path: str, tree: bool) -> bool:
    """Could the access fall under a deny glob: not in normal form, the glob matching the
    path as is or case-folded, or (`tree`) some path below it?"""
    if not _normal(path):
        return True
    if _path_match(glob, path) or _path_match(_folded(glob), _folded(path)):
        return True
    return tree and _below(_folded(glob), _folded(path))


def _folded(text: str) -> str:
    """`text` as a case- and normalization-insensitive file system compares it: case-folded,
    precomposed (NFC, so a class `[é]` still stands for one character; macOS reads `é` and
    `e` U+0301 as one name)."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", text).casefold())


def _below(glob: str, path: str) -> bool:
    """May a path below `path` match the glob, segment by segment?"""
    globs, parts = glob.strip("/").split("/"), [p for p in path.split("/") if p]
    for i, part in enumerate(parts):
        if i >= len(globs):
            return False
        if "**" in globs[i]:
            return True
        if not fnmatchcase(part, globs[i]):
            return False
    return len(globs) > len(parts)


def _split_target(text: str, empty_host: bool = False) -> tuple[str, str] | None:
    """"host:port" (or "[v6]:port") as (host, port): host lower-cased without brackets or
    a trailing dot; None without a port, or without a host unless `empty_host` (a remote
    forward's "" is every address: RFC 4254 section 7.1)."""
    host, colon, port = text.rpartition(":")
    if not colon or not port:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host.lower().rstrip(".")
    return (host, port) if host or empty_host else None


def _port(text: str) -> bool:
    return text.isascii() and text.isdigit() and int(text) <= 65535


_LOCAL = frozenset({"localhost", "127.0.0.1", "::1"})  # spellings of the server itself
# Every address (RFC 4254 section 7.1's "", and `*`: OpenSSH's sshd, channels.c
# channel_fwd_bind_addr); connecting to it reaches the server itself
_EVERY = frozenset({"", "*", "0.0.0.0", "::"})
_GLOB_PARTS = re.compile(r"\[!?\]?[^]]*\]|[*?]")  # what fnmatch reads as a wildcard or a set
_ADDRESS_TEXT = frozenset("0123456789abcdef.:")  # what an IPv4 or IPv6 address is written with


def _target(patterns: tuple[str, ...], target: tuple[str, str], deny: bool, names: bool = True) -> bool:
    """Allow: the host as the client named it, when it is a name (by a pattern not written for
    addresses: _for_addresses) or an address in canonical form. Deny: also every spelling of
    what the server reaches (see _spellings), and (`names`) any name when the pattern names an
    address (see _names_address)."""
    host, port = target
    if deny:
        hosts = _spellings(host)
    elif _address(host) not in (None, host):
        return False
    else:
        hosts = {host}
    resolved = deny and names and _name(host)
    for pattern in patterns:
        split = _split_target(pattern, empty_host=True)
        if split is None or not fnmatchcase(port, split[1]):
            continue
        if not deny and _name(host) and _for_addresses(split[0]):
            continue
        if any(fnmatchcase(h, split[0]) for h in hosts) or (resolved and _names_address(split[0])):
            return True
    return False


def _name(host: str) -> bool:
    """Is the host a name the server resolves (neither an address nor every address)?"""
    return host not in _EVERY and _address(host) is None


def _names_address(pattern: str) -> bool:
    """May a deny pattern's host stand for an address: an address in any spelling, the server
    itself or every address, or a glob whose other characters may all be an address's?"""
    if _address(pattern) is not None or pattern in _LOCAL | _EVERY:
        return True
    literal = _GLOB_PARTS.sub("", pattern)
    return literal != pattern and set(literal) <= _ADDRESS_TEXT


def _for_addresses(pattern: str) -> bool:
    """Is an allow pattern's host written for addresses, so that it covers no name: an
    address, or a glob whose other characters may all be an address's and hold a digit or `:`
    (`10.0.0.*`, `fe80::*`; `db*` and `cafe.*`, hex letters only, are about names)?"""
    literal = _GLOB_PARTS.sub("", pattern)
    return _address(pattern) is not None or (
        literal != pattern and set(literal) <= _ADDRESS_TEXT and any(c.isdigit() or c == ":" for c in literal))


def _spellings(host: str) -> set[str]:
    """`host`, the address a resolver reads in it (inet_aton's `127.1`, `0x7f.0.0.1`,
    `2130706433`; IPv6 in any spelling; an IPv4-mapped IPv6 address as IPv4), and for the
    server itself (loopback, `localhost`) or every address (`0.0.0.0`, `::`, "", `*`) all the
    spellings of both."""
    spellings = {host}
    address = _address(host)
    if address is not None:
        parsed = ipaddress.ip_address(address)
        mapped = parsed.ipv4_mapped if isinstance(parsed, ipaddress.IPv6Address) else None
        parsed = mapped or parsed
        spellings |= {address, str(parsed)}
        if parsed.is_loopback:
            spellings |= _LOCAL
        if parsed.is_unspecified:
            spellings |= _EVERY | _LOCAL
    if host in _LOCAL:
        spellings |= _LOCAL
    if host in _EVERY:
        spellings |= _EVERY | _LOCAL
    return spellings


def _address(host: str) -> str | None:
    """The IP address a resolver reads in `host`, in canonical form; None for a name."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        return socket.inet_ntoa(socket.inet_aton(host.split()[0] if host.split() else host))
    except (OSError, ValueError):
        return None


def _unmatched(view: _View) -> str:
    """Why no rule allows the request, for the refusal the agent reads."""
    if view.kind == "shell":
        return "no rule allows an interactive shell (a rule with `shell: true` does)"
    if view.kind == "exec" and view.reading is not None:
        shown = " ".join(view.reading.argv)
        shown = shown if len(shown) <= _SHOWN else f"{shown[:_SHOWN]}..."
        if view.pty:
            return "an exec with a terminal (pty) is a shell: only a rule with `shell: true` allows it"
        if view.reading.shell:
            return (f"command {shown!r} is shell class ({'; '.join(view.reading.shell[:3])}): only a rule with "
                    "`shell: true` allows it")
        if view.reading.scp is not None:
            access = _scp_judged(view.reading.scp, view.reading.argv)
            kind = "download" if access.mode == "read" else "upload"
            return f"a legacy scp {kind} is judged as the {access.mode} of its path: " + _unmatched(
                _View(access.mode, path=access.path, tree=access.recursive))
        return f"no rule allows command {shown!r}"
    if view.kind in ("read", "write"):
        if view.kind == "write" and runs_code(view.path):
            return f"writing {view.path} can make the server run code: only a rule with `shell: true` and a " \
                   "`write` glob over it allows it"
        if not _normal(view.path):
            return f"path {view.path!r} is not absolute and in normal form"
        if view.tree:
            return (f"no rule allows {view.kind} of {view.path} and everything below it (a directory moved, linked "
                    "or copied whole: a glob ending in /** over it does)")
        if view.metadata:
            return f"no rule allows read or write of {view.path} (either lets its metadata be read)"
        return f"no rule allows {view.kind} of {view.path}"
    host, port = view.target or ("", "")
    return f"no rule allows {'forwarding' if view.kind == 'forward' else 'remote forwarding'} to {host}:{port}"


def parse_ssh_case(case: Mapping[str, Any]) -> SshRequest:
    """A `policy test` case's request: `ssh: {command: "ls -l", pty: true}` (exec), `{shell:
    true}`, `{read: PATH}`, `{write: PATH}`, `{stat: PATH}` (a metadata read, as SFTP's
    stat), `{forward: "host:port"}`, `{remote_forward: "addr:port"}`. ValueError or TypeError
    for a bad case."""
    raw = case[OPERATION_KEY]
    if not isinstance(raw, Mapping):
        raise TypeError("ssh: expected a mapping such as {command: \"uptime\"} or {read: /var/log/syslog}")
    unknown = sorted(set(raw) - set(CASE_KEYS))
    asked = [k for k in CASE_KEYS[:-1] if k in raw]
    if unknown or len(asked) != 1:
        raise ValueError(f"ssh: exactly one of {', '.join(CASE_KEYS[:-1])} (and pty with command or shell) is "
                         f"expected; got {', '.join(map(str, raw))}")
    key, value, pty = asked[0], raw[asked[0]], raw.get("pty", False)
    if not isinstance(pty, bool) or (pty and key not in ("command", "shell")):
        raise ValueError("ssh: pty is true or false, with command or shell")
    if key == "shell":
        if value is not True:
            raise ValueError("ssh: shell must be true")
        return SshRequest("shell", pty=pty)
    if not isinstance(value, str):
        raise TypeError(f"ssh: {key} must be a string")
    if key == "command":
        return SshRequest("exec", command=value, pty=pty)
    if key in ("read", "write"):
        return SshRequest(key, path=value, action="open")
    if key == "stat":
        return SshRequest("read", path=value, action="stat")
    return SshRequest("forward", forward="local" if key == "forward" else "remote", target=value)

