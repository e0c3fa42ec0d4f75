from mediasearch.cli import main

raise SystemExit(main())
