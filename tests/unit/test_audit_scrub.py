"""Secrets that slipped into an event are masked before the record is chained."""

import copy
import enum
import json
import pickle
import random
import time

import pytest

from interceptor.audit.event import SharedSummary
from interceptor.audit.scrub import REDACTED, SHORTEST_SECRET, scrub, scrub_event, scrub_text

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6MTcwMDAwMDAwMH0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


def test_sql_password_literals_are_masked():
    text = scrub_text("ALTER ROLE app WITH PASSWORD 'it''s secret' VALID UNTIL 'infinity'")
    assert "secret" not in text
    assert text == f"ALTER ROLE app WITH PASSWORD '{REDACTED}' VALID UNTIL 'infinity'"


def test_url_passwords_and_tokens_are_masked():
    text = scrub_text(f"psql postgresql://app:hunter2@db/prod -c x Authorization: Bearer {JWT}")
    assert "hunter2" not in text and JWT not in text
    assert "postgresql://app:" in text and "@db/prod" in text


def test_secret_keys_are_masked_at_any_depth():
    event = {"operation": {"headers": {"Authorization": "Basic abc", "accept": "json"}, "password": "x"},
             "outcome": [{"api_key": "k", "rows": 3}], "token_id": "t-1"}
    assert scrub(event) == {"operation": {"headers": {"Authorization": REDACTED, "accept": "json"},
                                          "password": REDACTED},
                            "outcome": [{"api_key": REDACTED, "rows": 3}], "token_id": "t-1"}


def test_identifiers_and_plain_values_are_kept():
    event = {"event_id": "a" * 32, "flow_id": "f" * 48, "process": {"cgroup": "/docker/" + "ab12" * 16},
             "operation": {"sql": "SELECT name FROM users WHERE id = 7"}, "rows": 5, "ok": True}
    assert scrub(event) == event


def test_events_with_values_json_would_change_are_normalized_then_scrubbed():
    class Kind(enum.Enum):
        READ = "read"

    event = {"groups": frozenset({"b", "a"}), "kind": Kind.READ, "spans": (1, 2), "codes": {7: "x"},
             "db": {"password": ("p", 1)}, "sql": "ALTER ROLE a PASSWORD 'hunter2'"}
    assert scrub_event(event) == {"groups": ["a", "b"], "kind": "read", "spans": [1, 2], "codes": {"7": "x"},
                                  "db": {"password": REDACTED}, "sql": f"ALTER ROLE a PASSWORD '{REDACTED}'"}
    with pytest.raises(ValueError, match="not representable as JSON"):
        scrub_event({"latency": float("inf")})


def test_plain_events_come_back_equal_to_the_json_round_trip():
    event = {"kind": "statement", "n": 3, "ok": False, "ms": 0.25, "none": None, "nested": [{"a": "b"}, "é"]}
    assert scrub_event(event) == json.loads(json.dumps(event)) == event


def test_strings_shorter_than_any_secret_pattern_are_kept_as_they_are():
    shortest = "pwd:x"
    assert len(shortest) == SHORTEST_SECRET and scrub_text(shortest) != shortest
    assert all(scrub_text(text) != text for text in ("://a:b@", "pass:x", "-u a:b", "auth=x"))
    assert scrub_text("x PASSWORD ''") != "x PASSWORD ''" and len("PASSWORD ''") > SHORTEST_SECRET
    assert scrub({"agent": shortest[:-1], "url": shortest}) == {"agent": shortest[:-1], "url": scrub_text(shortest)}


