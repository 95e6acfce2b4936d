"""The `interceptor` command line: the daemon, agents, and the control socket's client.

Human-readable tables by default, `--json` everywhere output is data; exit status 0 on
success, 1 on a refused or failed operation, 2 on a usage error (click's).
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from interceptor import __version__
from interceptor.config import ConfigError, Settings, load_settings
from interceptor.cli_support import call, utc
from interceptor.control import ControlClient, ControlError, ControlMethod
from interceptor.identity.display import identity_columns


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj["settings"]
    return settings


def _client(ctx: click.Context) -> ControlClient:
    client: ControlClient = ctx.obj["control"]
    return client


def emit(data: Any, as_json: bool, human: Callable[[Any], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        human(data)


def table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    if not rows:
        click.echo("(none)")
        return
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


@click.group()
@click.version_option(__version__, prog_name="interceptor")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), envvar="INTERCEPTOR_CONFIG",
              help="Daemon settings file [default: /etc/interceptor/interceptor.yaml if present].")
@click.pass_context
def main(ctx: click.Context, config_path: Path | None) -> None:
    """Least-privilege access for AI agents, enforced on this host."""
    try:
        settings = load_settings(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    ctx.obj = {"settings": settings, "control": ControlClient(settings.control_socket)}


@main.command()
@click.option("--policy", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Policy file [default: the settings' policy, else the shipped policy/default.yaml].")
@click.option("--redirect", type=click.Choice(["bpf", "iptables", "auto"]), help="Override the redirect mode.")
@click.option("--log-level", default="INFO", show_default=True)
@click.pass_context
def run(ctx: click.Context, policy: Path | None, redirect: str | None, log_level: str) -> None:
    """Run the daemon in the foreground (what the systemd unit starts)."""
    from dataclasses import replace

    from interceptor import daemon
    from interceptor.logs import setup_logging

    settings = _settings(ctx)
    if policy:
        settings = replace(settings, policy=policy.resolve())
    if redirect:
        settings = replace(settings, redirect=redirect)
    setup_logging(log_level)
    try:
        daemon.run(settings)
    except Exception as exc:
        logging.getLogger("interceptor").error("daemon failed to start: %s", exc)
        raise click.ClickException(str(exc)) from exc


@main.command(name="exec", context_settings={"ignore_unknown_options": True})
@click.option("--agent", required=True, help="Agent name from the policy.")
@click.option("--user", help="Run the command as this user (after joining the agent's cgroup).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(agent: str, user: str | None, command: tuple[str, ...]) -> None:
    """Run COMMAND as agent AGENT: it and everything it starts are diverted to the enforcer."""
    from interceptor.redirect import cgroups

    mount = cgroups.find_mount()
    path = cgroups.agent_cgroup(mount, agent) if mount else None
    if path is None or not path.is_dir():
        raise click.ClickException(
            f"agent {agent!r} is not known to the daemon (no cgroup {path or '<cgroup2>/interceptor/' + agent}): "
            "start the daemon with a policy that names this agent")
    try:
        cgroups.join(path)
    except PermissionError as exc:
        raise click.ClickException(f"cannot join {path}: run as root (sudo interceptor exec ...)") from exc
    if user:
        entry = pwd.getpwnam(user)
        os.initgroups(entry.pw_name, entry.pw_gid)
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
        os.environ.update(HOME=entry.pw_dir, USER=entry.pw_name, LOGNAME=entry.pw_name)
    try:
        os.execvp(command[0], list(command))
    except OSError as exc:
        raise click.ClickException(f"{command[0]}: {exc.strerror}") from exc


def _running_mode(ctx: click.Context) -> str | None:
    """The running daemon's redirect mode ("bpf" or "iptables"), None when no daemon answers."""
    try:
        mode = _client(ctx).call(ControlMethod.STATUS)["redirect"]
    except ControlError:
        return None
    return str(mode)


