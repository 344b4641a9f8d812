"""``callengine run``'s NATS options: credentials and the multi-node fan-out.

The options and their environment fallbacks are parsed like the CLI does; then ``callengine run``
(``engine.run.main``, ``--in-process``) runs against a real nats-server that requires a user and a
password: with the right ones the node starts (every NATS use of the node goes over that one
authenticated connection, the fan-out feed included), with wrong ones it fails within seconds, says
why in one line and exits 2, before PostgreSQL is even started."""

from __future__ import annotations

import argparse
import pathlib
import socket
import subprocess
import tempfile
import time

import pytest
import trio

from engine.run import EpochClock, RunOptions, add_parser, main, nats_options, open_engine

USER, PASSWORD = "engine", "s3cret-pass"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="callengine")
    add_parser(p.add_subparsers())
    return p


def _args(*argv: str) -> argparse.Namespace:
    return _parser().parse_args(["run", *argv])


def test_help_names_every_nats_option_and_its_variable(capsys) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option, env in [("--nats-url", "CALLENGINE_NATS_URL"), ("--nats-creds", "NATS_CREDS"),
                        ("--nats-user", "NATS_USER"), ("--nats-password", "NATS_PASSWORD"),
                        ("--nats-token", "NATS_TOKEN"), ("--nats-nkey-seed", "NATS_NKEY"),
                        ("--fanout", "CALLENGINE_FANOUT")]:
        assert option in text and env in text, (option, env)
    assert "{local,nats}" in text


def test_options_fall_back_to_the_environment_and_the_command_line_wins(monkeypatch) -> None:
    for name in ("CALLENGINE_NATS_URL", "CALLENGINE_NATS_USER", "CALLENGINE_NATS_PASSWORD", "CALLENGINE_FANOUT",
                 "CALLENGINE_NATS_CREDS", "CALLENGINE_NATS_TOKEN", "CALLENGINE_NATS_NKEY_SEED",
                 "NATS_CREDS", "NATS_TOKEN", "NATS_NKEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CALLENGINE_NATS_URL", "nats://10.0.0.1:4222")
    monkeypatch.setenv("NATS_USER", "env-user")
    monkeypatch.setenv("NATS_PASSWORD", "env-pass")
    o = nats_options(RunOptions.from_env(), _args())
    assert (o.nats_url, o.nats_user, o.nats_password, o.fanout) == ("nats://10.0.0.1:4222", "env-user", "env-pass",
                                                                    "local")
    settings = o.nats_settings(o.nats_url)
    assert (settings.user, settings.password, settings.creds, settings.token) == ("env-user", "env-pass", None, None)
    o = nats_options(RunOptions.from_env(), _args("--nats-user", "cli-user", "--nats-password", "cli-pass",
                                                  "--fanout", "nats"))
    assert (o.nats_user, o.nats_password, o.fanout) == ("cli-user", "cli-pass", "nats")
    monkeypatch.setenv("CALLENGINE_NATS_PASSWORD", "engine-pass")  # ours first, then the NATS tools' one
    assert RunOptions.from_env().nats_password == "engine-pass"


def test_contradictory_options_are_refused_with_the_reason(monkeypatch) -> None:
    for name in ("CALLENGINE_NATS_URL", "NATS_USER", "NATS_PASSWORD", "CALLENGINE_NATS_USER",
                 "CALLENGINE_NATS_PASSWORD", "NATS_CREDS", "NATS_TOKEN", "NATS_NKEY", "CALLENGINE_FANOUT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit, match="user and password go together"):
        nats_options(RunOptions.from_env(), _args("--nats-url", "nats://x:4222", "--nats-user", "u"))
    with pytest.raises(SystemExit, match="embedded nats-server takes none"):
        nats_options(RunOptions.from_env(), _args("--nats-token", "t"))
    with pytest.raises(SystemExit):
        _args("--fanout", "everywhere")


# ---------------------------------------------------------------- against a real nats-server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def auth_nats(tmp_path):
    """A nats-server (JetStream) that requires USER/PASSWORD, as a plain process: ``main`` runs
    its own trio loop, so the server cannot live in one."""
    from adapters.nats.server import find_binary

    conf = tmp_path / "nats.conf"
    conf.write_text(f'authorization {{ user: "{USER}", password: "{PASSWORD}" }}\n')
    port = _free_port()
    proc = subprocess.Popen([find_binary(), "-c", str(conf), "-a", "127.0.0.1", "-p", str(port), "-js",
                             "-sd", str(tmp_path / "js")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "nats-server did not start"
                time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def state(monkeypatch):
    from adapters.postgres.embedded import EmbeddedPostgres

    path = pathlib.Path(tempfile.mkdtemp(prefix="callengine-run-opts-"))
    monkeypatch.setenv("CALLENGINE_STATE_DIR", str(path))  # the embedded PostgreSQL lives there
    for name in ("CALLENGINE_PG_DSN", "CALLENGINE_NATS_URL", "NATS_USER", "NATS_PASSWORD", "CALLENGINE_NATS_USER",
                 "CALLENGINE_NATS_PASSWORD", "NATS_CREDS", "NATS_TOKEN", "NATS_NKEY", "CALLENGINE_FANOUT"):
        monkeypatch.delenv(name, raising=False)
    yield path
    EmbeddedPostgres(path / "pg").stop()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_run_with_wrong_credentials_fails_fast_and_says_why(auth_nats, state, capsys) -> None:
    t0 = time.monotonic()
    code = main(_args("--in-process", "--state-dir", str(state), "--seconds", "30", "--nats-url", auth_nats,
                      "--nats-user", USER, "--nats-password", "wrong"))
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot connect to NATS" in err and "refused the credentials" in err, err
    assert elapsed < 10, elapsed
    assert not (state / "pg").exists()  # NATS is checked before PostgreSQL starts


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_run_with_the_right_credentials_starts(auth_nats, state, capsys, monkeypatch) -> None:
    monkeypatch.setenv("NATS_USER", USER)  # the user from the environment, the password on the command line
    code = main(_args("--in-process", "--state-dir", str(state), "--seconds", "1", "--nats-url", auth_nats,
                      "--nats-password", PASSWORD, "--fanout", "nats"))
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"nats {auth_nats}" in out and "running (in process)" in out, out


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_node_uses_the_credentials_for_publisher_api_and_fanout(auth_nats, state) -> None:
    out: dict = {}

    async def run() -> None:
        from adapters.freeswitch.config import EslNodeConfig
        from sim.freeswitch import FreeSwitchEmulator

        emu = FreeSwitchEmulator(heartbeat=1.0)
        async with trio.open_nursery() as outer:
            port = await outer.start(emu.run)
            options = RunOptions(secret="s" * 32, state_dir=str(state), in_process=True, node_name="t",
                                 esl_nodes=[EslNodeConfig(name="fs1", port=port)], esl_heartbeat_s=1.0,
                                 nats_url=auth_nats, nats_user=USER, nats_password=PASSWORD, fanout="nats")
            async with open_engine(options) as engine:
                s = engine.stack
                out["connected"] = s.bridge.nc.is_connected
                out["fanout"] = s.fanout is not None and s.hub.feed is s.fanout
                out["services"] = len(s.services)
            outer.cancel_scope.cancel()

    trio.run(run, clock=EpochClock())
    assert out["connected"] and out["fanout"] and out["services"] > 0, out
