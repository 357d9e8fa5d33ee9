"""The `npgemma` command: argument parsing and printing only; the work is in the packages.

    main.py      the parser and dispatch       args.py     options shared by the commands
    generate.py  generate, demo                inspect.py  `npgemma inspect`
    models.py    `npgemma models`              parity.py   `npgemma parity [--against]`
    progress.py  progress bars on stderr
"""

from .main import build_parser, main  # noqa: F401
