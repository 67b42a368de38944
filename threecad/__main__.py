"""`python -m threecad` is the same as the `threecad` command."""
from threecad.cli import main

if __name__ == "__main__":
    main()
