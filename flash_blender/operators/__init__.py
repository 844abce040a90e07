"""One module per operator group; ``classes`` collects them for registration."""

from . import animate, batch, misc, setup_engine, training

classes = (*animate.classes, *setup_engine.classes, *misc.classes, *training.classes, *batch.classes)
