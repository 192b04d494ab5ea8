import sys

from callassist.cli import main

sys.exit(main())
