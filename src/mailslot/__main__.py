"""`python -m mailslot` runs the mailslot command."""

import sys

from mailslot.cli import main

sys.exit(main())
