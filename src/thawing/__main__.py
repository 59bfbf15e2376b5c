"""`python -m thawing ...` runs the CLI (also how `accelerate launch -m thawing` starts it)."""

from thawing.cli import main

main()
