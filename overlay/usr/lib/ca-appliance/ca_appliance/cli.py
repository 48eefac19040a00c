"""`ca-appliance`: set up, inspect, back up and restore the appliance's certificate authority.

Exit status: 0 done, 2 bad input or a state that does not allow the command (one line),
1 a failed step (one line naming it), 130 interrupted (nothing changed).
"""
import argparse
import sys
from pathlib import Path

import yaml

from . import answers, apply, backup, status, timing
from .errors import ApplianceError, UserError
from .layout import Layout


def _parser():
    parser = argparse.ArgumentParser(
        prog="ca-appliance", description="Set up and run the appliance's certificate authority (step-ca).")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name, help_text):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--prefix", metavar="DIR",
                         help="work on a tree under DIR instead of / (every path written, and every path "
                              "inside the written files, is under DIR)")
        return sub

    setup = add("setup", "Create the CA: from --answers FILE, else an unattended source, else the console wizard.")
    setup.add_argument("--answers", metavar="FILE", help="YAML answers file: run unattended")
    setup.add_argument("--no-system", action="store_true",
                       help="skip user step/chown, hostname, network, firewall, trust store and systemctl")
    setup.add_argument("--force", action="store_true",
                       help="replace an existing CA (a timestamped backup of it is written first)")
    setup.add_argument("--consoles", metavar="TTYS",
                       help="first boot: offer the wizard on each of these consoles (e.g. tty1,ttyS0); the first "
                            "where Enter is pressed runs it (default: this terminal)")
    setup.add_argument("--root-key-out", metavar="FILE",
                       help="with root_key: offline, write the encrypted root key here (instead of the console)")
    add("status", "Show the service state, CA URL, root fingerprint, ACME directory, expiry and provisioners.")
    save = add("backup", "Stop step-ca, archive config, certificates, secrets and database (mode 0600), restart it.")
    save.add_argument("--out", metavar="FILE", required=True, help="archive to write (.tar.gz)")
    save.add_argument("--no-system", action="store_true", help="do not stop or start the step-ca service")
    load = add("restore", "Replace the CA with a backup archive's (all or nothing), then restart step-ca.")
    load.add_argument("archive", metavar="FILE", help="archive written by `ca-appliance backup`")
    load.add_argument("--no-system", action="store_true",
                      help="do not stop or start the service nor chown to user step")
    return parser


def _load_answers_file(path):
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise UserError(f"answers error: {path}: cannot be read ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise UserError(f"answers error: {path}: is not valid YAML ({' '.join(str(error).split())})") from None
    return raw


def run_wizard(args, defaults, **kwargs):
    """The wizard on this terminal, or with --consoles on the console where Enter is pressed first.
    Returns (validated answers, the stream the rest of setup reports on)."""
    from . import consoles, wizard
    if not args.consoles:
        return wizard.run_wizard(defaults, **kwargs), sys.stdout
    terminals = consoles.open_terminals([name for name in args.consoles.split(",") if name])
    if not terminals:
        raise UserError(f"setup: none of the consoles {args.consoles!r} can be opened, and no unattended answers")
    chosen = consoles.choose_terminal(terminals)
    for terminal in terminals:
        if terminal is not chosen:
            terminal.close()
    return wizard.run_wizard(defaults, input=chosen.input, output=chosen, getpass=chosen.getpass, **kwargs), chosen


def gather_answers(args):
    """(validated answers, the name of their source, where to report), by the order of precedence."""
    defaults = answers.load_defaults(args.prefix)
    if args.answers:
        validated = answers.validate(_load_answers_file(args.answers), defaults)
        return validated, f"answers-file ({Path(args.answers).resolve()})", sys.stdout
    from . import sources  # the console's modules, needed only without --answers

    interactive = sys.stdin.isatty() or bool(args.consoles)
    try:
        found = sources.find_unattended(prefix=args.prefix)
    except answers.AnswersError as error:  # a source is there but unreadable: ask instead
        if not interactive:
            raise UserError(f"{error} (no console to ask instead)") from None
        return _asked(run_wizard(args, defaults, error=str(error)), "wizard (after an unreadable unattended source)")
    if found is not None:
        raw, source = found
        try:
            return answers.validate(raw, defaults), source, sys.stdout
        except answers.AnswersError as error:
            if not interactive:
                raise UserError(f"{error} (from the {source} answers; no console to ask instead)") from None
            # A bad unattended source: ask on the console, showing why, never configure half a CA.
            return _asked(run_wizard(args, defaults, error=f"{error} (from the {source} answers)", preset=raw),
                          f"wizard (after a bad {source} source)")
    if not interactive:
        raise UserError("setup: no answers: give --answers FILE, provide an unattended source, or run on a console")
    return _asked(run_wizard(args, defaults), "wizard")


def _asked(result, source):
    validated, out = result
    return validated, source, out


def cmd_setup(args):
    layout = Layout(args.prefix)
    if layout.is_configured() and not args.force:  # refuse before asking anything
        raise UserError(f"setup: a CA is already configured ({layout.ca_json}); "
                        "run `ca-appliance setup --force` to replace it (a timestamped backup is written first)")
    timing.log_startup()
    with timing.timed("answers"):   # a wizard's waiting for a person is in it
        validated, source, out = gather_answers(args)
    with timing.timed("setup total"):
        apply.setup(validated, source, layout, use_system=not args.no_system, force=args.force,
                    root_key_out=args.root_key_out, out=out)


def cmd_status(args):
    print(status.render(status.collect(Layout(args.prefix))))


def cmd_backup(args):
    path = backup.backup(Layout(args.prefix), args.out, use_system=not args.no_system)
    print(f"Backup written to {path} (mode 0600: it holds the encrypted keys and the password)")


def cmd_restore(args):
    fingerprint = backup.restore(Layout(args.prefix), args.archive, use_system=not args.no_system)
    print(f"Restored the CA with root fingerprint {fingerprint}")


COMMANDS = {"setup": cmd_setup, "status": cmd_status, "backup": cmd_backup, "restore": cmd_restore}


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except answers.AnswersError as error:
        print(error, file=sys.stderr)
        return 2
    except ApplianceError as error:
        print(f"ca-appliance: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"\nca-appliance {args.command}: interrupted; nothing was changed", file=sys.stderr)
        return 130
    return 0
