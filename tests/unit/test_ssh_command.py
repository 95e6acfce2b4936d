"""interceptor.policy.ssh_command: an exec command read as a POSIX shell reads it (strict argv
and shell class for allow rules; every command the shell may run for deny rules), patterns,
legacy scp, and the paths whose writing runs code."""

from __future__ import annotations

import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from interceptor.policy.ssh_command import (
    MAX_COMMAND_CHARS,
    MAX_LAX_WORDS,
    ScpAccess,
    Words,
    covers,
    parse_pattern,
    read_command,
    read_scp,
    runs_code,
    touches,
)

RM = parse_pattern("rm **")


def denied_by_rm(command: str) -> bool:
    """Does a deny rule `rm **` match the command (an opaque part matches every deny rule)?"""
    reading = read_command(command)
    return bool(reading.opaque) or any(touches(RM, c) for c in reading.commands)


@pytest.mark.parametrize(("command", "argv"), [
    ("uptime", ("uptime",)),
    ("ls -l /var/log", ("ls", "-l", "/var/log")),
    ("grep 'a b' /var/log/x", ("grep", "a b", "/var/log/x")),
    ('grep "a b" /var/log/x', ("grep", "a b", "/var/log/x")),
    ("grep 'a;b|c&d>e' /var/log/x", ("grep", "a;b|c&d>e", "/var/log/x")),  # quoted: data
    ("grep 'it''s' f", ("grep", "its", "f")),
    ("echo ''", ("echo", "")),
    ("  ls   -a  ", ("ls", "-a")),
    ("r'm' x", ("rm", "x")),  # the shell runs rm: so must the pattern see it
    ("journalctl -u nginx -n 50", ("journalctl", "-u", "nginx", "-n", "50")),
    ("curl --user=a:b http://x/y?q", None),  # ? is a glob
    ("printf %s@x,y+z", ("printf", "%s@x,y+z")),
    ("sudo systemctl restart nginx", ("sudo", "systemctl", "restart", "nginx")),
])
def test_plain_commands_split_as_the_shell_splits_them(command: str, argv: tuple[str, ...] | None) -> None:
    reading = read_command(command)
    if argv is None:
        assert reading.shell
    else:
        assert reading.argv == argv and reading.shell == () and reading.refused is None


@pytest.mark.parametrize(("command", "why"), [
    ("ls; rm -rf /", "`;`"),
    ("ls && rm x", "`&`"),
    ("ls || rm x", "`|`"),
    ("ls | sh", "`|`"),
    ("rm x &", "`&`"),
    ("echo $(id)", "`$`"),
    ("echo `id`", "```"),
    ("rm${IFS}-rf${IFS}/", "`$`"),
    ("rm$IFS/x", "`$`"),
    ("cat /etc/passwd > /tmp/x", "`>`"),
    ("cat < /etc/shadow", "`<`"),
    ("echo x >> ~/.bashrc", "`>`"),
    ("ls 2>&1", "`>`"),
    ("cat <<EOF\nx\nEOF", "`<`"),
    ("ls\nrm x", "newline"),
    ("ls\rrm", "carriage return"),
    ("ls\t/tmp", "tab"),
    ("ls *", "`*`"),
    ("ls ?", "`?`"),
    ("ls [ab]", "`[`"),
    ("ls ~", "`~`"),
    ("ls ~root/.ssh", "`~`"),
    ("echo {a,b}", "`{`"),
    ("ls # comment", "`#`"),
    ("! ls", "`!`"),
    ("ls (x)", "`(`"),
    ("\\rm x", "`\\`"),
    ("ls \\\n-la", "`\\`"),
    ("echo $'\\x72m'", "`$`"),
    ('echo "$HOME"', "inside double quotes"),
    ('echo "`id`"', "inside double quotes"),
    ('echo "a\\"b"', "inside double quotes"),
    ('echo "hi!"', "inside double quotes"),
    ("ls 'x", "open"),
    ('ls "x', "open"),
    ("FOO=bar ls", "assignment"),
    ("LD_PRELOAD=/tmp/x.so ls", "assignment"),
    ("ls café", "'é'"),
    ("ls ’x’", "'’'"),
])
def test_shell_constructs_are_shell_class(command: str, why: str) -> None:
    reasons = read_command(command).shell
    assert reasons and any(why in r for r in reasons), reasons


