import sys

from flash_engine.cli import main

sys.exit(main())
