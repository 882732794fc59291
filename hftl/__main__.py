"""`python -m hftl` and `accelerate launch -m hftl` enter here."""

from hftl.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