@pytest.mark.parametrize(("command", "why"), [
    ("bash -c 'rm -rf /'", "bash is a shell"),
    ("sh -c id", "sh is a shell"),
    ("/bin/sh -c id", "/bin/sh is a shell"),
    ("dash", "dash is a shell"),
    ("busybox sh", "busybox is a multi-call program"),
    ("env X=1 ls", "env runs or evaluates"),
    ("env -S 'rm x'", "env runs"),
    ("exec ls", "exec runs"),
    ("eval ls", "eval runs"),
    ("command ls", "command runs"),
    ("source /tmp/x", "source runs"),
    (". /tmp/x", ". runs"),
    ("trap 'rm x' EXIT", "trap runs"),
    ("let 'a[$(id)]=1'", "let runs"),
    ("declare -p 'a[$(id)]'", "declare runs"),
    ("test -v 'a[$(id)]'", "test -v evaluates"),
    ("printf -v 'a[$(id)]' x", "printf -v evaluates"),
    ("coproc rm", "coproc runs"),
    ("xargs rm", "xargs runs"),
    ("find / -name x -exec rm '{}' +", "find has an option"),
    ("find / -execdir id ';'", "find has an option"),
    ("find / -fprint /etc/x", "find has an option"),
    ("tar --to-command=id -xf x.tar", "tar has an option"),
    ("tar -xIid -f x.tar", "tar has an option"),
    ("tar xIf id x.tar", "tar has an option"),
    ("rsync -e id a b", "rsync has an option"),
    ("git -c core.pager=id log", "git -c sets configuration"),
    ("awk 'BEGIN{system(\"id\")}'", "awk is an interpreter"),
    ("gawk 1 /etc/passwd", "gawk is an interpreter"),
    ("python3 -c 'import os'", "python3 is an interpreter"),
    ("python3.11 x.py", "python3.11 is an interpreter"),
    ("perl -e 'exec q(id)'", "perl is an interpreter"),
    ("ruby -e x", "ruby is an interpreter"),
    ("node -e x", "node is an interpreter"),
    ("php -r x", "php is an interpreter"),
    ("lua5.4 -e x", "lua5.4 is an interpreter"),
    ("vim /etc/hosts", "vim can start"),
    ("less /var/log/syslog", "less can start"),
    ("man ls", "man can start"),
    ("watch ls", "watch can start"),
    ("su -c id", "su can start"),
    ("ssh other id", "ssh can start"),
    ("sudo bash", "bash is a shell"),
    ("sudo -s", "sudo -s runs a shell"),
    ("sudo -i", "sudo -i runs a shell"),
    ("sudo -e /etc/hosts", "sudo -e runs"),
    ("sudo --shell id", "sudo -s runs"),
    ("sudo LD_PRELOAD=/tmp/x.so ls", "sets environment variables (LD_PRELOAD)"),
    ("sudo -Z ls", "unknown option -Z"),
    ("sudo --frobnicate ls", "unknown option --frobnicate"),
    ("sudo -u root python3 x", "python3 is an interpreter"),
    ("nice -n 5 bash", "bash is a shell"),
    ("timeout 5 sh", "sh is a shell"),
    ("nohup perl x", "perl is an interpreter"),
    ("stdbuf -oL awk 1", "awk is an interpreter"),
    ("setsid -f sh", "sh is a shell"),
    ("ionice -c 3 sh", "sh is a shell"),
    ("chrt -f 10 sh", "sh is a shell"),
    ("taskset -c 0 sh", "sh is a shell"),
    ("time -p sh", "sh is a shell"),
    ("doas sh", "sh is a shell"),
    ("doas -s", "doas -s runs"),
    ("runuser -u app -- sh", "sh is a shell"),
    ("flock /tmp/l sh", "sh is a shell"),
    ("flock /tmp/l -c 'rm x'", "flock runs a command string"),
    ("sudo sudo sudo nice nice sh", "sh is a shell"),
    ("nice " * 9 + "ls", "nested more than 8 deep"),
    ("compgen -C id x", "compgen runs"),
    ("sed -n 1p /etc/hosts", "sed without --sandbox"),
    ("systemctl edit nginx", "can start an editor"),
    ("/proc/self/exe -c id", "not a program this reading can name"),
    ("/dev/fd/3 x", "not a program this reading can name"),
    ("git commit", "git reads the configuration"),
    ("kubectl edit deploy/x", "can start an editor"),
    ("visudo", "can start a shell"),
    ("psql -c x", "can start a shell"),
    ("wget --use-askpass=/tmp/x http://x/", "has an option"),
    ("sed '1e id' /etc/hosts", "sed without --sandbox"),
    ("mapfile -C id x", "mapfile runs"),
    ("jobs -x id", "jobs runs"),
    ("enable -f /tmp/x.so x", "enable runs"),
    ("/lib64/ld-linux-x86-64.so.2 /bin/sh", "is an interpreter"),
    ("chroot / sh", "chroot can start"),
    ("strace -f ls", "strace can start"),
    ("/usr/lib/openssh/sftp-server", "serves files unjudged"),
    ("tar -cf x --checkpoint=1 --checkpoint-act=exec=id y", "tar has an option"),  # getopt_long prefixes
    ("tar -cf x --use-comp=id y", "tar has an option"),
    ("tar -xf a --to-comm id", "tar has an option"),
    ("tar -xf a --to- id", "tar has an option"),  # ambiguous (--to-stdout): tar refuses it, so do we
    ("split --filter='gzip > $FILE' f", "split has an option"),
    ("split --fil=id f", "split has an option"),
    ("sort --compress-program=./c.sh f", "sort has an option"),
    ("sort --comp ./c.sh f", "sort has an option"),
    ("sdiff --diff-program=./d a b", "sdiff has an option"),
    ("diff3 --diff=./d a b c", "diff3 has an option"),
    ("openssl req -engine ./e.so", "openssl has an option"),
    ("openssl x509 -provider-path /tmp -provider x", "openssl has an option"),
    ("openssl req -config ./x.cnf", "openssl has an option"),
    ("openssl engine -t dynamic", "openssl has an option"),
    ("systemctl status -Hroot@10.0.0.9 nginx", "systemctl has an option"),
    ("systemctl --host=x status", "systemctl has an option"),
    ("apt-get -o APT::Update::Pre-Invoke::=id update", "apt-get has an option"),
    ("coredumpctl debug", "coredumpctl has an option"),
    ("wget -e use_askpass=/tmp/x http://x/", "wget has an option"),
    ("wget --config=/srv/uploads/rc http://x/", "wget has an option"),
    ("pandoc --lua-filter=x.lua a.md", "pandoc has an option"),
    ("tshark -X lua_script:x.lua", "tshark has an option"),
    ("gpg --homedir /srv/uploads/g --list-keys", "gpg has an option"),
    ("gcc -wrapper ./d.sh,x -c x.c", "gcc is a compiler"),
    ("x86_64-linux-gnu-gcc-12 -c x.c", "is a compiler"),
    ("cc x.c", "cc is a compiler"),
    ("clang++ x.cc", "is a compiler"),
    ("make", "make can start"),
    ("setarch x86_64 bash -c id", "setarch can start"),  # programs that run their arguments
    ("eatmydata python3 x.py", "eatmydata can start"),
    ("ip netns exec blue id", "ip has an option"),
    ("ip -all netns exec id", "ip has an option"),
    ("npm install", "npm is a compiler or build tool"),
    ("git fetch --upload-p='id;' .", "git fetch --upload-p=id; runs a command"),
    ("git clone -q -u id . ../c", "git clone -u runs a command"),
    ("git grep -O'id' x", "git grep -Oid runs a command"),
    ("git push --exec=id . HEAD", "git push --exec=id runs a command"),
    ("git difftool -x id", "git difftool runs commands"),
    ("git submodule foreach id", "git submodule runs commands"),
    ("git log --ext-diff -p", "git log --ext-diff runs a command"),
    ("git show --textconv x", "git show --textconv runs a command"),
    ("git diff --output=/home/u/.bashrc", "git diff --output=/home/u/.bashrc runs a command"),
    ("git branch --edit-desc", "git branch --edit-desc runs a command"),
    ("git -C ./bare log -p", "git reads the configuration"),
    ("git --git-dir=./bare log", "git reads the configuration"),
    ("git --work-tree=/ status", "git reads the configuration"),
    ("git -p log", "git reads the configuration"),
    ("git --exec-path=/tmp log", "git --exec-path=/tmp sets configuration or the programs"),
    ("git fetch", "git reads the configuration"),
    ("git gc", "git reads the configuration"),
    ("git st", "git reads the configuration"),
    ("rsync --server -vlogDtpre.iLsfxCIvu . /srv", "serves files unjudged"),
    ("sudo scp -t /etc/x", "it runs scp through sudo"),
    ("nice scp -f /etc/shadow", "it runs scp through nice"),
    ("scp -t /a /b", "one path"),
    ("scp -x -t /a", "scp option -x"),
    ("scp /a host:/b", "one path"),
    ("/usr/bin/scp -t /a", "it runs scp as /usr/bin/scp"),
])
def test_commands_that_run_code_are_shell_class(command: str, why: str) -> None:
    reasons = read_command(command).shell
    assert any(why in r for r in reasons), reasons


