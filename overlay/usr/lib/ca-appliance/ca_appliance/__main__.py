"""`python3 -m ca_appliance` is `ca-appliance`."""
import sys

from .cli import main

sys.exit(main())
