"""`invoke soak`'s pure parts: where the power cuts land (the plan, what the console says was
reached), the report and its table, the failover's kill plan and client tallies, and the options."""
import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from image import markers
from image.errors import UserError
from image.soak import diskfull, failover, plan, powercut, report, soak
from image.soak.clients import Tally

# what a first boot prints on the serial console, in order (a real TCG boot's lines, shortened)
CONSOLE = [
    "[    0.000000] Linux version 6.12.118+deb13-amd64 (debian-kernel@lists.debian.org)",
    "         Starting \x1b[0;1;39mca-appliance-firstboot.se…\x1b[0m - CA appliance first-boot setup...",
    "[   54.425927] ca-appliance[529]: Generating root and intermediate certificates...",
    f"[   77.512379] ca-appliance[529]: {markers.COMMITTED} (hostname, network, admin keys, sshd, firewall).",
    "         Starting \x1b[0;1;39mstep-ca.service\x1b[0m - step-ca… authority (ACME, JWK, X5C, SSH)...",
    "[\x1b[0;32m  OK  \x1b[0m] Started \x1b[0;1;39mstep-ca.service\x1b[0m - step-ca… authority (ACME, JWK, X5C, SSH).",
    "[   98.167372] ca-appliance[529]: Your CA is ready.",
]


def test_a_plan_is_the_same_for_the_same_seed_and_differs_for_another():
    assert plan.plan_cuts(20, random.Random(7)) == plan.plan_cuts(20, random.Random(7))
    assert plan.plan_cuts(20, random.Random(7)) != plan.plan_cuts(20, random.Random(8))


def test_a_plan_spreads_over_every_phase_of_the_first_boot():
    moments = plan.plan_cuts(20, random.Random(1))
    assert [m.index for m in moments] == list(range(1, 21))
    # every phase comes once in each round of len(PHASES): 20 cuts, 7 phases -> each 2 or 3 times
    counts = {p.name: sum(m.phase == p.name for m in moments) for p in plan.PHASES}
    assert set(counts.values()) <= {2, 3}, counts
    # even two cuts land in two different phases
    assert len({m.phase for m in plan.plan_cuts(2, random.Random(3))}) == 2
    for m in moments:
        phase = next(p for p in plan.PHASES if p.name == m.phase)
        assert phase.low <= m.delay_s <= phase.high and m.anchor in plan.STAGE_NAMES


def test_a_plan_of_none_is_empty_and_a_negative_count_is_refused():
    assert plan.plan_cuts(0, random.Random(1)) == []
    with pytest.raises(ValueError):
        plan.plan_cuts(-1, random.Random(1))


def test_every_phase_anchors_on_a_line_the_console_really_shows():
    shown = "\n".join(CONSOLE)
    for phase in plan.PHASES:
        assert plan.stage_seen(shown, phase.anchor), phase


@pytest.mark.parametrize("lines, stage", [(0, None), (1, "kernel"), (2, "setup started"), (3, "key generation"),
                                          (4, "committed"), (5, "step-ca starting"), (6, "step-ca started"),
                                          (7, "setup finished")])
def test_reached_names_the_last_stage_on_the_console(lines, stage):
    assert plan.reached("\n".join(CONSOLE[:lines])) == stage


def test_a_stage_counts_as_seen_once_a_later_one_is_on_the_console():
    # a quick boot may print past the anchor before the host looks: the cut must not wait forever
    shown = "\n".join(CONSOLE[:4])
    assert plan.stage_seen(shown, "key generation") and plan.stage_seen(shown, "committed")
    assert not plan.stage_seen(shown, "step-ca started")


def test_the_console_fingerprints_and_what_the_rerun_did():
    fp = "AB:" * 31 + "CD"
    assert powercut.printed_fingerprints(f"  Root fingerprint:  {fp}\n") == {fp.replace(":", "").lower()}
    assert powercut.what_the_rerun_did("setup: the CA was created but setup did not finish; finishing its "
                                       "system steps") == "finished the committed CA's system steps"
    assert powercut.what_the_rerun_did(CONSOLE[2]).startswith("created the CA")
    assert powercut.what_the_rerun_did("login:").startswith("nothing left")


