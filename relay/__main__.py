import sys

from relay.ops.cli import main

sys.exit(main())
