"""`smbdd check-config`: a corpus of bad files, each mistake one line naming its file and line;
the effective configuration of a good file; smbdd itself refusing to start on the same lines."""
from __future__ import annotations

import subprocess
import tomllib

import pytest

from tests.smbdd_process import SMBDD


def check(path) -> subprocess.CompletedProcess:
    return subprocess.run([*SMBDD, "check-config", str(path)], capture_output=True, text=True, timeout=30)


# (file body, the line of the mistake, what the message says); {d} is an existing directory
CORPUS = [
    ("[server]\nport = 70000\n", 2, "[server] port: Input should be less than or equal to 65535"),
    ("[server]\nport = \"445\"\n", 2, "[server] port: Input should be a valid integer"),
    ("[server]\nencrypt = \"maybe\"\n", 2, "must be one of 'off', 'auto', 'desired' or 'required'"),
    ("[server]\nsigning = \"sometimes\"\n", 2, "[server] signing: must be one of"),
    ("[server]\ncolour = \"blue\"\n", 2, "[server] colour: unknown key"),
    ("[server]\nmax_io_size = 1024\n", 2, "[server] max_io_size: Input should be greater than or equal to 65536"),
    ("[server]\nnetbios_name = \"A-NAME-LONGER-THAN-15\"\n", 2, "[server] netbios_name: String should have at most"),
    ("[server]\nhosts_deny = [\"10.0.0.300\"]\n", 2, "[server] hosts_deny: '10.0.0.300' is not an address"),
    ("[server]\nusers_file = \"/nonexistent/users\"\n", 2, "users file /nonexistent/users: No such file"),
    ("[server]\nkerberos_keytab = \"/nonexistent/keytab\"\n", 2, "keytab /nonexistent/keytab: no such file"),
    ("[server]\nkerberos_keytab = \"{d}/smbdd.toml\"\n", 2, "smbdd.toml: no usable key"),
    ("[users]\nalice = \"{NT}12\"\n", 2, "[users] alice: an {NT} hash must be 32 hex digits"),
    ("[users]\nalice = 5\n", 2, "[users] alice: Input should be a valid string"),
    ("[shares.data]\npath = \"/nonexistent\"\n", 2, "[shares.data] path: /nonexistent does not exist"),
    ("[shares.data]\ncomment = \"no path\"\n", 1, "[shares.data] path: required key missing"),
    ("[shares.data]\npath = \"{d}\"\nread_only = \"no\"\n", 3, "[shares.data] read_only: Input should be a valid boolean"),
    ("[shares.data]\npath = \"{d}\"\nvalid_users = [\"a/b\"]\n", 3, "'a/b' is not a user name or @group"),
    ("[shares.data]\npath = \"{d}\"\nwriteable = true\n", 3, "[shares.data] writeable: unknown key"),
    ("[shares.\"IPC$\"]\npath = \"{d}\"\n", 1, "share name 'IPC$' is not allowed"),
    ("[colours]\nred = 1\n", 1, "colours: unknown key"),
    ("[server\nport = 1\n", 1, "not valid TOML"),
]


@pytest.mark.parametrize("body, line, message", CORPUS, ids=[c[2][:40] for c in CORPUS])
def test_each_mistake_is_one_line_with_its_line(tmp_path, body, line, message):
    conf = tmp_path / "smbdd.toml"
    conf.write_text(body.replace("{d}", str(tmp_path)))
    r = check(conf)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    problems = r.stderr.strip().splitlines()
    assert len(problems) == 2 and problems[-1].startswith(f"{conf}: 1 problem"), r.stderr
    assert problems[0].startswith(f"{conf}:{line}: ") and message in problems[0], r.stderr


def test_every_mistake_of_one_file_is_reported_in_line_order(tmp_path):
    conf = tmp_path / "smbdd.toml"
    conf.write_text("[server]\nport = 0\nbogus = 1\n\n[shares.a]\npath = \"/nope\"\nsign = 1\n")
    r = check(conf)
    lines = r.stderr.strip().splitlines()
    assert [int(l.split(":")[1]) for l in lines[:-1]] == [2, 3, 6, 7], r.stderr
    assert lines[-1] == f"{conf}: 4 problems; smbdd would not start"


def test_smbdd_refuses_to_start_on_the_same_lines(tmp_path):
    conf = tmp_path / "smbdd.toml"
    conf.write_text("[server]\nport = 0\nbogus = 1\n")
    r = subprocess.run([*SMBDD, "--config", str(conf), "--no-rdma"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert check(conf).stderr.splitlines()[:2] == [l.removeprefix("smbdd: ") for l in r.stderr.splitlines()]


def test_a_malformed_users_file_is_named_with_its_line(tmp_path):
    users = tmp_path / "users"
    users.write_text("alice:{NT}" + "0" * 32 + "\nbroken\n")
    conf = tmp_path / "smbdd.toml"
    conf.write_text(f'[server]\nusers_file = "{users}"\n[shares.d]\npath = "{tmp_path}"\n')
    r = check(conf)
    assert r.returncode == 1 and f"{users}:2: expected NAME" in r.stderr, r.stderr


def test_good_file_prints_the_effective_configuration_without_secrets(tmp_path):
    conf = tmp_path / "smbdd.toml"
    conf.write_text(f'[server]\nport = 4455\nhosts_deny = "10.9.0.0/16"\n[users]\nalice = "very-secret"\n'
                    f'[shares.data]\npath = "{tmp_path}"\nread_list = "bob, @staff"\n')
    r = check(conf)
    assert r.returncode == 0, r.stderr
    assert "very-secret" not in r.stdout and "alice" in r.stdout
    effective = tomllib.loads(r.stdout)
    assert effective["server"]["port"] == 4455 and effective["server"]["encrypt"] == "auto"
    assert effective["server"]["hosts_deny"] == ["10.9.0.0/16"]
    share = effective["shares"]["data"]
    assert share["path"] == str(tmp_path) and share["read_list"] == ["bob", "@staff"] and share["read_only"] is False


def test_usage_and_missing_file(tmp_path):
    r = subprocess.run([*SMBDD, "check-config"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "usage" in r.stderr
    r = check(tmp_path / "nope.toml")
    assert r.returncode == 1 and "No such file" in r.stderr and "Traceback" not in r.stderr
