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
  assignment), and a command that runs code whatever its words: a shell; an interpreter,
  known by kind (_INTERPRETER: a family's name with any suffix, `python*`, `ipython3`,
  `php-cgi`, `node*`, `lua*`, or a name with a version: m4, dc, gnuplot, bpftrace, erl,
  pwsh...); a multi-call binary (busybox, toybox, coreutils: its arguments name the program
  it runs, `coreutils --coreutils-prog=rm`); a builtin that evaluates code or array
  subscripts; an editor, pager, client or other program that starts commands (a subcommand
  that starts $EDITOR, GNU sed without --sandbox, the `!` of lftp, smbclient, psql, sqlite3,
  `openssl` and `virsh` reading their commands from standard input: PROMPTS);
  a compiler or build tool (`gcc -wrapper`, `-B`, plugins, build scripts); an option that
  makes a program run one or load code (`find -exec`, `tar --to-command` in any
  unique-prefix spelling getopt_long takes, `split --filter`, `sort --compress-program`,
  `openssl -engine`, `rsync -e`, `sudo -s`, binutils' `nm --plugin` and `@FILE` response
  files, which may hold it: CODE_OPTIONS, _BINUTILS); an option or operand by which a program
  that otherwise reads writes a file the agent names (`sort -o`, `sed -i`, `curl -o`,
  `uniq IN OUT`, `time -o`: WRITE_OPTIONS, OUTPUT_OPERANDS; the file may be one the server
  runs, ~/.ssh/authorized_keys, and such a write over SFTP needs `shell: true` too; programs
  whose job is writing, cp, tee, dd, tar, are not shell class: a pattern naming them names
  a write); git, but for `git --version` (git reads the configuration of the repository it
  finds, the working directory or one above it, which may be a bare repository the agent
  wrote into the home directory, and runs the commands it names); or a file server
  (`sftp-server`, `rsync --server`, scp through a wrapper), found at any level of wrappers
  (`sudo`, `env`, `nice`, `timeout`, ... with their options: WRAPPERS, at most MAX_DEPTH
  deep). A wrapper option this module does not know is shell class too (it cannot tell where
  the inner command starts). Each reason reads as a clause of an English sentence ("it holds
  `;`, which the shell reads as a list of commands").
- Lax (what deny rules see): every simple command the shell may run, each as a tuple of words
  where None is a word only known at run time (an expansion, a glob, a tilde, a brace
  expansion, `$'...'`): it stands for any number of words. Lists, pipelines, subshells,
  groups, here-documents and redirections are split off (over-splitting only adds commands a
  deny rule may match); every level of a wrapper is a command of its own (`sudo rm x`, and
  `rm x`), and so is every suffix of a simple command that starts at a word naming a program
  that runs commands or code (`setarch x86_64 sh -c S`: a program not known here may run its
  arguments); `sh -c STRING`, `eval`, `su -c`, `watch`, `find -exec` and command
  substitutions are read recursively. What cannot be read (interpreter code, a compiler, an
  option or git subcommand that runs a command, a plugin or response file, a multi-call
  binary (whose words are read as a command too), a script file, a shell reading its
  standard input, a command name known only at run time, a substitution anywhere, bash's
  arithmetic, which evaluates the values of the variables it names (`((b))`, `${a[b]}`,
  `${x:b}`, `a[b]=1`, `${!b}`), `${x@P}`, a substitution in an unquoted here-document, an
  assignment to PATH, IFS, PS4 and the like, more than MAX_LAX_WORDS words to follow) makes the
  command *opaque*: every deny rule about commands matches it.

Patterns (`commands:` of a rule): split like a POSIX shell (shlex, posix=True) into words, each
an fnmatchcase glob for one argv word; a last word `**` matches zero or more remaining words.
Allow and approve rules (`covers`) read a pattern word by word: a pattern word not starting
with `-` never covers an argument starting with `-` (a value glob is not an option), a last
`**` covers any words, options too; a pattern word holding `/` is about a path and covers only
an argument in normal form (interceptor.policy.mcp_rules.in_normal_form). Deny rules
(`touches`) read a pattern laxly: the command may start at any word naming the pattern's
program (by last path segment) or known only at run time; the pattern's option words are met
by their letters or long names anywhere after it (`-rf` by `-fr`, `-r -f`, `--recursive
--force`), its other words must match the command's in order with any words between and
after; a path word also matches an argument not in normal form, a path through /proc or
/dev/fd (the kernel names any file there), an absolute path through the directory links
every system of a kind has (_SYSTEM_LINKS: `/var/run` is `/run`, merged /usr's `/bin` is
`/usr/bin`), a relative path whose last segments match, and a path an option carries
(`--file=PATH`). Links the agent makes are not seen: making one is a write.

Legacy scp: the client runs `scp [-v] [-r] [-p] [-d] -t [--] PATH` (upload: the server writes)
or `... -f [--] PATH` (download: the server reads) on the server (OpenSSH scp.c, "remote"
mode). Anything else about an scp command line is shell class.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from functools import lru_cache

from interceptor.policy.mcp_rules import in_normal_form

MAX_COMMAND_CHARS = 64 * 1024  # longer commands are refused before parsing
MAX_DEPTH = 8  # `sh -c` within `sh -c` ...: deeper is opaque
MAX_LAX_WORDS = 1 << 16  # words in all the commands of a lax reading: more is opaque
ANY_WORDS = "**"  # a pattern's last word matching zero or more words

Words = tuple[str | None, ...]  # a simple command; None: a word known only at run time

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_@%+=:,./-")
# What an unquoted character means to the shell (XCU 2.2-2.6), for the reasons a command is
# shell class
_CHAR_MEANINGS = {
    ";": "a list of commands", "&": "a background job or an && list", "|": "a pipe or an || list",
    "<": "a redirection", ">": "a redirection", "(": "a subshell or a substitution",
    ")": "a subshell or a substitution", "$": "an expansion", "`": "a command substitution",
    "\\": "an escape (the next character is taken as it is)", "*": "a glob", "?": "a glob", "[": "a glob",
    "]": "a glob", "~": "a home directory (tilde expansion)", "{": "a brace expansion or a group",
    "}": "a brace expansion or a group", "#": "the start of a comment", "!": "a negation or a history expansion",
}
_CHAR_SPELLED = {
    "\n": "a newline, which the shell reads as the end of a command (what follows is another one)",
    "\r": "a carriage return, which a terminal shows as a return to the line's start (hiding what came before)",
    "\t": "a tab, which the shell reads as a word separator (only spaces are read here)",
}
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\[[^\]]*\])?\+?=")
# Interpreters: programs that run the code or the commands their arguments, a script or their
# standard input give (an interactive one reads a shell escape or `system()` from stdin), by
# kind: a name of one of these families (any prefix to `python`: ipython3, bpython,
# micropython) with a version and `-suffixes` (python3.11-dbg, php8.2-cgi, tclsh8.6,
# gdb-multiarch); and the dynamic loader run as a program. (A word such as `node_modules` or
# `phpinfo.txt` is not one: deny rules take any word naming an interpreter as code.)
_INTERPRETER = re.compile(
    r"(?:[A-Za-z0-9]*python|pypy|jython|php|perl|j?ruby|irb|pry|node|nodejs|deno|bun|lua|luajit|tclsh|wish|expect|"
    r"awk|gawk|mawk|nawk|ocaml|ocamlrun|ocamlfind|utop|guile|racket|sbcl|clisp|ecl|julia|R|Rscript|octave|maxima|"
    r"ghci|runghc|runhaskell|scala|groovy|jshell|osascript|gdb|cgdb|lldb|jrunscript|jjs|rhino|qjs|gjs|erl|escript|"
    r"elixir|iex|pwsh|powershell|m4|gm4|dc|gnuplot|bpftrace|stap|mlr|swipl|gforth|raku|rakudo|perl6|pike|"
    r"clojure|clj|bb|hy|janet|fennel|csi|gosh|scheme|chez|petite|kawa|gp|sage|scilab|mongo|mongosh|r2|radare2|"
    r"pyspark|spark-shell|dotnet-script|ts-node|tsx)[0-9.]*(?:-[A-Za-z0-9_.]+)*"
    r"|ld(?:-linux)?[-.].*so.*")
