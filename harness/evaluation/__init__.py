"""Evaluation protocols of a pretrained backbone: linear (fast / paper), kNN, semi, transfer."""

from .backbone import Backbone, load_backbone, random_backbone
from .runner import evaluate, plan
from .settings import PROTOCOLS, EvalSettings, parse_protocols

__all__ = ["Backbone", "load_backbone", "random_backbone", "evaluate", "plan", "PROTOCOLS",
           "EvalSettings", "parse_protocols"]