def test_shared_summaries_are_read_only_and_scrubbed_like_any_dict():
    summary = SharedSummary({"exe": "/usr/bin/psql", "cmdline": ["psql", "postgresql://app:hunter2@db/prod"],
                             "password": "x"})
    with pytest.raises(TypeError, match="read-only"):
        summary["exe"] = "/bin/sh"
    with pytest.raises(TypeError, match="read-only"):
        summary.update(exe="/bin/sh")
    first = scrub_event({"kind": "statement", "process": summary})
    again = scrub_event({"kind": "statement", "process": summary})
    assert first == again == {"kind": "statement", "process": {
        "exe": "/usr/bin/psql", "cmdline": ["psql", f"postgresql://app:{REDACTED}@db/prod"], "password": REDACTED}}
    assert isinstance(first["process"], dict)
    assert first["process"] is again["process"]  # scrubbed once, kept with the summary
    assert copy.deepcopy(summary) == summary and pickle.loads(pickle.dumps(summary)) == summary
    other = SharedSummary({"exe": "/usr/bin/python3"})
    assert scrub_event({"process": other}) == {"process": {"exe": "/usr/bin/python3"}}


@pytest.mark.parametrize(("command", "scrubbed"), [
    ("mysqldump --password=hunter2 --all-databases", "mysqldump --password=[REDACTED] --all-databases"),
    ("tool --password=-hunter2", "tool --password=[REDACTED]"),
    ("redis-cli --pass hunter2 ping", "redis-cli --pass [REDACTED] ping"),
    ("tool --api-key 'hunter 2' x --auth-token=\"hunter2\"",
     "tool --api-key '[REDACTED]' x --auth-token=\"[REDACTED]\""),
    ("curl -u admin:hunter2 https://x", "curl -u admin:[REDACTED] https://x"),
    ("curl -uadmin:hunter2 --proxy-user 'p:hunter2' x", "curl -uadmin:[REDACTED] --proxy-user 'p:[REDACTED]' x"),
    ("openssl rsa -passin pass:hunter2 -passout 'pass:hunter2'",
     "openssl rsa -passin pass:[REDACTED] -passout 'pass:[REDACTED]'"),
    ("mysql -uroot -phunter2 db; ls -p x", "mysql -uroot -p[REDACTED] db; ls -p x"),
    ("/usr/bin/mariadb-dump -phunter2 db", "/usr/bin/mariadb-dump -p[REDACTED] db"),
    ("redis-cli -a hunter2 ping && sshpass -p hunter2 ssh h",
     "redis-cli -a [REDACTED] ping && sshpass -p [REDACTED] ssh h"),
    ("PGPASSWORD=hunter2 psql; export MYSQL_PWD='hunter2' GITHUB_TOKEN=hunter2",
     "PGPASSWORD=[REDACTED] psql; export MYSQL_PWD='[REDACTED]' GITHUB_TOKEN=[REDACTED]"),
    ("curl -H 'Authorization: Bearer hunter2' -H \"X-Api-Key: hunter2\" -H 'Cookie: a=b; c=hunter2' x",
     "curl -H 'Authorization: Bearer [REDACTED]' -H \"X-Api-Key: [REDACTED]\" -H 'Cookie: [REDACTED]' x"),
    ("bash -c 'mysql -phunter2 db | gzip'", "bash -c 'mysql -p[REDACTED] db | gzip'"),
])
def test_command_line_credentials_are_masked_and_their_names_kept(command, scrubbed):
    assert scrub_text(command) == scrubbed


@pytest.mark.parametrize("command", [
    "sudo -u root ls", "mkdir -p /srv/x", "ssh -p 22 host", "mysql -p db", "docker login --password-stdin -u x",
    "psql --no-password db", "tool --token-file /run/t", "openssl rsa -passin env:KEY -passout file:/k",
    "PWD=/srv ls", "SELECT a -b FROM t", "sort -k 2 -t : f", "curl https://x/a:b",
])
def test_command_lines_without_credentials_are_kept(command):
    assert scrub_text(command) == command


