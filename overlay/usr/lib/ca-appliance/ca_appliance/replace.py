"""Replace the CA on disk, all or nothing: the one sequence setup and restore share.

    with CAReplacement(layout, "setup", use_system=...) as replacing:
        tree = replacing.stage(layout.steppath)      # fill it
        replacing.commit(state_bytes)                 # chown, fsync, swap, state.json, commit

Entering recovers a swap a crash interrupted (staging.recover) and stops step-ca; leaving with an
error rolls back, starts the previous step-ca again when it was running, and reports the FIRST
error (a failed restart is added to its message, never raised in its place).
"""
from . import staging, system
from .errors import StepFailed


def recover(layout, removed=None):
    """Put back what an interrupted replacement moved; remove staged leftovers. True if it undid one.
    `removed` (a list) gets the names of the leftovers removed."""
    undone = staging.recover(layout.replace_journal)
    # With the journal gone, a tree still set aside (.NAME.old-*) is one a committed swap was deleting
    # when the power went (soak: a first boot cut just after its commit). No journal can name it any
    # more, and it holds the previous CA's files, keys included: it goes too.
    for tree in (layout.steppath, layout.data_dir):
        names = staging.remove_leftovers(tree, set_aside=True)
        if removed is not None:
            removed.extend(names)
    return undone


def give_to_step(layout, tree, user, steppath_tree=False):
    """Owners and modes of a staged tree from the one table (layout.OWNERSHIP): user step for what
    step-ca reads, root for the root key. `user`: step's pwd entry (None: the tree's own accounts)."""
    final = layout.steppath if steppath_tree else tree
    layout.apply_ownership(tree, final, layout.accounts(user))


class CAReplacement:
    def __init__(self, layout, command, use_system=True, step_user=None, stop_at_commit=False):
        """stop_at_commit: stop step-ca only when the staged trees are complete (restore and join:
        the archive is read and checked while step-ca still serves; a bad one never stops it)."""
        self.layout = layout
        self.stop_at_commit = stop_at_commit
        self.command = command
        self.use_system = use_system and layout.is_system
        self.step_user = step_user
        self.step = "recover an interrupted replacement"
        self.was_running = False
        self.committed = False
        self.staging = staging.Staging(journal=layout.replace_journal)

    def __enter__(self):
        try:
            recover(self.layout)
            if not self.stop_at_commit:
                self._stop()
        except OSError as error:
            raise StepFailed(f"{self.command} ({self.step})", str(error)) from None
        self.step = "stage files"
        return self

    def _stop(self):
        self.step = "stop step-ca"
        if self.use_system and self.layout.is_configured():
            self.was_running = system.stop_service()

    def stage(self, final):
        return self.staging.stage_dir(final)

    def commit(self, state_data, reset_complete=False):
        """Give every staged path its owner and mode (layout.OWNERSHIP), then swap the trees in and write
        state.json; the commit point."""
        self.step = "set owners and modes"
        accounts = self.layout.accounts(self.step_user)
        for staged, final in self.staging._staged:
            self.layout.apply_ownership(staged, final, accounts)
        if self.stop_at_commit:
            self._stop()
        self.step = "move files into place"
        self.staging.swap()
        if state_data is not None:
            self.staging.replace_file(self.layout.state_file, state_data, 0o644)
            self.layout.apply_ownership(self.layout.state_file, accounts=accounts)
        if reset_complete:  # setup: the system steps must run (again) before the new CA counts as set up
            self.layout.setup_complete.unlink(missing_ok=True)
        self.staging.commit()
        self.committed = True

    def __exit__(self, kind, error, traceback):
        if kind is None:
            return False
        if not self.committed:
            self.staging.rollback()
        restart_problem = None
        if self.was_running:
            try:
                system.start_service()
            except StepFailed as failed:
                restart_problem = failed
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            return False
        if isinstance(error, (OSError, StepFailed)):
            detail = error.detail if isinstance(error, StepFailed) else str(error)
            kept = "the previous state was left as it was" if not self.committed else "the new CA is in place"
            if restart_problem is not None:
                kept += f"; restarting the previous step-ca also failed ({restart_problem.detail})"
            raise StepFailed(f"{self.command} ({self.step})", f"{detail}; {kept}") from None
        return False
