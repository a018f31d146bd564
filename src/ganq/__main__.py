"""python -m ganq: the ganq command."""

from ganq.cli import main

if __name__ == "__main__":
    main()