def test_an_argv_list_is_scrubbed_with_each_option_beside_its_value():
    argv = ["curl", "-u", "admin:hunter2", "--password", "hunter2", "-H", "Authorization: Bearer hunter2", "x"]
    assert scrub(argv) == ["curl", "-u", f"admin:{REDACTED}", "--password", REDACTED, "-H",
                           f"Authorization: Bearer {REDACTED}", "x"]
    assert scrub(["mysql", "-phunter2"]) == ["mysql", f"-p{REDACTED}"]
    assert scrub(["sudo", "-u", "root", "ls"]) == ["sudo", "-u", "root", "ls"]
    cookie = ["curl", "-H", "Cookie: a=b; c=hunter2;d=hunter2", "x"]
    assert scrub(cookie) == ["curl", "-H", f"Cookie: {REDACTED}; c={REDACTED};d={REDACTED}", "x"]
    shell = ["sh", "-c", "Cookie: a; c=b rm x; ls", "x"]
    assert scrub(shell) == ["sh", "-c", f"Cookie: {REDACTED}; c={REDACTED} rm x; ls", "x"]


@pytest.mark.parametrize("text", ["'" + "mysql -pa\" " * 20000, "zip -P '" * 20000, "a=\\'$'" * 20000, "Cookie: " * 20000,
                                  "Cookie: a;b=c" * 10000,
                                  "--pass \"" * 20000, "Authorization: " * 10000, "mysql " * 20000, "-u " * 30000,
                                  "key: '" * 20000, "--token=" * 20000, "a:" * 30000])
def test_command_line_scrubbing_takes_linear_time(text):
    start = time.perf_counter()
    scrub_text(text)
    assert time.perf_counter() - start < 0.5, "a pattern backtracks over the text"


@pytest.mark.parametrize(("command", "scrubbed"), [
    ("echo 'password=x'; rm -rf /srv", "echo 'password=[REDACTED]'; rm -rf /srv"),
    ("curl -H \"X-Api-Key:x\" h; crontab -r", "curl -H \"X-Api-Key:[REDACTED]\" h; crontab -r"),
    ("bash -c 'echo \"token=x\"; rm -rf /'", "bash -c 'echo \"token=[REDACTED]\"; rm -rf /'"),
    ("echo $'pass:x\\'; rm -rf /srv", "echo $'pass:[REDACTED]'; rm -rf /srv"),
    ("tool --password=x'y; rm -rf /srv", "tool --password=[REDACTED]'y; rm -rf /srv"),
    ("tool --password=x|rm -rf /srv", "tool --password=[REDACTED]|rm -rf /srv"),
    ("curl -H Authorization:\\ x h; rm -rf /", "curl -H Authorization:[REDACTED] h; rm -rf /"),
    ("curl -H 'Cookie: a=b; c=d' h; ls", "curl -H 'Cookie: [REDACTED]' h; ls"),
    ("PGPASSWORD=x'; not a command' psql", "PGPASSWORD=[REDACTED]' psql"),
])
def test_a_value_ends_with_its_word_and_never_takes_a_separator(command, scrubbed):
    assert scrub_text(command) == scrubbed


_SAFE_WORDS = ("ls", "-la", "/srv/data", "echo", "x=1", "'a b'", '"c d"', "rm", "-rf", "cat", "f.txt", "--all", "5")
_SEPARATORS = (" ; ", ";", " && ", " || ", " | ", "|", "\n", " & ")
_CREDENTIALS = ("--password={}", "--token {}", "'password={}'", '"token={}"', "PGPASSWORD={}", "DB_PASSWORD='{}'",
                "-H 'Authorization: Bearer {}'", '-H "X-Api-Key:{}"', "pass:{}", '"--password={}"', "mysql -p{}",
                "sshpass -p {}", "-u bob:{}", "'user=bob&password={}'", "export API_TOKEN=\"{}\"",
                "docker login -p {}", "smbclient -U bob%{}", "7z a -p{}", "echo $'secret={}'",
                "-H 'Cookie: a=b; c={}'")


