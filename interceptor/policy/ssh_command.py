"""An SSH exec command read the way the server will run it (sans-IO).

The server hands the command line to the user's login shell (`$SHELL -c COMMAND`; OpenSSH
session.c do_child; RFC 4254 section 6.5), assumed POSIX (dash, bash: POSIX.1-2017 XCU 2,
"Shell Command Language"). Two readings:

- Strict (what allow and approve rules see): the command is one simple command of plain words.
  A word is unquoted characters of `[A-Za-z0-9_@%+=:,./-]`, `'single quoted'` text, or
  `"double quoted"` text without `$`, a backquote, `\\` or `!`; words are separated by spaces.
  Anything else makes the command *shell class* (`CommandReading.shell` says why): every other
  unquoted character (`; & | < > ( ) $ \\` * ? [ ] ~ { } # !`, a newline, a tab, a carriage
  return, any non-ASCII character), an unterminated quote, a first word holding `=` (an
  assignment), and a command that runs code whatever its words: a shell or an interpreter,
  a builtin that evaluates code or array subscripts, an editor, pager or other program that
  starts commands (a subcommand that starts $EDITOR, GNU sed without --sandbox), an option
  that makes a program run one (`find -exec`, `tar --to-command`, `rsync -e`, `sudo -s`), or
  a file server (`sftp-server`, `rsync --server`, scp through a wrapper), found at any level
  of wrappers (`sudo`, `env`, `nice`, `timeout`, ... with their options: WRAPPERS, at most
  MAX_DEPTH deep). A wrapper option this module does not know is shell class too (it cannot
  tell where the inner command starts).
- Lax (what deny rules see): every simple command the shell may run, each as a tuple of words
  where None is a word only known at run time (an expansion, a glob, a tilde, a brace
  expansion, `$'...'`): it stands for any number of words. Lists, pipelines, subshells,
  groups, here-documents and redirections are split off (over-splitting only adds commands a
  deny rule may match); every level of a wrapper is a command of its own (`sudo rm x`, and
  `rm x`); `sh -c STRING`, `eval`, `su -c`, `watch`, `find -exec` and command substitutions are
  read recursively. What cannot be read (interpreter code, a script file, a shell reading its
  standard input, a command name known only at run time, a substitution anywhere, bash's
  arithmetic, which evaluates the values of the variables it names (`((b))`, `${a[b]}`,
  `${x:b}`, `a[b]=1`, `${!b}`), `${x@P}`, a substitution in an unquoted here-document, an
  assignment to PATH, IFS, PS4 and the like) makes the command *opaque*: every deny rule
  about commands matches it.

Patterns (`commands:` of a rule): split like a POSIX shell (shlex, posix=True) into words, each
an fnmatchcase glob for one argv word; a last word `**` matches zero or more remaining words.
A pattern word holding `/` is about a path: for allow rules it covers only an argument in
normal form (interceptor.policy.mcp_rules.in_normal_form); for deny rules it also matches an
argument not in normal form and a relative path that may name it.

Legacy scp: the client runs `scp [-v] [-r] [-p] [-d] -t [--] PATH` (upload: the server writes)
or `... -f [--] PATH` (download: the server reads) on the server (OpenSSH scp.c, "remote"
mode). Anything else about an scp command line is shell class.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import lru_cache

from interceptor.policy.mcp_rules import in_normal_form

MAX_COMMAND_CHARS = 64 * 1024  # longer commands are refused before parsing
MAX_DEPTH = 8  # `sh -c` within `sh -c` ...: deeper is opaque
ANY_WORDS = "**"  # a pattern's last word matching zero or more words

Words = tuple[str | None, ...]  # a simple command; None: a word known only at run time

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_@%+=:,./-")
_CHAR_NAMES = {
    ";": "a command list (;)", "&": "a background job or && list (&)", "|": "a pipe or || list (|)",
    "<": "a redirection (<)", ">": "a redirection (>)", "(": "a subshell or substitution (()",
    ")": "a subshell or substitution ())", "$": "an expansion ($)", "`": "a command substitution (`)",
    "\\": "a backslash escape (\\)", "*": "a glob (*)", "?": "a glob (?)", "[": "a glob ([)", "]": "a glob (])",
    "~": "a tilde expansion (~)", "{": "a brace expansion or group ({)", "}": "a brace expansion or group (})",
    "#": "a comment (#)", "!": "a history expansion or negation (!)", "\n": "a newline (a second command)",
    "\r": "a carriage return", "\t": "a tab", "'": "a single quote", '"': "a double quote",
}
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\[[^\]]*\])?\+?=")
_INTERPRETER = re.compile(r"(?:python|pypy|perl|ruby|irb|node|nodejs|deno|bun|php|lua|luajit|tclsh|wish|expect|"
                          r"awk|gawk|mawk|nawk|busybox|Rscript|R|julia|guile|racket|sbcl|ghci|runghc|scala|"
                          r"groovy|jshell|osascript|gdb|lldb|jrunscript)[0-9.]*|ld(?:-linux)?[-.].*so.*")
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "ksh93", "mksh", "pdksh", "oksh", "loksh", "ash", "yash",
                    "fish", "csh", "tcsh", "rbash", "posh", "rc", "es", "nu", "elvish", "xonsh"})
# Builtins that run a command string or file, or evaluate array subscripts (`a[$(id)]`), and
# reserved words (a plain word in command position that starts or ends a compound command)
CODE_BUILTINS = frozenset({"eval", "source", ".", "trap", "enable", "fc", "let", "declare", "typeset", "local",
                           "export", "readonly", "unset", "read", "mapfile", "readarray", "alias", "hash",
                           "getopts", "wait", "coproc", "compgen", "complete", "bind", "jobs", "function", "if",
                           "while", "until", "for", "select", "case", "then", "do", "else", "elif", "fi", "done",
                           "esac", "in", "[[", "]]"})
# Programs that start a shell or other commands as part of what they do
SPAWNERS = frozenset({"vi", "vim", "nvim", "view", "vimdiff", "rvim", "ex", "ed", "red", "emacs", "nano", "pico",
                      "joe", "mcedit", "less", "more", "most", "pg", "man", "sudoedit", "su", "watch", "script",
                      "ssh", "sftp", "crontab", "at", "batch", "systemd-run", "tmux", "screen", "socat", "ncat",
                      "nc", "netcat", "telnet", "ftp", "mail", "mailx", "make", "parallel", "dbus-launch",
                      "nsenter", "unshare", "setpriv", "prlimit", "strace", "ltrace", "valgrind", "ld.so",
                      "capsh", "sg", "newgrp", "chroot", "runcon", "firejail", "bwrap", "pkexec", "machinectl",
                      "proxychains", "proxychains4", "torsocks", "faketime", "fakeroot", "sshpass", "timelimit",
                      "cpulimit", "daemonize", "start-stop-daemon", "dbus-run-session", "xvfb-run", "numactl",
                      "schedtool", "cgexec", "systemd-inhibit", "systemd-cat", "sem", "entr", "perf", "unbuffer",
                      "run-parts", "visudo", "vipw", "vigr", "psql", "mysql", "mariadb", "sqlite3", "nmap"})
# Programs reached through the kernel's views of processes and files (`/proc/self/exe` is the
# shell itself, `/dev/fd/3` whatever was opened): their names say nothing
_HIDDEN_PROGRAMS = ("/proc/", "/dev/")
# Subcommands that start $EDITOR (which an agent on stdin can drive to a shell, terminal or not)
EDITOR_SUBCOMMANDS: Mapping[str, frozenset[str]] = {
    "systemctl": frozenset({"edit"}), "kubectl": frozenset({"edit"}), "virsh": frozenset({"edit"}),
    "git": frozenset({"commit", "rebase", "tag", "merge", "notes", "revert", "cherry-pick", "am", "config", "var",
                      "add", "pull"}),
}
# Options that make a program run a command: word prefixes, and letters of a `-abc` cluster
# (tar's first word also without its dash: `tar xIf`)
CODE_OPTIONS: Mapping[str, tuple[tuple[str, ...], str]] = {
    "find": (("-exec", "-execdir", "-ok", "-okdir", "-fprint", "-fls"), ""),
    "tar": (("--to-command", "--checkpoint-action", "--use-compress-program", "--info-script",
             "--new-volume-script", "--rsh-command", "--rmt-command"), "IF"),
    "rsync": (("--rsh", "--rsync-path"), "e"),
    "git": (("-c", "--config-env", "--exec-path", "--upload-pack", "--receive-pack"), ""),
    "zip": (("--unzip-command",), "T"),
    "tcpdump": ((), "z"),
    "wget": (("--use-askpass",), ""),
    "ssh-keygen": (("-D", "-w"), ""),
}


@dataclass(frozen=True, slots=True)
class _Wrapper:
    """A program that runs the command its arguments name. Short option letters: `flags`
    take no argument, `with_arg` take one (attached or the next word), `optional` take only
    an attached one; `longs` maps a long option to its letter ("" for one without a short
    form, taking no argument). `positional`: words before the command (timeout's duration).
    The words after the options are taken as the command even where an option says none runs
    (`sudo -l CMD` lists, `command -v CMD` looks up): widest for deny rules, and an
    interpreter there is still shell class. A `shell` option runs a shell; the argument
    of a `string` option is a shell command string; an `opaque` option's argument is a
    command in another syntax. `assignments`: NAME=VALUE words may come before the command.
    `digits`: `-N` is an option (nice -5); `dash`: a lone `-` is an option (env's -i)."""

    flags: str = ""
    with_arg: str = ""
    optional: str = ""
    longs: Mapping[str, str] = field(default_factory=dict)
    positional: int = 0
    shell: str = ""
    string: str = ""
    opaque: str = ""
    assignments: bool = False
    digits: bool = False
    dash: bool = False


def _longs(spec: str) -> dict[str, str]:
    """`"user=u shell=s verbose"` as {"user": "u", "shell": "s", "verbose": ""}."""
    return {name: letter for name, _, letter in (item.partition("=") for item in spec.split())}


WRAPPERS: Mapping[str, _Wrapper] = {
    "sudo": _Wrapper("ABbEeHiKklNnPSsVv", "aCcDgpRrTtUu", "h", _longs(
        "askpass=A auth-type=a background=b bell=B close-from=C login-class=c chdir=D preserve-env=E edit=e "
        "group=g set-home=H help=h host=h login=i remove-timestamp=K reset-timestamp=k list=l non-interactive=n "
        "preserve-groups=P prompt=p chroot=R role=r stdin=S shell=s type=t command-timeout=T other-user=U "
        "user=u version=V validate=v"), shell="sie", assignments=True),
    "doas": _Wrapper("Lns", "Cu", shell="s"),
    "env": _Wrapper("i0v", "uCS", "", _longs(
        "ignore-environment=i null=0 unset=u chdir=C split-string=S debug=v ignore-signal default-signal "
        "block-signal list-signal-handling"), opaque="S", assignments=True, dash=True),
    "nice": _Wrapper("", "n", "", _longs("adjustment=n"), digits=True),
    "nohup": _Wrapper(),
    "timeout": _Wrapper("fpv", "ks", "", _longs("foreground=f kill-after=k preserve-status=p signal=s verbose=v"),
                        positional=1),
    "stdbuf": _Wrapper("", "ioe", "", _longs("input=i output=o error=e")),
    "setsid": _Wrapper("cfw", "", "", _longs("ctty=c fork=f wait=w")),
    "ionice": _Wrapper("t", "cnpPu", "", _longs("class=c classdata=n pid=p pgid=P uid=u ignore=t")),
    "chrt": _Wrapper("abdfimoprRv", "TPD", "", _longs(
        "all-tasks=a batch=b deadline=d fifo=f idle=i max=m other=o pid=p rr=r reset-on-fork=R verbose=v "
        "sched-runtime=T sched-period=P sched-deadline=D"), positional=1),
    "taskset": _Wrapper("acp", "", "", _longs("all-tasks=a cpu-list=c pid=p"), positional=1),
    "time": _Wrapper("apqvV", "fo", "", _longs(
        "append=a portability=p quiet=q verbose=v format=f output=o version=V")),
    "command": _Wrapper("pvV"),
    "exec": _Wrapper("cl", "a"),
    "builtin": _Wrapper(),
    "runuser": _Wrapper("lmpPf", "ugGsw", "", _longs(
        "user=u group=g supp-group=G login=l shell=s command=c preserve-environment=m pty=P "
        "whitelist-environment=w"), string="c"),
    "xargs": _Wrapper("0oprtx", "aEdILnPs", "eil", _longs(
        "null=0 arg-file=a delimiter=d eof=e replace=i max-lines=l max-args=n max-procs=P max-chars=s "
        "interactive=p verbose=t exit=x open-tty=o no-run-if-empty=r show-limits process-slot-var")),
    "flock": _Wrapper("sxnuoF", "wE", "", _longs(
        "shared=s exclusive=x nonblock=n unlock=u close=o no-fork=F timeout=w conflict-exit-code=E command=c "
        "verbose"), positional=1, string="c"),
    "busybox": _Wrapper(),
    "catchsegv": _Wrapper(),
}


_WATCH = _Wrapper("bcdegptwxr", "nq", "", _longs(
    "beep=b color=c differences=d errexit=e chgexit=g precise=p no-title=t no-wrap=w exec=x no-rerun=r "
    "interval=n equexit=q"))


@dataclass(frozen=True, slots=True)
class ScpAccess:
    """A legacy scp server command: `mode` "read" (`-f`) or "write" (`-t`), `path` as given,
    `recursive` (`-r`)."""

    mode: str
    path: str
    recursive: bool


@dataclass(frozen=True, slots=True)
class CommandReading:
    """An exec command as the server's shell reads it (see the module docstring).

    `argv`: the strict words (meaningful only when `shell` is empty); `shell`: why the
    command is shell class; `commands`: every simple command of the lax reading, each wrapper
    level on its own; `opaque`: why part of it cannot be read; `scp`: the legacy scp transfer
    the whole command is, if it is one; `refused`: why it is not judged at all (too long,
    NUL), or None."""

    argv: tuple[str, ...] = ()
    shell: tuple[str, ...] = ()
    commands: tuple[Words, ...] = ()
    opaque: tuple[str, ...] = ()
    scp: ScpAccess | None = None
    refused: str | None = None


@lru_cache(maxsize=4096)
def read_command(text: str) -> CommandReading:
    """Both readings of `text`, an exec request's command (a str: the handler decodes the
    bytes as UTF-8, refusing what does not decode). Commands of more than MAX_COMMAND_CHARS
    characters, and commands holding NUL (which OpenSSH's sshd refuses: sshbuf_get_cstring),
    are refused unread."""
    if len(text) > MAX_COMMAND_CHARS:
        return CommandReading(refused=f"the command is {len(text)} characters long; at most {MAX_COMMAND_CHARS} "
                                      "are judged")
    if "\0" in text:
        return CommandReading(refused="the command holds a NUL character, which the server cannot run as sent")
    argv, reasons = strict_words(text)
    scp = None
    if not reasons:
        reasons.extend(_code_reasons(argv))
        read = read_scp(argv)
        if isinstance(read, str):
            reasons.append(read)
        else:
            scp = read
    commands: list[Words] = []
    opaque: list[str] = []
    _read_lax(text, 0, commands, opaque)
    return CommandReading(argv, tuple(dict.fromkeys(reasons)), tuple(dict.fromkeys(commands)),
                          tuple(dict.fromkeys(opaque)), scp)


def describe_char(char: str) -> str:
    """What an unquoted character means to the shell, for a refusal."""
    return _CHAR_NAMES.get(char, f"the character {char!r}")


def strict_words(text: str) -> tuple[tuple[str, ...], list[str]]:
    """The words of `text` if it is plain (see the module docstring), and why it is not."""
    words: list[str] = []
    reasons: list[str] = []
    word: str | None = None
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == " ":
            if word is not None:
                words.append(word)
            word, i = None, i + 1
            continue
        if char in ("'", '"'):
            end = text.find(char, i + 1)
            if end < 0:
                reasons.append(f"an unterminated quote ({char})")
                end = n
            quoted = text[i + 1:end]
            if char == '"':
                reasons.extend(f"{describe_char(c)} inside double quotes" for c in quoted if c in "$`\\!")
            word, i = (word or "") + quoted, end + 1
            continue
        if char not in _SAFE:
            reasons.append(f"unquoted {describe_char(char)}")
        word, i = (word or "") + char, i + 1
    if word is not None:
        words.append(word)
    if words and "=" in words[0]:
        reasons.append("an assignment (NAME=value) before the command")
    return tuple(words), reasons


def _code_reasons(argv: tuple[str, ...]) -> list[str]:
    """Why plain words still run code: at every wrapper level, a program that does."""
    reasons: list[str] = []
    for depth, level in enumerate(_levels_strict(argv, reasons)):
        name = _base(level[0])
        if level[0].startswith(_HIDDEN_PROGRAMS):
            reasons.append(f"{level[0]} is a program this reading cannot name")
        elif name == "scp" and depth:
            reasons.append(f"scp run through {argv[0]}: only `scp -t PATH` or `scp -f PATH` is a file transfer")
        elif name == "sftp-server" or (name == "rsync" and "--server" in level[1:]):
            reasons.append(f"{level[0]} serves files unjudged (SFTP is judged file by file)")
        elif name in SHELLS:
            reasons.append(f"{level[0]} is a shell")
        elif _INTERPRETER.fullmatch(name):
            reasons.append(f"{level[0]} runs interpreter code")
        elif name in CODE_BUILTINS or name in ("exec", "command", "builtin", "env", "xargs"):
            reasons.append(f"{level[0]} runs or evaluates shell code")
        elif name in SPAWNERS:
            reasons.append(f"{level[0]} can start a shell or other commands")
        elif _evaluates_names(name, level):
            reasons.append(f"{level[0]} -v evaluates array subscripts (code) in bash")
        elif runs_option(name, level):
            reasons.append(f"{level[0]} has an option that runs a command")
        elif _starts_editor(name, level):
            reasons.append(f"{level[0]} can start an editor")
        elif _unsandboxed_sed(name, level):
            reasons.append(f"{level[0]} without --sandbox runs commands from its script (e, s///e)")
    return reasons


def _starts_editor(name: str, words: Words) -> bool:
    """Does the command name a subcommand that starts $EDITOR (EDITOR_SUBCOMMANDS)?"""
    subcommands = EDITOR_SUBCOMMANDS.get(name)
    return subcommands is not None and any(w is None or w in subcommands for w in words[1:])


def _unsandboxed_sed(name: str, words: Words) -> bool:
    """GNU sed runs commands (`e`, `s///e`) and writes files (`w`) from its script unless
    given --sandbox."""
    return name in ("sed", "gsed") and "--sandbox" not in words


def _evaluates_names(name: str, words: Words) -> bool:
    """printf -v, test -v and -R (bash): the name given is evaluated, subscript and all."""
    return name in ("printf", "test", "[") and any(w is None or w.startswith(("-v", "-R")) for w in words[1:])


def runs_option(name: str, words: Words) -> bool:
    """Does the command (`name` its argv0's last segment) have an option of CODE_OPTIONS? A
    word known only at run time may be one."""
    if name not in CODE_OPTIONS:
        return False
    prefixes, letters = CODE_OPTIONS[name]
    for i, word in enumerate(words[1:], 1):
        if word is None or word.startswith(prefixes):
            return True
        clustered = word.startswith("-") and not word.startswith("--") or (name == "tar" and i == 1)
        if clustered and set(word) & set(letters):
            return True
    return False


def _levels_strict(argv: tuple[str, ...], reasons: list[str]) -> Iterator[tuple[str, ...]]:
    """`argv` and the command of each wrapper within it; why a wrapper cannot be read goes
    to `reasons`."""
    level: tuple[str, ...] | None = argv
    for _ in range(MAX_DEPTH + 1):
        if not level:
            return
        yield level
        spec = WRAPPERS.get(_base(level[0]))
        if spec is None:
            return
        parsed = _unwrap(spec, level)
        if parsed.problem is not None:
            reasons.append(f"{level[0]}: {parsed.problem}")
            return
        if parsed.shell:
            reasons.append(f"{level[0]} {parsed.shell} runs a shell or an editor")
        if parsed.assignments:
            reasons.append(f"{level[0]} sets environment variables ({', '.join(parsed.assignments)})")
        if parsed.string is not None or parsed.opaque:
            reasons.append(f"{level[0]} runs a command string")
        level = tuple(w for w in parsed.command if w is not None) if parsed.command is not None else None
    if level:
        reasons.append(f"wrappers nested more than {MAX_DEPTH} deep")


@dataclass(frozen=True, slots=True)
class _Unwrapped:
    command: Words | None = None  # the inner command (None: no command runs)
    problem: str | None = None  # the options could not be read
    shell: str = ""  # the option that runs a shell
    string: str | None = None  # the shell command string it runs (None: none)
    opaque: bool = False
    assignments: tuple[str, ...] = ()


def _unwrap(spec: _Wrapper, words: Words) -> _Unwrapped:
    """Read a wrapper's options (GNU getopt_long style: clusters, attached arguments, `--x=v`,
    unique prefixes of long names, `--`) and find the command it runs."""
    letters: list[str] = []
    values: dict[str, str | None] = {}
    assignments: list[str] = []
    i = 1
    while i < len(words):
        word = words[i]
        if word is None:
            return _Unwrapped(problem="an expansion among its options")
        if word == "--":
            i += 1
            break
        if spec.assignments and _ASSIGNMENT.match(word):
            assignments.append(word.partition("=")[0])
            i += 1
            continue
        if word == "-" and spec.dash:
            i += 1
            continue
        if not word.startswith("-") or word == "-":
            break
        if spec.digits and word.lstrip("-").isdigit():
            i += 1
            continue
        if word.startswith("--"):
            name, eq, attached = word[2:].partition("=")
            value: str | None = attached
            found = [long for long in spec.longs if long.startswith(name)] if name not in spec.longs else [name]
            if len(found) != 1:
                return _Unwrapped(problem=f"unknown option {word}")
            letter = spec.longs[found[0]]
            if letter and letter in spec.with_arg and not eq:
                i += 1
                value = _word_at(words, i)
            letters.append(letter)
            values[letter] = value
            i += 1
            continue
        j = 1
        while j < len(word):
            letter = word[j]
            if letter in spec.with_arg or letter in spec.optional:
                value = word[j + 1:] or None
                if value is None and letter in spec.with_arg:
                    i += 1
                    value = _word_at(words, i)
                letters.append(letter)
                values[letter] = value if value is not None or letter in spec.with_arg else ""
                break
            if letter not in spec.flags:
                return _Unwrapped(problem=f"unknown option -{letter}")
            letters.append(letter)
            j += 1
        i += 1
    i += spec.positional
    if spec.string and i + 1 < len(words) and words[i] in (f"-{spec.string}", "--command"):
        letters.append(spec.string)  # flock FILE -c COMMAND: the option after the file
        values[spec.string] = words[i + 1]
    shell = next((f"-{c}" for c in letters if c in spec.shell), "")
    if any(c in spec.string for c in letters):
        string = next(values[c] for c in letters if c in spec.string)
        if string is None:
            return _Unwrapped(problem="a command string known only at run time")
        return _Unwrapped(string=string, shell=shell, assignments=tuple(assignments))
    if any(c in spec.opaque for c in letters):
        return _Unwrapped(opaque=True, assignments=tuple(assignments))
    if i >= len(words):
        return _Unwrapped(shell=shell, assignments=tuple(assignments))
    return _Unwrapped(command=tuple(words[i:]), shell=shell, assignments=tuple(assignments))


def _word_at(words: Words, i: int) -> str | None:
    return words[i] if i < len(words) else ""


def _base(word: str) -> str:
    return word.rpartition("/")[2]


def read_scp(argv: tuple[str, ...]) -> ScpAccess | str | None:
    """The legacy scp transfer `argv` asks for; None when argv0 is not `scp`; a reason (shell
    class) for an scp command line of any other shape (see the module docstring)."""
    if not argv or _base(argv[0]) != "scp":
        return None
    if argv[0] != "scp":
        return f"scp run as {argv[0]}: only `scp -t PATH` or `scp -f PATH` is read as a file transfer"
    flags, mode, i = set[str](), "", 1
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        flag = argv[i]
        if flag in ("-t", "-f") and not mode:
            mode = flag
        elif flag in ("-v", "-r", "-p", "-d", "-q") and flag not in flags:
            flags.add(flag)
        else:
            return f"scp option {flag} is not one OpenSSH's scp client sends"
        i += 1
    if i < len(argv) and argv[i] == "--":
        i += 1
    if not mode or len(argv) - i != 1 or not argv[i]:
        return "an scp command is `scp [-v -r -p -d] -t|-f [--] PATH` with one path"
    return ScpAccess("write" if mode == "-t" else "read", argv[i], "-r" in flags)


# -- the lax reading -------------------------------------------------------------------------------

_OPERATORS = ("&&", "||", ";;&", ";;", ";&", "|&", "&", ";", "|", "(", ")")
_REDIRECTS = ("<<<", "<<-", "&>>", "<<", ">>", "<>", ">|", "<&", ">&", "&>", "<", ">")
_KEYWORDS = frozenset({"!", "{", "}", "if", "then", "else", "elif", "fi", "do", "done", "while", "until", "coproc",
                       "in", "esac"})
_WORD_END = frozenset(" \t\n;&|()<>")
_NAME_CHAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9@*#?$!-]")
# What in an expansion runs code: a substitution, bash's arithmetic (which evaluates the values
# of the variables it names, `a[$(id)]` included: subscripts, `${x:offset}`), indirection
# (`${!x}`), a transformation (`${x@P}` expands a prompt)
_RUNS_IN_EXPANSION = re.compile(r"\$[({\[]|`")
_EVALUATING_EXPANSION = re.compile(r"\$[({\[]|`|\[|^!|.@|:(?![-=?+])")
# Variables whose value changes what later commands are or do
_RISKY_VARIABLES = re.compile(r"PATH|IFS|ENV|BASH_ENV|PS[0-4]|PROMPT_COMMAND|SHELLOPTS|BASHOPTS|GLOBIGNORE|"
                              r"EXECIGNORE|CDPATH|HOME|FPATH|LD_\w*|BASH_\w*|HIST\w*|MAIL\w*")
_FD_PREFIX = re.compile(r"[0-9]+|\{[A-Za-z_][A-Za-z0-9_]*\}")


@dataclass(slots=True)
class _Word:
    value: str = ""
    unknown: bool = False  # an expansion or glob: known only at run time
    quoted: bool = False
    prefix: str = ""  # the unquoted literal start (to tell an assignment)
    literal: bool = True  # still in the unquoted literal start


class _Lexer:
    """POSIX shell token recognition (XCU 2.3) widened for deny: words with quote removal,
    operators and redirections as command boundaries, here-document bodies skipped."""

    def __init__(self, text: str, depth: int, commands: list[Words], opaque: list[str]) -> None:
        self.text, self.depth, self.commands, self.opaque = text, depth, commands, opaque
        self.i = 0
        self.heredocs: list[tuple[str, bool, bool]] = []  # delimiter, strip tabs, body expanded

    def run(self) -> None:
        text, n = self.text, len(self.text)
        current: list[_Word] = []
        while self.i < n:
            char = text[self.i]
            if char in " \t":
                self.i += 1
            elif char == "\n":
                self._end(current)
                self.i += 1
                self._skip_heredocs()
            elif char == "#":
                end = text.find("\n", self.i)
                self.i = n if end < 0 else end
            elif text.startswith("\\\n", self.i):
                self.i += 2
            elif self._redirection():
                continue
            elif text.startswith("((", self.i):
                self.opaque.append("an arithmetic command")
                self._end(current)
                self.i += 2
            elif any(text.startswith(op, self.i) for op in _OPERATORS):
                self._end(current)
                self.i += len(next(op for op in _OPERATORS if text.startswith(op, self.i)))
            else:
                word = self._word()
                if not word.quoted and not word.unknown and _FD_PREFIX.fullmatch(word.value) \
                        and self.i < n and text[self.i] in "<>":
                    continue
                if not word.quoted and word.value in _KEYWORDS and not current:
                    continue
                if not word.quoted and word.value in ("{", "}", "!"):
                    self._end(current)
                    continue
                current.append(word)
        self._end(current)

    def _redirection(self) -> bool:
        text = self.text
        found = next((r for r in _REDIRECTS if text.startswith(r, self.i)), None)
        if found is None:
            return False
        if found in ("<", ">") and text.startswith("(", self.i + 1):
            self.opaque.append("a process substitution")
            self.i += 1  # the `(` then reads as a subshell: its commands are read too
            return True
        self.i += len(found)
        while self.i < len(text) and text[self.i] in " \t":
            self.i += 1
        if self.i < len(text) and text[self.i] not in _WORD_END:
            start = self.i
            target = self._word()
            if found in ("<<", "<<-"):
                if target.unknown or any(c in self.text[start:self.i] for c in "$`"):
                    self.opaque.append("a here-document delimiter this reading cannot tell")
                    self.i = len(self.text)
                else:
                    self.heredocs.append((target.value, found == "<<-", not target.quoted))
        return True

    def _skip_heredocs(self) -> None:
        """Past the bodies of the here-documents of the line just ended; a body whose
        delimiter was not quoted is expanded (XCU 2.7.4): a substitution in it is opaque."""
        for delimiter, strip_tabs, expanded in self.heredocs:
            start = self.i
            while self.i < len(self.text):
                end = self.text.find("\n", self.i)
                end = len(self.text) if end < 0 else end
                line = self.text[self.i:end]
                self.i = end + 1
                if (line.lstrip("\t") if strip_tabs else line) == delimiter:
                    break
            if expanded and _RUNS_IN_EXPANSION.search(self.text[start:self.i]):
                self.opaque.append("a substitution in a here-document")
        self.heredocs.clear()

    def _end(self, current: list[_Word]) -> None:
        words = list(current)
        current.clear()
        while words and words[0].prefix and _ASSIGNMENT.match(words[0].prefix):
            _check_assignment(words.pop(0).prefix, self.opaque)
        if words:
            _add_levels(tuple(None if w.unknown else w.value for w in words), self.depth, self.commands, self.opaque)

    def _word(self) -> _Word:
        text, n = self.text, len(self.text)
        word = _Word()
        while self.i < n and text[self.i] not in _WORD_END:
            char = text[self.i]
            if char == "\\":
                if text.startswith("\\\n", self.i):
                    self.i += 2
                    continue
                self._literal(word, text[self.i + 1:self.i + 2], quoted=True)
                self.i += 2
            elif char == "'":
                end = text.find("'", self.i + 1)
                if end < 0:
                    self.opaque.append("an unterminated single quote")
                    end = n
                self._literal(word, text[self.i + 1:end], quoted=True)
                self.i = end + 1
            elif char == '"':
                self._double_quoted(word)
            elif char == "`":
                self._backquote()
                word.unknown = True
            elif char == "$":
                self._dollar(word)
            elif char in "*?[]{}" or (char == "~" and (not word.value or word.value.endswith(("=", ":")))):
                word.unknown = True
                self._literal(word, char, quoted=False)
                self.i += 1
            else:
                self._literal(word, char, quoted=False)
                self.i += 1
        return word

    @staticmethod
    def _literal(word: _Word, chars: str, quoted: bool) -> None:
        word.value += chars
        if quoted:
            word.quoted, word.literal = True, False
        elif word.literal:
            word.prefix += chars

    def _double_quoted(self, word: _Word) -> None:
        text, n = self.text, len(self.text)
        self.i += 1
        word.quoted, word.literal = True, False
        while self.i < n and text[self.i] != '"':
            char = text[self.i]
            if char == "\\" and self.i + 1 < n and text[self.i + 1] in '$`"\\\n':
                word.value += "" if text[self.i + 1] == "\n" else text[self.i + 1]
                self.i += 2
            elif char == "`":
                self._backquote()
                word.unknown = True
            elif char == "$":
                self._dollar(word)
            else:
                word.value += char
                self.i += 1
        if self.i >= n:
            self.opaque.append("an unterminated double quote")
        self.i += 1

    def _dollar(self, word: _Word) -> None:
        text, n = self.text, len(self.text)
        after = text[self.i + 1:self.i + 2]
        word.literal = False
        if after == "(":
            arithmetic = text.startswith("((", self.i + 1)
            self.opaque.append("an arithmetic expansion" if arithmetic else "a command substitution")
            end = _closing(text, self.i + 1, "(", ")")
            inner = text[self.i + 2:end]
            if not arithmetic:
                _read_lax(inner, self.depth + 1, self.commands, self.opaque)
            self.i, word.unknown = end + 1, True
        elif after == "{":
            end = _closing(text, self.i + 1, "{", "}")
            if _EVALUATING_EXPANSION.search(text[self.i + 2:end]):
                self.opaque.append("a parameter expansion that evaluates code (a substitution, a subscript, an "
                                   "offset, indirection or a transformation)")
            self.i, word.unknown = end + 1, True
        elif after == "[":
            self.opaque.append("an arithmetic expansion")
            self.i, word.unknown = _closing(text, self.i + 1, "[", "]") + 1, True
        elif after in ("'", '"'):
            end = self.i + 2
            while end < n and text[end] != after:
                end += 2 if text[end] == "\\" else 1
            self.i, word.unknown = end + 1, True
        else:
            name = _NAME_CHAR.match(text, self.i + 1)
            if name is None:
                word.value += "$"
                self.i += 1
            else:
                self.i, word.unknown = name.end(), True

    def _backquote(self) -> None:
        text = self.text
        end = self.i + 1
        while end < len(text) and text[end] != "`":
            end += 2 if text[end] == "\\" else 1
        self.opaque.append("a command substitution")
        _read_lax(text[self.i + 1:end].replace("\\`", "`"), self.depth + 1, self.commands, self.opaque)
        self.i = end + 1


def _closing(text: str, start: int, opening: str, closing: str) -> int:
    """The index of the `closing` that balances the `opening` at `start` (quotes skipped
    roughly), or len(text) when there is none."""
    depth, i = 0, start
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "'":
            end = text.find("'", i + 1)
            i = len(text) if end < 0 else end + 1
            continue
        if char == opening:
            depth += 1
        elif char == closing:
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return len(text)


def _read_lax(text: str, depth: int, commands: list[Words], opaque: list[str]) -> None:
    if depth > MAX_DEPTH:
        opaque.append(f"shell code nested more than {MAX_DEPTH} levels deep")
        return
    _Lexer(text, depth, commands, opaque).run()


def _check_assignment(word: str, opaque: list[str]) -> None:
    """An assignment to an array element (its subscript is evaluated as arithmetic) or to a
    variable that changes what later commands run is opaque."""
    name = word.partition("=")[0].rstrip("+")
    if "[" in name or _RISKY_VARIABLES.fullmatch(name):
        opaque.append(f"an assignment to {name}, which changes what runs")


def _add_levels(words: Words, depth: int, commands: list[Words], opaque: list[str]) -> None:
    """`words` and every command it runs (wrappers, `sh -c`, eval, find -exec) to `commands`."""
    while words and isinstance(words[0], str) and _ASSIGNMENT.match(words[0]):
        _check_assignment(words[0], opaque)
        words = words[1:]
    if not words:
        return
    head = words[0]
    if head is None:
        opaque.append("a command name known only at run time")
        return
    commands.append(words)
    if head.startswith(_HIDDEN_PROGRAMS):
        opaque.append(f"{head} is a program this reading cannot name")
    if depth > MAX_DEPTH:
        opaque.append(f"commands nested more than {MAX_DEPTH} levels deep")
        return
    name = _base(head)
    inner, strings = _runs(name, words, opaque)
    for string in strings:
        if string is None:
            opaque.append(f"{head} runs a command string known only at run time")
        else:
            _read_lax(string, depth + 1, commands, opaque)
    for command in inner:
        _add_levels(command, depth + 1, commands, opaque)


def _runs(name: str, words: Words, opaque: list[str]) -> tuple[list[Words], list[str | None]]:
    """The commands and the shell command strings a command runs (a wrapper's command, xargs's
    with the words it reads, find's -exec commands; `sh -c S`, `eval A B`, `trap S`, `watch
    A`, `su -c S`, `flock F -c S`); what it runs that cannot be read goes to `opaque`."""
    if name == "find":
        return list(_find_commands(words)), []
    if name in SHELLS or (name == "busybox" and len(words) > 1 and words[1] in SHELLS):
        return [], _shell_string(words[1:] if name != "busybox" else words[2:], name, opaque)
    if name == "eval":
        return [], [None if None in words[1:] else " ".join(w for w in words[1:] if w is not None)]
    if name == "watch":  # its options aside, the rest is joined and run by `sh -c`
        parsed = _unwrap(_WATCH, words)
        if parsed.problem is not None or parsed.command is None:
            opaque.append(f"{words[0]} runs a command this reading cannot tell")
            return [], []
        return [], [None if None in parsed.command else " ".join(w for w in parsed.command if w is not None)]
    if name == "trap":
        return [], list(words[1:2])
    if name in ("su", "script") or (name == "runuser" and "-u" not in words and "--user" not in words):
        strings = _string_options(words)
        if not strings and name != "script":
            opaque.append(f"{name} starts a login shell")
        return [], strings
    if name in WRAPPERS:
        return _wrapped(name, words, opaque)
    if _INTERPRETER.fullmatch(name) or name in CODE_BUILTINS or name in SPAWNERS or _evaluates_names(name, words) \
            or _unsandboxed_sed(name, words) or _starts_editor(name, words):
        opaque.append(f"{name} runs code this reading cannot see")
    elif runs_option(name, words):
        opaque.append(f"{name} has an option that runs a command")
    return [], []


def _wrapped(name: str, words: Words, opaque: list[str]) -> tuple[list[Words], list[str | None]]:
    parsed = _unwrap(WRAPPERS[name], words)
    if parsed.problem is not None:  # every place the command may start
        opaque.append(f"{words[0]}: {parsed.problem}")
        return [words[i:] for i in _starts(words)], []
    if parsed.opaque:
        opaque.append(f"{words[0]} runs a command string in its own syntax")
    if parsed.string is not None:
        return [], [parsed.string]
    if parsed.command is None:
        return [], []
    return [parsed.command + (None,) if name == "xargs" else parsed.command], []


def _starts(words: Words) -> list[int]:
    """Where a command may start among a wrapper's words: at each word not an option (the
    first MAX_DEPTH are tried)."""
    return [i for i, word in enumerate(words) if i and (word is None or not word.startswith("-"))][:MAX_DEPTH]


def _string_options(words: Words) -> list[str | None]:
    """The arguments of `-c`, `--command` and `--command=` (and a cluster ending in c)."""
    strings: list[str | None] = []
    for i, word in enumerate(words[1:], 1):
        if word is None:
            continue
        if word.startswith("--command="):
            strings.append(word.partition("=")[2])
        elif word == "--command" or (word.startswith("-") and not word.startswith("--") and word.endswith("c")):
            strings.append(words[i + 1] if i + 1 < len(words) else "")
    return strings


def _shell_string(args: Words, shell: str, opaque: list[str]) -> list[str | None]:
    """A shell's `-c STRING` (options `-e`, `-o NAME`, `+x`, `--norc`, `-lc` clusters); a
    shell without one runs a script file or its standard input: opaque."""
    command = False
    i = 0
    while i < len(args):
        arg = args[i]
        if arg is None or arg == "--" or not arg.startswith(("-", "+")) or arg in ("-", "+"):
            break
        if not arg.startswith("--"):
            command = command or "c" in arg
            if arg[-1] in "oO":
                i += 1
        elif arg in ("--rcfile", "--init-file"):
            i += 1
        i += 1
    if i < len(args) and args[i] == "--":
        i += 1
    if command and i < len(args):
        return [args[i]]
    opaque.append(f"{shell} runs a script or its standard input")
    return []


def _find_commands(words: Words) -> Iterator[Words]:
    for i, word in enumerate(words):
        if word in ("-exec", "-execdir", "-ok", "-okdir"):
            end = next((j for j in range(i + 1, len(words)) if words[j] in (";", "+")), len(words))
            inner = tuple(None if w is None or "{}" in w else w for w in words[i + 1:end])
            if inner:
                yield inner


# -- patterns -------------------------------------------------------------------------------------

def parse_pattern(text: str) -> tuple[str, ...]:
    """A `commands:` pattern as its words (shlex, posix=True). ValueError for one that does
    not split (an unterminated quote), is empty, or has `**` anywhere but last."""
    words = tuple(shlex.split(text, comments=False, posix=True))
    if not words:
        raise ValueError("a command pattern needs at least one word")
    if ANY_WORDS in words[:-1]:
        raise ValueError("`**` matches the remaining words: it can only be the last word")
    return words


def covers(pattern: tuple[str, ...], argv: tuple[str, ...]) -> bool:
    """Does the pattern cover the whole argv, word by word (allow and approve rules)? A
    pattern word holding `/` is about a path: it covers only a word in normal form (no `.`,
    `..` or empty segment, no backslash, no leading `~`, no percent-encoding: mcp_rules.
    in_normal_form), so `tail /var/log/*` does not cover `tail /var/log/../../etc/shadow`."""
    if pattern[-1] == ANY_WORDS:
        fixed = pattern[:-1]
        return len(argv) >= len(fixed) and all(_word_covered(w, p) for w, p in zip(argv, fixed, strict=False))
    return len(argv) == len(pattern) and all(_word_covered(w, p) for w, p in zip(argv, pattern, strict=True))


def _word_covered(word: str, pattern: str) -> bool:
    return fnmatchcase(word, pattern) and ("/" not in pattern or in_normal_form(word))


def _word_touched(word: str, pattern: str) -> bool:
    """Could the word be what a deny pattern word names? A path pattern (holding `/`) also
    matches a word not in normal form, and a relative path (which the command reads against
    a directory not known here) when it matches the pattern's last segments."""
    if fnmatchcase(word, pattern):
        return True
    if "/" not in pattern or word.startswith("-"):
        return False
    if not in_normal_form(word):
        return True
    if word.startswith("/") or not pattern.startswith("/"):
        return False
    return any(fnmatchcase(word, pattern[i + 1:]) for i, char in enumerate(pattern) if char == "/")


def touches(pattern: tuple[str, ...], words: Words) -> bool:
    """Could the simple command be one the pattern matches (deny rules)? A None word stands
    for any number of words; argv0 is compared as written and by its last path segment."""
    head, rest = words[0], words[1:]
    first = pattern[0]
    if first == ANY_WORDS:
        return True
    if head is not None and not (fnmatchcase(head, first) or fnmatchcase(_base(head), first)
                                 or fnmatchcase(_base(head), _base(first))):
        return False
    return _touch_rest(pattern[1:], rest)


def _touch_rest(pattern: tuple[str, ...], words: Words) -> bool:
    """The words against the pattern's, as the set of pattern positions reached (linear in
    the words: a None word reaches every position from the first one reached)."""
    reached = {0}
    for word in words:
        if not reached:
            return False
        if any(i < len(pattern) and pattern[i] == ANY_WORDS for i in reached):
            return True
        if word is None:
            reached = set(range(min(reached), len(pattern) + 1))
        else:
            reached = {i + 1 for i in reached if i < len(pattern) and _word_touched(word, pattern[i])}
    return any(i == len(pattern) or pattern[i] == ANY_WORDS for i in reached)


# -- files that run code ----------------------------------------------------------------------------

# A file of these names (anywhere: the home directory is not known) is read and run by a shell,
# a login, sshd, a mail delivery, git, an editor, a desktop session or a web server.
CODE_NAMES = frozenset({
    ".bashrc", ".bash_profile", ".bash_login", ".bash_logout", ".bash_aliases", ".profile", ".zshrc", ".zshenv",
    ".zprofile", ".zlogin", ".zlogout", ".kshrc", ".mkshrc", ".cshrc", ".tcshrc", ".login", ".logout",
    ".pam_environment", ".xprofile", ".xinitrc", ".xsession", ".xsessionrc", ".envrc", ".forward", ".procmailrc",
    ".mailcap", ".gitconfig", ".vimrc", ".gvimrc", ".exrc", ".nvimrc", ".emacs", ".lesskey", ".wgetrc", ".curlrc",
    ".pythonrc", ".pythonstartup", ".npmrc", ".yarnrc", ".netrc", ".inputrc", ".screenrc", ".tmux.conf",
    ".rhosts", ".shosts", ".k5login", ".htaccess", ".user.ini", "authorized_keys", "authorized_keys2",
})
# Any path with one of these segments: what is under them is run, or configures what runs
CODE_SEGMENTS = frozenset({".ssh", ".git", ".config", ".local", ".gnupg", ".docker", ".kube", ".aws", ".cargo",
                           "bin", "sbin", "systemd", "init.d", "rc.d", "profile.d", "cron.d", "cron.daily",
                           "cron.hourly", "cron.weekly", "cron.monthly", "site-packages", "dist-packages",
                           "node_modules", "autostart"})
# Last-segment extensions a web server or a loader runs
CODE_EXTENSIONS = (".php", ".php3", ".php4", ".php5", ".php7", ".php8", ".phtml", ".phar", ".cgi", ".fcgi",
                   ".jsp", ".jspx", ".asp", ".aspx", ".shtml", ".pth", ".so")
# Everything under these: system configuration, programs, libraries, kernel state, spools
CODE_PREFIXES = ("/etc/", "/usr/", "/lib/", "/lib32/", "/lib64/", "/libx32/", "/boot/", "/opt/", "/proc/",
                 "/sys/", "/dev/", "/var/spool/cron/", "/var/spool/at/", "/var/lib/dpkg/")


def runs_code(path: str) -> bool:
    """Does writing `path` make the server run code (a login file, an ssh key, a crontab, a
    program, a library, system configuration, a page a web server runs)? Compared
    case-folded, by segment and last segment wherever they are (the user's home directory
    is not known); the root and a path not absolute are taken as running code: fail closed."""
    folded = path.casefold()
    segments = [s for s in folded.split("/") if s]
    if not segments or not folded.startswith("/"):
        return True
    return (segments[-1] in CODE_NAMES or any(s in CODE_SEGMENTS for s in segments)
            or segments[-1].endswith(CODE_EXTENSIONS) or f"{folded.rstrip('/')}/".startswith(CODE_PREFIXES))
