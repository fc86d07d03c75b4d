from gui.cli import script

script()
