from remask.cli import main

raise SystemExit(main())
