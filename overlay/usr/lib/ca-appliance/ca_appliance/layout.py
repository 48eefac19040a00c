"""Where the appliance keeps its files, all under an optional prefix (tests use a temp dir).

The step-ca layout is `step ca init`'s with STEPPATH=/etc/step-ca; the database lives in
/var/lib/step-ca so /etc stays small and backups can treat config and data apart.
"""
from pathlib import Path

STEP_USER = "step"
SERVICE = "step-ca.service"


class Layout:
    def __init__(self, prefix=None):
        self.prefix = Path(prefix).resolve() if prefix else Path("/")

    def path(self, absolute):
        """The absolute system path `absolute` as it is under this layout's prefix."""
        return self.prefix / str(absolute).lstrip("/")

    @property
    def is_system(self):
        return self.prefix == Path("/")

    # step-ca's own tree (STEPPATH) and data
    @property
    def steppath(self):
        return self.path("/etc/step-ca")

    @property
    def config_dir(self):
        return self.steppath / "config"

    @property
    def ca_json(self):
        return self.config_dir / "ca.json"

    @property
    def defaults_json(self):
        return self.config_dir / "defaults.json"

    @property
    def certs_dir(self):
        return self.steppath / "certs"

    @property
    def secrets_dir(self):
        return self.steppath / "secrets"

    @property
    def password_file(self):
        return self.steppath / "password.txt"

    @property
    def root_cert(self):
        return self.certs_dir / "root_ca.crt"

    @property
    def intermediate_cert(self):
        return self.certs_dir / "intermediate_ca.crt"

    @property
    def data_dir(self):
        return self.path("/var/lib/step-ca")

    @property
    def db_dir(self):
        return self.data_dir / "db"

    # the appliance's own state
    @property
    def state_dir(self):
        return self.path("/etc/ca-appliance")

    @property
    def state_file(self):
        return self.state_dir / "state.json"

    @property
    def baked_answers(self):
        """Answers baked into the image at build time; removed once a setup has completed."""
        return self.path("/etc/ca-appliance/answers.yaml")

    @property
    def setup_complete(self):
        """Written last by setup, after every system step: the first-boot unit runs until it exists."""
        return self.state_dir / "setup-complete"

    @property
    def replace_journal(self):
        """Present only while the CA's trees are being swapped: a crash leaves it for recovery."""
        return self.state_dir / "replace-journal.json"

    @property
    def root_key(self):
        return self.secrets_dir / "root_ca_key"

    @property
    def sshd_dropin(self):
        return self.path("/etc/ssh/sshd_config.d/10-ca-appliance.conf")

    @property
    def backup_dir(self):
        return self.path("/var/backups/ca-appliance")

    # system integration files
    @property
    def firewalld_service(self):
        return self.path("/etc/firewalld/services/step-ca.xml")

    @property
    def issue_file(self):
        return self.path("/etc/issue.d/ca-appliance.issue")

    def is_configured(self):
        return self.ca_json.exists()
