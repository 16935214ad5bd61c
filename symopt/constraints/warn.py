"""Warnings that point at the user's line, not at symopt's or torch's internals."""

from __future__ import annotations

import os
import sys
import warnings

import torch

_INTERNAL = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.dirname(torch.__file__))


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn with the location of the first caller outside symopt and torch (the user's line)."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level + 1)
