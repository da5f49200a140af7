"""``python -m worker ...``"""

from worker.cli import main

raise SystemExit(main())
