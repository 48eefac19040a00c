"""build.json's built_at and support_days: the guest's clock check reads them (issue 25)."""
import datetime

from ca_appliance import buildinfo, clock

from image.config import load_config
from image.payload import SUPPORT_DAYS, build_info


def test_build_json_says_when_the_sources_were_made_and_for_how_long_a_clock_is_believed(monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    info = build_info(load_config())
    built = datetime.datetime.strptime(info["built_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    # a source date (the last commit touching overlay/): never after the build, the same on every call
    assert built <= datetime.datetime.now(datetime.UTC)
    assert info["support_days"] == SUPPORT_DAYS == buildinfo.DEFAULTS["support_days"] == 3650
    earliest, latest = clock.plausible_window(info)
    assert earliest == built and latest - earliest == datetime.timedelta(days=3650)
    assert set(info) <= set(buildinfo.DEFAULTS)


def test_source_date_epoch_wins(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    assert build_info(load_config())["built_at"] == "2026-01-01T00:00:00Z"