# Multi-call binaries: the program they run is named by argv[0], their first argument or an
# option (`coreutils --coreutils-prog=rm`), in each one's own way and build
_MULTI_CALL = re.compile(r"(?:busybox|toybox|coreutils)(?:[-.][A-Za-z0-9_.-]*)?")
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
                      "run-parts", "visudo", "vipw", "vigr", "psql", "mysql", "mariadb", "sqlite3", "nmap",
                      # clients whose own commands (read from arguments or standard input) run a
                      # shell: `!`, `\\!`, `.shell`, `host`, `system`
                      "lftp", "smbclient", "rpcclient", "sqlplus", "duckdb", "mysqlsh", "usql", "pgcli", "mycli",
                      "litecli", "ncftp", "irssi",
                      # programs that run their arguments as a command (what the strict reading
                      # cannot follow; the lax one reads every suffix at a program's name)
                      "setarch", "linux32", "linux64", "i386", "x86_64", "uname26", "choom", "ssh-agent",
                      "eatmydata", "rlwrap", "chronic", "gosu", "su-exec", "chpst", "nocache", "ifne", "vipe",
                      "tsp", "nq", "dtach", "abduco", "flatpak-spawn", "watchexec", "xe", "rush"})
# Programs reached through the kernel's views of processes and files (`/proc/self/exe` is the
# shell itself, `/dev/fd/3` whatever was opened): their names say nothing
_HIDDEN_PROGRAMS = ("/proc/", "/dev/")
# Subcommands that start $EDITOR (which an agent on stdin can drive to a shell, terminal or not)
EDITOR_SUBCOMMANDS: Mapping[str, frozenset[str]] = {
    "systemctl": frozenset({"edit"}), "kubectl": frozenset({"edit"}), "virsh": frozenset({"edit"}),
    "git": frozenset({"commit", "rebase", "tag", "merge", "notes", "revert", "cherry-pick", "am", "config", "var",
                      "add", "pull"}),
}
@dataclass(frozen=True, slots=True)
class _CodeOptions:
    """A program's options that run a command (or load code). `longs`: GNU long options
    (without `--`): any prefix of one matches, with `=VALUE` or the value in the next word
    (getopt_long and git's parse-options take unique prefixes; an ambiguous one is an error
    the program reports, so taking it as the option is only stricter), except the program's
    own options named in `exact` (tar's `--checkpoint` is not `--checkpoint-action`);
    `words`: option words matched as written by prefix (single-dash long options, find's
    primaries); `named`: single-dash option words matched whole or with `=VALUE` (OpenSSL's,
    which takes no abbreviations); `letters`: short options in a `-abc` cluster (tar's first
    word also without its dash: `tar xIf`); `subcommands`: a first argument that runs code;
    `response_files`: any `@FILE` word is one (the program reads more options from FILE:
    libiberty's expandargv in GNU binutils, LLVM's response files)."""

    longs: tuple[str, ...] = ()
    words: tuple[str, ...] = ()
    letters: str = ""
    exact: frozenset[str] = frozenset()
    subcommands: frozenset[str] = frozenset()
    named: frozenset[str] = frozenset()
    response_files: bool = False


