"""`ca-appliance`: set up, inspect, back up and restore the appliance's certificate authority.

Exit status: 0 done, 2 bad input or a state that does not allow the command (one line),
1 a failed step (one line naming it), 130 interrupted (nothing changed).
"""
import argparse
import json
import sys
from pathlib import Path

from . import answers, apply, backup, database, join, lock, provision, renew, replace, status, timing, upgrade, watch
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
    setup.add_argument("--restore", metavar="FILE",
                       help="upgrade: restore the CA from a backup of an older appliance instead of creating one")
    show = add("status", "Show the service state, CA URL, root fingerprint, ACME directory, expiry and provisioners; "
                         "exit 0 ok, 1 warning, 2 critical (Nagios).")
    show.add_argument("--json", action="store_true", help="the same facts as JSON, for monitoring")
    show.add_argument("--health", action="store_true",
                      help="also GET /health under --prefix (always done on the appliance itself)")
    save = add("backup", "Stop step-ca, archive config, certificates, secrets and database (mode 0600), restart it.")
    target = save.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", metavar="FILE", help="archive to write (.tar.gz)")
    target.add_argument("--verify", metavar="FILE",
                        help="restore drill: check an archive (digests, keys open with its password) without "
                             "touching the running CA; one line per problem, exit 2 when bad")
    save.add_argument("--no-system", action="store_true", help="do not stop or start the step-ca service")
    save.add_argument("--passphrase-file", metavar="FILE",
                      help="the backup passphrase (first line of FILE); without it, asked twice on the terminal")
    load = add("restore", "Replace the CA with a backup archive's (all or nothing), then restart step-ca.")
    load.add_argument("archive", metavar="FILE", help="archive written by `ca-appliance backup`")
    load.add_argument("--no-system", action="store_true",
                      help="do not stop or start the service nor chown to user step")
    renewal = add("renew-intermediate", "Make a new intermediate from the same root, swap it in all or nothing, "
                                        "reload step-ca.")
    renewal.add_argument("--root-key", metavar="FILE",
                         help="the offline root key (its passphrase is asked on the terminal, or read from stdin)")
    renewal.add_argument("--no-system", action="store_true", help="do not chown to user step nor reload step-ca")
    watching = add("watch", "Check expiry and step-ca's health, log warnings to the journal, refresh the banner "
                            "(the daily ca-appliance-watch.timer).")
    watching.add_argument("--no-system", action="store_true", help="do not refresh the consoles")
    watching.add_argument("--health", action="store_true", help="also GET /health under --prefix")
    commands.add_parser("restart-if-stale", help="Restart step-ca if an update replaced a file it runs "
                                                 "(called after unattended security updates).")
    load.add_argument("--passphrase-file", metavar="FILE",
                      help="the passphrase of an encrypted backup (first line of FILE); else asked on the terminal")
    load.add_argument("--allow-unencrypted", action="store_true",
                      help="restore a plain (format 1, unauthenticated) archive even though a passphrase was given")
    node = add("join", "Become another node of an existing CA on a shared database, from a backup of one of its nodes.")
    node.add_argument("--from", dest="backup", metavar="FILE", required=True,
                      help="archive written by `ca-appliance backup` on a node of the CA")
    node.add_argument("--answers", metavar="FILE",
                      help="YAML answers for this node (hostname, network, admin, ca.address, ca.database)")
    node.add_argument("--address", metavar="ADDR", help="this node's listen address (default: the backup's)")
    node.add_argument("--no-system", action="store_true",
                      help="skip user step/chown, hostname, network, firewall, trust store and systemctl")
    node.add_argument("--passphrase-file", metavar="FILE",
                      help="the passphrase of the encrypted backup (first line of FILE); else asked on the terminal")
    node.add_argument("--allow-unencrypted", action="store_true",
                      help="join from a plain (format 1, unauthenticated) archive even though a passphrase was given")
    prov = commands.add_parser(
        "provision", help="Build time, inside the target root: make the installed tree the appliance.",
        description="Build time, inside the target root: users, sudoers, units, firewall zone, initramfs "
                    "drivers, SELinux labels, generalisation. Reads /etc/ca-appliance/provision.json.")
    prov.add_argument("--base", required=True, choices=sorted(provision.DISTROS), help="the distribution")
    prov.add_argument("--root", metavar="DIR", default="/",
                      help="tests: provision the tree at DIR from outside it (default: / , inside the target)")
    prov.add_argument("--stand-in", metavar="TOOL", action="append", default=[],
                      help="tests, with --root: record TOOL's calls to --record FILE instead of running it")
    prov.add_argument("--record", metavar="FILE", help="where --stand-in calls are written")
    add("recover", "After a power cut: undo a change of the CA that did not finish (restore, renew-intermediate, "
                   "setup) and remove what it staged; the boot runs it before step-ca when there is any.")
    add("publish-page", "Write the client page (root, fingerprint, ACME snippets) from the CA on disk again.")
    serve = add("serve-page", "Serve the client page over HTTP (socket from systemd, else --listen).")
    serve.add_argument("--listen", metavar="HOST:PORT", help="listen here instead of systemd's socket")
    return parser


