import sys

from webui.app import main

sys.exit(main())
