"""Replace the CA on disk, all or nothing: the one sequence setup and restore share.

    with CAReplacement(layout, "setup", use_system=...) as replacing:
        tree = replacing.stage(layout.steppath)      # fill it
        replacing.commit(state_bytes)                 # chown, fsync, swap, state.json, commit

Entering recovers a swap a crash interrupted (staging.recover) and stops step-ca; leaving with an
error rolls back, starts the previous step-ca again when it was running, and reports the FIRST
error (a failed restart is added to its message, never raised in its place).
"""
import os

from . import staging, system
from .errors import StepFailed

ROOT_ONLY = ("secrets/root_ca_key",)  # relative to STEPPATH: step-ca never reads the root key


def recover(layout):
    """Put back what an interrupted replacement moved; remove staged leftovers. True if it undid one."""
    undone = staging.recover(layout.replace_journal)
    for tree in (layout.steppath, layout.data_dir):
        staging.remove_leftovers(tree)
    return undone


def give_to_step(layout, tree, user, steppath_tree=False):
    """chown a tree to user step, except the root key, which stays root's (0600)."""
    system.chown_tree(tree, user)
    if steppath_tree:
        for relative in ROOT_ONLY:
            path = tree / relative
            if path.exists():
                os.lchown(path, 0, 0)


class CAReplacement:
    def __init__(self, layout, command, use_system=True, step_user=None):
        self.layout = layout
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
            self.step = "stop step-ca"
            if self.use_system and self.layout.is_configured():
                self.was_running = system.stop_service()
        except OSError as error:
            raise StepFailed(f"{self.command} ({self.step})", str(error)) from None
        self.step = "stage files"
        return self

    def stage(self, final):
        return self.staging.stage_dir(final)

    def commit(self, state_data, reset_complete=False):
        """Give the staged trees to user step, then swap them in and write state.json; the commit point."""
        if self.step_user is not None:
            self.step = "give the files to user step"
            for staged, final in self.staging._staged:
                give_to_step(self.layout, staged, self.step_user, steppath_tree=final == self.layout.steppath)
        self.step = "move files into place"
        self.staging.swap()
        if state_data is not None:
            self.staging.replace_file(self.layout.state_file, state_data, 0o644)
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