def _load_answers_file(path):
    """The --answers file, parsed like every other source (answers.load_answers: safe, never quoted)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(answers.safeyaml.MAX_BYTES + 1)
    except OSError as error:
        raise UserError(f"answers error: {path}: cannot be read ({error.strerror})") from None
    return answers.load_answers(data, str(path))


def _validated(raw, defaults, base_dir, args):
    """answers.validate(), plus the upgrade's `restore` request (its archive located) when there is one."""
    validated = answers.validate(raw, defaults)
    request = upgrade.restore_request(raw)
    if request is not None:
        request["path"] = upgrade.locate(request, base_dir, args.prefix)
        validated["restore"] = request
    return validated


def _wizard_or_restore(args, defaults, input=input, output=sys.stdout, getpass=None, **kwargs):
    """Upgrades first: when backups are found, offer to restore one; else (or when declined) the wizard."""
    import getpass as getpass_module

    from . import wizard
    getpass = getpass or getpass_module.getpass
    request = upgrade.ask_restore(Layout(args.prefix), input, output, getpass)
    if request is not None:
        return {"restore": request}
    return wizard.run_wizard(defaults, input=input, output=output, getpass=getpass, **kwargs)


def run_wizard(args, defaults, **kwargs):
    """The wizard on this terminal, or with --consoles on the console where Enter is pressed first.
    Returns (validated answers, the stream the rest of setup reports on)."""
    from . import consoles
    if not args.consoles:
        return _wizard_or_restore(args, defaults, **kwargs), sys.stdout
    terminals = consoles.open_terminals([name for name in args.consoles.split(",") if name])
    if not terminals:
        raise UserError(f"setup: none of the consoles {args.consoles!r} can be opened, and no unattended answers")
    chosen = consoles.choose_terminal(terminals)
    for terminal in terminals:
        if terminal is not chosen:
            terminal.close()
    return _wizard_or_restore(args, defaults, input=chosen.input, output=chosen, getpass=chosen.getpass,
                              **kwargs), chosen


def gather_answers(args):
    """(validated answers, the name of their source, where to report), by the order of precedence."""
    defaults = answers.load_defaults(args.prefix)
    if args.answers:
        validated = _validated(_load_answers_file(args.answers), defaults, Path(args.answers).resolve().parent, args)
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
            return _validated(raw, defaults, None, args), source, sys.stdout
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
    replace.recover(layout)  # a swap a power cut interrupted is undone first
    saved = None if args.force else apply.resumable(layout)
    if saved is not None:  # committed, but the system steps were cut short (e.g. a power cut at first boot)
        print("setup: the CA was created but setup did not finish; finishing its system steps", flush=True)
        apply.finish(layout, saved, use_system=not args.no_system)
        print("Setup finished.")
        return
    if layout.is_configured() and not args.force:  # refuse before asking anything
        raise UserError(f"setup: a CA is already configured ({layout.ca_json}); "
                        "run `ca-appliance setup --force` to replace it (a timestamped backup is written first)")
    if args.restore:
        request = {"archive": args.restore, "passphrase": None, "path": Path(args.restore)}
        if not request["path"].is_file():
            raise UserError(f"setup: --restore {args.restore}: no such backup archive")
        if upgrade._is_encrypted(request["path"]) and sys.stdin.isatty():
            import getpass
            request["passphrase"] = getpass.getpass("Passphrase of this backup: ")
        validated, out = {"restore": request}, sys.stdout
    else:
        timing.log_startup()
        with timing.timed("answers"):   # a wizard's waiting for a person is in it
            validated, source, out = gather_answers(args)
    request = validated.pop("restore", None)
    if request is not None:
        try:
            upgrade.restore_at_first_boot(layout, request["path"], passphrase=request["passphrase"],
                                          answers=validated if "network" in validated else None,
                                          use_system=not args.no_system, out=out,
                                          allow_unencrypted=request.get("allow_unencrypted", False))
        finally:
            upgrade.cleanup(request["path"])
        return
    if validated.get("join"):  # unattended `join: {backup: FILE}`: another node of an existing CA
        archive = Path(validated["join"]["backup"])
        if args.answers and not archive.is_absolute():  # relative to the answers file, like an include
            archive = Path(args.answers).resolve().parent / archive
        join.join(layout, archive, answers=validated, use_system=not args.no_system, out=out,
                  passphrase=validated["join"].get("passphrase"))
        return
    with timing.timed("setup total"):
        from . import clock, wizard
        clock.before_new_pki(args.prefix, validated["network"].get("ntp"), use_system=not args.no_system,
                             confirm=wizard.clock_confirmation(out) if source.startswith("wizard") else None, out=out)
        apply.setup(validated, source, layout, use_system=not args.no_system, force=args.force,
                    root_key_out=args.root_key_out, out=out)