_SYSTEMD_HOST = _CodeOptions(("host",), letters="H")  # -H runs ssh to another host with the login's keys
CODE_OPTIONS: Mapping[str, _CodeOptions] = {
    "find": _CodeOptions(words=("-exec", "-execdir", "-ok", "-okdir", "-fprint", "-fls")),
    "tar": _CodeOptions(("to-command", "checkpoint-action", "use-compress-program", "info-script",
                         "new-volume-script", "rsh-command", "rmt-command"), letters="IF",
                        exact=frozenset({"checkpoint"})),
    "rsync": _CodeOptions(("rsh", "rsync-path"), letters="e"),
    "zip": _CodeOptions(("unzip-command",), letters="T"),
    "tcpdump": _CodeOptions(letters="z"),
    "wget": _CodeOptions(("use-askpass", "execute", "config"), letters="e"),  # a wgetrc sets use_askpass
    "ssh-keygen": _CodeOptions(words=("-D", "-w")),
    "split": _CodeOptions(("filter",)),
    "sort": _CodeOptions(("compress-program",)),
    "sdiff": _CodeOptions(("diff-program",)),
    "diff3": _CodeOptions(("diff-program",)),
    # ip netns exec NAME CMD, ip vrf exec NAME CMD; -batch FILE: ip commands (netns exec among
    # them) from a file, in iproute2's spellings (any prefix of -batch, a leading -- as -)
    "ip": _CodeOptions(words=("exec",), named=frozenset({d + "-batch"[:n] for n in range(2, 7) for d in ("", "-")})),
    "openssl": _CodeOptions(words=("-engine", "-provider", "-provider-path", "-config"),
                            subcommands=frozenset({"engine"})),
    "apt": _CodeOptions(("option", "config-file"), letters="oc"),
    "apt-get": _CodeOptions(("option", "config-file"), letters="oc"),
    "rpm": _CodeOptions(("eval", "define", "macros", "rcfile", "pipe"), letters="ED"),
    "coredumpctl": _CodeOptions(("debugger", "debugger-arguments"), letters="A",
                                subcommands=frozenset({"debug", "gdb"})),
    **{name: _SYSTEMD_HOST for name in ("systemctl", "loginctl", "hostnamectl", "timedatectl", "localectl",
                                        "busctl", "systemd-analyze")},
    **{name: _CodeOptions(("photo-viewer", "exec-path", "options", "homedir", "agent-program", "dirmngr-program"))
       for name in ("gpg", "gpg2")},  # a gpg.conf in another home directory sets a photo viewer
    "pandoc": _CodeOptions(("filter", "lua-filter", "pdf-engine", "defaults"), letters="FLd"),
    "tshark": _CodeOptions(letters="X"),  # -X lua_script:FILE
}
# GNU binutils and their LLVM counterparts (with a target prefix and a version): `--plugin FILE`
# (nm, ar, ranlib: a shared library whose constructor runs) and `@FILE` response files, which
# may hold `--plugin`
_BINUTILS = re.compile(r"(?:[A-Za-z0-9_.]+-)*(?:nm|ar|ranlib|objdump|readelf|size|strings|strip|objcopy|addr2line|"
                       r"c\+\+filt|cxxfilt|elfedit|gprof|dwp|dlltool|windres|lld)(?:-[0-9][0-9.]*)?")
_BINUTILS_CODE = _CodeOptions(("plugin",), response_files=True)
# Options that make a program that otherwise reads (and prints to standard output) write a file
# its value names, which may be one the server runs (~/.ssh/authorized_keys, ~/.bashrc): shell
# class, as a write of such a file over SFTP is (an option value of `-` is standard output).
# Programs whose job is writing files (cp, mv, dd, tee, tar, install, split, wget without
# options...) are not here: a pattern that names them names a write
WRITE_OPTIONS: Mapping[str, _CodeOptions] = {
    "sort": _CodeOptions(("output",), letters="o"),
    "shuf": _CodeOptions(("output",), letters="o"),
    "sed": _CodeOptions(("in-place",), letters="i"),
    "gsed": _CodeOptions(("in-place",), letters="i"),
    "iconv": _CodeOptions(("output",), letters="o"),
    "sdiff": _CodeOptions(("output",), letters="o"),
    "tcpdump": _CodeOptions(letters="w"),
    "tshark": _CodeOptions(letters="w"),
    "yq": _CodeOptions(("inplace", "in-place"), letters="i"),
    "pandoc": _CodeOptions(("output", "extract-media"), letters="o"),
    "curl": _CodeOptions(("output", "output-dir", "remote-name", "remote-name-all", "remote-header-name",
                          "dump-header", "cookie-jar", "trace", "trace-ascii", "stderr", "libcurl", "etag-save",
                          "hsts", "alt-svc", "config"), letters="oODcJK"),  # a config file names outputs
    "wget": _CodeOptions(("output-document", "output-file", "append-output", "directory-prefix", "save-cookies",
                          "warc-file", "rejected-log", "hsts-file"), letters="OoaP"),
    "gpg": _CodeOptions(("output",), letters="o"),
    "gpg2": _CodeOptions(("output",), letters="o"),
    "openssl": _CodeOptions(named=frozenset({
        "-out", "-keyout", "-outdir", "-writerand", "-sess_out", "-keylogfile", "-msgfile", "-reqout", "-rspout",
        "-certout", "-chainout", "-extracertsout", "-cacertsout", "-crlout", "-CAcreateserial", "-CAserial",
        "-signer", "-srpvfile"})),
}


@dataclass(frozen=True, slots=True)
class _Operands:
    """How to tell a program's operands from its options' values: its short options taking a
    value (`with_arg`, getopt clusters), its long ones (`longs`, unique prefixes, the value
    after `=` or in the next word) and its option words taking the next word as value
    (`value_words`, matched whole: xxd's)."""

    with_arg: str = ""
    longs: tuple[str, ...] = ()
    value_words: frozenset[str] = frozenset()


# Programs that write their Nth operand (1-based: `uniq INPUT OUTPUT`, `xxd INFILE OUTFILE`)
OUTPUT_OPERANDS: Mapping[str, tuple[int, _Operands]] = {
    "uniq": (2, _Operands("fsw", ("skip-fields", "skip-chars", "check-chars"))),
    "xxd": (2, _Operands(value_words=frozenset({"-c", "-cols", "-g", "-groupsize", "-l", "-len", "-o", "-s", "-seek",
                                                "-n", "-name", "-R"}))),
}
# Programs that read their own commands from standard input when given no operand, commands
# that load code or start an editor (`engine -pre SO_PATH:...`, `edit DOMAIN`)
PROMPTS: Mapping[str, _Operands] = {
    "openssl": _Operands(),
    "virsh": _Operands("cdlkKe", ("connect", "debug", "log", "keepalive-interval", "keepalive-count", "escape")),
}
# Compilers, linkers and build tools: their options and inputs run programs (gcc -wrapper,
# -B, -fplugin, spec files; build scripts), with an optional target prefix and version
_COMPILER = re.compile(r"(?:[A-Za-z0-9_.]+-)*(?:gcc|g\+\+|cc|c\+\+|cpp|clang|clang\+\+|clang-cl|ld|ld\.\w+|as|"
                       r"gfortran|gccgo|gdc|gnat\w*)(?:-[0-9][0-9.]*)?|(?:tcc|icc|icx|rustc|cargo|go|javac|java|"
                       r"kotlinc?|scalac|ghc|zig|nasm|yasm|swiftc?|dotnet|mvn|gradlew?|ant|cmake|ninja|meson|scons|"
                       r"bazel|npm|npx|yarn|pnpm|pip[0-9.]*|gem|bundle|composer|dpkg|rustup)[0-9.]*")