@pytest.mark.parametrize("command", [
    "sudo systemctl restart nginx",
    "sudo -u www-data ls /srv",
    "sudo -n -- systemctl status nginx",
    "nice -n 5 tar -czf /tmp/x.tgz /srv",
    "timeout -s KILL 5 curl http://localhost/health",
    "sudo -l",
    "find /var/log -name x.log -mtime +3",
    "tar -czf /tmp/x.tgz /srv",
    "git --version",
    "tar -cf x --checkpoint=1 y",
    "tar -tvf x.tar --to-stdout",
    "sort -S 16K -k 2 f",
    "split -l 100 f",
    "openssl x509 -in cert.pem -noout -text",
    "systemctl status nginx --no-pager",
    "ccache -s",
    "ip -br addr show",
    "ip route get 10.0.0.1",
    "sed --sandbox -n 1p /etc/hosts",
    "systemctl status nginx",
    "test -f /etc/hosts",
])
def test_wrappers_and_harmless_options_are_not_shell_class(command: str) -> None:
    assert read_command(command).shell == ()


@pytest.mark.parametrize("command", [
    "rm -rf /", "sudo rm -rf /", "sudo -u root rm -rf /", "sudo -- rm x", "sudo -uroot rm x",
    "sudo --user=root rm x", "sudo --user root rm x", "sudo --us root rm x", "sudo FOO=1 rm x",
    "env rm x", "env -i PATH=/bin rm x", "env -u HOME rm x", "env -- rm x",
    "nice rm x", "nice -n 5 rm x", "nice -5 rm x", "nice --adjustment=5 rm x", "nohup rm x",
    "timeout 5 rm x", "timeout -s KILL 5 rm x", "timeout --signal=KILL 5 rm x", "timeout -k 1 5 rm x",
    "stdbuf -oL rm x", "stdbuf -o L rm x", "setsid rm x", "setsid -w rm x", "ionice -c 3 rm x", "ionice -c3 -n7 rm x",
    "chrt 10 rm x", "chrt -f 10 rm x", "taskset 0x1 rm x", "taskset -c 0 rm x", "time rm x", "time -p rm x",
    "command rm x", "command -p rm x", "exec rm x", "exec -a foo rm x", "builtin rm x", "doas rm x",
    "doas -u root rm x", "runuser -u app rm x", "runuser -u app -- rm x", "xargs rm", "xargs -0 -n 1 rm",
    "xargs -I{} rm {}", "flock /tmp/l rm x", "flock -w 5 /tmp/l rm x", "flock /tmp/l -c 'rm x'",
    "busybox rm x", "sudo nice timeout 5 env rm x", "/usr/bin/rm x", "/bin/rm -rf /", "./rm x",
    "\\rm x", "r\\m x", "'rm' x", '"rm" x', "r''m x", "ls; rm x", "ls && rm x", "ls || rm x", "ls | rm x",
    "ls & rm x", "ls |& rm x", "ls\nrm x", "(rm x)", "{ rm x; }", "if true; then rm x; fi", "! rm x",
    "while true; do rm x; done", "f() { rm x; }; f", "case a in a) rm x;; esac", "coproc rm x",
    "> /tmp/o rm x", "2>/dev/null rm x", "2>&1 rm x", "{fd}>/tmp/x rm x", "cat <<EOF\nhi\nEOF\nrm x",
    "cat <<-'EOF'\n\thi\n\tEOF\nrm x", "cat <<< hi; rm x", "X=1 rm x", "X=$(id) rm x",
    "bash -c 'rm x'", "sh -c \"rm x\"", "/bin/sh -c 'rm x'", "bash -lc 'rm x'", "bash -e -o pipefail -c 'rm x'",
    "sh -c 'sh -c \"rm x\"'", "sudo bash -c 'ls; rm x'", "busybox sh -c 'rm x'", "eval rm x", "eval 'rm x'",
    "trap 'rm x' EXIT", "su -c 'rm x'", "su root -c 'rm x'", "su --command='rm x'", "runuser app -c 'rm x'",
    "watch rm x", "watch -n 2 rm x", "find / -exec rm {} +", "find / -execdir rm -f '{}' ';'",
    "find / -ok rm {} \\;", "echo $(rm x)", "echo `rm x`", 'echo "$(rm x)"', "echo $( (rm x) )",
    "$X -rf /", "${X} x", "$'rm' x", "`echo rm` x", "python3 -c 'import os'", "perl -e x",
    "awk 'BEGIN{system(\"rm x\")}'", "bash", "sh /tmp/script.sh", "bash < /tmp/x", "env -S 'rm x'",
    "sudo -Z rm x", "ls 'unterminated; rm x", "vim -c '!rm x'", "tar --to-command='rm x' -xf a.tar",
    "echo <(rm x)", "ls ${x:-$(rm y)}", "env - rm x", "env - PATH=/bin rm x", "sudo -l rm x", "sudo -hx rm x",
    "command -v rm", "cat <<$X\nhi\n$X\nrm x", 'cat <<"$X"\n$X\nrm x', "cat <<`x`\nrm x", "chroot / rm x",
    "strace rm x", "ionice -p 1 rm x", "cat <<EOF\n$(rm x)\nEOF", "cat <<EOF\n`rm x`\nEOF",
    "b='x[$(rm y)]'; ((b))", "b='x[$(rm y)]'; echo ${a[b]}", "b='x[$(rm y)]'; echo ${x:b}",
    "b='a[$(rm y)]'; echo ${!b}", "p='$(rm y)'; echo ${p@P}", "b='x[$(rm y)]'; a[b]=1", "test -v 'a[$(rm x)]'",
    "printf -v 'a[$(rm x)]' 1", "PS4='$(rm x)'; set -x; true", "echo $[a[$(rm x)]]", "PATH=/tmp/evil; ls",
    "IFS=_; v=rm_x; $v", "BASH_ENV=/tmp/x bash -c true", "sed '1e rm x' /etc/hosts", "/proc/self/exe -c 'rm x'",
    "sudo /proc/1/root/bin/sh -c 'rm x'", "{rm,x}", "/???/rm x",
])
def test_deny_rules_see_the_command_however_it_is_wrapped(command: str) -> None:
    assert denied_by_rm(command), read_command(command)


