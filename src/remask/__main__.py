from remask.commands import main

raise SystemExit(main())