_GIT_ARG_GLOBALS = frozenset({"-C", "--git-dir", "--work-tree", "--namespace", "--super-prefix", "--attr-source"})
# Options of git subcommands that run a command (or write a file, or run config drivers):
# long ones (unique prefixes) and letters per subcommand; subcommands that run commands
_GIT_CODE = _CodeOptions(("upload-pack", "receive-pack", "exec", "extcmd", "open-files-in-pager", "ext-diff",
                          "textconv", "to-cmd", "cc-cmd", "sendmail-cmd", "header-cmd", "config", "template",
                          "tool", "output", "edit-description"), exact=frozenset({"to", "text", "cc"}))
_GIT_LETTERS = {"clone": "uc", "grep": "O", "ls-remote": "u"}
_GIT_RUNNERS = frozenset({"filter-branch", "bisect", "submodule", "difftool", "mergetool", "send-email", "daemon",
                          "instaweb", "web--browse", "help", "credential", "archimport", "cvsimport", "svn", "p4",
                          "quiltimport"})


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
    command in another syntax; a `writes` option's argument is a file the wrapper writes (`time
    -o FILE`: see WRITE_OPTIONS). `assignments`: NAME=VALUE words may come before the command.
    `digits`: `-N` is an option (nice -5); `dash`: a lone `-` is an option (env's -i)."""

    flags: str = ""
    with_arg: str = ""
    optional: str = ""
    longs: Mapping[str, str] = field(default_factory=dict)
    positional: int = 0
    shell: str = ""
    string: str = ""
    opaque: str = ""
    writes: str = ""
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
        "append=a portability=p quiet=q verbose=v format=f output=o version=V"), writes="o"),
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
    "catchsegv": _Wrapper(),
}


_WATCH = _Wrapper("bcdegptwxr", "nq", "", _longs(
    "beep=b color=c differences=d errexit=e chgexit=g precise=p no-title=t no-wrap=w exec=x no-rerun=r "
    "interval=n equexit=q"))


# Programs the lax reading follows into the commands they run (with the interpreters and
# compilers: _runs_commands)
_RUNNER_NAMES = frozenset(SHELLS | WRAPPERS.keys() | SPAWNERS | CODE_BUILTINS | CODE_OPTIONS.keys()
                          | EDITOR_SUBCOMMANDS.keys() | PROMPTS.keys()
                          | {"git", "find", "watch", "su", "script", "sed", "gsed", "printf", "test", "[", "scp",
                             "sftp-server", "rsync"})


@dataclass(slots=True)
class _Lax:
    """What a lax reading found: the simple commands, why parts are opaque, and how many
    words the commands hold (bounded by MAX_LAX_WORDS)."""

    commands: list[Words] = field(default_factory=list)
    opaque: list[str] = field(default_factory=list)
    words: int = 0


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
    lax = _Lax()
    _read_lax(text, 0, lax)
    return CommandReading(argv, tuple(dict.fromkeys(reasons)), tuple(dict.fromkeys(lax.commands)),
                          tuple(dict.fromkeys(lax.opaque)), scp)


def describe_char(char: str) -> str:
    """An unquoted character and what it means to the shell, as a phrase for a refusal
    ("`;`, which the shell reads as a list of commands")."""
    if char in _CHAR_SPELLED:
        return _CHAR_SPELLED[char]
    if char in _CHAR_MEANINGS:
        return f"`{char}`, which the shell reads as {_CHAR_MEANINGS[char]}"
    return f"the character {char!r}, which is not a plain one (ASCII letters, digits and _@%+=:,./-)"


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
                reasons.append(f"it leaves a quote ({char}) open")
                end = n
            quoted = text[i + 1:end]
            if char == '"':
                reasons.extend(f"it holds `{c}` inside double quotes, where the shell still reads it as "
                               f"{_CHAR_MEANINGS[c]}" for c in quoted if c in "$`\\!")
            word, i = (word or "") + quoted, end + 1
            continue
        if char not in _SAFE:
            reasons.append(f"it holds {describe_char(char)}")
        word, i = (word or "") + char, i + 1
    if word is not None:
        words.append(word)
    if words and "=" in words[0]:
        reasons.append(f"its first word {words[0]!r} is an assignment (NAME=value) before the command")
    return tuple(words), reasons


def _code_reasons(argv: tuple[str, ...]) -> list[str]:
    """Why plain words still run code: at every wrapper level, a program that does."""
    reasons: list[str] = []
    for depth, level in enumerate(_levels_strict(argv, reasons)):
        name = _base(level[0])
        word = level[0]
        if word.startswith(_HIDDEN_PROGRAMS):
            reasons.append(f"{word} is the kernel's view of a process or an open file, not a program this reading "
                           "can name")
        elif name == "scp" and depth:
            reasons.append(f"it runs scp through {argv[0]}: only `scp -t PATH` or `scp -f PATH` is a file transfer")
        elif name == "sftp-server" or (name == "rsync" and "--server" in level[1:]):
            reasons.append(f"{word} serves files unjudged (SFTP is judged file by file)")
        elif name in SHELLS:
            reasons.append(f"{word} is a shell")
        elif _INTERPRETER.fullmatch(name):
            reasons.append(f"{word} is an interpreter: it runs the code its arguments or its standard input give")
        elif _MULTI_CALL.fullmatch(name):
            reasons.append(f"{word} is a multi-call program: its arguments name the program it runs")
        elif name in CODE_BUILTINS or name in ("exec", "command", "builtin", "env", "xargs"):
            reasons.append(f"{word} runs or evaluates shell code")
        elif name in SPAWNERS:
            reasons.append(f"{word} can start a shell or other commands")
        elif _evaluates_names(name, level):
            reasons.append(f"{word} -v evaluates array subscripts, which run code in bash")
        elif _COMPILER.fullmatch(name):
            reasons.append(f"{word} is a compiler or build tool: its options and inputs run programs")
        elif name == "git" and (why := _git_reason(level)):
            reasons.append(why)
        elif _BINUTILS.fullmatch(name) and any(w.startswith("@") for w in level[1:]):
            reasons.append(f"{word} reads more options from a file (@FILE), where `--plugin` would load code")
        elif runs_option(name, level):
            reasons.append(f"{word} has an option that runs a command or loads code")
        elif _starts_editor(name, level):
            reasons.append(f"{word} can start an editor")
        elif _prompts(name, level):
            reasons.append(f"{word} with no command reads its commands from standard input, where they can load "
                           "code or start an editor")
        elif _unsandboxed_sed(name, level):
            reasons.append(f"{word} without --sandbox runs commands from its script (e, s///e) and writes files (w)")
        elif (written := written_file(name, level)) is not None:
            reasons.append(f"{word} writes a file that {written} names, which may be one the server runs, such as "
                           "~/.ssh/authorized_keys")
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
    """Does the command (`name` its argv0's last segment) have an option or subcommand of
    CODE_OPTIONS or of binutils (_BINUTILS_CODE; for git: _git_runs)? A word known only at
    run time may be one."""
    if name == "git":
        return _git_runs(words) is not None
    spec = CODE_OPTIONS.get(name, _BINUTILS_CODE if _BINUTILS.fullmatch(name) else None)
    if spec is None:
        return False
    if len(words) > 1 and (words[1] is None or words[1] in spec.subcommands):
        return True
    return any(word is None or _code_word(spec, word, name == "tar" and i == 1) for i, word in enumerate(words[1:], 1))


