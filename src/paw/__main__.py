from paw.cli import main

raise SystemExit(main())