@pytest.mark.parametrize("command", [
    "ls -l", "cat <<EOF\nrm x\nEOF", "ls # ; rm x", "echo 'rm x'", "echo '$(rm x)'", "grep 'rm -rf' x",
    "sh -c 'ls -l'", "sudo -l", "cat <<'EOF'\nrm x\nEOF\nls", "cat <<-EOF\n\trm x\n\tEOF\nls",
    "cat <<E\\OF\nrm x\nEOF", "cat <<'EOF'\n$(rm x)\nEOF\nls", "X=1 ls", "ls /srv/rmdir", "echo x-rm",
    "ls node_modules", "cat phpinfo.txt",  # not names of interpreters
])
def test_deny_rules_do_not_match_what_the_shell_does_not_run(command: str) -> None:
    assert not denied_by_rm(command), read_command(command)


@pytest.mark.parametrize("command", [
    "grep rm /var/log/x", "echo rm", "ls rm", "sudo ls rm", "nice -n 5 grep rm x", "timeout 5 echo rm",
    "find / -name rm", "ls $HOME", "ls /tmp/*", "xargs echo", "echo ${x:-default} ${#x} ${x%.*}",
])
def test_deny_rules_take_any_word_naming_the_program_as_where_it_may_start(command: str) -> None:
    """A program this module does not know may run its arguments (`setarch x86_64 rm`,
    `eatmydata rm`): for deny rules a command may start at any word naming the denied program
    by its last segment, or at a word known only at run time (a glob, an expansion, what
    xargs reads), whatever the program before it is."""
    assert denied_by_rm(command), read_command(command)


@pytest.mark.parametrize("command", [
    "setarch x86_64 rm -rf /srv", "linux64 rm x", "choom -n 0 -- rm x", "ip netns exec blue rm x",
    "ssh-agent rm x", "eatmydata /usr/bin/rm x", "gosu root rm x", "unknown-wrapper --opt=1 rm x",
    "eatmydata /usr/bin/r[m] -rf /srv", "X=rm; chronic $X x", "eatmydata sh -c 'rm x'",
    "setarch x86_64 bash -c 'cd /srv && rm -rf x'", "gosu root split --filter='rm x' f", "rlwrap eval rm x",
])
def test_deny_rules_see_commands_run_by_wrappers_not_known_here(command: str) -> None:
    assert denied_by_rm(command), read_command(command)


@pytest.mark.parametrize(("pattern", "words", "expected"), [
    ("rm -rf /", ("rm", "-rf", "/"), True),
    ("rm -rf /", ("rm", "-rf", None), True),  # $DIR may be /
    ("rm -rf /", ("rm", None), True),  # one unquoted expansion splits into any number of words
    ("rm -rf /", ("rm", "-r", "/"), False),
    ("rm -rf /", ("rm", "-rf", "/", "x"), True),  # other words between and after the pattern's
    ("rm -rf /", ("rm", "-fr", "/"), True),  # options by their letters, anywhere
    ("rm -rf /", ("rm", "-r", "-f", "/"), True),
    ("rm -rf /", ("rm", "/", "-Rf"), True),
    ("rm -rf /", ("rm", "--recursive", "--force", "/"), True),
    ("rm -rf /", ("rm", "--rec", "-v", "--f", "/"), True),
    ("rm -rf /", ("rm", "--force", "/"), False),
    ("rm -rf /", ("rm", "-f", "x", "-r", "/srv"), False),
    ("rm --force **", ("rm", "-f", "x"), True),
    ("rm --force **", ("rm", "--forc", "x"), True),
    ("rm --force **", ("rm", "--interactive", "x"), False),
    ("kill --signal=KILL *", ("kill", "--sig=KILL", "1"), True),
    ("kill --signal=KILL *", ("kill", "--signal=TERM", "1"), False),
    ("kill -* 1", ("kill", "-9", "1"), True),
    ("kill -* 1", ("kill", "1"), False),
    ("systemctl stop **", ("systemctl", "--no-block", "stop", "nginx"), True),
    ("systemctl stop **", ("systemctl", "-q", "stop"), True),
    ("systemctl stop **", ("systemctl", "status", "nginx"), False),
    ("git push **", ("git", "-C", "/srv/app", "push", "origin", "main"), True),
    ("git push origin", ("git", "push", "--force", "upstream", "origin"), True),
    ("git push origin main", ("git", "push", "main", "origin"), False),  # in order
    ("rm **", ("setarch", "x86_64", "rm", "x"), True),  # the command may start at any word naming rm
    ("rm -rf **", ("eatmydata", "-r", "rm", "-f", "x"), False),  # options count after the program only
    ("rm -rf **", ("eatmydata", "rm", None), True),
    ("cat /etc/shadow", ("cat", "/proc/self/root/etc/shadow"), True),  # the kernel names any file there
    ("cat /etc/shadow", ("cat", "/proc/1/cwd/x"), True),
    ("cat /etc/shadow", ("cat", "/dev/fd/3"), True),
    ("cat /etc/shadow", ("cat", "/dev/stdin"), True),
    ("cat /etc/shadow", ("cat", "proc/self/root/etc/shadow"), True),  # relative: its last segments
    ("cat /etc/shadow", ("cat", "root/x/shadow"), True),
    ("cat /etc/shadow", ("cat", "/srv/proc/self/root/etc/shadow"), False),
    ("grep /etc/shadow", ("grep", "-f/etc/shadow", "x"), True),  # a path an option carries
    ("grep /etc/shadow", ("grep", "--file=/etc/shadow", "x"), True),
    ("rm -rf /", ("rm", "-rf", "/", None), True),  # may expand to nothing
    ("rm -rf /", (None, "-rf", "/"), True),
    ("/usr/bin/rm **", ("rm", "x"), True),
    ("rm **", ("/usr/bin/rm",), True),
    ("systemctl restart *", ("systemctl", "restart"), False),
    ("systemctl restart *", ("systemctl", None), True),
    ("cat /etc/shadow", ("cat", "/etc/../etc/shadow"), True),  # not in normal form: any path
    ("cat /etc/shadow", ("cat", "shadow"), True),  # relative: the directory is not known
    ("cat /etc/shadow", ("cat", "etc/shadow"), True),
    ("cat /etc/*", ("cat", "passwd"), True),
    ("cat /etc/shadow", ("cat", "/etc/passwd"), False),
    ("cat /etc/shadow", ("cat", "-n"), False),
    ("cat /etc/shadow", ("cat", "hosts"), False),
    ("cat /etc/shadow", ("cat", "-n", "/etc/hosts"), False),
])
def test_touches(pattern: str, words: Words, expected: bool) -> None:
    assert touches(parse_pattern(pattern), words) is expected


