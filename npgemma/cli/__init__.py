"""The `npgemma` command: argument parsing and printing only; the work is in the packages.

    main.py      run the chosen command        parser.py   every command's options and help
    args.py      options shared by commands    progress.py progress bars, notes on stderr
    generate.py  generate, demo                inspect.py  `npgemma inspect`
    models.py    `npgemma models`              parity.py   `npgemma parity [--against]`
    conform.py   `npgemma conform`             tiny.py     `npgemma tiny-checkpoint`
"""

from .main import build_parser, main  # noqa: F401