def _commands(generator, count):
    """`count` random commands as (prefix, credential word, suffix, secret): safe words and
    separators around one credential."""
    def words():
        text = ""
        for _ in range(generator.randrange(4)):
            chosen = generator.choices(_SAFE_WORDS, k=generator.randrange(1, 4))
            text += generator.choice(_SEPARATORS) + " ".join(chosen)
        return text
    for _ in range(count):
        secret = "".join(generator.choices("abcXYZ019_.+/%", k=generator.randrange(1, 12)))
        prefix = " ".join(generator.choices(_SAFE_WORDS, k=generator.randrange(3))) + words()
        yield (prefix + (" " if prefix and prefix[-1] not in ";|&\n" else ""),
               generator.choice(_CREDENTIALS).format(secret), words() or generator.choice(_SEPARATORS) + "ls", secret)


def test_every_separator_and_every_word_after_a_credential_survives_scrubbing():
    for prefix, credential, suffix, secret in _commands(random.Random(17), 3000):
        command = prefix + credential + suffix
        scrubbed = scrub_text(command)
        assert scrubbed.startswith(prefix) and scrubbed.endswith(suffix), (command, scrubbed)
        assert REDACTED in scrubbed[len(prefix):len(scrubbed) - len(suffix)], (command, scrubbed)
        assert len(secret) < 3 or secret not in scrubbed[len(prefix):len(scrubbed) - len(suffix)], (command, scrubbed)


@pytest.mark.parametrize("command", [
    "DB_PASSWORD=hunter2 ./migrate", "DATABASE_PASSWORD=hunter2 ./app", "./app --db-password=hunter2",
    "export DB_PASS=hunter2", "API_KEY=hunter2", "AWS_SECRET_ACCESS_KEY=hunter2", "tool --private-key=hunter2",
    "docker login -u bob -p hunter2 r", "podman login -phunter2 r", "smbclient //f/s -U bob%hunter2",
    "smbclient //f/s --user=bob%hunter2", "ldapmodify -x -w hunter2", "ldapadd -whunter2", "ldappasswd -a hunter2",
    "ldappasswd -s hunter2", "sqlcmd -S db -P hunter2", "bcp t out f -P hunter2", "mongosh -p hunter2 admin",
    "mongodump -p hunter2", "ssh-keygen -P hunter2 -f k", "ssh-keygen -N hunter2 -f k", "openssl enc -k hunter2",
    "openssl aes-256-cbc -pass pass:hunter2", "zip -P hunter2 a.zip f", "unzip -P hunter2 a.zip",
    "7za x -phunter2 a.7z",
    "aws configure set aws_secret_access_key hunter2", "aws configure set default.aws_session_token hunter2",
    "htpasswd -b /etc/h bob hunter2", "htpasswd -nbB bob hunter2", "htpasswd -b -C 12 /etc/h bob hunter2",
    "mysqladmin -phunter2 status",
])
def test_credential_spellings_and_program_password_options_are_masked(command):
    assert "hunter2" not in scrub_text(command) and REDACTED in scrub_text(command)


@pytest.mark.parametrize("command", [
    "sort -t, --key=2 /var/log/app.csv", "curl --key /etc/ssl/client.key https://h/",
    "openssl req -new -key /srv/k.pem",
    "grep -r key: /etc/app", "openssl req -keyout k.pem -new", "docker run -p 8080:80 img", "7z a -p a.7z f",
    "htpasswd -c /etc/h bob", "aws configure set region eu-west-1", "smbclient -U bob //f/s", "ansible --ask-pass h",
    "tool --password_env PW", "aws_access_key_id=AKIAEXAMPLE", "curl --cookie-jar /tmp/c https://h", "mongod --port 1",
    "ssh-keygen -t ed25519 -f k", "zip -r a.zip f", "ssh -p 22 host",
])
def test_names_with_key_and_options_of_other_programs_are_kept(command):
    assert scrub_text(command) == command
