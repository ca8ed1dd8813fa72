from aupmilter.cli import main

raise SystemExit(main())