def cmd_status(args):
    layout = Layout(args.prefix)
    facts = status.facts(layout, check_health=True if args.health else None)
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        print(status.render(status.rows(facts, layout)))
    return facts["exit_code"]


def _root_key_passphrase():
    """The offline root key's passphrase: asked on the terminal, else the first line of stdin (never argv)."""
    if sys.stdin.isatty():
        import getpass
        return getpass.getpass("Passphrase of the root key (empty: the CA password): ")
    return sys.stdin.readline().rstrip("\r\n")


def cmd_renew_intermediate(args):
    layout = Layout(args.prefix)
    passphrase = _root_key_passphrase() if args.root_key else None
    cert = renew.renew_intermediate(layout, root_key_file=Path(args.root_key) if args.root_key else None,
                                    root_key_passphrase=passphrase, use_system=not args.no_system)
    from . import banner
    banner.write(layout)
    print(f"New intermediate in place: serial {cert.serial_number:x}, valid until "
          f"{renew.pki.not_after(cert):%Y-%m-%d %H:%M:%S UTC}; certificates issued before still verify "
          f"against the same root" + ("" if args.no_system else "; step-ca reloaded"))


def cmd_watch(args):
    layout = Layout(args.prefix)
    if not layout.is_configured():
        print(f"ca-appliance watch: no CA is configured under {layout.prefix}: nothing to watch")
        return 0
    check_health = args.health or (not args.no_system and layout.is_system)
    watch.run(layout, check_health, use_system=not args.no_system)
    return 0


