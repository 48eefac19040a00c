"""The two kinds of failure a user sees, and their exit statuses.

UserError: the input is wrong (config value, CLI option, missing file): exit 2, one line.
StepFailed: a build/verify step failed: exit 1, one line naming the step and its log.
"""


class ApplianceError(Exception):
    exit_code = 1


class UserError(ApplianceError):
    exit_code = 2


class StepFailed(ApplianceError):
    exit_code = 1

    def __init__(self, step, detail="", log=None):
        self.step = step
        self.detail = detail
        self.log = log
        msg = f"{step} failed"
        if detail:
            msg += f": {detail}"
        if log:
            msg += f" (log: {log})"
        super().__init__(msg)
