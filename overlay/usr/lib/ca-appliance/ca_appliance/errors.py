"""The two kinds of failure the appliance command reports, and their exit statuses.

UserError: the input or the current state does not allow the command: exit 2, one line.
StepFailed: a step of the command failed: exit 1, one line naming the step (and a log).
The same shape as the builder's image/errors.py on purpose, not by import: guest code never
imports host code (it runs on the appliance, where image/ does not exist).
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
        message = f"{step} failed"
        if detail:
            message += f": {detail}"
        if log:
            message += f" (see {log})"
        super().__init__(message)
