import sys

from trigate.cli import main

sys.exit(main())