@pytest.mark.parametrize(("pattern", "argv", "expected"), [
    ("uptime", ("uptime",), True),
    ("uptime", ("uptime", "-p"), False),
    ("systemctl status *", ("systemctl", "status", "nginx"), True),
    ("systemctl status *", ("systemctl", "status"), False),
    ("systemctl status *", ("systemctl", "status", "a", "b"), False),
    ("grep **", ("grep",), True),
    ("grep **", ("grep", "-r", "x", "/"), True),
    ("'grep x' **", ("grep x",), True),
    ("tail -n * /var/log/*.log", ("tail", "-n", "5", "/var/log/a.log"), True),
    ("tail -n * /var/log/*.log", ("tail", "-n", "5", "/var/log/../../etc/shadow.log"), False),  # not normal
    ("tail -n * /var/log/*.log", ("tail", "-n", "5", "/var/log//a.log"), False),
    ("cat --file=/srv/*", ("cat", "--file=/srv/./x"), False),
    ("grep * *", ("grep", "x", "../../etc/shadow"), True),  # a pattern word without / is not about paths
    ("/usr/bin/uptime", ("uptime",), False),  # allow rules compare argv0 as written
    ("systemctl status *", ("systemctl", "status", "-Hroot@10.0.0.9"), False),  # a value glob is no option
    ("journalctl -u * -n *", ("journalctl", "-u", "nginx", "-n", "--vacuum-size=1K"), False),
    ("grep * /var/log/*.log", ("grep", "--file=/etc/shadow", "/var/log/a.log"), False),
    ("grep * /var/log/*.log", ("grep", "-", "/var/log/a.log"), False),
    ("grep -* x", ("grep", "-c", "x"), True),
    ("journalctl --lines=* -u nginx", ("journalctl", "--lines=100", "-u", "nginx"), True),
    ("tail -n * /var/log/*.log", ("tail", "-n", "-5", "/var/log/a.log"), False),
    ("Uptime", ("uptime",), False),
])
def test_covers(pattern: str, argv: tuple[str, ...], expected: bool) -> None:
    assert covers(parse_pattern(pattern), argv) is expected


@pytest.mark.parametrize("text", ["", "   ", "'open", "** x", "a ** b"])
def test_bad_patterns(text: str) -> None:
    with pytest.raises(ValueError):
        parse_pattern(text)


@pytest.mark.parametrize(("argv", "expected"), [
    (("scp", "-t", "/srv/x"), ScpAccess("write", "/srv/x", False)),
    (("scp", "-f", "/var/log/syslog"), ScpAccess("read", "/var/log/syslog", False)),
    (("scp", "-v", "-r", "-p", "-d", "-t", "--", "/srv/x"), ScpAccess("write", "/srv/x", True)),
    (("scp", "-r", "-f", "/var/log"), ScpAccess("read", "/var/log", True)),
    (("scp", "-f", "--", "-odd"), ScpAccess("read", "-odd", False)),
    (("ls",), None),
])
def test_legacy_scp(argv: tuple[str, ...], expected: ScpAccess | None) -> None:
    assert read_scp(argv) == expected


@pytest.mark.parametrize("argv", [
    ("scp",), ("scp", "-t"), ("scp", "-t", "-f", "/x"), ("scp", "-t", "/a", "/b"), ("scp", "-rr", "-t", "/x"),
    ("scp", "-r", "-r", "-t", "/x"), ("scp", "-S", "id", "-t", "/x"), ("scp", "-t", ""), ("scp", "/a", "h:/b"),
    ("/tmp/scp", "-t", "/x"),
])
def test_odd_scp_command_lines_are_refused_reasons(argv: tuple[str, ...]) -> None:
    assert isinstance(read_scp(argv), str)


def test_the_scp_command_of_a_reading() -> None:
    assert read_command("scp -t /srv/uploads/x").scp == ScpAccess("write", "/srv/uploads/x", False)
    assert read_command("scp -f /var/log/*.log").scp is None  # a glob: shell class, no transfer
    assert read_command("sudo scp -t /etc/x").scp is None  # not a transfer the rules read: a command


