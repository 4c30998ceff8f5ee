"""``python -m kanformer <subcommand>``, ``accelerate launch -m kanformer train ...``: the ``kanformer`` command."""

from .cli import main

if __name__ == "__main__":
    main()
