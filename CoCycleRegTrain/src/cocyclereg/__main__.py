"""``python -m cocyclereg`` runs the command line."""

from cocyclereg.cli import run

run()