@main.command()
@click.option("--agent", help="Instead: run this agent's identity source once and explain the result.")
@click.option("--policy", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Policy file naming the agent, or whose resources' credentials are checked "
                   "[default: the settings' policy].")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def doctor(ctx: click.Context, agent: str | None, policy: Path | None, as_json: bool) -> None:
    """Check every kernel feature and component the daemon needs, or (--agent) one agent's identity."""
    import asyncio
    from dataclasses import asdict

    from interceptor.doctor import run_checks, verdict
    from interceptor.doctor_agent import explain_agent, identity_verdict
    from interceptor.policy.loader import PolicyError, load_policy

    if agent is None:
        checks = run_checks(_running_mode(ctx), policy or _settings(ctx).policy, _settings(ctx).state_dir)
        ok, summary = verdict(checks)
    else:
        try:
            loaded = load_policy(policy or _settings(ctx).policy)
        except PolicyError as exc:
            raise click.ClickException(str(exc)) from exc
        checks = asyncio.run(explain_agent(loaded, agent))
        ok, summary = identity_verdict(agent, checks)
    if as_json:
        click.echo(json.dumps({"ok": ok, "summary": summary, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        for c in checks:
            click.echo(f"{'ok  ' if c.ok else 'warn' if c.needed_for == 'optional' else 'FAIL'}  {c.name}: {c.detail}")
            if not c.ok and c.fix:
                click.echo(f"      fix: {c.fix}")
        click.echo(summary)
    sys.exit(0 if ok else 1)


@main.command()
@click.pass_context
def uninstall(ctx: click.Context) -> None:
    """Remove every BPF program, iptables rule and managed cgroup. Agents are then no longer diverted."""
    from interceptor.redirect import cgroups
    from interceptor.redirect.bpf import detach_all
    from interceptor.redirect.iptables import IptablesRedirect

    try:
        _client(ctx).call(ControlMethod.STATUS)
    except ControlError:
        pass
    else:
        raise click.ClickException("the daemon is running: stop it first (systemctl stop interceptor)")
    mount = cgroups.find_mount()
    removed = 0
    if mount:
        try:
            removed = detach_all(mount)
        except OSError as exc:
            click.echo(f"warning: could not query BPF programs: {exc}", err=True)
        IptablesRedirect(mount).uninstall()
        busy = cgroups.remove_managed(mount)
        if busy:
            click.echo(f"agent cgroups still holding processes (left in place): {', '.join(busy)}")
    click.echo(f"removed {removed} BPF program(s) and all interceptor iptables rules")


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """The daemon, its redirect mode, agents with identities, resources and policy version."""
    data = call(ctx, ControlMethod.STATUS)

    def human(d: dict[str, Any]) -> None:
        click.echo(f"interceptor {d['version']}  pid {d['pid']}  up {d['uptime_s']}s  redirect {d['redirect']}")
        click.echo(f"policy {d['policy']['version']}  ({d['policy']['path']})  sessions {d['sessions']}")
        compiled, pure = d["compiled"]["compiled"], d["compiled"]["pure_python"]
        click.echo(f"hot modules compiled {len(compiled)}/{len(compiled) + len(pure)}"
                   + (f"  (pure Python: {', '.join(pure)})" if pure else ""))
        click.echo("\nagents:")
        now = time.time()
        table([{"name": a["name"], "unprotected": a["unprotected"], **identity_columns(a["identity"], now)}
               for a in d["agents"]],
              ["name", "unprotected", "identity", "subject", "groups", "expires", "checked", "reason"])
        click.echo("\nresources:")
        table([{"name": r["name"], "protocol": r["protocol"], "addresses": " ".join(r["addresses"])}
               for r in d["resources"]], ["name", "protocol", "addresses"])
        _show_modes(d)

    emit(data, as_json, human)


def _show_modes(status: dict[str, Any]) -> None:
    """The learn and shadow runs of `status`: running ones, and learn runs that ended."""
    learn, shadows = status["learn"], status["shadow"]
    if learn["learning"] or learn["ended"]:
        click.echo("\nlearning:")
        table([{"agent": r["agent"], "session": r["session"], "resources": ", ".join(r["resources"] or ["all"]),
                "state": f"ended ({r['why']})" if "ended" in r else "learning",
                "when": utc(r.get("ended") or r["until"])
                if r.get("ended") or r["until"] else "until stopped"}
               for r in [*learn["learning"], *learn["ended"]]], ["agent", "session", "resources", "state", "when"])
    if shadows:
        click.echo("\nshadow runs:")
        table(shadows, ["agent", "session", "version", "path"])


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def sessions(ctx: click.Context, as_json: bool) -> None:
    """Live connections: agent, pid, exe, identity, resource, bytes, age."""
    data = call(ctx, ControlMethod.SESSIONS)
    emit(data, as_json, lambda rows: table(
        [dict(r, subject=(r.get("identity") or {}).get("subject", "-")) for r in rows],
        ["flow_id", "agent", "pid", "exe", "subject", "resource", "bytes_up", "bytes_down", "age_s"]))


def _show_prompt(prompt: dict[str, Any], who: str, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(prompt))
    else:
        where = prompt.get("verification_uri_complete") or prompt["verification_uri"]
        click.echo(f"To sign in {who}, open {where}\nand enter the code: {prompt['user_code']}")


@main.command()
@click.option("--agent", help="Sign in for this agent (identity source `login`); without it, sign yourself in "
                              "for the CLI (approvals).")
@click.option("--timeout", default=600, show_default=True, help="Seconds to wait for the sign-in.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def login(ctx: click.Context, agent: str | None, timeout: int, as_json: bool) -> None:
    """Sign in with the OAuth device flow.

    With --agent, for an agent whose identity source is `login`: the token goes to the daemon,
    never to the agent or its environment. Without it, you sign in for the CLI, so that your
    approvals carry your Okta identity and groups.
    """
    import asyncio
    import time

    if agent is None:
        from interceptor.identity.approver import sign_in
        from interceptor.identity.errors import IdentityConfigError, IdentityProviderError, InvalidToken

        try:
            identity = asyncio.run(sign_in(_settings(ctx).approvals, lambda p: _show_prompt(p, "for the CLI", as_json)))
        except (IdentityConfigError, IdentityProviderError, InvalidToken) as exc:
            raise click.ClickException(str(exc)) from exc
        if not as_json:
            click.echo(f"signed in as {identity.subject} (groups: {', '.join(sorted(identity.groups)) or '-'})")
        return
    prompt = call(ctx, ControlMethod.IDENTITY_LOGIN, agent=agent)
    _show_prompt(prompt, f"for agent {agent}", as_json)
    deadline = time.monotonic() + min(timeout, float(prompt.get("expires_in") or timeout))
    while time.monotonic() < deadline:
        entry: dict[str, Any] = next((e for e in call(ctx, ControlMethod.IDENTITY_STATUS) if e["agent"] == agent), {})
        if entry.get("state") == "valid" and not entry.get("login_pending"):
            if not as_json:
                click.echo(f"signed in: agent {agent} acts as {entry['subject']} "
                           f"(groups: {', '.join(entry['groups']) or '-'})")
            return
        if entry.get("last_error") and not entry.get("login_pending"):
            raise click.ClickException(f"sign-in failed: {entry['last_error']}")
        time.sleep(1)
    raise click.ClickException("sign-in timed out")


@main.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL.

    \b
    bash: interceptor completion bash > /etc/bash_completion.d/interceptor
    zsh:  interceptor completion zsh > "${fpath[1]}/_interceptor"
    fish: interceptor completion fish > ~/.config/fish/completions/interceptor.fish
    """
    from click.shell_completion import get_completion_class

    completion_class = get_completion_class(shell)
    if completion_class is None:
        raise click.ClickException(f"click has no completion for {shell}")
    complete = completion_class(main, {}, "interceptor", "_INTERCEPTOR_COMPLETE")
    click.echo(complete.source())


def _register_groups() -> None:
    """Command groups that live next to the code they drive."""
    from interceptor.policy.cli import policy

    @policy.command()
    @click.argument("file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def reload(ctx: click.Context, file: Path | None, as_json: bool) -> None:
        """Swap the daemon's policy atomically; a bad file is rejected and the old policy stays."""
        result = call(ctx, ControlMethod.POLICY_RELOAD, path=str(file.resolve()) if file else None)
        emit(result, as_json, lambda r: click.echo(f"policy {r['version']} loaded from {r['path']}"))

    from interceptor.policy.shadow_cli import shadow

    policy.add_command(shadow)
    main.add_command(policy)

    from interceptor.approvals.cli import approvals
    from interceptor.audit.cli import audit
    from interceptor.catalog_cli import catalog
    from interceptor.trust_cli import kubeconfig, trust

    main.add_command(approvals)
    main.add_command(audit)
    main.add_command(catalog)
    main.add_command(trust)
    main.add_command(kubeconfig)

    from interceptor.learn_cli import learn

    main.add_command(learn)


_register_groups()
