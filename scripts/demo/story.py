"""`make demo`: the README's story, non-interactively, with real clients. Each step prints the
command it runs and what came back; anything unexpected stops the demo with a non-zero exit.
Everything it starts is stopped and removed at the end."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
INTERCEPTOR = str(BIN / "interceptor")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import env  # noqa: E402  (scripts/demo/env.py)


class DemoFailed(RuntimeError):
    pass


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def run(argv: list[str], expect_ok: bool = True, **kwargs) -> subprocess.CompletedProcess:
    shown = [("interceptor" if a == INTERCEPTOR else a) for a in argv]
    print("$ " + " ".join(shlex.quote(a) for a in shown), flush=True)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)
    output = (result.stdout + result.stderr).rstrip()
    if output:
        print(output, flush=True)
    if expect_ok and result.returncode != 0:
        raise DemoFailed(f"{shown[0]} {shown[1]} exited with {result.returncode}")
    return result


def psql(port: int, *commands: str) -> list[str]:
    argv = [INTERCEPTOR, "exec", "--agent", "demo", "--", "psql",
            f"host=127.0.0.1 port={port} dbname=shop user=agent", "-X"]
    for command in commands:
        argv += ["-c", command]
    return argv


def wait_for(predicate, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise DemoFailed(f"timed out waiting for {what}")


def story(port: int, settings: Path, policy: Path) -> None:
    cli = [INTERCEPTOR, "--config", str(settings)]

    step("1. The daemon, its agents and resources")
    wait_for(lambda: subprocess.run(cli + ["status"], capture_output=True).returncode == 0, "the daemon")
    wait_for(lambda: json.loads(subprocess.run(cli + ["status", "--json"], capture_output=True, text=True).stdout)
             ["agents"][0]["identity"], "the demo agent's identity from the issuer")
    run(cli + ["status"])

    step("2. The agent reads customers: allowed, card numbers and emails masked")
    out = run(psql(port, "select * from customers order by id"))
    if "4111 1111 1111 1111" in out.stdout or "ada@example.com" in out.stdout:
        raise DemoFailed("a clear card number or email reached the agent")
    if "card_number" not in out.stdout or "1111" not in out.stdout:
        raise DemoFailed("select * from customers did not return the customers (masked)")

    step("2b. Names resolve as the server resolves them: pg_catalog first, then the search_path")
    out = run(psql(port, "show search_path", "select current_user, current_schema()",
                   "select count(*) as customers from customers"))
    if "customers" not in out.stdout:
        raise DemoFailed("the session's bootstrap queries or an unqualified name were refused")
    run(cli + ["catalog", "show"])

    step("3. The agent tries DROP TABLE: denied by the rule, and the session goes on")
    out = run(psql(port, "drop table orders", "select count(*) as orders_left from orders"), expect_ok=False)
    if "demo-no-ddl" not in out.stderr or "orders_left" not in out.stdout:
        raise DemoFailed("the DROP was not denied by demo-no-ddl, or the session did not go on")

    step("4. The agent updates an order: held until a person approves")
    update = psql(port, "update orders set status = 'shipped' where id = 100")
    print("$ " + " ".join(shlex.quote("interceptor" if a == INTERCEPTOR else a) for a in update) + " &", flush=True)
    held = subprocess.Popen(update, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    request = wait_for(lambda: next(iter(json.loads(subprocess.run(
        cli + ["approvals", "list", "--json"], capture_output=True, text=True).stdout or "[]")), None),
        "the pending approval")
    run(cli + ["approvals", "list"])
    run(cli + ["approvals", "approve", request["request_id"]])
    output, _ = held.communicate(timeout=60)
    print(output.rstrip(), flush=True)
    if held.returncode != 0 or "UPDATE 1" not in output:
        raise DemoFailed("the approved UPDATE did not run")

    learn(port, cli, policy)

    step("10. The audit trail: every step above, hash-chained")
    run(cli + ["audit", "tail", "-n", "15"])
    run(cli + ["audit", "verify"])


# The analyst's task: three tables read, one updated (psql goes on after an error).
ANALYST = ["select id, name, email from customers order by id",
           "select id, amount, status from orders where status = 'new'",
           "select name, price from products order by name",
           "update products set price = 32.50 where id = 1"]
OUTSIDE = ["select id, iban from payments", "delete from orders where id = 102"]


def learn(port: int, cli: list[str], policy: Path) -> None:
    """Steps 5-9: learn mode, suggest, diff, shadow, and the suggested policy enforced; `policy`: the
    demo policy the daemon runs."""
    step("5. Learn mode: the analyst's task runs once while the daemon learns (no rule allows its UPDATE)")
    run(cli + ["learn", "start", "--agent", "demo", "--for", "10m"])
    out = run(psql(port, *ANALYST), expect_ok=False)
    if "UPDATE 1" not in out.stdout or "ada@example.com" in out.stdout:
        raise DemoFailed("the learned UPDATE did not run, or learn mode showed an unmasked email")
    run(cli + ["learn", "stop", "--agent", "demo"])

    step("6. The policy that allows exactly what it did (allow rules here; approve rules by default)")
    work = Path(tempfile.mkdtemp(prefix="interceptor-learn-"))
    suggested = work / "suggested.yaml"
    run(cli + ["policy", "suggest", "--agent", "demo", "--effect", "allow", "-o", str(suggested)])
    print(suggested.read_text().rstrip(), flush=True)
    run(cli + ["policy", "check", str(suggested)])
    run(cli + ["policy", "test", str(work / "suggested.tests.yaml")])

    step("7. What the demo policy grants that the task never used, and what it used that the demo policy refuses")
    out = run(cli + ["policy", "diff", str(policy), str(suggested)], expect_ok=False)
    if "demo-read-catalog" not in out.stdout or "public.products" not in out.stdout:
        raise DemoFailed("policy diff did not list the unused catalog grant and the used UPDATE")

    step("8. A shadow run of the suggested policy beside the demo policy: the statements outside it")
    run(cli + ["policy", "shadow", "--agent", "demo", str(suggested)])
    run(psql(port, *ANALYST, *OUTSIDE), expect_ok=False)
    run(cli + ["policy", "shadow", "stop", "--agent", "demo"])
    out = run(cli + ["policy", "shadow", "report"])
    if not all(statement.split(" where")[0] in out.stdout.lower() for statement in OUTSIDE):
        raise DemoFailed("the shadow report did not list the statements outside the suggested policy")

    step("9. The suggested policy enforced: the same task runs unchanged; another table and a write are denied")
    run(cli + ["policy", "reload", str(suggested)])
    try:
        task = run(psql(port, *ANALYST), expect_ok=False)
        outside = run(psql(port, *OUTSIDE), expect_ok=False)
    finally:
        run(cli + ["policy", "reload", str(policy)])
    if "ERROR" in task.stderr or "UPDATE 1" not in task.stdout:
        raise DemoFailed("the task did not run unchanged under the suggested policy")
    if outside.stderr.count("denied") < 2:
        raise DemoFailed("reading payments or deleting an order was not denied under the suggested policy")


def main() -> int:
    if os.geteuid() != 0:
        print("make demo needs root (BPF hooks, cgroups): sudo make demo", file=sys.stderr)
        return 1
    policy, port = env.up()
    work = Path(tempfile.mkdtemp(prefix="interceptor-demo-"))
    settings = work / "interceptor.yaml"
    settings.write_text(json.dumps({"policy": str(policy), "state_dir": str(work / "state"),
                                    "control_socket": str(work / "control.sock"),
                                    "audit": {"store": "sqlite", "path": str(work / "audit.db")}}))
    log = open(work / "daemon.log", "w")
    daemon = subprocess.Popen([INTERCEPTOR, "--config", str(settings), "run"], stdout=log, stderr=log)
    try:
        story(port, settings, policy)
        print("\ndemo: all steps behaved as described", flush=True)
        return 0
    except (DemoFailed, subprocess.TimeoutExpired) as exc:
        print(f"\ndemo FAILED: {exc}\n--- daemon log ---\n{(work / 'daemon.log').read_text()[-3000:]}", flush=True)
        return 1
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        subprocess.run([INTERCEPTOR, "--config", str(settings), "uninstall"], capture_output=True)
        env.down()


if __name__ == "__main__":
    sys.exit(main())
