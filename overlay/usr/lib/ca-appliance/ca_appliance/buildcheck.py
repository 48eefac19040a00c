"""The builder's check of what it bakes, by the appliance's own answers rules (one set of rules).

The host never imports guest code: image/config.py runs this module in a subprocess,
  PYTHONPATH=overlay/usr/lib/ca-appliance python3 -m ca_appliance.buildcheck < request.json
with a JSON request {"defaults": {"ca": {...}, "admin": {...}}, "baked_answers": null |
{"name": FILE, "base64": CONTENT}} and reads one JSON line back:
  {"limits": {...}}                                  exit 0: first boot will accept all of it
  {"error": {"key": K, "shown": V, "message": M}}    exit 2: the host reports "config error: K: V M"
"""

import base64
import json
import sys

from . import answers


def limits():
    """The answer limits the builder repeats (e.g. the OVF MaxLen of ca.name)."""
    return {"ca_name_max": answers.MAX_CA_NAME, "password_min": answers.MIN_PASSWORD}


def check(request):
    """Raise AnswersError when the build's defaults or baked answers would be refused at first boot."""
    overrides = request.get("defaults") or {}
    answers.check_known_keys(overrides, answers.known_keys())
    defaults = answers.deep_merge(answers.load_defaults(), overrides)
    answers.validate({}, defaults)
    baked = request.get("baked_answers")
    if baked:
        try:
            _check_baked(baked, defaults)
        except answers.AnswersError as error:
            error.in_baked = True  # reported under the config key that names the file
            raise


def _check_baked(baked, defaults):
    """The baked answers file: what first boot would read from /etc/ca-appliance/answers.yaml."""
    raw = answers.load_answers(base64.b64decode(baked["base64"]), baked["name"])
    # Every key schema.yaml declares secret (the CA password, a DSN, a backup's passphrase): every
    # copy of the image would carry it, possibly also in free blocks after first boot.
    present = answers.secrets_present(raw)
    if present:
        raise answers.AnswersError(
            present[0], "<hidden>",
            "must not be in a baked answers file: every copy of the image would carry it (leave it out: "
            "give it at first boot through a credential or the console"
            + ("; a generated CA password is shown once on the console)" if present[0] == "ca.password" else ")"))
    answers.validate(raw, defaults)


def main():
    try:
        request = json.loads(sys.stdin.read() or "{}")
        check(request)
    except answers.AnswersError as error:
        baked = "firstboot.answers: " if getattr(error, "in_baked", False) else ""
        reply = {"error": {"key": baked + str(error.key), "shown": error.shown_value,
                           "message": error.message}}
        print(json.dumps(reply))
        return 2
    print(json.dumps({"limits": limits()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