@pytest.mark.parametrize(("path", "expected"), [
    ("/home/u/.ssh/authorized_keys", True), ("/root/.ssh/rc", True), ("/home/u/.ssh", True),
    ("/home/u/.bashrc", True), ("/srv/uploads/.profile", True), ("/home/u/.BASHRC", True),
    ("/home/u/.zshenv", True), ("/home/u/.config/autostart/x.desktop", True), ("/home/u/.local/bin/ls", True),
    ("/home/u/bin/ls", True), ("/home/u/.kube/config", True), ("/home/u/.aws/config", True),
    ("/var/spool/cron/crontabs/root", True), ("/etc/cron.d/job", True), ("/etc/crontab", True),
    ("/etc/profile.d/x.sh", True), ("/etc/sudoers.d/x", True), ("/etc/systemd/system/x.service", True),
    ("/etc/passwd", True), ("/etc/nginx/nginx.conf", True), ("/etc", True), ("/usr/bin/ls", True),
    ("/usr/local/bin/x", True), ("/bin", True), ("/etc/ld.so.preload", True), ("/opt/app/run", True),
    ("/proc/sys/kernel/core_pattern", True), ("/sys/kernel/uevent_helper", True), ("/dev/sda", True),
    ("/srv/repo/.git/hooks/pre-commit", True), ("/srv/repo/.git/config", True), ("/home/u/.forward", True),
    ("/usr/lib/python3/dist-packages/x.pth", True), ("/srv/app/venv/lib/python3.11/site-packages/x.py", True),
    ("/var/www/html/shell.php", True), ("/var/www/html/.htaccess", True), ("/srv/uploads/x.PHTML", True),
    ("/srv/app/node_modules/x/index.js", True), ("/srv/uploads/lib.so", True),
    ("/", True), ("relative/path", True), ("", True),
    ("/srv/uploads/report.csv", False), ("/var/log/x.log", False), ("/tmp/bashrc.txt", False),
    ("/srv/www/index.html", False), ("/home/u/notes.txt", False), ("/srv/uploads/group", False),
    ("/srv/uploads/binary.dat", False), ("/srv/etc/x", False), ("/home/u/.bashrc.bak", True),
    ("/home/u/.bash_completion", True), ("/home/u/.psqlrc", True), ("/home/u/.vim/plugin/x.vim", True),
    ("/srv/repo/.hg/hgrc", True), ("/home/u/.Rprofile", True), ("/srv/uploads/.well-known/x", True),
    ("/srv/uploads/a.b/c", False), ("/srv/uploads/x.", False),
])
def test_paths_whose_writing_runs_code(path: str, expected: bool) -> None:
    assert runs_code(path) is expected


def test_a_long_command_is_refused_quickly() -> None:
    started = time.perf_counter()
    reading = read_command("a" * (1 << 20))
    assert reading.refused is not None and "1048576 characters" in reading.refused
    assert time.perf_counter() - started < 0.05
    assert read_command("x" * MAX_COMMAND_CHARS).refused is None


def test_a_nul_is_refused() -> None:
    assert "NUL" in (read_command("ls\0; rm -rf /").refused or "")


def test_a_long_hostile_command_is_read_in_bounded_time() -> None:
    started = time.process_time()  # CPU time: other processes on the host aside
    pattern = parse_pattern("rm -rfvi --force a b c d e f g h i j /etc/*/shadow")
    for text in ("$(" * 20000, "'" * 60000, "sh -c " * 10000, "a;" * 30000, "`" * 60000, "{" * 60000,
                 "<<x\n" * 10000, "\\" * 60000, "rm " + "$a " * 20000 + "z", "sudo -Z " + "a " * 30000,
                 "watch " + "a " * 30000, "sudo " * 12000 + "rm", "env " * 12000, "x=1 " * 15000 + "rm",
                 "find / " + "-exec rm {} ; " * 4000, "((" * 30000, "${" * 30000, "cat <<$(\n" * 7000,
                 "x " + "sh " * 20000, "x " + "setarch " * 7000 + "rm", "rm " + "-r " * 20000 + "/",
                 "cat " + "a/" * 30000 + "shadow", "x " + "$a " * 20000, "eatmydata " + "git -c " * 7000,
                 "x " + "sh -c " * 10000, "tar " + "--to-c " * 8000, "x " + "find / -exec " * 5000):
        reading = read_command(text)
        assert reading.refused is None
        any(touches(pattern, c) for c in reading.commands)
    assert time.process_time() - started < 3


@pytest.mark.parametrize(("command", "expected"), [
    ("cat < /etc/shadow", True), ("cat 3</etc/shadow /dev/fd/3", True), ("cat x 2>/etc/shadow", True),
    ("< /etc/shadow cat", True), ("cat x; > /etc/shadow", False),  # a redirection alone runs nothing
    ("cat <<shadow\nx\nshadow", False),  # a here-document's delimiter is not a file
])
def test_deny_path_words_see_redirection_targets(command: str, expected: bool) -> None:
    """A file a command reads or writes through a redirection is one of its words for deny
    rules (`cat /etc/shadow` matches `cat < /etc/shadow`)."""
    pattern = parse_pattern("cat /etc/shadow")
    assert any(touches(pattern, c) for c in read_command(command).commands) is expected


# -- kinds of programs: interpreters, multi-call binaries, writes, binutils, git ---------------------

@pytest.mark.parametrize("command", [
    "ipython3 -c x", "bpython", "jython x.py", "micropython -c x", "python3.12-dbg -c x", "pypy3 x.py", "cpython x",
    "php8.2-cgi -r x", "nodejs -e x", "luajit -e x", "tclsh8.6", "wish x.tcl", "Rscript -e x", "R", "julia-1.10 -e x",
    "ghci", "erl -eval x", "escript x", "ocaml x.ml", "ocamlfind x", "pwsh -c x", "powershell", "m4 x.m4", "dc -e x",
    "gnuplot -e x", "bpftrace -e x", "gdb-multiarch -batch -ex x", "expect -c x", "mlr -n put x", "jruby -e x",
    "lftp -c x", "smbclient //h/s -c x", "sqlite3 x.db", "psql", "mysql", "sqlplus x", "duckdb -c x", "mongosh",
])
def test_interpreters_are_recognised_by_kind(command: str) -> None:
    """A program that runs code or commands from its arguments or standard input, by family
    name with any suffix or by name with a version: shell class and opaque to deny rules."""
    reading = read_command(command)
    assert reading.shell and reading.opaque, reading


@pytest.mark.parametrize(("command", "inner"), [
    ("coreutils --coreutils-prog=rm -rf /srv", ("rm", "-rf", "/srv")),
    ("coreutils --coreutils-prog-shebang=rm /tmp/script x", ("rm", "/tmp/script", "x")),
    ("toybox rm -rf /srv", ("rm", "-rf", "/srv")),
    ("busybox.static rm x", ("rm", "x")),
    ("toybox sh -c 'rm x'", ("rm", "x")),
])
def test_multi_call_binaries_are_wrappers_for_deny_and_shell_class(command: str, inner: Words) -> None:
    reading = read_command(command)
    assert "is a multi-call program" in reading.shell[0] and reading.opaque
    assert inner in reading.commands and denied_by_rm(command)