def _code_word(spec: _CodeOptions, word: str, bare_cluster: bool) -> bool:
    """Is `word` one of the options of `spec` (see _CodeOptions)?"""
    if word.startswith(spec.words) or word.partition("=")[0] in spec.named or (spec.response_files
                                                                             and word.startswith("@")):
        return True
    if word.startswith("--"):
        name = word[2:].partition("=")[0]
        return bool(name) and name not in spec.exact and any(long.startswith(name) for long in spec.longs)
    clustered = (word.startswith("-") or bare_cluster) and len(word) > 1
    return clustered and any(letter in spec.letters for letter in word.lstrip("-"))


def written_file(name: str, words: tuple[str, ...]) -> str | None:
    """How the command (`name` its argv0's last segment) names a file it writes ("its option
    -o", "its operand out.txt": WRITE_OPTIONS, OUTPUT_OPERANDS), or None. An option whose
    value is `-` (standard output: `wget -qO-`, `curl -o -`) writes none."""
    if name in OUTPUT_OPERANDS:
        index, spec_operands = OUTPUT_OPERANDS[name]
        operands = _operands(spec_operands, words)
        written = operands[index - 1] if len(operands) >= index else "-"
        return None if written == "-" else f"its operand {written}"
    spec = WRITE_OPTIONS.get(name)
    if spec is None:
        return None
    for i, word in enumerate(words[1:], 1):
        if word == "--":
            return None
        if _code_word(spec, word, False) and _option_value(spec, word, words[i + 1:i + 2]) != "-":
            return f"its option {word}"
    return None


def _option_value(spec: _CodeOptions, word: str, following: tuple[str, ...]) -> str | None:
    """The value a write option word of `spec` gives: after `=`, after its letter in a
    cluster, or the next word (None when there is none)."""
    if word.startswith("--") or word.partition("=")[0] in spec.named:
        name, eq, value = word.partition("=")
        return value if eq else (following[0] if following else None)
    letter = next((i for i, c in enumerate(word) if i and c in spec.letters), len(word))
    attached = word[letter + 1:]
    return attached or (following[0] if following else None)


def _operands(spec: _Operands, words: tuple[str, ...]) -> list[str]:
    """A command's operands (getopt_long's reading: options anywhere, `--` ends them, a lone
    `-` is an operand)."""
    operands: list[str] = []
    i, options = 1, True
    while i < len(words):
        word = words[i]
        i += 1
        if options and word == "--":
            options = False
        elif not options or not word.startswith("-") or word == "-":
            operands.append(word)
        elif word in spec.value_words:
            i += 1
        elif word.startswith("--"):
            name, eq, _ = word[2:].partition("=")
            i += not eq and any(long.startswith(name) for long in spec.longs)
        else:
            letter = next((j for j, c in enumerate(word) if j and c in spec.with_arg), len(word))
            i += letter == len(word) - 1
    return operands


def _prompts(name: str, words: Words) -> bool:
    """Does the command (a program of PROMPTS) read its commands from standard input (no
    operand; a word known only at run time may be none)?"""
    spec = PROMPTS.get(name)
    return spec is not None and (None in words or not _operands(spec, tuple(w for w in words if w is not None)))


def _git_runs(words: Words) -> str | None:
    """Why a git command runs a command its words name (or that cannot be told): a global
    `-c`/`--config-env`/`--exec-path`, a subcommand that runs commands (_GIT_RUNNERS), an
    option of _GIT_CODE or _GIT_LETTERS, a word known only at run time; None otherwise."""
    i = 1
    while i < len(words):
        word = words[i]
        if word is None:
            return "git with a word known only at run time"
        if not word.startswith("-"):
            break
        if word.startswith(("-c", "--config-env", "--exec-path")):
            return f"git {word} sets configuration or the programs git runs"
        i += 2 if word in _GIT_ARG_GLOBALS else 1
    if i >= len(words):
        return None
    subcommand = words[i]
    if subcommand is None:
        return "git with a subcommand known only at run time"
    if subcommand in _GIT_RUNNERS:
        return f"git {subcommand} runs commands"
    spec = replace(_GIT_CODE, letters=_GIT_LETTERS.get(subcommand, ""))
    found = next((w for w in words[i + 1:] if w is None or _code_word(spec, w, False)), "")
    return None if found == "" else f"git {subcommand} {found or 'with a word known only at run time'} runs a command"


