import sys

from trainrelay.cli import main

sys.exit(main())
