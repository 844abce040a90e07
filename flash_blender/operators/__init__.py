"""One module per operator group; ``classes`` collects them for registration."""

from . import animate, batch, download_weights, misc, motion, setup_engine, training

classes = (*animate.classes, *setup_engine.classes, *download_weights.classes, *misc.classes, *training.classes,
           *batch.classes, *motion.classes)