def _git_reason(argv: tuple[str, ...]) -> str:
    """Why a git command line is shell class: _git_runs, or else what every git command but
    `git --version` does (it reads the configuration of the repository it finds, which the
    agent may have written)."""
    runs = _git_runs(argv)
    if runs is not None:
        return runs
    if argv[1:] == ("--version",):
        return ""
    return ("git reads the configuration of the repository it finds, which may be a bare one the agent wrote in the "
            "working directory or a directory above it, and runs the commands that configuration names; only "
            "`git --version` is plain")


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
            reasons.append(f"{level[0]} has {parsed.problem}, so where its command starts cannot be told")
            return
        if parsed.shell:
            reasons.append(f"{level[0]} {parsed.shell} runs a shell or an editor")
        if parsed.written:
            reasons.append(f"{level[0]} writes a file that its option {parsed.written} names, which may be one the "
                           "server runs, such as ~/.ssh/authorized_keys")
        if parsed.assignments:
            reasons.append(f"{level[0]} sets environment variables ({', '.join(parsed.assignments)})")
        if parsed.string is not None or parsed.opaque:
            reasons.append(f"{level[0]} runs a command string")
        level = tuple(w for w in parsed.command if w is not None) if parsed.command is not None else None
    if level:
        reasons.append(f"its wrappers are nested more than {MAX_DEPTH} deep")


@dataclass(frozen=True, slots=True)
class _Unwrapped:
    command: Words | None = None  # the inner command (None: no command runs)
    problem: str | None = None  # the options could not be read
    shell: str = ""  # the option that runs a shell
    written: str = ""  # the option whose argument is a file the wrapper writes
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
                return _Unwrapped(problem=f"an unknown option {word}")
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
                return _Unwrapped(problem=f"an unknown option -{letter}")
            letters.append(letter)
            j += 1
        i += 1
    i += spec.positional
    if spec.string and i + 1 < len(words) and words[i] in (f"-{spec.string}", "--command"):
        letters.append(spec.string)  # flock FILE -c COMMAND: the option after the file
        values[spec.string] = words[i + 1]
    shell = next((f"-{c}" for c in letters if c in spec.shell), "")
    written = next((f"-{c}" for c in letters if c in spec.writes and values.get(c) != "-"), "")
    if any(c in spec.string for c in letters):
        string = next(values[c] for c in letters if c in spec.string)
        if string is None:
            return _Unwrapped(problem="a command string known only at run time")
        return _Unwrapped(string=string, shell=shell, written=written, assignments=tuple(assignments))
    if any(c in spec.opaque for c in letters):
        return _Unwrapped(opaque=True, written=written, assignments=tuple(assignments))
    command = tuple(words[i:]) if i < len(words) else None
    return _Unwrapped(command=command, shell=shell, written=written, assignments=tuple(assignments))


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
        return f"it runs scp as {argv[0]}: only `scp -t PATH` or `scp -f PATH` is read as a file transfer"
    flags, mode, i = set[str](), "", 1
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        flag = argv[i]
        if flag in ("-t", "-f") and not mode:
            mode = flag
        elif flag in ("-v", "-r", "-p", "-d", "-q") and flag not in flags:
            flags.add(flag)
        else:
            return f"its scp option {flag} is not one OpenSSH's scp client sends"
        i += 1
    if i < len(argv) and argv[i] == "--":
        i += 1
    if not mode or len(argv) - i != 1 or not argv[i]:
        return "it is not `scp [-v -r -p -d] -t|-f [--] PATH` with one path, the only scp command read"
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

    def __init__(self, text: str, depth: int, out: _Lax) -> None:
        self.text, self.depth, self.out, self.opaque = text, depth, out, out.opaque
        self.i = 0
        self.heredocs: list[tuple[str, bool, bool]] = []  # delimiter, strip tabs, body expanded
        self.targets: list[_Word] = []  # the redirection targets of the command being read

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
        """Past a redirection; its target (a file the command reads or writes) joins the
        words of the command it is part of, a here-document's delimiter is noted."""
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
            else:
                self.targets.append(target)
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
        words, targets = list(current), self.targets
        current.clear()
        self.targets = []
        while words and words[0].prefix and _ASSIGNMENT.match(words[0].prefix):
            _check_assignment(words.pop(0).prefix, self.opaque)
        if words:
            _add_levels(tuple(None if w.unknown else w.value for w in words + targets), self.depth, self.out,
                        scan=True)

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
                _read_lax(inner, self.depth + 1, self.out)
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
        _read_lax(text[self.i + 1:end].replace("\\`", "`"), self.depth + 1, self.out)
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


def _read_lax(text: str, depth: int, out: _Lax) -> None:
    if depth > MAX_DEPTH:
        out.opaque.append(f"shell code nested more than {MAX_DEPTH} levels deep")
        return
    if out.words <= MAX_LAX_WORDS:
        _Lexer(text, depth, out).run()


def _check_assignment(word: str, opaque: list[str]) -> None:
    """An assignment to an array element (its subscript is evaluated as arithmetic) or to a
    variable that changes what later commands run is opaque."""
    name = word.partition("=")[0].rstrip("+")
    if "[" in name or _RISKY_VARIABLES.fullmatch(name):
        opaque.append(f"an assignment to {name}, which changes what runs")


def _add_levels(words: Words, depth: int, out: _Lax, scan: bool = False) -> None:
    """`words` and every command it runs (wrappers, `sh -c`, eval, find -exec) to `out`;
    `scan` (a simple command as the shell reads it): also every suffix starting at a word
    that names a program that runs commands or code (any program may run its arguments as a
    command: `setarch x86_64 sh -c S`, `eatmydata bash -c S`). Past MAX_LAX_WORDS words in
    all, the rest is opaque."""
    opaque = out.opaque
    while words and isinstance(words[0], str) and _ASSIGNMENT.match(words[0]):
        _check_assignment(words[0], opaque)
        words = words[1:]
    if not words:
        return
    head = words[0]
    if head is None:
        opaque.append("a command name known only at run time")
        return
    if out.words + len(words) > MAX_LAX_WORDS:
        opaque.append(f"more than {MAX_LAX_WORDS} words in the commands it may run")
        out.words = MAX_LAX_WORDS + 1  # nothing more is read
        return
    out.words += len(words)
    out.commands.append(words)
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
            _read_lax(string, depth + 1, out)
    for command in inner:
        if out.words > MAX_LAX_WORDS:
            break
        _add_levels(command, depth + 1, out)
    for i in range(1, len(words) if scan else 0):
        word = words[i]
        if out.words > MAX_LAX_WORDS:
            break
        # a builtin or reserved word there is no program a wrapper could run (`scp -t /srv/in`)
        if word is not None and (word.startswith(_HIDDEN_PROGRAMS)
                                 or (_base(word) not in CODE_BUILTINS and _runs_commands(_base(word)))):
            _add_levels(words[i:], depth + 1, out)