def _passphrase(args, command, confirm):
    """The backup passphrase: --passphrase-file's first line, else asked on the terminal (None: none here)."""
    if args.passphrase_file:
        try:
            lines = Path(args.passphrase_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise UserError(f"{command}: --passphrase-file {args.passphrase_file!r}: cannot be read "
                            f"({error})") from None
        return lines[0] if lines else ""
    if not sys.stdin.isatty():
        return None
    import getpass
    first = getpass.getpass("Backup passphrase: ")
    if confirm and getpass.getpass("Same passphrase again: ") != first:
        raise UserError(f"{command}: the two passphrases differ; nothing was written")
    return first


def _archive_passphrase(args, command, archive=None):
    """A restore's passphrase: --passphrase-file's, else asked on a terminal only for a sealed archive."""
    if args.passphrase_file or backup.archive.is_sealed(archive or args.archive):
        return _passphrase(args, command, confirm=False)
    return None


def cmd_backup_verify(args):
    from . import drill
    result = drill.verify(args.verify, _archive_passphrase(args, "backup --verify", args.verify))
    for line in result.problems:
        print(f"ca-appliance: {line}", file=sys.stderr)
    if result.problems:
        return 2
    print(f"Restore drill passed: {result.summary}")
    return 0


def cmd_backup(args):
    if args.verify:
        return cmd_backup_verify(args)
    layout = Layout(args.prefix)
    if not layout.is_configured():
        raise UserError(f"backup: no CA is configured under {layout.prefix} (no {layout.ca_json}); nothing to back up")
    passphrase = _passphrase(args, "backup", confirm=True)
    if passphrase is None:
        raise UserError("backup: a backup is encrypted with a passphrase: give --passphrase-file FILE "
                        "or run on a terminal to be asked")
    if len(passphrase) < backup.MIN_PASSPHRASE or passphrase != passphrase.strip():
        raise UserError(f"backup: the passphrase must be at least {backup.MIN_PASSPHRASE} characters, "
                        "without leading or trailing spaces")
    path = backup.backup(layout, args.out, use_system=not args.no_system, passphrase=passphrase)
    print(f"Backup written to {path} (encrypted with the passphrase: AES-256-GCM, scrypt; mode 0600)")


def cmd_restore(args):
    layout = Layout(args.prefix)
    fingerprint = backup.restore(layout, args.archive, use_system=not args.no_system,
                                 passphrase=_archive_passphrase(args, "restore"),
                                 allow_unencrypted=args.allow_unencrypted)
    print(f"Restored the CA with root fingerprint {fingerprint}")
    db = database.from_ca_json(json.loads(layout.ca_json.read_text()))
    if database.is_shared(db):
        print(f"note: the database was not in the backup and was not changed: {database.describe(db)}")


def cmd_provision(args):
    provision.provision(args.base, args.root, stand_ins=args.stand_in, record=args.record)


def cmd_join(args):
    validated = None
    if args.answers:
        validated = answers.validate(_load_answers_file(args.answers), answers.load_defaults(args.prefix))
    address = answers.check_listen_address(args.address, "--address") if args.address else None
    join.join(Layout(args.prefix), args.backup, answers=validated, address=address,
              use_system=not args.no_system, passphrase=_archive_passphrase(args, "join", args.backup),
              allow_unencrypted=args.allow_unencrypted)


COMMANDS = {"setup": cmd_setup, "status": cmd_status, "backup": cmd_backup, "restore": cmd_restore,
            "join": cmd_join, "provision": cmd_provision}


def cmd_restart_if_stale(args):
    from . import updates
    updates.restart_if_stale(out=sys.stdout)
    return 0


COMMANDS.update({"renew-intermediate": cmd_renew_intermediate, "watch": cmd_watch,
                 "restart-if-stale": cmd_restart_if_stale})


def cmd_publish_page(args):
    from . import clientpage
    where = clientpage.publish(Layout(args.prefix))
    print(f"Client page written to {where}" if where else "No client page: the build turned it off (page.enabled)")


def cmd_serve_page(args):
    from . import clientpage
    listen = None
    if args.listen:
        host, _, port = args.listen.rpartition(":")
        if not port.isdigit() or not 0 <= int(port) <= 65535:
            raise UserError(f"serve-page: --listen {args.listen!r} is not HOST:PORT (port 0-65535)")
        listen = (host.strip("[]"), int(port))
    clientpage.serve(Layout(args.prefix), listen)


def cmd_recover(args):
    """ca-appliance-recover.service, before step-ca, when a cut change left its journal or a page tree."""
    from . import clientpage
    layout = Layout(args.prefix)
    left = []
    undone = replace.recover(layout, removed=left)
    print("recover: a change of the CA that a power cut interrupted was undone; the CA is as it was before it"
          if undone else "recover: no interrupted change of the CA")
    if left and not undone:
        print(f"recover: removed what a finished change of the CA left beside it: {', '.join(left)}")
    removed, written = clientpage.tidy(layout)
    if removed:
        print(f"recover: removed what an interrupted client page update left: {', '.join(removed)}")
    if written:
        print("recover: the client page was missing; written again from the CA")


COMMANDS.update({"publish-page": cmd_publish_page, "serve-page": cmd_serve_page, "recover": cmd_recover})


# The commands that change the CA hold its lock (lock.py) and refuse while another holds it.
CHANGES_THE_CA = {"setup", "backup", "restore", "renew-intermediate", "join", "recover", "publish-page"}
STALE_RESTART_WAIT = 600   # s: restart-if-stale waits for a change of the CA rather than skip its restart


def run_command(args):
    """The command, under the CA's lock when it changes the CA (a restore drill, status and the page don't)."""
    command = COMMANDS[args.command]
    layout = Layout(getattr(args, "prefix", None))
    if args.command in CHANGES_THE_CA and not getattr(args, "verify", None):
        with lock.held(layout, args.command):
            return command(args)
    if args.command == "watch":   # the timer's run: a tree mid-swap would give false alarms; the next run checks
        try:
            with lock.held(layout, "watch"):
                return command(args)
        except lock.Busy as busy:
            print(f"ca-appliance watch: skipped: another command is changing the CA ({busy.holder}); "
                  "the next run checks it")
            return 0
    if args.command == "restart-if-stale":   # the change under way may only reload step-ca: wait, then look
        with lock.held(layout, args.command, wait=STALE_RESTART_WAIT):
            return command(args)
    return command(args)


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        code = run_command(args)
    except answers.AnswersError as error:
        print(error, file=sys.stderr)
        return 2
    except ApplianceError as error:
        print(f"ca-appliance: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"\nca-appliance {args.command}: interrupted; nothing was changed", file=sys.stderr)
        return 130
    except OSError as error:  # one line, never a traceback (the step that raised it names no path here)
        print(f"ca-appliance: {args.command} failed: {error}", file=sys.stderr)
        return 1
    return code or 0