def test_the_report_is_written_after_every_result_with_the_counts(tmp_path):
    out = tmp_path / "soak.json"
    rep = report.SoakReport(out, seed=42, accel="tcg", image="x.qcow2")
    rep.set("power_cuts_planned", 3)
    rep.add("cuts", {"index": 1, "ok": True})
    assert json.loads(out.read_text())["power_cuts_survived"] == "1/3"   # partial: written as it goes
    rep.add("cuts", {"index": 2, "ok": False, "error": "boom"})
    rep.add("op_cuts", {"op": "backup", "ok": True})
    data = json.loads(out.read_text())
    assert data["seed"] == 42 and data["power_cuts_survived"] == "1/3" and data["op_cuts_survived"] == "1/1"
    assert [c["index"] for c in data["cuts"]] == [1, 2]


def test_the_table_has_a_line_per_result_the_totals_and_the_seed():
    data = {"seed": 9, "power_cuts_survived": "1/2", "failover_survived": "2/2",
            "cuts": [{"index": 1, "ok": True, "phase": "key generation", "delay_s": 1.5, "anchor": "key generation",
                      "cut_in": "key generation"},
                     {"index": 2, "ok": False, "phase": "system steps", "delay_s": 3, "anchor": "committed",
                      "cut_in": "committed", "error": "step-ca's /health does not answer " + "x" * 200}],
            "op_cuts": [{"op": "restore", "ok": True, "delay_s": 2.0}],
            "disk_full": [{"op": "backup", "ok": True, "full_says": "error: no space left on device"},
                          {"op": "restore", "ok": False, "full_says": "x" * 300, "error": "step-ca stopped"}],
            "failover": [{"database": "mysql", "ok": True, "issued": 30, "failed": 2, "retried": 2, "kills": 3}]}
    table = report.render_table(data, width=100)
    lines = table.splitlines()
    assert all(len(line) <= 100 for line in lines)
    assert any(line.startswith("power cut 1") and " ok " in line for line in lines)
    assert any(line.startswith("power cut 2") and "FAIL" in line and "/health" in line for line in lines)
    assert any("cut during restore" in line for line in lines)
    assert any("disk full: backup" in line and "no space" in line for line in lines)
    assert any("disk full: restore" in line and "FAIL" in line and "step-ca stopped" in line for line in lines)
    assert any("failover on mysql" in line and "issued 30, failed 2, retried 2" in line for line in lines)
    assert "power_cuts_survived: 1/2" in lines[-2] and "failover_survived: 2/2" in lines[-2]
    assert lines[-1] == "seed: 9 (replay with --seed 9)"


def test_the_kill_plan_kills_several_times_spread_over_the_run():
    kills = failover.kill_plan(60, random.Random(5))
    assert len(kills) == 3 and [k["node"] for k in kills] == [0, 1, 0]
    assert all(20 * i <= k["at_s"] <= 20 * (i + 1) for i, k in enumerate(kills))
    assert all(1.0 <= k["down_s"] <= 8.0 for k in kills)
    assert len(failover.kill_plan(10, random.Random(5))) == 2   # never fewer than two
    assert failover.kill_plan(60, random.Random(5)) == kills


def test_duplicate_serials_are_found():
    assert failover.duplicates([1, 2, 3, 2, 5, 1]) == [1, 2] and failover.duplicates([4, 5]) == []


def test_each_database_draws_its_kills_from_a_seed_of_its_own():
    """The two databases' clusters run side by side: each gets its own seed, the same for the same --seed."""
    seeds = failover.database_seeds(2028)
    assert set(seeds) == set(failover.KINDS) and len(set(seeds.values())) == len(failover.KINDS)
    assert failover.database_seeds(2028) == seeds and failover.database_seeds(2029) != seeds
    plans = {kind: failover.kill_plan(300, random.Random(s)) for kind, s in seeds.items()}
    assert plans["mysql"] != plans["postgresql"]


def test_a_tally_counts_failures_and_the_retries_after_them():
    tally = Tally("certbot")
    tally.record(11)
    tally.record(None, "connection reset")
    tally.record(None, "connection refused")
    tally.record(12)
    tally.record(13)
    assert (tally.attempts, tally.issued, tally.failed, tally.retried) == (5, 3, 2, 2)
    assert tally.serials == [11, 12, 13] and tally.last_ok


def test_which_campaigns_run():
    assert soak.campaigns(None, False, False) == {"power_cuts": 20, "disk_full": True, "failover": True,
                                                  "upgrade": False}
    assert soak.campaigns("2", False, False) == {"power_cuts": 2, "disk_full": False, "failover": False,
                                                 "upgrade": False}
    assert soak.campaigns(None, True, False) == {"power_cuts": 0, "disk_full": True, "failover": False,
                                                 "upgrade": False}
    with pytest.raises(UserError, match="nothing to run"):
        soak.campaigns("0", False, False)