def _runs_commands(name: str) -> bool:
    """Is `name` a program this reading follows into what it runs (or takes as running code)?"""
    return name in _RUNNER_NAMES or any(kind.fullmatch(name) for kind in (_INTERPRETER, _COMPILER, _MULTI_CALL,
                                                                           _BINUTILS))


def _runs(name: str, words: Words, opaque: list[str]) -> tuple[list[Words], list[str | None]]:
    """The commands and the shell command strings a command runs (a wrapper's command, xargs's
    with the words it reads, find's -exec commands; `sh -c S`, `eval A B`, `trap S`, `watch
    A`, `su -c S`, `flock F -c S`); what it runs that cannot be read goes to `opaque`."""
    if name == "find":
        return _find_commands(words), []
    if name in SHELLS:
        return [], _shell_string(words[1:], name, opaque)
    if _MULTI_CALL.fullmatch(name):
        opaque.append(f"{name} is a multi-call program, which reads the name of the program it runs its own way")
        return _multi_call(words), []
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
    if _INTERPRETER.fullmatch(name) or _COMPILER.fullmatch(name) or name in CODE_BUILTINS or name in SPAWNERS \
            or _evaluates_names(name, words) \
            or _unsandboxed_sed(name, words) or _starts_editor(name, words) or _prompts(name, words):
        opaque.append(f"{name} runs code this reading cannot see")
    elif runs_option(name, words):
        opaque.append(f"{name} has an option that runs a command")
    return [], []


def _multi_call(words: Words) -> list[Words]:
    """The commands a multi-call binary may run: its other words (`busybox sh -c S`), and
    the program an option names with the words after it (`coreutils --coreutils-prog=rm x`,
    `--coreutils-prog-shebang=rm SCRIPT`)."""
    named = [(word.partition("=")[2], *words[i + 1:]) for i, word in enumerate(words) if i and word is not None
             and word.startswith("--") and "=" in word]
    return [words[1:], *named] if len(words) > 1 else []


def _wrapped(name: str, words: Words, opaque: list[str]) -> tuple[list[Words], list[str | None]]:
    parsed = _unwrap(WRAPPERS[name], words)
    if parsed.problem is not None:  # every place the command may start
        opaque.append(f"{words[0]} has {parsed.problem}")
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


