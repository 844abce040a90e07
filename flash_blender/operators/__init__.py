"""One module per operator group; ``classes`` collects them for registration."""

from . import animate, misc, setup_engine

classes = (*animate.classes, *setup_engine.classes, *misc.classes)
