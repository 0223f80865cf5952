import sys

from mosaic_gateway.cli import main

sys.exit(main())