def _find_commands(words: Words) -> list[Words]:
    """The commands of find's -exec, -execdir, -ok and -okdir (each up to the next `;` or
    `+`), `{}` as a word known only at run time; one pass over the words."""
    commands: list[Words] = []
    start: int | None = None
    for i, word in enumerate(words):
        if start is None and word in ("-exec", "-execdir", "-ok", "-okdir"):
            start = i + 1
        elif start is not None and (word in (";", "+") or i == len(words) - 1):
            end = i + 1 if word not in (";", "+") else i
            inner = tuple(None if w is None or "{}" in w else w for w in words[start:end])
            if inner:
                commands.append(inner)
            start = None
    return commands


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
    in_normal_form), so `tail /var/log/*` does not cover `tail /var/log/../../etc/shadow`. A
    pattern word not starting with `-` never covers a word starting with `-` (a value glob is
    not an option: `systemctl status *` does not cover `systemctl status -Hroot@host`); a last
    `**` covers any words, options too."""
    if pattern[-1] == ANY_WORDS:
        fixed = pattern[:-1]
        return len(argv) >= len(fixed) and all(_word_covered(w, p) for w, p in zip(argv, fixed, strict=False))
    return len(argv) == len(pattern) and all(_word_covered(w, p) for w, p in zip(argv, pattern, strict=True))


def _word_covered(word: str, pattern: str) -> bool:
    return fnmatchcase(word, pattern) and ("/" not in pattern or in_normal_form(word)) \
        and (pattern.startswith("-") or not word.startswith("-"))


# Paths through which the kernel names any file: a process's root, cwd, open files and
# mappings (/proc/PID/root/etc/shadow), the shell's open files (/dev/fd/3, /dev/stdin)
_KERNEL_ALIASES = ("/proc/", "/dev/fd/", "/dev/stdin", "/dev/stdout", "/dev/stderr")
_GLOB_CHARS = frozenset("*?[")


def _word_touched(word: str, pattern: str) -> bool:
    """Could the word be what a deny pattern word names? A path pattern (holding `/`) also
    matches a word not in normal form, a path through the kernel's aliases (anything under
    /proc or /dev/fd names any file), an absolute path in another spelling through the
    system's own directory links (_spellings), a relative path (read against a directory not
    known here) whose last segments match the pattern's last segments, and the value an
    option word carries (`--file=PATH`, `-fPATH`)."""
    if fnmatchcase(word, pattern):
        return True
    if "/" not in pattern:
        return False
    if word.startswith("-"):
        values = [word.partition("=")[2], word[word.find("/"):] if "/" in word else ""]
        return any(v and not v.startswith("-") and _word_touched(v, pattern) for v in values)
    if not in_normal_form(word) or word.startswith(_KERNEL_ALIASES) or word in ("/proc", "/dev/fd"):
        return True
    if word.startswith("/") and any(fnmatchcase(spelling, pattern) for spelling in _spellings(word)):
        return True
    if word.startswith("/") or not pattern.startswith("/"):
        return False
    if any(fnmatchcase(word, pattern[i + 1:]) for i, char in enumerate(pattern) if char == "/"):
        return True
    pattern_segments, word_segments = pattern.split("/"), word.split("/")
    return any(fnmatchcase("/".join(word_segments[-k:]), "/".join(pattern_segments[-k:]))
               for k in range(1, min(len(word_segments), len(pattern_segments) - 1) + 1))


# Directories every system of a kind links to another (merged /usr, /var/run; /usr/sbin merged
# into /usr/bin on Arch and Fedora; /home, /srv, /opt, /root under /var on ostree systems)
_SYSTEM_LINKS = (("/bin", "/usr/bin"), ("/sbin", "/usr/sbin"), ("/usr/sbin", "/usr/bin"), ("/lib", "/usr/lib"),
                 ("/lib32", "/usr/lib32"), ("/lib64", "/usr/lib64"), ("/libx32", "/usr/libx32"), ("/var/run", "/run"),
                 ("/var/lock", "/run/lock"), ("/run/shm", "/dev/shm"), ("/usr/tmp", "/var/tmp"),
                 ("/var/mail", "/var/spool/mail"), ("/home", "/var/home"), ("/srv", "/var/srv"), ("/opt", "/var/opt"),
                 ("/mnt", "/var/mnt"), ("/root", "/var/roothome"), ("/usr/local", "/var/usrlocal"),
                 ("/media", "/run/media"))


def _spellings(path: str) -> set[str]:
    """An absolute path and its other spellings through _SYSTEM_LINKS, either way and
    chained (`/sbin/x`: `/usr/sbin/x`, `/usr/bin/x`, `/bin/x`)."""
    found, todo = {path}, [path]
    while todo:
        spelled = todo.pop()
        for one, other in _SYSTEM_LINKS:
            for link, target in ((one, other), (other, one)):
                if spelled == link or spelled.startswith(f"{link}/"):
                    respelled = target + spelled[len(link):]
                    if respelled not in found:
                        found.add(respelled)
                        todo.append(respelled)
    return found


def touches(pattern: tuple[str, ...], words: Words) -> bool:
    """Could the simple command run what the pattern names (deny rules)? Read laxly: the
    command may start at any word naming the pattern's program (compared as written and by
    last path segment: a program not known here may run its arguments, `setarch x86_64 rm`)
    or at a None word (known only at run time; it also stands for any number of words, any
    options among them); after it, the pattern's option words (starting with `-`) are met
    when the command has their letters or long names anywhere (_option_met: `-rf` by `-fr`,
    `-r -f`, `--recursive --force`, `-Rf`), and its other words must match words of the
    command in order, other words allowed between and after them (`git push` matches `git
    -C /srv/app push origin`); `**` adds nothing. Linear in the words."""
    first = pattern[0]
    if first == ANY_WORDS:
        return True
    start = next((i + (word is not None) for i, word in enumerate(words)
                  if word is None or fnmatchcase(word, first) or fnmatchcase(_base(word), first)
                  or fnmatchcase(_base(word), _base(first))), None)
    if start is None:
        return False
    rest = [w for w in pattern[1:] if w != ANY_WORDS]
    options = [atom for w in rest if w.startswith("-") and w not in ("-", "--") for atom in _atoms(w)]
    operands = [w for w in rest if not w.startswith("-") or w == "-"]
    region = words[start:]
    given = [word for word in region if word is None or word.startswith("-")]
    if not all(any(_option_met(atom, word) for word in given) for atom in options):
        return False
    left = len(operands)
    for word in reversed(region):
        if left == 0:
            break
        if word is None:
            left = 0
        elif _word_touched(word, operands[left - 1]):
            left -= 1
    return left == 0


def _atoms(option: str) -> list[str]:
    """A pattern's option word as what must each be met: a long option as it is, a glob as
    it is, a short cluster letter by letter (`-rf`: `-r`, `-f`)."""
    if option.startswith("--") or _GLOB_CHARS & set(option):
        return [option]
    return [f"-{letter}" for letter in option[1:]]


def _option_met(atom: str, word: str | None) -> bool:
    """Does the command word give the pattern's option `atom`? Letters compare case-folded;
    a short letter is met by a cluster holding it or a long option starting with it, a long
    option by itself, a unique-prefix spelling of it (with a matching `=VALUE` if the pattern
    gives one) or a cluster holding its first letter; a glob by a word it matches."""
    if word is None:
        return True
    if not word.startswith("-") or word in ("-", "--"):
        return False
    if fnmatchcase(word, atom):
        return True
    if _GLOB_CHARS & set(atom):
        return False
    folded = word.casefold()
    if atom.startswith("--"):
        name, eq, value = atom[2:].casefold().partition("=")
        if folded.startswith("--"):
            given, given_eq, given_value = folded[2:].partition("=")
            return bool(given) and name.startswith(given) and not (eq and given_eq and
                                                                  not fnmatchcase(given_value, value))
        return name[:1] in folded[1:]
    letter = atom[1].casefold()
    return folded[2:3] == letter if folded.startswith("--") else letter in folded[1:]


# -- files that run code ----------------------------------------------------------------------------

# Any path with a segment starting with `.` (a dotfile or dot-directory: what a shell, a login,
# sshd, git, an editor, an interpreter, a client or a web server reads at start and may run),
# or with one of these names as its last segment or any segment: what is under them is run,
# or configures what runs
CODE_NAMES = frozenset({"authorized_keys", "authorized_keys2"})
CODE_SEGMENTS = frozenset({"bin", "sbin", "systemd", "init.d", "rc.d", "profile.d", "cron.d", "cron.daily",
                           "cron.hourly", "cron.weekly", "cron.monthly", "site-packages", "dist-packages",
                           "node_modules", "autostart"})
# Last-segment extensions a web server or a loader runs
CODE_EXTENSIONS = (".php", ".php3", ".php4", ".php5", ".php7", ".php8", ".phtml", ".phar", ".cgi", ".fcgi",
                   ".jsp", ".jspx", ".asp", ".aspx", ".shtml", ".pth", ".so")
# Everything under these: system configuration, programs, libraries, kernel state, spools
CODE_PREFIXES = ("/etc/", "/usr/", "/lib/", "/lib32/", "/lib64/", "/libx32/", "/boot/", "/opt/", "/proc/",
                 "/sys/", "/dev/", "/var/spool/cron/", "/var/spool/at/", "/var/lib/dpkg/")


def runs_code(path: str) -> bool:
    """Does writing `path` make the server run code (any dotfile or a file in a dot-directory:
    login and startup files, ssh keys, tool configuration; a crontab, a program, a library,
    system configuration, a page a web server runs)? Compared
    case-folded, by segment and last segment wherever they are (the user's home directory
    is not known); the root and a path not absolute are taken as running code: fail closed."""
    folded = path.casefold()
    segments = [s for s in folded.split("/") if s]
    if not segments or not folded.startswith("/"):
        return True
    return (segments[-1] in CODE_NAMES or any(s in CODE_SEGMENTS or s.startswith(".") for s in segments)
            or segments[-1].endswith(CODE_EXTENSIONS) or f"{folded.rstrip('/')}/".startswith(CODE_PREFIXES))
