"""ssh: the enforcer is the SSH server the agent's connection lands on (a host certificate of
the daemon's host CA) and an SSH client of the real server with the resource's credentials
(RFC 4251-4254); every exec, shell, file access and forward is judged
(interceptor.policy.ssh_rules); its handler is interceptor.handlers.ssh."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from interceptor.operations import SshRequest
from interceptor.policy.ssh_command import MAX_COMMAND_CHARS
from interceptor.policy.ssh_rules import OPERATION_KEY, judge_ssh, parse_ssh_case, parse_ssh_match
from interceptor.protocols.spec import ProtocolSpec

if TYPE_CHECKING:
    from interceptor.policy.catalog import Catalog

_STRINGS = {"$ref": "#/$defs/strings"}

MATCH_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "description": (
        "Matches SSH requests; the rule matches a request any of its keys covers. The server's login shell is "
        "assumed POSIX (sh, bash, dash). Agent forwarding, X11 forwarding and subsystems other than sftp are "
        f"refused whatever the policy, as are commands over {MAX_COMMAND_CHARS} characters, holding NUL, or "
        "holding no words (empty, blank or only a comment: an empty one would become a shell)."),
    "properties": {
        "commands": {**_STRINGS, "description": (
            "Exec command patterns, split like a POSIX shell into words (`systemctl status *`, "
            "`sudo systemctl restart nginx`); each word is a glob for one argument (a word holding `/` covers only "
            "a path in normal form: no `.`, `..` or empty segment); a last word `**` matches any "
            "remaining words. Allow and approve rules must cover the whole command as the shell will run it, "
            "and only plain commands: a command with shell constructs or that runs code (`;`, `|`, `&`, `$`, "
            "backquotes, redirections, globs, `~`, braces, newlines, quotes left open, `NAME=value` first, "
            "a shell, an interpreter, `eval`, `env`, `xargs`, an editor or pager, `systemctl edit` (it starts an "
            "editor), git (any git command but `git --version`: git runs what a repository's configuration "
            "says), an option or operand that writes a file the agent names (`sort -o`, `sed -i`, `curl -o`), a "
            "multi-call binary (`busybox`, `coreutils`), `sed` without `--sandbox`, `find -exec`, `sudo -s`, `sftp-server`; "
            "at any depth of wrappers such as sudo, nice, timeout) is shell class: only `shell: true` allows it. "
            "A wrapper is not unwrapped for allow rules: name it (`sudo systemctl restart nginx`). Deny rules "
            "match any command the shell may run: each command of a list or pipeline, the command inside "
            "wrappers (`sudo`, `env`, `nice`, `timeout`, `xargs`, ...) and `sh -c` strings, a program also by "
            "its name without the directory (`/usr/bin/rm` is `rm`); a command holding a part that cannot be "
            "read (a substitution, interpreter code, an expansion as the command) matches every deny rule "
            "with commands.")},
        "shell": {"const": True, "description": (
            "`shell: true`: interactive shells (recorded, asciicast v2), execs with a terminal, shell-class "
            "commands (any exec), and, with a `write` glob over the path, writes that make the server run code "
            "(a `.ssh` or `.git` directory, shell startup files, crontabs, systemd units, programs). A deny rule "
            "with it refuses all of these; deny `commands` do not reach into an interactive shell.")},
        "read": {**_STRINGS, "description": (
            "Globs of the absolute paths the agent may read over SFTP or legacy scp (`scp -f`): `*` and `?` stay "
            "within a path segment, `**` crosses segments, and `/**` also matches the directory itself "
            "(`/var/log/**` covers `/var/log`). A path not in normal form (a `.`, `..` or empty segment, a "
            "backslash, a leading `~`, percent-encoding) matches no allow glob and every deny glob; deny globs "
            "also match case-folded. A recursive scp download needs a glob ending in `/**` over the path, and so "
            "does a directory renamed, hard-linked or made the target of a symlink over SFTP (judged with "
            "everything below it: a deny glob that may match below it refuses the move). `stat`, `lstat` and "
            "`realpath` (what a client asks before an upload) are allowed where `read` or `write` allows the "
            "path; a deny `read` glob refuses them.")},
        "write": {**_STRINGS, "description": (
            "Globs of the absolute paths the agent may write (create, change, remove, rename, set attributes of) "
            "over SFTP or legacy scp (`scp -t PATH`: a write of PATH, with everything below it for `-r` or "
            "`-d`, then each file the client sends judged on its own), same dialect as `read`. A path that makes "
            "the server run code also needs `shell: true`. A deny `commands` rule such as `scp **` refuses "
            "legacy scp.")},
        "forward": {**_STRINGS, "description": (
            "`HOST:PORT` globs of the destinations of local and dynamic forwards (direct-tcpip: `ssh -L`, "
            "`ssh -D`); hosts lower-case, IPv6 without brackets. The server resolves names, the enforcer cannot: "
            "an allow glob covers a name as written and an address in canonical form, and one written for "
            "addresses (`10.0.0.*`: its other characters digits, dots, `:` or hex letters, with a digit or `:`) "
            "covers addresses only, never a name such as `10.0.0.5.nip.io`; a deny glob naming an "
            "address (in any spelling, `localhost`, every address, or a glob over addresses such as `10.0.*`) "
            "matches every spelling of it and every destination given by a name. The connection is made by the "
            "server, not by the enforcer's host.")},
        "remote_forward": {**_STRINGS, "description": (
            "`ADDRESS:PORT` globs of where remote forwards (tcpip-forward: `ssh -R`) may listen on the server, "
            "read as `forward`'s; `*`, `0.0.0.0`, `::` and an empty address are every address (sshd's reading).")},
    },
}

OPTIONS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["known_hosts"],
    "description": (
        "Settings of the ssh handler. Credentials (`credentials:` of the resource, a mapping): `user` "
        "(required: the login on the server), and `private_key` (an OpenSSH or PEM private key, the text) or "
        "`private_key_file` (its path), optionally with `certificate` or `certificate_file` (the OpenSSH user "
        "certificate of that key) and `passphrase` (of an encrypted key); `password` is used only when no key "
        "is given. Any other key is refused. The agent never sees them: it authenticates with whatever it "
        "has, or nothing, and its identity comes from the connection."),
    "properties": {
        "known_hosts": {"type": "string", "pattern": "^/", "description": (
            "Path of an OpenSSH known_hosts file the server's host key is checked against (`@cert-authority` "
            "lines trust a host CA). Required: without host key checking no connection is made.")},
        "host_key_alias": {"type": "string", "minLength": 1, "description": (
            "The name looked up in `known_hosts` instead of the resource's host name or address.")},
        "host_names": {"type": "array", "minItems": 1,
                       "items": {"type": "string", "pattern": "^[A-Za-z0-9_.:%-]{1,253}$"}, "description": (
            "More names of the server, exact (no wildcards: ssh matches a host certificate's names exactly), "
            "put in the host certificate the agent is shown and in the `@cert-authority` line `interceptor "
            "trust install` writes, besides the resource's addresses. A name agents use for a host of a "
            "network resource must be listed here.")},
        "recording_limit_bytes": {"type": "integer", "minimum": 1024, "description": (
            "Size at which a recorded shell (or exec with a terminal) is ended, in bytes of recording; default "
            "67108864 (64 MiB).")},
    },
}


def _parse_case(case: Mapping[str, Any], catalog: Catalog | None) -> SshRequest:
    return parse_ssh_case(case)


SPEC: ProtocolSpec[SshRequest] = ProtocolSpec(
    name="ssh",
    operation_key=OPERATION_KEY,
    operation=SshRequest,
    description="Available: exec commands judged by argv (shell constructs denied unless a rule allows shells), "
                "interactive shells recorded, SFTP and scp judged by path, forwards by destination; approvals "
                "per command; the upstream key never reaches the agent.",
    handler="interceptor.handlers.ssh",
    match_schema=MATCH_SCHEMA,
    options_schema=OPTIONS_SCHEMA,
    parse_match=parse_ssh_match,
    judge=judge_ssh,
    parse_case=_parse_case,
)
