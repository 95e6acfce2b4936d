"""SSH path globs (`read:`/`write:` rules): matched position set by position set, never by a
backtracking regex, whose time an agent's path could make explode for everyone."""

from __future__ import annotations

import random
import re

import pytest

from interceptor.policy.ssh_rules import _path_match


def oracle(glob: str) -> re.Pattern[str]:
    """The globs' meaning written as a regex (what the matcher replaced): `*`, `?`, `[...]`
    within a segment, `**` across segments, `/**` also nothing."""
    out, i = [], 0
    while i < len(glob):
        if glob.startswith("/**", i) and (i + 3 == len(glob) or glob[i + 3] == "/"):
            out.append("(?:/.*)?")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] in "*?":
            out.append("[^/]*" if glob[i] == "*" else "[^/]")
            i += 1
        elif glob[i] == "[" and (end := glob.find("]", i + 2)) > 0 and glob[i + 1:end] != "!":
            body = glob[i + 1:end]
            negate = body[:1] == "!"
            body = body[1:] if negate else body
            out.append(f"(?!/)[{'^' if negate else ''}{re.escape(body).replace(chr(92) + '-', '-')}]")
            i = end + 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(out), re.DOTALL)


GLOBS = ["/**", "/a/**", "/**/a/**/b", "/a*b", "/*/b", "/a/**b", "/[ab]/*", "/[!a]?", "/**a**b", "/a/**/", "/**/**",
         "*", "**", "/a?b/**/c*", "/var/log/*.log", "/srv/[a-c]*/x"]


@pytest.mark.parametrize("seed", range(5))
def test_the_matcher_agrees_with_the_globs_meaning(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(1000):
        glob = rng.choice(GLOBS) if rng.random() < 0.5 else "".join(rng.choice("ab/*?[]!") for _ in range(9))[
            :rng.randint(1, 9)]
        if rng.random() < 0.3:
            glob = "/**" + glob
        path = "".join(rng.choice("ab/.\n-") for _ in range(rng.randint(0, 12)))
        try:
            meaning = oracle(glob)
        except re.error:  # a class no rule can hold (the policy's loader refuses it)
            continue
        assert _path_match(glob, path) == bool(meaning.fullmatch(path)), (glob, path)


def test_a_glob_that_makes_a_regex_backtrack_is_matched_at_once() -> None:
    """`/**/a/**/b/**/c/**/*.txt` on a 2,400-character path took the regex 52 s on the
    event loop every flow shares; an agent chooses its paths."""
    long_path = "/" + "a/b/c/" * 400 + "x"
    assert not _path_match("/**/a/**/b/**/c/**/*.txt", long_path)
    assert _path_match("/**/a/**/b/**/c/**/*.txt", long_path + ".txt")
    assert not _path_match("/**a**a**a**a**b", "/" + "a" * 4000)
