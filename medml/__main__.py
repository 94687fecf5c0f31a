import sys

from medml.cli import main

sys.exit(main())