@pytest.mark.parametrize(("command", "written"), [
    ("sort -o /home/u/.ssh/authorized_keys k.pub", "its option -o"),
    ("sort -uo/home/u/.bashrc f", "its option -uo/home/u/.bashrc"),
    ("sort --output=/x f", "its option --output=/x"),
    ("sort --out /x f", "its option --out"),
    ("shuf -o /x f", "its option -o"),
    ("sed --sandbox -i s/a/b/ f", "its option -i"),
    ("sed --sandbox -ni.bak 1p f", "its option -ni.bak"),
    ("sed --sandbox --in-pl=.bak s/a/b/ f", "its option --in-pl=.bak"),
    ("uniq k.pub /home/u/.ssh/authorized_keys", "its operand /home/u/.ssh/authorized_keys"),
    ("uniq -c -f 1 a b", "its operand b"),
    ("uniq -- -c b", "its operand b"),
    ("xxd -r -ps a b", "its operand b"),
    ("xxd -c 8 -r a b", "its operand b"),
    ("iconv -f latin1 -t utf8 -o /x f", "its option -o"),
    ("curl -fsSLo /x http://h/", "its option -fsSLo"),
    ("curl -O http://h/.bashrc", "its option -O"),
    ("curl --output-dir /home/u -O http://h/x", "its option --output-dir"),
    ("curl -K /srv/uploads/cfg http://h/", "its option -K"),
    ("wget -O /x http://h/", "its option -O"),
    ("wget --output-doc=/x http://h/", "its option --output-doc=/x"),
    ("tcpdump -i eth0 -w /x", "its option -w"),
    ("openssl x509 -in a.pem -out /x", "its option -out"),
    ("openssl req -new -keyout=/x", "its option -keyout=/x"),
    ("gpg -o /x -d f.gpg", "its option -o"),
    ("sdiff -o /x a b", "its option -o"),
    ("tshark -i eth0 -w /x", "its option -w"),
    ("yq -i .a=1 /x", "its option -i"),
    ("pandoc -o /x a.md", "its option -o"),
])
def test_options_that_write_a_file_are_shell_class(command: str, written: str) -> None:
    """A program that otherwise reads (and prints) given an option or an operand that makes it
    write a file of the agent's choosing: shell class (not opaque: it runs nothing)."""
    reading = read_command(command)
    assert any(f"writes a file that {written} names" in r for r in reading.shell), reading.shell
    assert reading.opaque == ()


@pytest.mark.parametrize("command", [
    "wget -qO- http://h/", "curl -o - http://h/", "curl -s http://h/", "sort -k 2 -S 16K f", "uniq -c f",
    "uniq -f 1 f", "uniq f -", "xxd -c 8 f", "xxd -ps f", "openssl x509 -in a.pem -noout -text -outform PEM",
    "sed --sandbox -n 1p f", "tcpdump -nn -c 10", "iconv -f latin1 -t utf8 f", "time -p ls", "time -o - ls",
])
def test_reading_with_output_options_aside_is_plain(command: str) -> None:
    assert read_command(command).shell == ()


@pytest.mark.parametrize(("command", "prompt"), [
    ("openssl", True), ("virsh", True), ("virsh -c qemu:///system", True), ("virsh --connect=qemu:///system", True),
    ("openssl version", False), ("virsh list --all", False), ("virsh -c qemu:///system list", False),
])
def test_a_program_reading_its_commands_from_standard_input_is_shell_class(command: str, prompt: bool) -> None:
    """openssl and virsh with no command read theirs from standard input (`engine -pre
    SO_PATH:/x.so`, `edit DOMAIN`): shell class and opaque, as an interpreter is."""
    reading = read_command(command)
    assert bool(reading.shell) is prompt and bool(reading.opaque) is prompt, reading


def test_a_wrapper_option_that_writes_a_file_is_shell_class() -> None:
    assert read_command("time -o /home/u/.bashrc ls").shell == (
        "time writes a file that its option -o names, which may be one the server runs, such as "
        "~/.ssh/authorized_keys",)


@pytest.mark.parametrize("command", [
    "nm --plugin ./e.so x.o", "nm --plug=./e.so x.o", "nm @opts x.o", "x86_64-linux-gnu-nm --plugin e x.o",
    "ar --plugin e rcs l.a x.o", "gcc-ar --plugin e rcs l.a", "ranlib --plugin e l.a", "llvm-nm @opts",
    "objdump @opts", "readelf @opts", "strings @opts", "strip @opts", "objcopy-2.40 @opts",
])
def test_binutils_plugins_and_response_files_load_code(command: str) -> None:
    reading = read_command(command)
    assert reading.shell and reading.opaque, reading


@pytest.mark.parametrize("command", ["nm -D x.o", "objdump -d x.o", "readelf -h x", "strings -a x", "size x.o"])
def test_binutils_reading_a_file_is_plain(command: str) -> None:
    assert read_command(command).shell == ()


@pytest.mark.parametrize("command", ["git", "git log -n 5", "git --no-pager log --oneline", "git status --short",
                                     "git rev-parse HEAD", "git version", "git --version --build-options"])
def test_git_is_shell_class_but_for_its_version(command: str) -> None:
    """git reads the configuration of the repository it finds, which may be a bare one the
    agent wrote in the working directory (the home directory): only `git --version` is plain;
    git is opaque to deny rules only when its words run a command."""
    reading = read_command(command)
    assert reading.shell == ("git reads the configuration of the repository it finds, which may be a bare one the "
                             "agent wrote in the working directory or a directory above it, and runs the commands "
                             "that configuration names; only `git --version` is plain",) and reading.opaque == ()


@pytest.mark.parametrize(("pattern", "word", "expected"), [
    ("cat /run/secrets/*", "/var/run/secrets/db", True),
    ("cat /var/run/secrets/*", "/run/secrets/db", True),
    ("cat /var/lock/x", "/run/lock/x", True),
    ("cat /usr/lib/x/*", "/lib/x/y", True),
    ("cat /bin/*", "/usr/sbin/x", True),  # /sbin -> /usr/sbin -> /usr/bin -> /bin (merged sbin)
    ("cat /home/*/.ssh/*", "/var/home/u/.ssh/id_ed25519", True),  # ostree
    ("cat /run/secrets/*", "/srv/run/secrets/db", False),
    ("cat /run/secrets/*", "/runx/secrets/db", False),
    ("cat /run/secrets/*", "/var/runx/secrets/db", False),
])
def test_deny_path_words_see_the_systems_own_links(pattern: str, word: str, expected: bool) -> None:
    assert touches(parse_pattern(pattern), ("cat", word)) is expected


