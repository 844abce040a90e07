"""Motion control's poses: the ``.pose.json`` format (``format``), pose maps drawn as public
OpenPose ControlNets expect them (``draw``), and poses read from a driving clip with MediaPipe
and retargeted to the reference's person (``driving``). See docs/pose-format.md.

``format`` needs only numpy; ``draw`` imports OpenCV and ``driving`` MediaPipe when called.
"""
