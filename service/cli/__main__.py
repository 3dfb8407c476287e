"""`python -m service.cli`: the `loss-service` command."""

from service.cli import main

raise SystemExit(main())