def test_refusal_reasons_read_as_sentences() -> None:
    assert read_command("ls; id").shell == ("it holds `;`, which the shell reads as a list of commands",)
    assert read_command('echo "$x"').shell == (
        "it holds `$` inside double quotes, where the shell still reads it as an expansion",)
    assert read_command("A=1 ls").shell == ("its first word 'A=1' is an assignment (NAME=value) before the command",)
    assert read_command("ls 'x").shell == ("it leaves a quote (') open",)


def test_the_lax_reading_bounds_the_words_it_follows() -> None:
    """Every suffix at a program that runs commands is followed: MAX_LAX_WORDS bounds the
    words read (counted, not timed), and past it the command is opaque."""
    reading = read_command("x " + "sh " * 20000)
    assert sum(len(c) for c in reading.commands) <= MAX_LAX_WORDS
    assert any(f"more than {MAX_LAX_WORDS} words" in r for r in reading.opaque)
    assert not any("more than" in r for r in read_command("tar -czf x.tgz " + "f " * 20000).opaque)


def test_nesting_beyond_the_limit_is_opaque() -> None:
    text = "rm x"
    for _ in range(9):
        text = f"sh -c {_quote(text)}"
    reading = read_command(text)
    assert any("nested" in r for r in reading.opaque) and denied_by_rm(text)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


@pytest.mark.parametrize("shell", ["bash", "dash"])
def test_plain_words_are_the_words_the_shell_passes(shell: str) -> None:
    """Differential: random command lines from an alphabet of quotes, blanks, safe and unsafe
    characters; every one read as plain must give the argv the real shell gives."""
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    rng = random.Random(17)
    alphabet = "ab -=/.,:@%+_'\"'\" \\$`!*?~#;&|<>(){}[]\t\né"
    plain: list[str] = []
    while len(plain) < 300:
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 14)))
        reading = read_command(f"x {text}")
        if not reading.shell:
            plain.append(text)
    script = "".join(f"set -- {text}\nprintf '%s\\0' \"$#\" \"$@\"\n" for text in plain)
    result = subprocess.run([shell, "-c", script], capture_output=True, check=True, env={"PATH": "/usr/bin:/bin"})
    fields = result.stdout.decode().split("\0")
    for text in plain:
        count = int(fields.pop(0))
        words = tuple(fields[:count])
        del fields[:count]
        assert read_command(f"x {text}").argv[1:] == words, text


_FRAGMENTS = [
    "rm x", "echo a", "r'm' x", "\\rm x", "$(echo rm) x", "`echo rm` x", "X=rm; $X x", "rm${IFS}x", "true",
    "sh -c 'rm x'", 'bash -c "rm x"', "eval 'rm x'", "env rm x", "env - rm x", "nice -n 1 rm x", "timeout 5 rm x",
    "echo x | xargs rm", "find . -maxdepth 0 -exec rm {} \\;", "cat <<EOF\nrm x\nEOF", "{ rm x; }", "(rm x)",
    "if true; then rm x; fi", "f(){ rm x; }; f", "echo 'rm x'", "# rm x", "command rm x", "exec rm x",
    "printf rm | sh", "echo $((1+1))", "cat <<-E\n\trm x\n\tE", "2>/dev/null rm x", "{fd}>&2 rm x", "Y=1 rm x",
    "! rm x", "case a in a) rm x;; esac", "while false; do rm x; done", "a=$(rm x)", "echo ${Z:-$(rm x)}",
    "trap 'rm x' EXIT", "builtin eval rm x", "time rm x", "sh <<EOF\nrm x\nEOF", "rm\\\nx", "e\\\ncho rm",
    "cat <<EOF\n$(rm x)\nEOF", "cat <<EOF\n`rm x`\nEOF", "b='x[$(rm y)]'; ((b))", "b='x[$(rm y)]'; echo ${a[b]}",
    "b='x[$(rm y)]'; echo ${x:b}", "b='a[$(rm y)]'; echo ${!b}", "p='$(rm y)'; echo ${p@P}",
    "b='x[$(rm y)]'; a[b]=1", "test -v 'a[$(rm x)]'", "printf -v 'a[$(rm x)]' 1", "PS4='$(rm x)'; set -x; true",
    "echo $[a[$(rm x)]]", "for ((i=0;i<1;i++)); do rm x; done",
]
_GLUE = [" ; ", " && ", " || ", " | ", " & ", "\n", " ", "; ", ";"]


def test_deny_rules_see_every_rm_bash_and_dash_run(tmp_path: Path) -> None:
    """Differential: random programs of fragments run by bash and dash with a PATH of stand-ins
    (a fake `rm` that leaves a mark); every program that ran `rm` must be one a deny rule
    `rm **` matches."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "rm").write_text(f"#!/bin/dash\necho ran >> {tmp_path}/mark\n")
    (fake / "rm").chmod(0o755)
    for tool in ("bash", "dash", "env", "nice", "timeout", "xargs", "find", "cat", "printf", "echo", "true", "false"):
        found = shutil.which(tool)
        if found is not None:
            (fake / tool).symlink_to(found)
    (fake / "sh").symlink_to(fake / "dash")
    rng = random.Random(29)
    ran = 0
    for index in range(400):
        program = "".join(rng.choice(_FRAGMENTS) + rng.choice(_GLUE) for _ in range(rng.randint(1, 3)))
        shell = "bash" if index % 2 else "dash"
        mark = tmp_path / "mark"
        mark.unlink(missing_ok=True)
        subprocess.run([str(fake / shell), "-c", program], cwd=tmp_path, capture_output=True, timeout=10,
                       env={"PATH": str(fake), "HOME": str(tmp_path)}, check=False)
        if mark.exists():
            ran += 1
            assert denied_by_rm(program), (shell, program, read_command(program))
    assert ran > 100


@pytest.mark.parametrize("command", ["cat /srv/in", "ls /srv/do", "scp -r -t /srv/uploads/in", "cp a /tmp/for",
                                     "cat /srv/x/if", "ls ./source"])
def test_an_argument_named_like_a_builtin_or_reserved_word_is_no_program_a_wrapper_could_run(command: str) -> None:
    """A wrapper runs programs, and no program is a shell builtin or reserved word: an argument
    whose last segment is `in`, `do`, `if`, `for` or `source` does not make a command opaque
    (which every deny `commands` rule would then match)."""
    assert read_command(command).opaque == ()


def test_a_builtin_in_command_position_still_runs_code() -> None:
    assert read_command("eval x").shell and read_command("eatmydata eval x").opaque