@pytest.mark.parametrize("value, message", [("many", "--power-cuts: 'many' is not a whole number"),
                                            ("-1", "--power-cuts: -1 is less than 0")])
def test_a_bad_count_is_one_line_naming_the_option(value, message):
    with pytest.raises(UserError) as raised:
        soak.campaigns(value, False, False)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_the_seed_is_taken_or_drawn():
    assert soak.parse_seed("123") == 123
    assert isinstance(soak.parse_seed(None), int)
    with pytest.raises(UserError, match="--seed: 'x1' is not a whole number"):
        soak.parse_seed("x1")


def test_a_refusal_is_judged_one_line():
    assert diskfull.one_line("error: backup: no space left on device\n")
    assert not diskfull.one_line("Traceback (most recent call last):\n  File ...\nOSError: [Errno 28]\n")
    assert not diskfull.one_line("")


# ---- the upgrade from the previous image (image/soak/upgrade.py): what can be judged without booting


def test_the_previous_release_is_a_full_commit_of_this_repository():
    from image.config import PROJECT_ROOT
    from image.soak import upgrade
    assert len(upgrade.PREVIOUS_RELEASE) == 40
    kind = subprocess.run(["git", "-C", str(PROJECT_ROOT), "cat-file", "-t", upgrade.PREVIOUS_RELEASE],
                          capture_output=True, text=True)
    assert kind.stdout.strip() == "commit", kind.stderr
    assert upgrade.resolve_commit() == upgrade.PREVIOUS_RELEASE
    assert upgrade.resolve_commit(upgrade.PREVIOUS_RELEASE[:7]) == upgrade.PREVIOUS_RELEASE


def test_a_commit_this_clone_lacks_is_one_line():
    from image.soak import upgrade
    with pytest.raises(UserError) as raised:
        upgrade.resolve_commit("0" * 40)
    assert "not in this clone's history" in str(raised.value) and "\n" not in str(raised.value)


def test_the_previous_release_has_what_the_upgrade_uses():
    """The old tree's own interfaces the run relies on: local binaries in artifacts.*.path, and a
    backup with --passphrase-file."""
    from image.config import PROJECT_ROOT
    from image.soak import upgrade

    def show(path):
        return subprocess.run(["git", "-C", str(PROJECT_ROOT), "show", f"{upgrade.PREVIOUS_RELEASE}:{path}"],
                              capture_output=True, text=True, check=True).stdout
    cli = show("overlay/usr/lib/ca-appliance/ca_appliance/cli.py")
    assert '"--passphrase-file"' in cli and 'add("backup"' in cli
    defaults = yaml.safe_load(show("appliance.yaml"))
    config = upgrade.old_build_config(Path("/x/step-ca"), Path("/x/step"))
    for key, section in config["artifacts"].items():
        assert "path" in defaults["artifacts"][key] and section["path"].startswith("/x/")
    assert "debian" in show("image/bases/__init__.py")


def test_the_upgrade_answers_are_what_docs_running_md_shows():
    from image.soak import upgrade
    answers = upgrade.restore_answers("ssh-ed25519 AAAA test")
    assert answers["restore"]["archive"] == upgrade.ARCHIVE_NAME == "ca-backup.tar.gz"
    assert set(answers) == {"restore", "network", "admin"}
    from image.config import PROJECT_ROOT
    assert "restore: {archive: ca-backup.tar.gz, passphrase: ...}" in (PROJECT_ROOT / "docs/running.md").read_text()


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None or shutil.which("debugfs") is None,
                    reason="e2fsprogs (mkfs.ext4, debugfs) is not installed")
def test_the_seed_volume_is_an_ext4_caseed_with_the_answers_beside_the_archive(tmp_path):
    from image.soak import upgrade
    archive = tmp_path / "made.tar.gz"
    archive.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 40)
    volume = upgrade.make_seed(tmp_path, upgrade.restore_answers("ssh-ed25519 AAAA test"), archive)
    label = subprocess.run(["blkid", "-o", "value", "-s", "LABEL", str(volume)], capture_output=True, text=True)
    assert label.stdout.strip() == "CASEED"
    listing = subprocess.run(["debugfs", "-R", "ls -p /", str(volume)], capture_output=True, text=True).stdout
    assert "/ca-appliance.yaml/" in listing and f"/{upgrade.ARCHIVE_NAME}/" in listing
    dumped = tmp_path / "back.tar.gz"
    subprocess.run(["debugfs", "-R", f"dump /{upgrade.ARCHIVE_NAME} {dumped}", str(volume)], capture_output=True)
    assert dumped.read_bytes() == archive.read_bytes()


