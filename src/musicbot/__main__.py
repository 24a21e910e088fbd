import sys

from musicbot.cli import main

sys.exit(main())
