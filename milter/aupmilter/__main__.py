from aupmilter.cli.main import main

raise SystemExit(main())