def test_a_seed_volume_goes_to_qemu_read_only(tmp_path):
    from image.vm.qemu import QemuSpec, qemu_command
    spec = QemuSpec(disk=tmp_path / "o.qcow2", cpus=1, memory_mb=512, accel="tcg", serial_socket=tmp_path / "s",
                    serial_log=tmp_path / "l", pidfile=tmp_path / "p", seed_volumes=(tmp_path / "caseed.img",))
    command = qemu_command(spec)
    assert f"file={tmp_path / 'caseed.img'},format=raw,if=virtio,readonly=on" in command


UPGRADE = {"previous_release": "689b9df0db0f0ee106d2f4808851d23e3df4f7ae", "seconds": 812.4,
           "steps": [{"step": "previous image", "seconds": 0.1, "reused": True}],
           "checks": [{"check": "same root", "ok": True, "detail": "ab12 (was ab12)"},
                      {"check": "old ACME account renews", "ok": False, "detail": "certbot renew exit 1"}],
           "error": None}


def test_the_table_shows_the_upgrade_checks_and_its_verdict():
    table = report.render_table({"seed": 1, "cuts": [], "op_cuts": [], "upgrade": UPGRADE, "upgrade_passed": False})
    assert "upgrade from 689b9df0db0f" in table
    assert "upgrade: previous image" in table and "(reused)" in table
    assert any(line.startswith("upgrade: same root") and " ok " in line for line in table.splitlines())
    assert any(line.startswith("upgrade: old ACME account renews") and "FAIL" in line for line in table.splitlines())
    assert "upgrade_passed: False" in table


def test_an_upgrade_error_is_one_row_naming_what_was_kept():
    rows = report.upgrade_rows({**UPGRADE, "checks": [], "error": "StepFailed: first boot failed", "kept": "/k"})
    assert rows[-1] == ("upgrade", "FAIL", "StepFailed: first boot failed [kept: /k]")
    assert report.upgrade_rows(None) == []


def test_the_upgrade_decides_the_exit_status():
    assert soak.campaigns(None, False, False, True) == {"power_cuts": 0, "disk_full": False, "failover": False,
                                                        "upgrade": True}
    assert soak._all_ok({"upgrade_passed": True})
    assert not soak._all_ok({"upgrade_passed": False})
    assert not soak._all_ok({"disk_full": [{"ok": True}], "upgrade_passed": False})
    assert not soak._all_ok({})


def test_certbot_accounts_are_the_account_ids_under_the_server_path(tmp_path):
    """certbot files an account as accounts/<host:port>/<directory path>/<id>/; the id is what is compared."""
    from image.soak import upgrade
    account = tmp_path / "certbot/config/accounts/127.0.0.1:50289/acme/acme/directory/1e99081c279f2694"
    account.mkdir(parents=True)
    (account / "private_key.json").write_text("{}")
    (account.parent / "not-an-account").mkdir()
    assert upgrade.Certbot(tmp_path / "certbot", 50289, tmp_path / "root.pem").accounts() == ["1e99081c279f2694"]


def test_a_new_target_starts_from_nothing_a_killed_campaign_left(tmp_path):
    """A soak that was killed leaves cut-N/ behind. The next run's cut N must boot a fresh overlay and
    read a fresh console: with the old ones it booted a half-done first boot and met its cut moment
    on the old console 1 s in (seen in a rerun). No VM is started here."""
    from image.config import load_config
    from image.soak import appliance
    workdir = tmp_path / "cut-17"
    workdir.mkdir()
    for stale in ("overlay.qcow2", "serial.log", "qemu.log"):
        (workdir / stale).write_text("left by a killed campaign\n")
    target = appliance.new_target(tmp_path / "image.qcow2", workdir, load_config(), "tcg")
    assert sorted(p.name for p in workdir.iterdir()) == []
    assert not target.vm.spec.disk.exists() and not target.vm.serial_log.exists()
